"""The asyncio wrapper: waiting, wake-ups, cancellation, deferral and the engine-facing API."""

from __future__ import annotations

import asyncio
import math
import random
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.providers.base import Limit
from bulksend.ratelimit.bucket import BASE_MARGIN, MARGIN_SHARE
from bulksend.ratelimit.scheduler import (
    Deferred,
    Feedback,
    FeedbackKind,
    GroupPolicy,
    Permit,
    Scheduler,
)
from tests.hypothesis_profiles import examples
from tests.sim import WALL0, make_scheduler, run_virtual

OK = Feedback(FeedbackKind.OK)


def margin_for(window: float, base: float = BASE_MARGIN) -> float:
    """The pacing margin at the start of a send: ``base``, or 1 % of a shorter window."""
    return min(base, MARGIN_SHARE * window)


def spacing(limit: int, window: float, base: float = BASE_MARGIN) -> float:
    return (window + margin_for(window, base)) / limit


def test_default_clock_is_resolved_lazily_inside_the_running_loop() -> None:
    sched = Scheduler({"g": GroupPolicy(Limit(10, 10.0))})  # no loop exists here

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(3):
            permit = await sched.acquire("g")
            times.append(loop.time())
            assert permit.sent_at == loop.time()
            sched.complete(permit, Feedback(FeedbackKind.OK, {"X-RateLimit-Limit": "10"}))
        return times

    times = run_virtual(main(), start=1000.0)
    assert times[0] == 1000.0
    assert times[2] - times[0] == pytest.approx(2 * spacing(10, 10.0))


async def test_real_event_loop_paces_with_call_at() -> None:
    sched = Scheduler({"g": GroupPolicy(Limit(5, 0.25))}, margin=0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    permits = []
    for _ in range(6):
        permits.append(await sched.acquire("g"))
        sched.complete(permits[-1], Feedback(FeedbackKind.OK, {"X-RateLimit-Limit": "5"}))
    elapsed = loop.time() - start
    assert elapsed >= 5 * spacing(5, 0.25, 0.01) - 2e-3
    assert permits[5].sent_at - permits[0].sent_at >= 0.25


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_retry_after_holds_fresh_sends_and_retries_of_the_group(form: str) -> None:
    async def main() -> tuple[float, float]:
        sched = make_scheduler({"g": GroupPolicy(Limit(600, 60.0))})
        loop = asyncio.get_running_loop()
        permit = await sched.acquire("g")
        await asyncio.sleep(0.1)
        value = "7" if form == "seconds" else formatdate(WALL0 + loop.time() + 7, usegmt=True)
        sched.complete(permit, Feedback(FeedbackKind.THROTTLED, {"retry-after": value}))
        told = loop.time()
        fresh, retry = await asyncio.gather(sched.acquire("g"), sched.acquire("g", retry=True))
        return told, min(fresh.sent_at, retry.sent_at)

    told, next_send = run_virtual(main())
    assert next_send - told == pytest.approx(7.0, abs=1.0)  # an HTTP-date has 1 s resolution


def test_wait_beyond_max_wait_defers_waiters_and_new_acquires() -> None:
    async def main() -> tuple[list[BaseException | Permit], BaseException | None]:
        sched = make_scheduler({"g": GroupPolicy(Limit(600, 60.0), in_flight=1)}, max_wait=600)
        first = await sched.acquire("g")
        waiters = [asyncio.ensure_future(sched.acquire("g")) for _ in range(5)]
        await asyncio.sleep(0.5)  # all queued behind the in-flight cap
        sched.complete(first, Feedback(FeedbackKind.THROTTLED, {"Retry-After": "3600"}))
        results = await asyncio.gather(*waiters, return_exceptions=True)
        try:
            await sched.acquire("g", retry=True)
        except Deferred as exc:
            return results, exc
        return results, None

    results, late = run_virtual(main())
    assert all(isinstance(r, Deferred) for r in results)
    assert isinstance(late, Deferred)
    assert late.group == "g"
    assert late.wait == pytest.approx(3600.0, abs=1.0)


def test_in_flight_cap_and_one_wake_up_per_completion() -> None:
    async def main() -> None:
        sched = make_scheduler({"g": GroupPolicy(Limit(100_000, 1.0), in_flight=3)})
        held: list[Permit] = []
        outstanding = 0
        most = 0

        async def worker() -> None:
            nonlocal outstanding, most
            permit = await sched.acquire("g")
            outstanding += 1
            most = max(most, outstanding)
            held.append(permit)

        tasks = [asyncio.ensure_future(worker()) for _ in range(1000)]
        await asyncio.sleep(0.01)
        assert len(held) == 3
        assert sched.snapshot()["g"].waiting == 997
        for done in range(997):
            permit = held.pop(0)
            outstanding -= 1
            sched.complete(permit, OK)
            await asyncio.sleep(0.001)
            # exactly one waiter was admitted for the one slot that came free
            assert sched.snapshot()["g"].waiting == 996 - done
        await asyncio.gather(*tasks)
        assert most == 3

    run_virtual(main())


def test_retries_go_before_fresh_sends() -> None:
    async def main() -> list[bool]:
        sched = make_scheduler({"g": GroupPolicy(Limit(100_000, 1.0), in_flight=1)})
        first = await sched.acquire("g")
        order: list[bool] = []

        async def one(retry: bool) -> None:
            permit = await sched.acquire("g", retry=retry)
            order.append(permit.retry)
            sched.complete(permit, OK)

        tasks = [asyncio.ensure_future(one(i % 2 == 1)) for i in range(6)]
        await asyncio.sleep(0.01)
        sched.complete(first, OK)
        await asyncio.gather(*tasks)
        return order

    assert run_virtual(main()) == [True, True, True, False, False, False]


def test_cancel_permit_returns_capacity_and_double_complete_is_refused() -> None:
    async def main() -> None:
        sched = make_scheduler({"g": GroupPolicy(Limit(2, 10.0), in_flight=5)})
        loop = asyncio.get_running_loop()
        a = await sched.acquire("g")
        b = await sched.acquire("g")
        sched.cancel(b)  # never sent
        c = await sched.acquire("g")
        assert c.sent_at - a.sent_at < 10.0  # b's slot came back
        sched.complete(a, OK)
        with pytest.raises(RuntimeError):
            sched.complete(a, OK)
        sched.complete(c, OK)
        d = await sched.acquire("g")  # the window is full: waits for a to age out
        assert d.sent_at >= a.sent_at + 10.0
        assert loop.time() == d.sent_at
        sched.complete(d, OK)
        snap = sched.snapshot()["g"]
        assert (snap.sent, snap.ok, snap.in_flight) == (3, 3, 0)

    run_virtual(main())


@settings(max_examples=examples(30), deadline=None)
@given(
    limit=st.integers(1, 20),
    window=st.sampled_from([1.0, 5.0, 60.0]),
    tasks=st.integers(1, 60),
    cancels=st.lists(st.tuples(st.integers(0, 59), st.floats(0.0, 1.0), st.booleans())),
    hold=st.floats(0.0, 0.5),
    seed=st.integers(0, 100),
)
def test_property_cancelling_waiters_never_loses_or_adds_capacity(
    limit: int,
    window: float,
    tasks: int,
    cancels: list[tuple[int, float, bool]],
    hold: float,
    seed: int,
) -> None:
    step = spacing(limit, window)
    # until 8 round trips are known the margin is the longest one seen (``hold`` here)
    step = max(step, (window + min(0.1 * window, hold)) / limit)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sched = make_scheduler({"g": GroupPolicy(Limit(limit, window), in_flight=1000)}, seed=seed)
        used: list[float] = []

        async def one(i: int) -> None:
            permit = await sched.acquire("g", retry=i < 5)  # the budget covers five retries
            used.append(permit.sent_at)
            kind = FeedbackKind.NO_RESPONSE  # cancelled while "in flight"
            try:
                await asyncio.sleep(hold)
                kind = FeedbackKind.OK
            finally:
                sched.complete(permit, Feedback(kind, {"X-RateLimit-Limit": str(limit)}))

        running = [asyncio.ensure_future(one(i)) for i in range(tasks)]
        horizon = tasks * step
        for index, when, on_a_slot in cancels:
            if index < tasks:
                # on a slot: exactly when a grant is due, to race the admission itself
                at = round(when * tasks) * step if on_a_slot else when * horizon
                loop.call_at(at, running[index].cancel)
        await asyncio.gather(*running, return_exceptions=True)
        survivors = len(used)  # tasks that got a permit (once each: `one` acquires once)
        used.sort()
        # never adds: at most `limit` used sends in any window + margin
        for i in range(limit, len(used)):
            assert used[i] - used[i - limit] >= window + margin_for(window) - 1e-9
        # never loses: the survivors were served as fast as if the others never existed
        if used:
            assert used[-1] <= (survivors - 1) * step + 1e-6
        snap = sched.snapshot()["g"]
        assert snap.in_flight == 0
        assert snap.sent == survivors
        assert snap.ok + snap.no_response == survivors
        assert snap.waiting == 0

    run_virtual(main())


def test_backoff_is_capped_full_jitter_and_seeded() -> None:
    sched = Scheduler(
        {"g": GroupPolicy(Limit(10))}, rng=random.Random(4), backoff_base=0.5, backoff_cap=8.0
    )
    delays = [sched.backoff("g", attempt) for attempt in range(1, 40)]
    assert all(0.0 <= d <= min(8.0, 0.5 * 2 ** (a - 1)) for a, d in enumerate(delays, 1))
    assert max(delays) > 4.0  # jitter spreads over the whole range
    assert sched.max_attempts == 6
    with pytest.raises(KeyError, match="unknown endpoint group"):
        sched.backoff("nope", 1)


def test_retry_budget_api_and_current_rate() -> None:
    async def main() -> None:
        sched = make_scheduler({"g": GroupPolicy(Limit(600, 60.0), ceiling=5.0)})
        loop = asyncio.get_running_loop()
        assert sched.current_rate("g") <= 5.0
        spent = 0
        while sched.retry_allowed("g"):
            permit = await sched.acquire("g", retry=True)
            sched.complete(permit, Feedback(FeedbackKind.ERROR))
            spent += 1
        # the bucket holds max(10, 10 % of 600) and refills at 1/s meanwhile
        assert 60 <= spent <= 60 + loop.time() + 1
        start = loop.time()
        permit = await sched.acquire("g", retry=True)
        assert 0.0 < loop.time() - start <= 1.0 + 1e-6  # a token refills within 1 s
        sched.complete(permit, OK)
        snap = sched.snapshot()["g"]
        assert (snap.retries, snap.errors, snap.window) == (spent + 1, spent, 60.0)
        assert snap.mode == "adaptive"  # no rate headers seen yet
        # discovery probes only up to about twice what the ceiling lets through
        assert snap.limit <= 2 * 5.0 * 60.0 + 1
        assert snap.rate <= 5.0
        assert math.isclose(snap.rate, sched.current_rate("g"))

    run_virtual(main())


def test_waiter_cancelled_in_the_tick_its_permit_was_granted_hands_it_back() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sched = make_scheduler({"g": GroupPolicy(Limit(5, 1.0), in_flight=10)})
        first = await sched.acquire("g")
        loser = asyncio.ensure_future(sched.acquire("g"))
        winner = asyncio.ensure_future(sched.acquire("g"))
        await asyncio.sleep(0)
        due = sched._groups["g"].timer_at  # when the scheduler will admit `loser`
        loop.call_at(due, loser.cancel)  # same tick, right after the admission
        with pytest.raises(asyncio.CancelledError):
            await loser
        permit = await winner
        assert permit.sent_at == pytest.approx(due)  # the slot went to the next waiter at once
        snap = sched.snapshot()["g"]
        assert (snap.sent, snap.in_flight) == (2, 2)
        assert sched._groups["g"].bucket.stats.returned == 1
        sched.complete(first, OK)
        sched.complete(permit, OK)

    run_virtual(main())
