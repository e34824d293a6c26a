"""The shared limiter against a real redis-server on loopback: the Lua gate, the shared scheduler,
Redis lost and restarted, and the factory's fail-fast errors.

Redis comes from ``BULKSEND_TEST_REDIS`` (``.ci/run`` starts one) or a private ``redis-server``
started here; the tests skip, loudly, only when neither is possible. Tests that kill Redis always
use a private server.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

from structlog.testing import capture_logs

from bulksend.config import load_settings
from bulksend.distributed import shared_scheduler
from bulksend.distributed.gate import RedisGate, Verdict
from bulksend.distributed.keys import (
    key_fingerprint,
    key_names,
    quota_scope,
    redact_url,
)
from bulksend.distributed.scheduler import SharedScheduler
from bulksend.distributed.testing import RedisServer, free_port, ping
from bulksend.errors import ConfigError, Deferred, LimiterUnavailable, UnavailableError
from bulksend.providers.base import Limit
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, GroupPolicy
from tests.conftest import run_cli, write_campaign, write_recipients
from tests.peers.measure import most_in_any_span

NO_REDIS = (
    "REDIS UNAVAILABLE -- the shared-limiter tests did NOT run: install redis-server "
    "(apt-get install redis-server) or set BULKSEND_TEST_REDIS=redis://127.0.0.1:6390/0"
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("BULKSEND_TEST_REDIS")
    if url:
        yield url
        return
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and start again."""
    if not RedisServer.available():
        pytest.skip(NO_REDIS + " (this test kills Redis, so it needs the redis-server binary)")
    with RedisServer() as server:
        yield server


def scope() -> str:
    return quota_scope("maxtraffic", {"api_key": secrets.token_hex(16)})


@pytest.fixture
async def gates(redis_url: str) -> AsyncIterator[tuple[RedisGate, RedisGate]]:
    """Two gates (two clients, as two workers would have) on one quota scope."""
    shared = scope()
    a = await RedisGate.connect(redis_url, shared)
    b = await RedisGate.connect(redis_url, shared)
    yield a, b
    await a.aclose()
    await b.aclose()


async def admit_loop(
    gate: RedisGate, group: str, limit: int, window: float, margin: float, until: float
) -> list[float]:
    """Ask for admissions as fast as the gate allows until ``until`` (loop time)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    epoch = ""
    n = 0
    me = secrets.token_hex(4)
    while loop.time() < until:
        n += 1
        adm = await gate.admit(
            group,
            limit=limit,
            window=window,
            margin=margin,
            member=f"{me}:{n}",
            epoch=epoch,
            ttl_ms=60_000,
        )
        if adm.verdict is Verdict.EPOCH:
            epoch = adm.epoch
        elif adm.admitted:
            times.append(adm.now)
        else:
            await asyncio.sleep(adm.wait)
    return times


# ---- keys and fingerprints (pure) ---------------------------------------------------------


def test_fingerprint_is_stable_distinct_and_never_the_key() -> None:
    key = "mt-live-0123456789abcdef"
    fp = key_fingerprint({"api_key": key})
    assert fp == key_fingerprint({"api_key": key})
    assert fp != key_fingerprint({"api_key": key + "x"})
    assert len(fp) == 16
    assert int(fp, 16) >= 0
    assert key not in fp
    assert key[:8] not in fp
    log, state = key_names(quota_scope("maxtraffic", {"api_key": key}), "api")
    assert log == f"bulksend:{{maxtraffic:{fp}:api}}:log"
    assert state.endswith(":state")
    assert key not in log + state


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://me:hunter2@h:6379/1", "redis://me:***@h:6379/1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("unix:///tmp/r.sock?db=0&password=hunter2", "unix:///tmp/r.sock?db=0&password=***"),
    ],
)
def test_urls_are_shown_without_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# ---- the Lua gate ---------------------------------------------------------------------------


async def test_two_clients_sharing_a_limit_never_exceed_it_in_any_window(
    gates: tuple[RedisGate, RedisGate],
) -> None:
    a, b = gates
    limit, window, margin = 20, 0.5, 0.03
    until = asyncio.get_running_loop().time() + 2.5
    runs = await asyncio.gather(
        *(admit_loop(g, "api", limit, window, margin, until) for g in (a, b, a, b))
    )
    times = sorted(t for run in runs for t in run)
    # Admission is a race between waiters that wake together, not a queue: one client can get
    # few slots for a while (see docs/scaling.md, "Fairness"). What the quota needs is below.
    assert times, "the clients got admissions"
    # on Redis's clock: never more than the limit within any window + margin
    assert most_in_any_span(times, window + margin) <= limit
    # so no fixed window of the provider, whatever its phase, sees more than the limit
    assert most_in_any_span(times, window) <= limit
    # and the shared GCRA spreads them: consecutive admissions are (W + m) / L apart
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert min(gaps) >= (window + margin) / limit - 0.0055  # 5 ms catch-up slack
    # while the quota is used: the long-run rate is L / (W + m)
    expected = (times[-1] - times[0]) * limit / (window + margin)
    assert len(times) >= 0.95 * expected


async def test_a_pause_from_one_client_holds_the_other(
    gates: tuple[RedisGate, RedisGate],
) -> None:
    a, b = gates
    first = await b.admit(
        "api", limit=100, window=1.0, margin=0.03, member="b1", epoch="", ttl_ms=60_000
    )
    epoch = first.epoch
    await a.pause("api", seconds=0.6, limit=None, ttl_ms=60_000)
    adm = await b.admit(
        "api", limit=100, window=1.0, margin=0.03, member="b2", epoch=epoch, ttl_ms=60_000
    )
    assert adm.verdict is Verdict.WAIT
    assert 0.5 < adm.wait <= 0.6


async def test_a_limit_announced_to_one_client_tightens_the_other(
    gates: tuple[RedisGate, RedisGate],
) -> None:
    a, b = gates
    common = {"window": 1.0, "margin": 0.05, "ttl_ms": 60_000}
    epoch = (await b.admit("api", limit=100, member="b0", epoch="", **common)).epoch  # type: ignore[arg-type]
    adm = await b.admit("api", limit=100, member="b1", epoch=epoch, **common)  # type: ignore[arg-type]
    assert adm.admitted
    await a.pause("api", seconds=None, limit=4, ttl_ms=60_000)
    # b still asks with its own limit of 100, but gets the announced 4 per window
    until = asyncio.get_running_loop().time() + 1.5
    times = [adm.now, *await admit_loop(b, "api", 100, 1.0, 0.05, until)]
    assert most_in_any_span(times, 1.05) == 4
    assert len(times) <= 4 * 2


async def test_redis_never_holds_the_key(redis_url: str) -> None:
    key = "live-" + secrets.token_hex(12)
    shared = quota_scope("maxtraffic", {"api_key": key})
    gate = await RedisGate.connect(redis_url, shared)
    try:
        epoch = ""
        for n in range(3):
            adm = await gate.admit(
                "api", limit=50, window=1.0, margin=0.03, member=f"m{n}", epoch=epoch, ttl_ms=9000
            )
            epoch = adm.epoch
        await gate.pause("api", seconds=0.1, limit=50, ttl_ms=9000)
        client = gate.client  # (it does not decode: replies are bytes, as the casts say)
        keys = cast("list[bytes]", await client.keys(f"bulksend:{{{shared}:*"))
        names = [k.decode() for k in keys]
        assert sorted(names) == sorted(key_names(shared, "api"))
        dump = b"".join(names[i].encode() for i in range(len(names)))
        for name in names:
            if name.endswith(":log"):
                dump += b"".join(cast("list[bytes]", await client.zrange(name, 0, -1)))
            else:
                fields = cast("dict[bytes, bytes]", await client.hgetall(name))
                dump += b"".join(k + v for k, v in fields.items())
            ttl = await client.pttl(name)
            assert 0 < ttl <= 9000 + 100  # everything expires (the state after the pause)
        assert key.encode() not in dump
        assert key[5:15].encode() not in dump
    finally:
        await gate.aclose()


async def test_after_redis_loses_its_state_workers_write_their_history_back(
    gates: tuple[RedisGate, RedisGate],
) -> None:
    a, b = gates
    common = {"limit": 3, "window": 1.0, "margin": 0.03, "ttl_ms": 60_000}
    epoch = (await a.admit("api", member="x", epoch="", **common)).epoch  # type: ignore[arg-type]
    first = await a.admit("api", member="a1", epoch=epoch, **common)  # type: ignore[arg-type]
    assert first.admitted
    log, state = a.keys("api")
    await a.client.delete(log, state)  # what a restart without persistence does
    again = await a.admit("api", member="a2", epoch=epoch, **common)  # type: ignore[arg-type]
    assert again.verdict is Verdict.EPOCH
    assert again.epoch != epoch
    assert await a.reseed(
        "api", epoch=again.epoch, entries=[(first.stamp, "a1")], grace=0.2, ttl_ms=60_000
    )
    # the first reseed of the new epoch holds everyone for the grace period
    adm = await b.admit("api", member="b1", epoch=again.epoch, **common)  # type: ignore[arg-type]
    assert adm.verdict is Verdict.WAIT
    assert 0.1 < adm.wait <= 0.2
    assert await a.client.zscore(log, "a1") == pytest.approx(first.now, abs=1e-6)
    # a reseed for an epoch that is gone again is refused
    assert not await b.reseed("api", epoch=epoch, entries=[("1.0", "b0")], grace=0, ttl_ms=1000)


# ---- the shared scheduler -------------------------------------------------------------------


def policy(limit: int, window: float, in_flight: int = 8) -> dict[str, GroupPolicy]:
    return {"api": GroupPolicy(limit=Limit(limit, window), in_flight=in_flight)}


async def make_scheduler(url: str, shared: str, limit: int, window: float, **kw: float) -> Any:
    gate = await RedisGate.connect(url, shared)
    return SharedScheduler(policy(limit, window), gate, **kw)


async def drive(sched: SharedScheduler, until: float, sent: list[float]) -> None:
    """One engine task: acquire, 'send' (5 ms), complete OK, until ``until``."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        permit = await sched.acquire("api")
        sent.append(loop.time())
        await asyncio.sleep(0.005)
        sched.complete(permit, Feedback(FeedbackKind.OK, {"X-RateLimit-Remaining": "10"}))


async def test_two_schedulers_share_one_quota(redis_url: str) -> None:
    shared = scope()
    limit, window = 30, 1.0
    s1 = await make_scheduler(redis_url, shared, limit, window)
    s2 = await make_scheduler(redis_url, shared, limit, window)
    sent1: list[float] = []
    sent2: list[float] = []
    async with s1, s2:
        start = asyncio.get_running_loop().time()
        until = start + 2.6
        await asyncio.gather(
            *(drive(s1, until, sent1) for _ in range(6)),
            *(drive(s2, until, sent2) for _ in range(6)),
        )
        stats1, stats2 = s1.shared_stats()["api"], s2.shared_stats()["api"]
    sent = sorted(sent1 + sent2)
    assert sent1
    assert sent2
    assert most_in_any_span(sent, window) <= limit
    # each alone would send `limit` per window; together they send it once
    span = sent[-1] - sent[0]
    assert len(sent) <= limit * (span / window + 1)
    assert len(sent) >= 0.9 * limit * span / (window + 0.05)
    assert stats1.admitted == len(sent1)
    assert stats2.admitted == len(sent2)
    assert stats1.denied + stats2.denied > 0


async def test_a_429_seen_by_one_worker_pauses_the_other(redis_url: str) -> None:
    shared = scope()
    s1 = await make_scheduler(redis_url, shared, 100, 1.0)
    s2 = await make_scheduler(redis_url, shared, 100, 1.0)
    async with s1, s2:
        permit = await s1.acquire("api")
        s1.complete(permit, Feedback(FeedbackKind.THROTTLED, {"Retry-After": "1"}))
        await asyncio.sleep(0.05)  # the pause is written in the background
        loop = asyncio.get_running_loop()
        start = loop.time()
        permit = await s2.acquire("api")
        waited = loop.time() - start
        s2.complete(permit, Feedback(FeedbackKind.OK))
        assert s1.shared_stats()["api"].pauses_shared == 1
    assert 0.8 < waited < 1.5


async def test_a_long_shared_pause_defers(redis_url: str) -> None:
    shared = scope()
    s1 = await make_scheduler(redis_url, shared, 100, 1.0)
    s2 = await make_scheduler(redis_url, shared, 100, 1.0, max_wait=5.0)
    async with s1, s2:
        permit = await s1.acquire("api")
        s1.complete(permit, Feedback(FeedbackKind.THROTTLED, {"Retry-After": "30"}))
        await asyncio.sleep(0.05)
        with pytest.raises(Deferred):
            await s2.acquire("api")
        assert s2.snapshot()["api"].in_flight == 0  # the local permit went back


async def test_redis_lost_mid_send_pauses_then_resumes(private_redis: RedisServer) -> None:
    sched = await make_scheduler(private_redis.url, scope(), 50, 1.0)
    async with sched:
        loop = asyncio.get_running_loop()
        permit = await sched.acquire("api")
        sched.complete(permit, Feedback(FeedbackKind.OK))
        with capture_logs() as events:
            private_redis.kill()
            task = asyncio.ensure_future(sched.acquire("api"))
            await asyncio.sleep(0.6)
            assert not task.done(), "no send while Redis is away (no unshared fallback)"
            killed_for = loop.time()
            await asyncio.to_thread(private_redis.start)
            permit = await asyncio.wait_for(task, 10)
            resumed = loop.time()
            sched.complete(permit, Feedback(FeedbackKind.OK))
    names = [e["event"] for e in events]
    assert "limiter_unavailable" in names
    assert "limiter_restored" in names
    assert "limiter_state_lost" in names  # the restarted Redis came back empty
    assert sched.outages == 1
    assert sched.paused > 0.5
    assert resumed - killed_for < 5
    down = next(e for e in events if e["event"] == "limiter_unavailable")
    assert down["log_level"] == "warning"


async def test_redis_gone_for_longer_than_max_outage_defers(private_redis: RedisServer) -> None:
    sched = await make_scheduler(private_redis.url, scope(), 50, 1.0, max_outage=0.4)
    async with sched:
        private_redis.kill()
        start = time.monotonic()
        with pytest.raises(LimiterUnavailable, match="unreachable") as info:
            await sched.acquire("api")
        assert isinstance(info.value, Deferred)
        assert time.monotonic() - start < 2
        with pytest.raises(LimiterUnavailable):  # still down: deferred at once
            await sched.acquire("api")
        assert sched.snapshot()["api"].in_flight == 0


# ---- the factory and the CLI ----------------------------------------------------------------


def campaign(tmp_path: Path) -> Path:
    recipients = write_recipients(tmp_path / "r.csv", [("v1", "u1")])
    return write_campaign(tmp_path, recipients)


async def test_factory_builds_the_providers_groups(redis_url: str, tmp_path: Path) -> None:
    settings = load_settings(campaign(tmp_path), env={})
    sched = await shared_scheduler(redis_url, settings, {"MAXTRAFFIC_API_KEY": "k-123"})
    async with sched:
        assert set(sched.snapshot()) == {"api"}
        fp = key_fingerprint({"api_key": "k-123"})
        assert sched.gate.keys("api")[0] == f"bulksend:{{maxtraffic:{fp}:api}}:log"


async def test_unreachable_redis_fails_fast_without_the_password(tmp_path: Path) -> None:
    settings = load_settings(campaign(tmp_path), env={})
    port = free_port()
    assert not ping("127.0.0.1", port)
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    start = time.monotonic()
    with pytest.raises(UnavailableError) as info:
        await shared_scheduler(url, settings, {"MAXTRAFFIC_API_KEY": "k"}, connect_timeout=1)
    assert time.monotonic() - start < 3
    message = str(info.value)
    assert f"redis://:***@127.0.0.1:{port}/0" in message
    assert "s3cret-pw" not in message


async def test_bad_limiter_urls_are_config_errors(tmp_path: Path) -> None:
    settings = load_settings(campaign(tmp_path), env={})
    for url in ("localhost:6379", "http://localhost:6379/0"):
        with pytest.raises(ConfigError, match="--limiter"):
            await shared_scheduler(url, settings, {"MAXTRAFFIC_API_KEY": "k"})


def test_cli_send_with_unreachable_limiter_exits_4_with_one_line(tmp_path: Path) -> None:
    url = f"redis://:pw-xyz@127.0.0.1:{free_port()}/0"
    result = run_cli(
        "send",
        str(campaign(tmp_path)),
        "--limiter",
        url,
        "--base-url",
        "http://127.0.0.1:9",
        "--no-journal",
        env={"MAXTRAFFIC_API_KEY": "k"},
    )
    assert result.status == 4, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "unreachable" in lines[0]
    assert "pw-xyz" not in result.stderr
