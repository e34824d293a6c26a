"""Admission control per endpoint group: rate buckets, in-flight caps and retry pacing.

INTERFACE (used by the engine; keep it stable):

    sched = Scheduler({"notifications": GroupPolicy(limit=Limit(600, 60), in_flight=16)})
    permit = await sched.acquire("notifications", retry=False)   # waits for quota + a slot
    ...send...
    sched.complete(permit, Feedback(kind=FeedbackKind.OK, headers=resp.headers))
    delay = sched.backoff(permit.group, attempt)                  # full-jitter delay for 5xx
    sched.snapshot()                                              # per-group figures

``acquire`` raises ``Deferred`` when the wait the group faces (a Retry-After, an exhausted quota
whose reset is far, a window longer than ``max_wait``) exceeds ``max_wait``. Every acquired permit
must be given back exactly once: ``complete(permit, feedback)`` after a send, or ``cancel(permit)``
when it was not used. After a THROTTLED response call ``acquire(group, retry=True)`` at once (the
group's pause, quota and retry budget pace it); after ERROR / NO_RESPONSE sleep
``backoff(group, attempt)`` first. At most ``max_attempts`` attempts per batch.

Additions beyond the interface: ``cancel(permit)``, ``retry_allowed(group)``,
``current_rate(group)``, ``GroupStats`` fields ``no_response``, ``rate``, ``margin``, ``mode``,
``paused_for``, ``waiting``, ``in_flight``.

How the waiting works: each group keeps two FIFO queues of futures (retries first, then fresh
sends) and at most one timer. ``complete``, ``cancel``, the timer and ``acquire`` "pump" the group:
they admit waiters while the pure ``Bucket`` says a send may go, resolving each future with its
permit (so capacity is charged at admission, never twice), and arm the one timer for the next
admission time. No waiter wakes up unless it is admitted, so 10,000 waiting tasks cost nothing per
completion. A waiter cancelled while queued is skipped; one cancelled after its permit was granted
hands it back, so cancellation never loses or adds capacity.

The pacing rules (sliding-window log, header adoption, adaptation, retry budget) are documented in
``bulksend.core.ratelimit`` and ``bulksend.core.backoff``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bulksend.core.backoff import RetryBudget, full_jitter
from bulksend.core.ratelimit import BASE_MARGIN, Bucket, FeedbackKind
from bulksend.providers.base import Limit

__all__ = [
    "Deferred",
    "Feedback",
    "FeedbackKind",
    "GroupPolicy",
    "GroupStats",
    "Permit",
    "Scheduler",
]


@dataclass(frozen=True, slots=True)
class Feedback:
    kind: FeedbackKind
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    limit: Limit
    in_flight: int = 16
    #: the user's own ceiling (requests per second), honoured when lower than the provider's
    ceiling: float | None = None
    #: False when the provider sends no rate-limit headers: adapt the rate from 429s
    headers_expected: bool = True


class Deferred(Exception):
    """The provider asked to wait longer than ``max_wait``: defer instead of blocking."""

    def __init__(self, group: str, wait: float) -> None:
        super().__init__(f"{group}: provider asked to wait {wait:.0f} s")
        self.group = group
        self.wait = wait


@dataclass(slots=True)
class Permit:
    group: str
    sent_at: float
    retry: bool = False
    seq: int = 0
    cost: float = 0.0
    done: bool = False


@dataclass(slots=True)
class GroupStats:
    sent: int = 0
    ok: int = 0
    throttled: int = 0
    errors: int = 0
    retries: int = 0
    limit: int = 0
    window: float = 0.0
    no_response: int = 0
    rate: float = 0.0  # requests per second admitted at most right now
    margin: float = 0.0  # seconds added to the window for latency jitter
    mode: str = ""  # "headers", "configured" or "adaptive"
    paused_for: float = 0.0  # seconds left of a provider-requested pause
    waiting: int = 0
    in_flight: int = 0


_Waiter = asyncio.Future[Permit]
#: waits this short count as "now" (float noise in window arithmetic)
_EPS = 1e-9
#: the shortest timer the scheduler arms (event loops wake at about 1 ms granularity anyway)
_TICK = 0.001


@dataclass(slots=True)
class _Group:
    name: str
    bucket: Bucket
    fresh: deque[_Waiter] = field(default_factory=deque)
    retries: deque[_Waiter] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None
    timer_at: float = math.inf


class Scheduler:
    def __init__(
        self,
        groups: Mapping[str, GroupPolicy],
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        margin: float = BASE_MARGIN,
        max_wait: float = 600.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_attempts: int = 6,
        burst: float = 0.0,
        retry_floor: float = 1.0,
        retry_ratio: float = 0.1,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self._last_now = 0.0
        self._wall = wall_clock or time.time
        self._rng = rng or random.Random()
        self._max_wait = max_wait
        self._base = backoff_base
        self._cap = backoff_cap
        self.max_attempts = max(1, max_attempts)
        self._groups: dict[str, _Group] = {}
        for name, policy in groups.items():
            limit = policy.limit
            budget = RetryBudget(
                capacity=max(10.0, retry_ratio * limit.requests),
                floor=retry_floor,
                earn=retry_ratio,
                horizon=min(max(limit.window, 1.0), 10.0),
            )
            bucket = Bucket(
                configured=limit.requests,
                window=limit.window,
                max_in_flight=policy.in_flight,
                ceiling=policy.ceiling,
                adaptive_only=not policy.headers_expected,
                base_margin=margin,
                burst=burst,
                budget=budget,
            )
            self._groups[name] = _Group(name, bucket)

    # ---- time ----------------------------------------------------------------------------------

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # e.g. snapshot() after the loop has stopped
            return self._last_now
        self._last_now = now
        return now

    def _group(self, name: str) -> _Group:
        try:
            return self._groups[name]
        except KeyError:
            known = ", ".join(sorted(self._groups))
            raise KeyError(f"unknown endpoint group {name!r} (known: {known})") from None

    # ---- the engine-facing API -----------------------------------------------------------------

    async def acquire(self, group: str, retry: bool = False) -> Permit:
        """Wait until a send to ``group`` may go; the returned permit is already counted."""
        g = self._groups.get(group) or self._group(group)
        now = self._now()
        queue = g.retries if retry else g.fresh
        if not g.retries and (retry or not g.fresh):  # nobody ahead: admit at once if it may go
            wait = g.bucket.wait_time(now, retry)
            if wait <= _EPS:
                seq, cost = g.bucket.send(now, retry)
                return Permit(group, now, retry, seq, cost)
            if wait != math.inf and wait > self._max_wait:
                raise Deferred(group, wait)
        fut: _Waiter = asyncio.get_running_loop().create_future()
        queue.append(fut)
        self._pump(g)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.cancel(fut.result())
            raise

    def complete(self, permit: Permit, feedback: Feedback) -> None:
        """Report what became of a permit's send (headers from the response, if any)."""
        if permit.done:
            raise RuntimeError("permit already completed or cancelled")
        permit.done = True
        g = self._groups.get(permit.group) or self._group(permit.group)
        g.bucket.feedback(
            self._now(),
            seq=permit.seq,
            sent_at=permit.sent_at,
            kind=feedback.kind,
            headers=feedback.headers,
            wall_now=self._wall(),
        )
        if g.fresh or g.retries or g.timer is not None:  # else there is nobody to admit
            self._pump(g)

    def cancel(self, permit: Permit) -> None:
        """Hand back a permit that was never used: its quota, slot and retry token return."""
        if permit.done:
            return
        permit.done = True
        g = self._group(permit.group)
        g.bucket.unsend(self._now(), permit.seq, permit.sent_at, permit.cost, permit.retry)
        self._pump(g)

    def backoff(self, group: str, attempt: int) -> float:
        """Full-jitter exponential delay before retry number ``attempt`` (1-based)."""
        self._group(group)
        return full_jitter(attempt, base=self._base, cap=self._cap, u=self._rng.random())

    def retry_allowed(self, group: str) -> bool:
        """Whether the group's retry budget holds a token right now (a retry would not wait)."""
        g = self._group(group)
        return g.bucket.budget.wait_time(self._now()) <= 0.0

    def current_rate(self, group: str) -> float:
        """Requests per second the group admits at most right now."""
        return self._group(group).bucket.rate(self._now())

    def snapshot(self) -> dict[str, GroupStats]:
        """A copy of every group's figures."""
        now = self._now()
        out = {}
        for name, g in self._groups.items():
            b, s = g.bucket, g.bucket.stats
            out[name] = GroupStats(
                sent=s.sent,
                ok=s.ok,
                throttled=s.throttled,
                errors=s.errors,
                retries=s.retries,
                limit=b.limit(now),
                window=b.window,
                no_response=s.no_response,
                rate=b.rate(now),
                margin=b.margin(),
                mode=b.mode,
                paused_for=max(0.0, b.hold_until(now) - now),
                waiting=sum(not f.done() for f in g.fresh) + sum(not f.done() for f in g.retries),
                in_flight=b.in_flight,
            )
        return out

    # ---- internals -----------------------------------------------------------------------------

    def _grant(self, g: _Group, now: float, retry: bool) -> Permit:
        seq, cost = g.bucket.send(now, retry)
        return Permit(g.name, now, retry, seq, cost)

    def _pump(self, g: _Group) -> None:
        now = self._now()
        bucket = g.bucket
        fresh, retries = g.fresh, g.retries
        while True:
            while retries and retries[0].done():
                retries.popleft()
            while fresh and fresh[0].done():
                fresh.popleft()
            if not (fresh or retries):
                self._disarm(g)
                return
            wait_retry = bucket.wait_time(now, True) if retries else math.inf
            if wait_retry <= _EPS:
                retries.popleft().set_result(self._grant(g, now, True))
                continue
            wait_fresh = bucket.wait_time(now, False) if fresh else math.inf
            if wait_fresh <= _EPS:
                fresh.popleft().set_result(self._grant(g, now, False))
                continue
            wait = min(wait_retry, wait_fresh)
            if wait == math.inf:  # in-flight cap: a completion will pump
                self._disarm(g)
                return
            if wait > self._max_wait:
                self._defer_all(g, wait)
                return
            # coalesce wake-ups: the bucket lets a late timer catch up on overdue slots
            self._arm(g, now + max(wait, _TICK))
            return

    def _defer_all(self, g: _Group, wait: float) -> None:
        self._disarm(g)
        for queue in (g.retries, g.fresh):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_exception(Deferred(g.name, wait))

    def _arm(self, g: _Group, when: float) -> None:
        if g.timer is not None:
            if g.timer_at <= when + _TICK:  # armed early enough: it fires and pumps again
                return
            g.timer.cancel()
        loop = asyncio.get_running_loop()
        if self._clock is None:
            g.timer = loop.call_at(when, self._fire, g)
        else:
            g.timer = loop.call_later(max(0.0, when - self._now()), self._fire, g)
        g.timer_at = when

    def _disarm(self, g: _Group) -> None:
        if g.timer is not None:
            g.timer.cancel()
            g.timer = None
            g.timer_at = math.inf

    def _fire(self, g: _Group) -> None:
        g.timer = None
        g.timer_at = math.inf
        self._pump(g)
