"""``SharedScheduler``: the in-process ``Scheduler`` plus a gate in Redis shared by every worker.

An admission passes two gates, in this order:

1. the worker's own ``Scheduler`` (pacing, in-flight cap, retry budget, the header feedback it
   sees itself) -- unchanged;
2. the shared gate (``lua.ADMIT``), one Lua call per send, holding the group's lock so that one
   task per worker and group talks to Redis at a time. Redis keeps a sliding-window log of the
   admissions of all workers (never more than ``L`` within any ``W + m`` seconds, on Redis's
   clock), a shared GCRA that spaces them ``(W + m) / L`` apart, a shared pause and the limit the
   provider announced. When it says "wait", the task sleeps that long and asks again.

Feedback: after every response the worker's own bucket decides whether the group must pause and
whether the provider announced a limit; both go to Redis (``lua.PAUSE``, written by a background
task because ``complete`` is synchronous). A Retry-After or a 429 seen by one worker holds all of
them. A pause for an exhausted ``X-RateLimit-Remaining`` is shared only when Redis finds that the
server counted more requests than the shared log admitted in the window before that request --
traffic the log does not know about, such as another client on the same key; otherwise the log
already keeps the next send out of the exhausted window and stopping everyone would only waste
quota. An announced limit lower than a worker's own tightens every worker.

The margin ``m`` covers the spread of delays between admission (in Redis) and arrival (at the
provider): at least ``min_margin`` (30 ms), more when the worker's round-trip times (measured
from the start of the admitting Redis call to the response) spread more; at most ``W / 10`` (and
1 s). The long-run rate is ``L / (W + m)``: 97 % of a 1 s window's quota, 99.95 % of a minute's.

Windows are not inferred from the answers here: each worker sees counts that include the other
workers' sends, which the inference (``bulksend.ratelimit.window``) would read as its own. Give the
workers the limit you know (``--limit``), else the documented one applies until a header
announces a window.

Redis lost mid-send: every admission waits (nothing is sent on an unshared limit), one task per
worker reconnects with exponential backoff and jitter, structured events ``limiter_unavailable``
and ``limiter_restored`` are logged, and sending resumes. When Redis comes back without its data
(a restart without persistence: the ``epoch`` changed), each worker writes its admissions of the
last window back and the first one to do so holds everyone for ``grace`` seconds so the others
can do the same. After ``max_outage`` seconds without Redis, waiting sends are deferred
(``LimiterUnavailable``, a ``Deferred``), so a journaled send ends resumable instead of hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bulksend.distributed.gate import Admission, RedisGate, Verdict
from bulksend.distributed.keys import MAX_MARGIN, key_ttl_ms
from bulksend.errors import Deferred, GateUnavailable, LimiterUnavailable
from bulksend.output.logs import get_logger
from bulksend.ratelimit.bucket import Bucket
from bulksend.ratelimit.headers import parse_headers
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, GroupPolicy, Permit, Scheduler

__all__ = ["LimiterUnavailable", "SharedScheduler", "SharedStats"]

#: the base margin of each worker's own buckets (the shared gate's is at least MIN_MARGIN)
LOCAL_MARGIN = 0.02
MIN_MARGIN = 0.03
#: overdue shared GCRA slots a late worker may still take (timers of several processes wake late)
SLACK = 0.02
#: how long the first worker to reseed after a Redis restart holds everyone (at most a window)
RESTART_GRACE = 1.0


@dataclass(slots=True)
class SharedStats:
    """What the shared gate did for one group in this worker."""

    admitted: int = 0
    denied: int = 0  # times Redis said "wait"
    waited: float = 0.0  # seconds spent waiting for the shared gate
    pauses_shared: int = 0  # pauses this worker wrote to Redis
    reseeds: int = 0  # times this worker wrote its history back after Redis lost it


class SharedScheduler(Scheduler):
    """A ``Scheduler`` whose admissions also pass a gate in Redis (see the module docstring).

    Build it with ``bulksend.distributed.shared_scheduler``; close it with ``aclose()``.
    """

    #: the gate in Redis paces each group for every worker; no local shared buckets here
    share_partitions = False

    def __init__(
        self,
        groups: Mapping[str, GroupPolicy],
        gate: RedisGate,
        *,
        margin: float = LOCAL_MARGIN,
        min_margin: float = MIN_MARGIN,
        max_outage: float = 600.0,
        reconnect_base: float = 0.05,
        reconnect_cap: float = 2.0,
        grace: float = RESTART_GRACE,
        slack: float = SLACK,
        **kwargs: Any,
    ) -> None:
        # each worker sees counts that include the others' sends: windows are not inferred here
        super().__init__(groups, margin=margin, infer_windows=False, **kwargs)
        self.gate = gate
        self._min_margin = min_margin
        self._max_outage = max_outage
        self._reconnect = (reconnect_base, reconnect_cap)
        self._grace = grace
        self._slack = slack
        self._rand = random.Random()
        self._worker = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._locks: dict[str, asyncio.Lock] = {}
        self._epochs: dict[str, str] = {}
        self._history: dict[str, deque[tuple[float, str, str]]] = {}
        self._stats = {name: SharedStats() for name in groups}
        self._pushed_hold: dict[str, float] = {}
        self._pushed_limit: dict[str, int] = {}
        self._pending: dict[str, list[_Push]] = {}
        self._admitted: dict[tuple[str, int], float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[bool] | None = None
        self._down_since: float | None = None
        self._gave_up = False
        self.outages = 0
        self.paused = 0.0  # seconds this worker spent waiting for Redis to come back
        self._log = get_logger(limiter=gate.url)

    # ---- the engine-facing API -----------------------------------------------------------------

    async def acquire(self, group: str, retry: bool = False) -> Permit:
        permit = await super().acquire(group, retry)
        try:
            await self._admit(permit)
        except BaseException:
            self.cancel(permit)
            raise
        return permit

    def complete(self, permit: Permit, feedback: Feedback) -> None:
        super().complete(permit, feedback)
        if feedback.kind is FeedbackKind.NO_RESPONSE:
            self._admitted.pop((permit.group, permit.seq), None)
        else:
            self._share(permit, feedback)

    def cancel(self, permit: Permit) -> None:
        super().cancel(permit)
        self._admitted.pop((permit.group, permit.seq), None)

    def shared_stats(self) -> dict[str, SharedStats]:
        """A copy of the shared gate's figures per group."""
        return {name: replace(s) for name, s in self._stats.items()}

    async def aclose(self) -> None:
        """Write the pending feedback (briefly), stop the background tasks, close Redis."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher], timeout=1.0)
        for task in (self._flusher, self._recovery):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
        await self.gate.aclose()

    async def __aenter__(self) -> SharedScheduler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- admission -----------------------------------------------------------------------------

    def margin_for(self, bucket: Bucket) -> float:
        """The shared gate's margin for a group (see the module docstring)."""
        cap = max(self._min_margin, min(MAX_MARGIN, 0.1 * bucket.window))
        return min(cap, max(self._min_margin, bucket.margin()))

    async def _admit(self, permit: Permit) -> None:
        name = permit.group
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        stats = self._stats[name]
        async with lock:
            while True:
                bucket = self._group(name).bucket
                now = self._now()
                member = f"{self._worker}:{next(self._ids)}"
                started_at = now
                try:
                    adm = await self.gate.admit(
                        name,
                        limit=bucket.limit(now),
                        window=bucket.window,
                        margin=self.margin_for(bucket),
                        member=member,
                        epoch=self._epochs.get(name, ""),
                        ttl_ms=key_ttl_ms(bucket.window),
                        slack=self._slack,
                    )
                    if adm.verdict is Verdict.EPOCH:
                        await self._new_epoch(name, adm, bucket.window)
                        continue
                except GateUnavailable as exc:
                    await self._redis_down(name, exc)
                    continue
                if adm.admitted:
                    self._remember(name, adm, member, bucket.window)
                    self._admitted[(name, permit.seq)] = adm.now
                    permit.sent_at = started_at  # round trips include the admission's
                    stats.admitted += 1
                    return
                stats.denied += 1
                if adm.wait > self._max_wait:
                    raise Deferred(name, adm.wait)
                stats.waited += adm.wait
                await asyncio.sleep(adm.wait)

    def _remember(self, name: str, adm: Admission, member: str, window: float) -> None:
        """Keep this worker's admissions of the last window, to write back after a restart."""
        history = self._history.get(name)
        if history is None:
            history = self._history[name] = deque()
        history.append((adm.now, adm.stamp, member))
        edge = adm.now - window - MAX_MARGIN
        while history and history[0][0] <= edge:
            history.popleft()

    async def _new_epoch(self, name: str, adm: Admission, window: float) -> None:
        """Redis has state this worker has not seen: at start, or after it lost its data."""
        known = self._epochs.get(name)
        history = self._history.get(name)
        edge = adm.now - window - MAX_MARGIN
        entries = [(stamp, member) for t, stamp, member in history or () if t > edge]
        if known:
            self._log.warning("limiter_state_lost", group=name, recent_admissions=len(entries))
        if entries:
            grace = min(self._grace, window + MAX_MARGIN)
            ttl = key_ttl_ms(window)
            if not await self.gate.reseed(
                name, epoch=adm.epoch, entries=entries, grace=grace, ttl_ms=ttl
            ):
                return  # the epoch changed again: ask again
            self._stats[name].reseeds += 1
            self._log.info("limiter_reseeded", group=name, admissions=len(entries))
        self._epochs[name] = adm.epoch

    # ---- Redis out of reach --------------------------------------------------------------------

    async def _redis_down(self, name: str, exc: GateUnavailable) -> None:
        loop = asyncio.get_running_loop()
        if self._gave_up:  # past max_outage: one quick look, else defer at once
            try:
                await self.gate.ping()
            except GateUnavailable:
                since = self._down_since if self._down_since is not None else loop.time()
                raise LimiterUnavailable(name, self.gate.url, loop.time() - since) from None
            self._restored(loop.time())
            return
        task = self._recovery
        if task is None or task.done():
            task = self._recovery = loop.create_task(self._recover(exc))
        if not await asyncio.shield(task):
            since = self._down_since if self._down_since is not None else loop.time()
            raise LimiterUnavailable(name, self.gate.url, loop.time() - since)

    async def _recover(self, exc: GateUnavailable) -> bool:
        loop = asyncio.get_running_loop()
        start = self._down_since = loop.time()
        self.outages += 1
        self._log.warning(
            "limiter_unavailable", error=str(exc), action="sending paused, reconnecting"
        )
        base, cap = self._reconnect
        for attempt in itertools.count():
            delay = min(cap, base * 2.0**attempt) * (0.5 + 0.5 * self._rand.random())
            if loop.time() + delay - start > self._max_outage:
                self._gave_up = True
                self._log.error(
                    "limiter_gave_up",
                    down_for=round(loop.time() - start, 3),
                    action="deferring sends until Redis is back",
                )
                return False
            await asyncio.sleep(delay)
            try:
                await self.gate.ping()
            except GateUnavailable:
                continue
            self._restored(loop.time(), attempts=attempt + 1)
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    def _restored(self, now: float, attempts: int = 1) -> None:
        since = self._down_since if self._down_since is not None else now
        self.paused += now - since
        self._down_since = None
        self._gave_up = False
        self._log.warning("limiter_restored", paused=round(now - since, 3), attempts=attempts)

    # ---- feedback ------------------------------------------------------------------------------

    def _share(self, permit: Permit, feedback: Feedback) -> None:
        """Hand this worker's pause (and the announced limit) to every worker through Redis.

        A Retry-After or a 429 pauses everyone. A pause the worker's bucket takes because
        Remaining ran out is shared only when Redis finds traffic its log does not explain
        (``lua.PAUSE``): the log already keeps our own sends out of an exhausted window.
        """
        name = permit.group
        admitted_at = self._admitted.pop((name, permit.seq), None)
        bucket = self._group(name).bucket
        now = self._now()
        hold = bucket.hold_until(now)
        limit = bucket.header_limit
        if limit is not None and self._pushed_limit.get(name) != limit:
            self._pushed_limit[name] = limit
        else:
            limit = None
        push = _Push(limit=limit)
        if hold > now + 0.001 and hold > self._pushed_hold.get(name, -math.inf) + 0.001:
            info = (
                parse_headers(feedback.headers, wall_now=time.time(), window=bucket.window)
                if feedback.headers
                else None
            )
            if feedback.kind is FeedbackKind.THROTTLED or (info and info.retry_after is not None):
                push.hold = self._pushed_hold[name] = hold
            elif info is not None and info.remaining is not None and admitted_at is not None:
                span = bucket.window + self.margin_for(bucket)
                push.hold = hold
                push.explain = (info.remaining, bucket.limit(now), admitted_at, span)
        if push.hold is None and push.limit is None:
            return
        self._pending.setdefault(name, []).append(push)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            name, pushes = self._pending.popitem()
            window = self._group(name).bucket.window
            for push in _coalesce(pushes):
                seconds = None if push.hold is None else push.hold - self._now()
                if seconds is not None and seconds <= 0:
                    seconds = None
                if seconds is None and push.limit is None:
                    continue
                try:
                    applied = await self.gate.pause(
                        name,
                        seconds=seconds,
                        limit=push.limit,
                        ttl_ms=key_ttl_ms(window),
                        unless_explained=push.explain if seconds is not None else None,
                    )
                except GateUnavailable:
                    # written again with a later response; admissions are waiting for Redis
                    self._pushed_hold.pop(name, None)
                    self._pushed_limit.pop(name, None)
                    return
                except Exception as exc:
                    self._log.error("limiter_feedback_failed", group=name, error=repr(exc))
                    return
                if seconds is not None and applied:
                    self._stats[name].pauses_shared += 1
                    if push.explain is not None:
                        self._log.info(
                            "limiter_foreign_traffic",
                            group=name,
                            remaining=push.explain[0],
                            paused=round(seconds, 3),
                        )


@dataclass(slots=True)
class _Push:
    """One piece of feedback for Redis: a pause (until ``hold``, loop time) and/or a limit."""

    hold: float | None = None
    limit: int | None = None
    explain: tuple[int, int, float, float] | None = None  # see RedisGate.pause


def _coalesce(pushes: list[_Push]) -> list[_Push]:
    """The longest unconditional pause, the latest conditional one, the latest limit."""
    hard = [p for p in pushes if p.hold is not None and p.explain is None]
    soft = [p for p in pushes if p.hold is not None and p.explain is not None]
    limits = [p.limit for p in pushes if p.limit is not None]
    out = []
    if hard:
        out.append(_Push(hold=max(p.hold for p in hard if p.hold is not None)))
    if soft:
        out.append(soft[-1])
    if limits:
        if out:
            out[0].limit = limits[-1]
        else:
            out.append(_Push(limit=limits[-1]))
    return out
