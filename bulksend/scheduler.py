"""Admission control per endpoint group: rate buckets, in-flight caps and retry pacing.

INTERFACE (used by the engine; keep it stable):

    sched = Scheduler({"notifications": GroupPolicy(limit=Limit(600, 60), in_flight=16)})
    permit = await sched.acquire("notifications", retry=False)   # waits for quota + a slot
    ...send...
    sched.complete(permit, Feedback(kind=FeedbackKind.OK, headers=resp.headers))
    delay = sched.backoff(permit.group, attempt)                  # full-jitter delay for 5xx
    sched.snapshot()                                              # per-group figures

``acquire`` raises ``Deferred`` when the provider asked for a wait longer than ``max_wait``.
All timing reads ``clock()`` (the loop's monotonic time by default) so tests drive a fake clock.

This first version paces with a sliding-window log (never more than ``limit`` sends in any
``window + margin`` seconds) and adopts X-RateLimit-Remaining and Retry-After.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bulksend.providers.base import Limit


class FeedbackKind(enum.Enum):
    OK = "ok"  # any response that was not a throttle or a server error
    THROTTLED = "throttled"  # 429 (or 503 with Retry-After)
    ERROR = "error"  # 5xx
    NO_RESPONSE = "no_response"  # timeout / connection error


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


@dataclass(slots=True)
class GroupStats:
    sent: int = 0
    ok: int = 0
    throttled: int = 0
    errors: int = 0
    retries: int = 0
    limit: int = 0
    window: float = 0.0


@dataclass(slots=True)
class _Group:
    policy: GroupPolicy
    limit: int
    window: float
    sends: deque[float] = field(default_factory=deque)
    in_flight: int = 0
    paused_until: float = 0.0
    remaining: int | None = None
    stats: GroupStats = field(default_factory=GroupStats)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduler:
    def __init__(
        self,
        groups: Mapping[str, GroupPolicy],
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        margin: float = 0.05,
        max_wait: float = 600.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self._clock = clock or time.monotonic
        self._rng = rng or random.Random()
        self._margin = margin
        self._max_wait = max_wait
        self._base = backoff_base
        self._cap = backoff_cap
        self._groups: dict[str, _Group] = {}
        for name, policy in groups.items():
            limit, window = policy.limit.requests, policy.limit.window
            if policy.ceiling is not None and policy.ceiling * window < limit:
                limit = max(1, int(policy.ceiling * window))
            self._groups[name] = _Group(policy, limit, window)

    def _delay(self, g: _Group, now: float) -> float:
        if g.in_flight >= g.policy.in_flight:
            return -1.0  # wait for a completion
        wait = max(0.0, g.paused_until - now)
        while g.sends and g.sends[0] <= now - g.window - self._margin:
            g.sends.popleft()
        if len(g.sends) >= g.limit:
            wait = max(wait, g.sends[-g.limit] + g.window + self._margin - now)
        if g.remaining is not None and g.remaining <= 0 and g.sends:
            wait = max(wait, g.sends[0] + g.window + self._margin - now)
        return wait

    async def acquire(self, group: str, *, retry: bool = False) -> Permit:
        g = self._groups[group]
        while True:
            now = self._clock()
            delay = self._delay(g, now)
            if delay == 0.0:
                break
            if delay > self._max_wait:
                raise Deferred(group, delay)
            g.wakeup.clear()
            try:
                if delay < 0:
                    await g.wakeup.wait()
                else:
                    await asyncio.wait_for(g.wakeup.wait(), delay)
            except TimeoutError:
                pass
        g.sends.append(now)
        g.in_flight += 1
        if g.remaining is not None:
            g.remaining -= 1
        g.stats.sent += 1
        if retry:
            g.stats.retries += 1
        return Permit(group, now, retry)

    def complete(self, permit: Permit, feedback: Feedback) -> None:
        g = self._groups[permit.group]
        g.in_flight -= 1
        now = self._clock()
        headers = feedback.headers or {}
        if feedback.kind is FeedbackKind.OK:
            g.stats.ok += 1
        elif feedback.kind is FeedbackKind.THROTTLED:
            g.stats.throttled += 1
            g.paused_until = max(g.paused_until, now + self._retry_after(headers, g))
        else:
            g.stats.errors += 1
        limit = _int(headers.get("X-RateLimit-Limit"))
        if limit is not None and limit > 0:
            ceiling = g.policy.ceiling
            g.limit = min(limit, int(ceiling * g.window)) if ceiling else limit
        remaining = _int(headers.get("X-RateLimit-Remaining"))
        if remaining is not None:
            in_flight_after = sum(1 for t in g.sends if t > permit.sent_at)
            g.remaining = remaining - in_flight_after
        g.wakeup.set()

    def _retry_after(self, headers: Mapping[str, str], g: _Group) -> float:
        value = _float(headers.get("Retry-After"))
        if value is not None:
            return min(max(0.0, value), self._max_wait * 2)
        return g.window / max(1, g.limit)

    def backoff(self, group: str, attempt: int) -> float:
        """Full-jitter exponential delay before retry number ``attempt`` (1-based)."""
        return self._rng.uniform(0.0, min(self._cap, self._base * 2 ** max(0, attempt - 1)))

    def snapshot(self) -> dict[str, GroupStats]:
        out = {}
        for name, g in self._groups.items():
            g.stats.limit, g.stats.window = g.limit, g.window
            out[name] = g.stats
        return out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
