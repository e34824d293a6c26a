"""Simulated providers: utilisation, 429s and storm behaviour of the real Scheduler.

Every test runs on virtual time (``tests/sim.py``): ten simulated minutes take a fraction of a
second. Limits are fixed windows of unknown phase, as the provider documents describe them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
import structlog.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.providers.base import Limit
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, GroupPolicy, Scheduler
from bulksend.sandbox.limiters import (
    Bare429Limiter,
    GitHubLimiter,
    IetfLimiter,
    LeakyBucket,
    Limiter,
    LimitsFixedWindow,
    LimitsMovingWindow,
    nginx_rate,
)
from bulksend.sandbox.limiters import Policy as IetfPolicy
from tests.hypothesis_profiles import examples
from tests.sim import (
    WALL0,
    FixedWindowServer,
    ProfileServer,
    Server,
    SimResult,
    Storm,
    make_scheduler,
    run_virtual,
    simulate,
    uniform_latency,
)

MINUTE = 60.0


def run(
    servers: Mapping[str, Server],
    policies: dict[str, GroupPolicy],
    *,
    duration: float,
    latency: tuple[float, float] = (0.02, 0.06),
    workers: int = 32,
    seed: int = 1,
) -> SimResult:
    async def main() -> SimResult:
        sched = make_scheduler(policies, seed=seed)
        return await simulate(
            sched,
            servers,
            duration=duration,
            workers=workers,
            latency=uniform_latency(*latency),
            seed=seed,
        )

    return run_virtual(main())


def utilisation(server: FixedWindowServer, duration: float) -> float:
    return server.accepted(0.0, duration) / (server.limit * duration / server.window)


def first_window_end(server: FixedWindowServer) -> float:
    return server.phase + (math.floor(-server.phase / server.window) + 1) * server.window


# ---- honest headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["x", "x-reset", "x-epoch", "ietf", "remaining"])
def test_600_per_minute_for_ten_minutes_uses_the_quota_without_429s(style: str) -> None:
    server = FixedWindowServer(600, MINUTE, phase=17.3, headers=style)
    run({"g": server}, {"g": GroupPolicy(Limit(600, MINUTE))}, duration=10 * MINUTE)
    assert utilisation(server, 10 * MINUTE) >= 0.98
    assert server.rejected(first_window_end(server)) == 0
    assert server.rejected() == 0  # not even in the first window
    assert server.max_arrivals_in_any_window() <= 600  # whatever the server's phase


def test_jittery_latency_widens_the_margin_and_no_window_is_exceeded() -> None:
    server = FixedWindowServer(600, MINUTE, phase=3.0, headers="x")
    result = run(
        {"g": server},
        {"g": GroupPolicy(Limit(600, MINUTE))},
        duration=10 * MINUTE,
        latency=(0.01, 0.4),
    )
    assert server.max_arrivals_in_any_window() <= 600
    assert server.rejected() == 0
    assert utilisation(server, 10 * MINUTE) >= 0.98
    assert result.delivered > 0


def test_a_wrong_configured_limit_is_corrected_by_the_first_response() -> None:
    server = FixedWindowServer(300, MINUTE, phase=40.0, headers="x")
    run({"g": server}, {"g": GroupPolicy(Limit(1000, MINUTE))}, duration=5 * MINUTE)
    assert server.rejected() == 0
    assert max(server.arrivals_per_window().values()) <= 300
    assert utilisation(server, 5 * MINUTE) >= 0.97


def test_quota_spent_by_someone_else_is_adopted_from_remaining() -> None:
    # 590 of 600 already used in the window that ends at t=20; the reset is not announced
    server = FixedWindowServer(600, MINUTE, phase=20.0, headers="x", prior=590)
    run({"g": server}, {"g": GroupPolicy(Limit(600, MINUTE))}, duration=4 * MINUTE)
    assert server.rejected() <= 1  # at most what was already in flight at the first response
    assert server.rejected(1.0) == 0
    assert server.max_arrivals_in_any_window(1.0) <= 600


def test_user_ceiling_lower_than_the_provider_is_honoured() -> None:
    server = FixedWindowServer(600, MINUTE, phase=5.0, headers="x")
    policy = GroupPolicy(Limit(600, MINUTE), ceiling=5.0)  # rate = "300/min"
    run({"g": server}, {"g": policy}, duration=5 * MINUTE)
    assert server.max_arrivals_in_any_window() <= 300
    assert server.accepted() >= 0.98 * 300 * 5


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(2, 120),
    window=st.sampled_from([1.0, 2.0, 10.0, 60.0]),
    phase=st.floats(0.0, 1.0),
    style=st.sampled_from(["x", "x-reset", "x-epoch", "ietf", "remaining"]),
    lo=st.floats(0.0, 0.2),
    jitter=st.floats(0.0, 0.04),
    in_flight=st.integers(1, 32),
    seed=st.integers(0, 1000),
)
def test_property_no_window_is_exceeded_with_honest_headers(
    limit: int,
    window: float,
    phase: float,
    style: str,
    lo: float,
    jitter: float,
    in_flight: int,
    seed: int,
) -> None:
    server = FixedWindowServer(limit, window, phase=phase * window, headers=style)
    run(
        {"g": server},
        {"g": GroupPolicy(Limit(limit, window), in_flight=in_flight)},
        duration=6 * window,
        latency=(lo, lo + jitter),
        workers=in_flight + 4,
        seed=seed,
    )
    assert server.rejected() == 0
    assert max(server.arrivals_per_window().values()) <= limit
    assert server.max_arrivals_in_any_window() <= limit


# ---- no headers: adaptation -------------------------------------------------------------------


def test_without_headers_the_scheduler_adapts_to_the_quota() -> None:
    server = FixedWindowServer(600, MINUTE, phase=17.3, headers="none")
    result = run(
        {"g": server},
        {"g": GroupPolicy(Limit(600, MINUTE), headers_expected=False)},
        duration=10 * MINUTE,
    )
    assert utilisation(server, 10 * MINUTE) >= 0.90
    assert server.rejected() <= 0.05 * len(result.attempts)


@pytest.mark.parametrize("configured", [150, 1200])
def test_unknown_limit_is_found_within_five_windows(configured: int) -> None:
    server = FixedWindowServer(600, MINUTE, phase=0.0, headers="none")
    result = run(
        {"g": server},
        {"g": GroupPolicy(Limit(configured, MINUTE), headers_expected=False)},
        duration=10 * MINUTE,
    )
    per_window = server.arrivals_per_window()
    accepted = Counter(a.window for a in server.arrivals if a.status == 200)
    assert any(accepted[k] >= 0.9 * 600 for k in range(5))
    later = [accepted[k] for k in range(5, 10)]
    assert sum(later) / len(later) >= 0.9 * 600
    assert server.rejected() <= 0.05 * len(result.attempts)
    assert max(per_window[k] for k in range(5, 10)) <= 650  # no 429 storm once converged


# ---- several groups ---------------------------------------------------------------------------


def test_two_groups_each_use_their_own_quota() -> None:
    servers = {
        "user": FixedWindowServer(100, MINUTE, phase=11.0, headers="remaining"),
        "event": FixedWindowServer(500, MINUTE, phase=47.0, headers="remaining"),
    }
    policies = {"user": GroupPolicy(Limit(100, MINUTE)), "event": GroupPolicy(Limit(500, MINUTE))}
    run(servers, policies, duration=10 * MINUTE)
    for server in servers.values():
        assert utilisation(server, 10 * MINUTE) >= 0.98
        assert server.rejected() == 0


def test_a_storm_on_one_group_never_slows_another() -> None:
    servers = {
        "user": FixedWindowServer(100, MINUTE, phase=11.0, headers="x"),
        "event": FixedWindowServer(
            500, MINUTE, phase=47.0, headers="x", storms=(Storm(30.0, 400.0, 429, 5.0),)
        ),
    }
    policies = {"user": GroupPolicy(Limit(100, MINUTE)), "event": GroupPolicy(Limit(500, MINUTE))}
    run(servers, policies, duration=10 * MINUTE)
    assert utilisation(servers["user"], 10 * MINUTE) >= 0.98
    assert servers["user"].rejected() == 0


# ---- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", ["x", "none"])
@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_7_seconds_pauses_the_group(form: str, headers: str) -> None:
    # the window holding t=0 is already full and ends at t=7
    server = FixedWindowServer(600, MINUTE, phase=7.0, headers=headers, prior=600, retry_after=form)
    result = run({"g": server}, {"g": GroupPolicy(Limit(600, MINUTE))}, duration=MINUTE)
    first_429 = min(a.time for a in server.arrivals if a.status == 429)
    told = [a for a in result.attempts if a.status == 429]
    assert told
    # requests sent after the first 429 came back wait for the announced 7 s
    answered = first_429 + 0.2  # the 429's way back (at most 60 ms in this simulation)
    early = [a for a in result.attempts if answered < a.sent_at < 7.0]
    assert early == []
    if headers == "none":  # no counts: the rate is discovered, which costs a few 429s
        assert server.rejected(7.0) <= 0.05 * len(result.attempts)
    else:
        assert server.rejected(7.0) == 0
        assert server.accepted(7.0, MINUTE) >= 0.95 * 600 * (MINUTE - 7.0) / MINUTE


# ---- storms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"), [(429, None), (429, 1.0), (503, None), (503, 2.0)]
)
def test_five_minute_storm_never_becomes_a_retry_storm(
    status: int, retry_after: float | None
) -> None:
    storm = Storm(MINUTE, 6 * MINUTE, status, retry_after)
    server = FixedWindowServer(600, MINUTE, phase=7.0, headers="x", storms=(storm,))
    policy = GroupPolicy(Limit(600, MINUTE))
    result = run({"g": server}, {"g": policy}, duration=8 * MINUTE)

    good_rate = 600 / MINUTE
    bound = max(1.0, 0.1 * good_rate)  # retries per second during the storm
    capacity = max(10.0, 0.1 * 600)  # the budget's bucket: a blip is retried at once
    retries = result.retries("g", storm.start, storm.end)
    assert len(retries) <= capacity + bound * (storm.end - storm.start)
    settled = result.retries("g", storm.start + MINUTE, storm.end)
    assert len(settled) <= bound * (storm.end - storm.start - MINUTE) + 2
    if retries:
        slots = Counter(math.floor(t * 10) for t in retries)  # 100 ms slots
        assert max(slots.values()) <= max(1, 0.05 * len(retries))
    assert max(result.attempts_per_item().values()) <= 6
    # the group is back at full speed after the storm
    assert server.accepted(7 * MINUTE, 8 * MINUTE) >= 0.9 * 600


def test_storms_of_another_limit_never_lengthen_the_inferred_window() -> None:
    """429s that say quota remains (a secondary limit, a provider-wide storm) say nothing of the
    quota's window: read as "the window is full" they lengthened it by a storm each time, and
    the send crawled (50/1s -> 50/60s in a minute of storms every 3 s)."""
    storms = tuple(Storm(t + 1.5, t + 2.5, 429, 1.0, headers=True) for t in range(0, 60, 3))
    # and blips of 503s asking for a second's pause, as a provider under load sends
    storms += tuple(Storm(t + 0.7, t + 0.72, 503, 1.0, headers=True) for t in range(0, 60, 3))
    server = FixedWindowServer(50, 1.0, phase=0.3, storms=storms)
    policy = GroupPolicy(Limit(50, 1.0))  # documented right: only the storms could mislead
    _, sched = _run_with_scheduler(server, policy, 60.0, latency=uniform_latency(*FAST))
    assert sched.snapshot()["g"].window <= 1.5
    free = 20 * (0.7 + 0.5)  # each 3 s: before the 503s' pause, and after the 429 storm
    assert server.accepted(0.0, 60.0) >= 0.9 * 50 * free


# ---- the rate limiters people run (bulksend.sandbox.limiters) ---------------------------------
#
# Each family is driven from three starting guesses: the documented default (600 per minute),
# and the true quota ten times too low and ten times too high. The window is the limiter's own
# (for nginx, one second of its rate); "within 5 windows" is measured from 5 windows on.

FAST = (0.0001, 0.0003)  # one-way delays on loopback


def _family(name: str) -> tuple[Limiter, float, float, bool]:
    """(limiter, true rate per second, window, rate headers expected). Clock-aligned windows
    start before time 0 (at a phase the sends do not know)."""
    if name == "nginx 429":
        return LeakyBucket(nginx_rate(20, 1.0), 0, 429), 20.0, 1.0, True
    if name == "nginx 503":
        return LeakyBucket(nginx_rate(20, 1.0), 0, 503), 20.0, 1.0, True
    if name == "nginx burst":
        return LeakyBucket(nginx_rate(50, 1.0), 5, 429), 50.0, 1.0, True
    if name == "limits fixed":
        return LimitsFixedWindow(50, 1), 50.0, 1.0, True
    if name == "limits moving":
        return LimitsMovingWindow(50, 1), 50.0, 1.0, True
    if name == "github":
        return GitHubLimiter(100, 10.0, -6.7), 10.0, 10.0, True
    if name == "ietf":  # the short policy binds
        return (
            IetfLimiter((IetfPolicy("burst", 20, 1), IetfPolicy("long", 1500, 60))),
            20.0,
            1.0,
            True,
        )
    if name == "ietf long":  # the long one does
        return (
            IetfLimiter((IetfPolicy("burst", 20, 1), IetfPolicy("long", 600, 60))),
            10.0,
            60.0,
            True,
        )
    if name == "bare 429":
        return Bare429Limiter(50, 1.0, -0.63), 50.0, 1.0, False
    assert name == "bare 429 minute"
    return Bare429Limiter(600, MINUTE, -53.0), 10.0, MINUTE, False


def _guess(label: str, rate: float, window: float) -> Limit:
    if label == "documented":
        return Limit(600, MINUTE)
    factor = 0.1 if label == "10x low" else 10.0
    return Limit(max(1, round(rate * window * factor)), window)


@pytest.mark.parametrize("guess", ["documented", "10x low", "10x high"])
@pytest.mark.parametrize(
    "family",
    [
        "nginx 429",
        "nginx 503",
        "nginx burst",
        "limits fixed",
        "limits moving",
        "github",
        "ietf",
        "ietf long",
        "bare 429",
        "bare 429 minute",
    ],
)
def test_real_limiter_families_are_used_to_the_quota(family: str, guess: str) -> None:
    limiter, rate, window, headers = _family(family)
    server = ProfileServer(limiter, window, rate)
    span = max(window, 1.0)
    duration = 30 * span
    policy = GroupPolicy(_guess(guess, rate, window), headers_expected=headers)
    result = run({"g": server}, {"g": policy}, duration=duration, latency=FAST)
    # within 5 windows the true rate is reached, and held
    assert server.utilisation(5 * span, duration) >= 0.90
    # refusals stay a few per hundred requests over the whole send
    assert server.rejected() <= 0.05 * len(result.attempts)


def _run_with_scheduler(
    server: FixedWindowServer | ProfileServer, policy: GroupPolicy, duration: float, **kw: Any
) -> tuple[SimResult, Scheduler]:
    async def main() -> tuple[SimResult, Scheduler]:
        sched = make_scheduler({"g": policy}, seed=1)
        result = await simulate(sched, {"g": server}, duration=duration, workers=24, **kw)
        return result, sched

    return run_virtual(main())


@pytest.mark.parametrize("family", ["limits fixed", "limits moving", "github"])
def test_a_documented_window_is_only_a_guess(family: str) -> None:
    # the limit header says 50 (or 100) and nothing of the window; the guess is per minute
    limiter, rate, window, _ = _family(family)
    server = ProfileServer(limiter, window, rate)
    policy = GroupPolicy(Limit(600, MINUTE))
    _, sched = _run_with_scheduler(server, policy, 2 * window, latency=uniform_latency(*FAST))
    replaced = sched.snapshot()["g"]  # within two windows the guess is gone ...
    assert replaced.window <= MINUTE / 5
    assert replaced.limit == round(rate * window)
    server = ProfileServer(_family(family)[0], window, rate)  # (a fresh limiter)
    _, sched = _run_with_scheduler(server, policy, 5 * window, latency=uniform_latency(*FAST))
    snap = sched.snapshot()["g"]  # ... and within five the window is known
    assert snap.window == pytest.approx(window, rel=0.1)
    assert "inferred" in snap.evidence


def test_a_stated_limit_is_a_hard_cap_whatever_the_headers_say() -> None:
    # the provider announces 600 (no window); the user says 20 per second
    server = FixedWindowServer(600, 1.0, phase=0.3, headers="x")
    policy = GroupPolicy(Limit(600, MINUTE), stated=Limit(20, 1.0))
    run({"g": server}, {"g": policy}, duration=20.0, latency=FAST)
    assert server.max_arrivals_in_any_window() <= 600
    times = [a.time for a in server.arrivals]
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 20
    assert server.accepted() >= 0.9 * 20 * 20


@pytest.mark.parametrize("family", ["nginx 429", "bare 429"])
def test_discovery_never_probes_above_a_stated_limit(family: str) -> None:
    limiter, rate, window, headers = _family(family)  # the server allows 20 or 50 per second
    server = ProfileServer(limiter, window, rate)
    stated = Limit(round(0.8 * rate), 1.0)  # the user states less than that
    policy = GroupPolicy(Limit(600, MINUTE), stated=stated, headers_expected=headers)
    run({"g": server}, {"g": policy}, duration=30.0, latency=FAST)
    assert server.rejected() == 0  # never probed above it: not one refusal
    times = [a.time for a in server.arrivals]
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= stated.requests
    assert server.utilisation(2.0, 30.0) >= 0.95 * 0.8


def test_a_quota_two_groups_share_is_honoured_across_them() -> None:
    # GitHub's "core" quota serves every REST endpoint: both groups draw on one counter
    limiter = GitHubLimiter(100, 10.0, -6.7)
    shared = ProfileServer(limiter, 10.0, 10.0)
    policies = {"a": GroupPolicy(Limit(600, MINUTE)), "b": GroupPolicy(Limit(600, MINUTE))}

    async def main() -> tuple[SimResult, Scheduler]:
        sched = make_scheduler(policies, seed=1)
        servers = {"a": shared, "b": shared}
        result = await simulate(sched, servers, duration=200.0, latency=uniform_latency(*FAST))
        return result, sched

    result, sched = run_virtual(main())
    assert max(shared.arrivals_per_window().values()) <= 100 + 2  # two groups, one quota
    assert shared.rejected() <= 0.02 * len(result.attempts)
    assert shared.utilisation(50.0, 200.0) >= 0.9
    beliefs = sched.beliefs()
    assert beliefs["core (shared)"]["groups"] == ["a", "b"]
    assert beliefs["core (shared)"]["limit"] == 100


def test_remaining_without_a_limit_below_the_documented_one_is_found() -> None:
    # NotifyVisitors-style (Remaining only); documented 600/min, the account has 60/min
    server = FixedWindowServer(60, MINUTE, phase=20.0, headers="remaining")
    _, sched = _run_with_scheduler(server, GroupPolicy(Limit(600, MINUTE)), 30 * MINUTE)
    snap = sched.snapshot()["g"]
    assert snap.limit == 60
    assert snap.window == pytest.approx(MINUTE, rel=0.05)
    assert server.accepted(10 * MINUTE, 30 * MINUTE) >= 0.9 * 60 * 20
    assert server.rejected() <= 2


@pytest.mark.parametrize("skew", [-300.0, -5.0, 5.0, 300.0])
def test_a_servers_clock_minutes_off_costs_nothing_when_it_sends_its_date(skew: float) -> None:
    server = FixedWindowServer(100, 10.0, phase=3.0, headers="x-epoch", wall0=WALL0 + skew)
    server.dated = True
    _, sched = _run_with_scheduler(server, GroupPolicy(Limit(100, 10.0)), 300.0)
    assert sched.snapshot()["g"].window == pytest.approx(10.0, rel=0.1)
    assert server.accepted(50.0, 300.0) >= 0.95 * 100 * 25
    assert server.rejected() == 0


def test_a_group_stays_in_the_first_partition_its_answers_name() -> None:
    async def main() -> Scheduler:
        sched = make_scheduler({"a": GroupPolicy(Limit(5000, 3600.0), in_flight=64)})
        for i in range(200):
            permit = await sched.acquire("a")
            headers = {
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": str(4000 - i),
                "x-ratelimit-resource": "core" if i % 2 else "search",
            }
            sched.complete(permit, Feedback(FeedbackKind.OK, headers, 200))
        return sched

    sched = run_virtual(main())
    assert sched.beliefs().keys() == {"a"}  # one group alone shares nothing
    assert sched.snapshot()["a"].limit == 5000


def test_each_change_of_belief_is_an_info_event_with_its_evidence() -> None:
    limiter, rate, window, _ = _family("limits fixed")  # 50 per 1 s, announced without window
    server = ProfileServer(limiter, window, rate)
    with structlog.testing.capture_logs() as events:
        _run_with_scheduler(server, GroupPolicy(Limit(600, MINUTE)), 8.0)
    changes = [e for e in events if e["event"] == "rate_limit_changed"]
    assert changes[0]["change"].startswith("600/60s -> 50/60s")  # the count, announced
    assert changes[0]["log_level"] == "info"
    last = changes[-1]
    assert last["limit"] == 50
    assert last["window"] == pytest.approx(1.0, rel=0.1)  # the window, inferred
    assert "inferred" in last["evidence"]
    assert len(changes) <= 8  # a change of belief, not a stream
