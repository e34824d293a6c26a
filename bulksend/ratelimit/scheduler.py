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
``paused_for``, ``waiting``, ``in_flight``, ``remaining``.

How the waiting works: each group keeps two FIFO queues of futures (retries first, then fresh
sends) and at most one timer. ``complete``, ``cancel``, the timer and ``acquire`` "pump" the group:
they admit waiters while the pure ``Bucket`` says a send may go, resolving each future with its
permit (so capacity is charged at admission, never twice), and arm the one timer for the next
admission time. No waiter wakes up unless it is admitted, so 10,000 waiting tasks cost nothing per
completion. A waiter cancelled while queued is skipped; one cancelled after its permit was granted
hands it back, so cancellation never loses or adds capacity.

Quotas shared by groups: when the answers of two or more groups name the same partition (GitHub's
``x-ratelimit-resource``, an IETF ``pk``), those groups draw on one quota (GitHub's "core" serves
every REST endpoint): from then on each of their sends also passes a bucket of the partition's own,
which every one of their answers feeds, so the per-key limit holds beside each group's own.

The pacing rules (quotas, the sliding-window log, header adoption, window inference, rate
discovery, the retry budget) are documented in the modules beside this one
(``bucket``, ``window``, ``discovery`` and ``backoff``). Each time a group's believed limit or
window changes, an info event ``rate_limit_changed`` says from what, to what, and on which
evidence.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bulksend.errors import Deferred
from bulksend.output.logs import get_logger
from bulksend.providers.base import Limit
from bulksend.ratelimit.backoff import RetryBudget, full_jitter
from bulksend.ratelimit.bucket import BASE_MARGIN, Bucket, FeedbackKind

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
    #: the HTTP status (a 503 without Retry-After is also a sign to slow down: nginx's
    #: ``limit_req`` refuses with 503 by default)
    status: int | None = None


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    #: the provider's documented limit: a starting guess the headers and 429s replace
    limit: Limit
    in_flight: int = 16
    #: the limit the user stated (``--limit``): a hard cap, lowered by headers, never raised
    stated: Limit | None = None
    #: the user's own ceiling (requests per second), honoured when lower than the provider's
    ceiling: float | None = None
    #: False when the provider sends no rate-limit headers: adapt the rate from 429s
    headers_expected: bool = True


@dataclass(slots=True)
class Permit:
    group: str
    sent_at: float
    retry: bool = False
    seq: int = 0
    cost: float = 0.0
    done: bool = False
    #: the send's place in the bucket of a quota the group shares with others (0: none)
    shared_seq: int = 0
    shared_cost: float = 0.0


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
    evidence: str = ""  # what the limit and window rest on
    paused_for: float = 0.0  # seconds left of a provider-requested pause
    waiting: int = 0
    in_flight: int = 0
    #: requests the group believes it may still send in the current window (``Bucket.remaining``)
    remaining: int = 0


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
    changes: int = 0  # the bucket's change count already logged
    partition: str = ""  # the quota partition its answers named
    shared: _Group | None = None  # the bucket of a quota shared with other groups
    members: list[_Group] = field(default_factory=list)  # (of a shared one) who draws on it


class Scheduler:
    #: pace groups whose answers name one quota partition together (see the module docstring)
    share_partitions = True

    def __init__(
        self,
        groups: Mapping[str, GroupPolicy],
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        margin: float = BASE_MARGIN,
        max_wait: float = 600.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 30.0,
        max_attempts: int = 6,
        burst: float = 0.0,
        retry_floor: float = 1.0,
        retry_ratio: float = 1.0,
        wall_clock: Callable[[], float] | None = None,
        infer_windows: bool = True,
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
        self._partitions: dict[str, list[_Group]] = {}
        self._shared: dict[str, _Group] = {}
        self._margin = margin
        self._log = get_logger()
        for name, policy in groups.items():
            limit = policy.limit
            budget = RetryBudget(  # numbers: see bulksend.ratelimit.backoff
                capacity=max(10.0, 0.1 * limit.requests),
                floor=retry_floor,
                earn=retry_ratio,
                horizon=min(max(limit.window, 1.0), 10.0),
            )
            stated = policy.stated
            bucket = Bucket(
                configured=limit.requests,
                window=limit.window,
                stated=None if stated is None else (stated.requests, stated.window),
                max_in_flight=policy.in_flight,
                ceiling=policy.ceiling,
                adaptive_only=not policy.headers_expected,
                base_margin=margin,
                burst=burst,
                budget=budget,
                infer_window=infer_windows,
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
            if g.shared is not None:
                wait = max(wait, g.shared.bucket.wait_time(now))
            if wait <= _EPS:
                return self._grant(g, now, retry)
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
        now, wall = self._now(), self._wall()
        self._feed(g, permit.seq, permit, feedback, now, wall)
        bucket = g.bucket
        if bucket.partition and not g.partition and self.share_partitions:
            self._join(g, bucket.partition)
        shared = g.shared
        if shared is not None and permit.shared_seq:
            self._feed(shared, permit.shared_seq, permit, feedback, now, wall)
            for member in shared.members:  # the shared quota may have freed for any of them
                if member is not g and (member.fresh or member.retries):
                    self._pump(member)
        if g.fresh or g.retries or g.timer is not None:  # else there is nobody to admit
            self._pump(g)

    def _feed(
        self, g: _Group, seq: int, permit: Permit, feedback: Feedback, now: float, wall: float
    ) -> None:
        """Hand one answer to a group's bucket (send ``seq`` of it) and log a change of belief."""
        g.bucket.feedback(
            now,
            seq=seq,
            sent_at=permit.sent_at,
            kind=feedback.kind,
            headers=feedback.headers,
            wall_now=wall,
            status=feedback.status,
        )
        if g.bucket.changes != g.changes:
            self._changed(g)

    def _join(self, g: _Group, partition: str) -> None:
        """``g``'s answers name a quota partition (the first one they name: a group stays in
        it): once two groups share one, both draw on a bucket of its own (a quota across
        endpoint groups, e.g. per key)."""
        g.partition = partition
        members = self._partitions.setdefault(partition, [])
        members.append(g)
        if len(members) < 2:
            return
        shared = self._shared.get(partition)
        if shared is None:
            belief = g.bucket.belief(self._now())
            first = members[0].bucket
            bucket = Bucket(
                configured=belief.limit,
                window=belief.window,
                stated=first.stated,  # (the user's caps hold for the shared quota too)
                ceiling=first.ceiling,
                max_in_flight=1 << 30,
                base_margin=self._margin,
            )
            shared = self._shared[partition] = _Group(f"{partition} (shared)", bucket)
            shared.partition = partition
            self._log.info(
                "rate_limit_shared", partition=partition, groups=[m.name for m in members]
            )
        shared.members = members
        for member in members:
            member.shared = shared
            member.bucket.delegate()

    def _changed(self, g: _Group) -> None:
        """Log what the group now believes about its quota (an info event per change)."""
        bucket = g.bucket
        g.changes = bucket.changes
        belief = bucket.belief(self._now())
        self._log.info(
            "rate_limit_changed",
            group=g.name,
            change=bucket.change_note,
            limit=belief.limit,
            window=round(belief.window, 3),
            evidence=belief.evidence,
            mode=belief.mode,
        )

    def cancel(self, permit: Permit) -> None:
        """Hand back a permit that was never used: its quota, slot and retry token return."""
        if permit.done:
            return
        permit.done = True
        g = self._group(permit.group)
        now = self._now()
        g.bucket.unsend(now, permit.seq, permit.sent_at, permit.cost, permit.retry)
        if g.shared is not None and permit.shared_seq:
            shared = g.shared.bucket
            shared.unsend(now, permit.shared_seq, permit.sent_at, permit.shared_cost, False)
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
            belief = b.belief(now)
            if g.shared is not None and b.delegated:  # the quota is paced by the shared bucket
                shared = g.shared.bucket.belief(now)
                evidence = f"{shared.evidence}; shared: {g.shared.name}"
                belief = replace(shared, evidence=evidence)
            out[name] = GroupStats(
                sent=s.sent,
                ok=s.ok,
                throttled=s.throttled,
                errors=s.errors,
                retries=s.retries,
                limit=belief.limit,
                window=belief.window,
                no_response=s.no_response,
                rate=b.rate(now),
                margin=b.margin(),
                mode=belief.mode,
                evidence=belief.evidence,
                paused_for=max(0.0, b.hold_until(now) - now),
                waiting=sum(not f.done() for f in g.fresh) + sum(not f.done() for f in g.retries),
                in_flight=b.in_flight,
                remaining=b.remaining(now, belief.limit, belief.window),
            )
        return out

    def beliefs(self) -> dict[str, dict[str, Any]]:
        """What each group's quota is believed to be, for the summary: ``limit`` per ``window``
        seconds, the ``evidence``, the ``mode`` and the ``throttled`` answers seen."""
        out = {
            name: {
                "limit": g.limit,
                "window": round(g.window, 3),
                "evidence": g.evidence,
                "mode": g.mode,
                "throttled": g.throttled,
            }
            for name, g in self.snapshot().items()
        }
        now = self._now()
        for shared in self._shared.values():
            belief = shared.bucket.belief(now)
            out[shared.name] = {
                "limit": belief.limit,
                "window": round(belief.window, 3),
                "evidence": belief.evidence,
                "mode": belief.mode,
                "groups": [m.name for m in shared.members],
            }
        return out

    # ---- internals -----------------------------------------------------------------------------

    def _grant(self, g: _Group, now: float, retry: bool) -> Permit:
        seq, cost = g.bucket.send(now, retry)
        permit = Permit(g.name, now, retry, seq, cost)
        if g.shared is not None:
            permit.shared_seq, permit.shared_cost = g.shared.bucket.send(now)
        return permit

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
            common = 0.0 if g.shared is None else g.shared.bucket.wait_time(now)
            wait_retry = max(bucket.wait_time(now, True), common) if retries else math.inf
            if wait_retry <= _EPS:
                retries.popleft().set_result(self._grant(g, now, True))
                continue
            wait_fresh = max(bucket.wait_time(now, False), common) if fresh else math.inf
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
