"""``SharedScheduler``: the in-process ``Scheduler`` plus a gate in Redis shared by every worker.

An admission passes two gates, in this order:

1. the worker's own ``Scheduler`` (pacing, in-flight cap, retry budget, the header feedback it
   sees itself) -- unchanged;
2. the shared gate (``lua.ADMIT``), one Lua call per send, holding the group's lock so that one
   task per worker and group talks to Redis at a time. Redis keeps a sliding-window log of the
   admissions of all workers (never more than ``L`` within any ``W + m`` seconds, on Redis's
   clock), a shared GCRA that spaces them ``(W + m) / L`` apart, a shared pause and the limit the
   provider announced. When it says "wait", the task sleeps that long and asks again.

Feedback: after every response the worker's own bucket decides whether the group must pause
(Retry-After, an exhausted Remaining, a 429) and whether the provider announced a limit; both go
to Redis (``lua.PAUSE``, written by a background task because ``complete`` is synchronous), so
one worker's 429 holds all of them.

The margin ``m`` covers the spread of delays between admission (in Redis) and arrival (at the
provider): at least ``min_margin`` (30 ms), more when the worker's round-trip times spread more,
plus the slowest recent Redis call; at most ``W / 10`` (and 1 s).

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
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bulksend.core.ratelimit import Bucket
from bulksend.distributed.gate import Admission, GateUnavailable, RedisGate, Verdict
from bulksend.distributed.keys import MAX_MARGIN, key_ttl_ms
from bulksend.logs import get_logger
from bulksend.scheduler import Deferred, Feedback, FeedbackKind, GroupPolicy, Permit, Scheduler

__all__ = ["LimiterUnavailable", "SharedScheduler", "SharedStats"]

#: the base margin of each worker's own buckets (the shared gate's is at least MIN_MARGIN)
LOCAL_MARGIN = 0.02
MIN_MARGIN = 0.03
#: the most a slow Redis round trip adds to the margin
RTT_CAP = 0.05
#: how long the first worker to reseed after a Redis restart holds everyone (at most a window)
RESTART_GRACE = 1.0


class LimiterUnavailable(Deferred):
    """Redis stayed out of reach longer than ``max_outage``: the send is deferred, not sent on
    an unshared limit."""

    def __init__(self, group: str, url: str, down_for: float) -> None:
        super().__init__(group, down_for)
        self.args = (f"{group}: limiter {url} unreachable for {down_for:.0f} s",)


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
        **kwargs: Any,
    ) -> None:
        super().__init__(groups, margin=margin, **kwargs)
        self.gate = gate
        self._min_margin = min_margin
        self._max_outage = max_outage
        self._reconnect = (reconnect_base, reconnect_cap)
        self._grace = grace
        self._rand = random.Random()
        self._worker = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._locks: dict[str, asyncio.Lock] = {}
        self._epochs: dict[str, str] = {}
        self._history: dict[str, deque[tuple[float, str, str]]] = {}
        self._rtts: deque[float] = deque(maxlen=64)
        self._stats = {name: SharedStats() for name in groups}
        self._pushed_hold: dict[str, float] = {}
        self._pushed_limit: dict[str, int] = {}
        self._pending: dict[str, tuple[float | None, int | None]] = {}
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
        if feedback.kind is not FeedbackKind.NO_RESPONSE:
            self._share(permit.group)

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
        extra = min(RTT_CAP, max(self._rtts, default=0.0))
        cap = max(self._min_margin, min(MAX_MARGIN, 0.1 * bucket.window))
        return min(cap, max(self._min_margin, bucket.margin() + extra))

    async def _admit(self, permit: Permit) -> None:
        name = permit.group
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        loop = asyncio.get_running_loop()
        stats = self._stats[name]
        async with lock:
            while True:
                bucket = self._group(name).bucket
                now = self._now()
                member = f"{self._worker}:{next(self._ids)}"
                try:
                    started = loop.time()
                    adm = await self.gate.admit(
                        name,
                        limit=bucket.limit(now),
                        window=bucket.window,
                        margin=self.margin_for(bucket),
                        member=member,
                        epoch=self._epochs.get(name, ""),
                        ttl_ms=key_ttl_ms(bucket.window),
                    )
                    self._rtts.append(loop.time() - started)
                    if adm.verdict is Verdict.EPOCH:
                        await self._new_epoch(name, adm, bucket.window)
                        continue
                except GateUnavailable as exc:
                    await self._redis_down(name, exc)
                    continue
                if adm.admitted:
                    self._remember(name, adm, member, bucket.window)
                    permit.sent_at = self._now()  # the round-trip times start here
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

    def _share(self, name: str) -> None:
        """Hand this worker's pause (and the announced limit) to every worker through Redis."""
        bucket = self._group(name).bucket
        now = self._now()
        hold = bucket.hold_until(now)
        pause: float | None = None
        if hold > now + 0.001 and hold > self._pushed_hold.get(name, -math.inf) + 0.001:
            pause = self._pushed_hold[name] = hold
        limit = bucket.header_limit
        if limit is not None and self._pushed_limit.get(name) != limit:
            self._pushed_limit[name] = limit
        else:
            limit = None
        if pause is None and limit is None:
            return
        old_pause, old_limit = self._pending.get(name, (None, None))
        if old_pause is not None and (pause is None or old_pause > pause):
            pause = old_pause
        self._pending[name] = (pause, limit if limit is not None else old_limit)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            name, (hold, limit) = self._pending.popitem()
            seconds = None if hold is None else hold - self._now()
            if seconds is not None and seconds <= 0:
                seconds = None
            if seconds is None and limit is None:
                continue
            window = self._group(name).bucket.window
            try:
                await self.gate.pause(name, seconds=seconds, limit=limit, ttl_ms=key_ttl_ms(window))
            except GateUnavailable:
                # write it again with the next response; admissions are waiting for Redis anyway
                self._pushed_hold.pop(name, None)
                self._pushed_limit.pop(name, None)
                return
            except Exception as exc:
                self._log.error("limiter_feedback_failed", group=name, error=repr(exc))
                return
            if seconds is not None:
                self._stats[name].pauses_shared += 1
