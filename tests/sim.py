"""A discrete-event simulator of a fixed-window provider, driving the real ``Scheduler``.

Three pieces, usable on their own:

* ``VirtualClockLoop`` -- an asyncio event loop whose clock jumps straight to the next timer
  whenever nothing is ready, so ten simulated minutes of ``asyncio.sleep`` and scheduler timers run
  in a fraction of a second (the idea of trio's autojump ``MockClock``). No real I/O may be used.
* ``FixedWindowServer`` -- a pure model of a provider counting requests in fixed windows of
  ``window`` seconds starting at ``phase``: 429 beyond ``limit``, rate headers in several dialects,
  Retry-After in both forms, quota already spent by someone else, and scheduled storms.
* ``ProfileServer`` -- any of the sandbox's limiter models (``bulksend.sandbox.limiters``: nginx
  ``limit_req``, the ``limits`` library's fixed and moving windows with Flask-Limiter's headers,
  GitHub's, the IETF draft's, 429s with no headers) with the same ledger.
* ``simulate(...)`` -- an engine stand-in: ``workers`` tasks each send one item after another
  through ``Scheduler.acquire``/``complete`` with random one-way delays, retrying per the engine
  contract (THROTTLED: re-acquire with ``retry=True``; ERROR: sleep ``backoff`` first; at most
  ``max_attempts`` attempts), and a ledger of every arrival at the server.

    result = run_virtual(simulate(sched, {"g": server}, duration=600.0))
    assert result.servers["g"].max_arrivals_per_window() <= 600
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol, TypeVar

from bulksend.errors import Deferred
from bulksend.ratelimit.headers import throttle_evidence
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, Scheduler
from bulksend.sandbox.limiters import Limiter

T = TypeVar("T")

#: Unix time at virtual time 0 (for HTTP-dates and epoch resets)
WALL0 = 1_800_000_000.0


class _JumpingSelector(selectors.BaseSelector):
    """Delegates to a real selector but, instead of sleeping, advances the loop's virtual time."""

    def __init__(self, loop: VirtualClockLoop, inner: selectors.BaseSelector) -> None:
        self._loop = loop
        self._inner = inner

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # nothing scheduled: only another thread could wake us
            ready = self._inner.select(2.0)
            if not ready:
                raise RuntimeError("virtual clock deadlock: nothing is scheduled or ready")
            return ready
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: idle periods take no real time at all."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        super().__init__(_JumpingSelector(self, selectors.DefaultSelector()))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)


def run_virtual(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh ``VirtualClockLoop`` and close it."""
    loop = VirtualClockLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Storm:
    """Every request arriving in ``[start, end)`` gets ``status`` (429 or 503)."""

    start: float
    end: float
    status: int = 429
    retry_after: float | None = None  # seconds, sent as delay-seconds
    #: the answers carry the window's rate headers (quota remaining): another limit refused,
    #: as GitHub's secondary limits or a provider-wide storm do
    headers: bool = False


@dataclass(frozen=True, slots=True)
class Arrival:
    time: float
    status: int
    window: int


class _Ledger(Protocol):
    """What the ledger queries read: both servers' ``arrivals`` and ``window``."""

    arrivals: list[Arrival]
    window: float


@dataclass(slots=True)
class FixedWindowServer:
    """A provider counting requests in fixed windows ``[phase + k*window, phase + (k+1)*window)``.

    ``headers``: ``"x"`` (X-RateLimit-Limit/-Remaining, as MaxTraffic), ``"x-reset"`` (plus
    X-RateLimit-Reset as seconds-until, rounded up), ``"x-epoch"`` (X-RateLimit-Reset as an epoch),
    ``"remaining"`` (only X-RateLimit-Remaining, as NotifyVisitors), ``"ietf"`` (RateLimit-Policy
    and RateLimit) or ``"none"``. ``retry_after`` on window 429s: ``None``, ``"seconds"`` or
    ``"date"``. ``prior`` requests are already counted in the window holding time 0. Rejected
    requests do not count against the window. Header names are sent in mixed case on purpose.
    """

    limit: int
    window: float = 60.0
    phase: float = 0.0
    headers: str = "x"
    retry_after: str | None = None
    prior: int = 0
    storms: tuple[Storm, ...] = ()
    wall0: float = WALL0  # the server's clock at virtual time 0 (skewed when != WALL0)
    dated: bool = False  # send a Date header
    counts: Counter[int] = field(default_factory=Counter)
    arrivals: list[Arrival] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.prior:
            self.counts[self._window_of(0.0)] += self.prior

    def _window_of(self, t: float) -> int:
        return math.floor((t - self.phase) / self.window)

    def handle(self, t: float) -> tuple[int, dict[str, str]]:
        """The status and headers for a request arriving at virtual time ``t``."""
        k = self._window_of(t)
        end = self.phase + (k + 1) * self.window
        for storm in self.storms:
            if storm.start <= t < storm.end:
                hdrs = {}
                if storm.headers:
                    hdrs = self._rate_headers(max(0, self.limit - self.counts[k]), t, end)
                if storm.retry_after is not None:
                    hdrs["Retry-After"] = str(math.ceil(storm.retry_after))
                self.arrivals.append(Arrival(t, storm.status, k))
                return storm.status, hdrs
        ok = self.counts[k] < self.limit
        if ok:
            self.counts[k] += 1
        status = 200 if ok else 429
        self.arrivals.append(Arrival(t, status, k))
        remaining = max(0, self.limit - self.counts[k])
        hdrs = self._rate_headers(remaining, t, end)
        if self.dated:
            hdrs["Date"] = formatdate(self.wall0 + t, usegmt=True)
        if not ok and self.retry_after is not None:
            wait = end - t
            if self.retry_after == "date":
                hdrs["Retry-After"] = formatdate(self.wall0 + end + 1.0, usegmt=True)
            else:
                hdrs["Retry-After"] = str(max(1, math.ceil(wait)))
        return status, hdrs

    def _rate_headers(self, remaining: int, t: float, end: float) -> dict[str, str]:
        style, reset = self.headers, end - t
        if style == "none":
            return {}
        if style == "remaining":
            return {"X-RateLimit-Remaining": str(remaining)}
        if style == "ietf":
            return {
                "RateLimit-Policy": f'"w";q={self.limit};w={self.window:g}',
                "RateLimit": f'"w";r={remaining};t={math.ceil(reset)}',
            }
        hdrs = {"X-Ratelimit-Limit": str(self.limit), "x-ratelimit-remaining": str(remaining)}
        if style == "x-reset":
            hdrs["X-RateLimit-Reset"] = str(math.ceil(reset))
        elif style == "x-epoch":
            hdrs["X-RateLimit-Reset"] = str(math.ceil(self.wall0 + end))
        return hdrs

    # ---- ledger queries ------------------------------------------------------------------------

    def accepted(self: _Ledger, start: float = -math.inf, end: float = math.inf) -> int:
        return sum(1 for a in self.arrivals if a.status == 200 and start <= a.time < end)

    def rejected(self: _Ledger, start: float = -math.inf, end: float = math.inf) -> int:
        return sum(1 for a in self.arrivals if a.status != 200 and start <= a.time < end)

    def arrivals_per_window(self: _Ledger) -> Counter[int]:
        """Requests that reached each of the server's windows (accepted or not)."""
        return Counter(a.window for a in self.arrivals)

    def max_arrivals_in_any_window(self: _Ledger, start: float = -math.inf) -> int:
        """Most arrivals in any ``window``-long interval: the worst case over every phase."""
        times = [a.time for a in self.arrivals if a.time >= start]
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= self.window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


@dataclass(slots=True)
class ProfileServer:
    """A sandbox limiter model (``bulksend.sandbox.limiters``) with the same ledger as
    ``FixedWindowServer``. ``window`` only numbers the arrivals' windows (``Arrival.window``)
    for the per-window queries; ``rate`` is the limiter's true rate (requests per second)."""

    limiter: Limiter
    window: float
    rate: float
    wall0: float = WALL0
    arrivals: list[Arrival] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return round(self.rate * self.window)

    def handle(self, t: float) -> tuple[int, dict[str, str]]:
        decision = self.limiter.hit(t, self.wall0 + t)
        status = 200 if decision.allowed else decision.status
        self.arrivals.append(Arrival(t, status, math.floor(t / self.window)))
        return status, dict(decision.headers)

    accepted = FixedWindowServer.accepted
    rejected = FixedWindowServer.rejected
    arrivals_per_window = FixedWindowServer.arrivals_per_window
    max_arrivals_in_any_window = FixedWindowServer.max_arrivals_in_any_window

    def utilisation(self, start: float, end: float) -> float:
        """Accepted requests in ``[start, end)`` as a share of the true rate."""
        return self.accepted(start, end) / (self.rate * (end - start))


Server = FixedWindowServer | ProfileServer


def feedback_kind(status: int, headers: Mapping[str, str]) -> FeedbackKind:
    """What the engine tells the scheduler for a status (see ``bulksend.providers.status``)."""
    if status < 400:
        return FeedbackKind.OK
    if status == 429 or (status == 403 and throttle_evidence(headers, wall_now=WALL0)):
        return FeedbackKind.THROTTLED
    if status == 503 and "Retry-After" in headers:
        return FeedbackKind.THROTTLED
    return FeedbackKind.ERROR


# ------------------------------------------------------------------------------------------------


Latency = Callable[[random.Random], float]


def uniform_latency(lo: float, hi: float) -> Latency:
    """One-way delays drawn uniformly from ``[lo, hi]`` seconds."""
    return lambda rng: rng.uniform(lo, hi)


@dataclass(slots=True)
class Attempt:
    group: str
    item: int
    attempt: int
    sent_at: float
    status: int


@dataclass(slots=True)
class SimResult:
    servers: Mapping[str, Server]
    attempts: list[Attempt] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    end: float = 0.0

    def attempts_per_item(self) -> Counter[tuple[str, int]]:
        return Counter((a.group, a.item) for a in self.attempts)

    def retries(self, group: str, start: float = -math.inf, end: float = math.inf) -> list[float]:
        return [
            a.sent_at
            for a in self.attempts
            if a.group == group and a.attempt > 1 and start <= a.sent_at < end
        ]


async def simulate(
    sched: Scheduler,
    servers: Mapping[str, Server],
    *,
    duration: float,
    workers: int = 32,
    latency: Latency | None = None,
    seed: int = 0,
    max_attempts: int | None = None,
) -> SimResult:
    """Send items to every group for ``duration`` virtual seconds with ``workers`` tasks per group.

    Workers stop taking new items at ``duration``; whatever is still waiting or in flight is then
    cancelled (through the scheduler's cancellation path). Returns the ledger.
    """
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    delay = latency or uniform_latency(0.02, 0.06)
    attempts_cap = max_attempts or sched.max_attempts
    start = loop.time()
    end = start + duration
    result = SimResult(servers)
    next_item = Counter[str]()

    async def send_one(group: str, item: int) -> None:
        server = servers[group]
        attempt = 0
        while True:
            attempt += 1
            try:
                permit = await sched.acquire(group, retry=attempt > 1)
            except Deferred:
                result.deferred += 1
                return
            await asyncio.sleep(delay(rng))
            status, headers = server.handle(loop.time())
            result.attempts.append(Attempt(group, item, attempt, permit.sent_at, status))
            await asyncio.sleep(delay(rng))
            kind = feedback_kind(status, headers)
            sched.complete(permit, Feedback(kind, headers, status))
            if kind is FeedbackKind.OK:
                result.delivered += 1
                return
            if attempt >= attempts_cap:
                result.failed += 1
                return
            if kind is FeedbackKind.ERROR:
                await asyncio.sleep(sched.backoff(group, attempt))

    async def worker(group: str) -> None:
        while loop.time() < end:
            next_item[group] += 1
            await send_one(group, next_item[group])

    tasks = [asyncio.create_task(worker(g)) for g in servers for _ in range(workers)]
    await asyncio.sleep(duration)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.end = loop.time()
    return result


def make_scheduler(
    groups: Mapping[str, Any],
    *,
    seed: int = 0,
    **kwargs: Any,
) -> Scheduler:
    """A scheduler on the running loop's clock with a seeded rng and the simulator's wall clock."""
    return Scheduler(
        groups,
        rng=random.Random(seed),
        wall_clock=lambda: WALL0 + asyncio.get_running_loop().time(),
        **kwargs,
    )
