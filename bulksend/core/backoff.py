"""Pure retry timing: capped exponential full-jitter backoff and a retry budget.

Nothing here reads a clock or a random generator: callers pass ``now`` (monotonic seconds) and
``u`` (a uniform draw in ``[0, 1)``), so every decision can be replayed in a test.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter")::

    delay(attempt) = u * min(cap, base * 2 ** (attempt - 1))        attempt = 1, 2, ...

Retry budget (the idea of the AWS SDKs' retry quota, ``botocore/retries/quota.py``): every retry
spends one token; tokens come back from successes, so a storm of 429s or 5xx cannot multiply the
traffic. Income is ``max(floor, earn * success_rate)`` tokens per second, where ``success_rate``
is the rate of OK responses over the last ``horizon`` seconds: while nothing succeeds retries are
held to ``floor`` (1/s by default); while the endpoint works they may reach ``earn`` (10 %) of its
good rate. The bucket holds at most ``capacity`` tokens, so a short blip is retried at once and a
long storm is held to the income.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RetryBudget", "full_jitter"]


def full_jitter(attempt: int, *, base: float, cap: float, u: float) -> float:
    """Delay before retry number ``attempt`` (1-based): ``u * min(cap, base * 2**(attempt-1))``.

    ``u`` is a uniform draw in ``[0, 1)``; out-of-range draws are clamped. The exponent is clamped
    so huge attempt numbers neither overflow nor exceed ``cap``.
    """
    if not math.isfinite(u):
        u = 0.0
    u = min(max(u, 0.0), 1.0)
    base = max(0.0, base)
    cap = max(0.0, cap)
    exponent = min(max(0, attempt - 1), 62)
    return u * min(cap, base * float(2**exponent))


class RetryBudget:
    """Tokens that retries spend and successes earn back (pure: pass ``now`` in).

    ``capacity``: the most tokens held (a blip of that many retries goes at once).
    ``floor``: tokens per second while nothing succeeds (retries never stop completely).
    ``earn``: tokens per successful response (0.1: retries may reach 10 % of the good rate).
    ``horizon``: seconds over which the success rate is measured.
    """

    __slots__ = ("_oks", "_tokens", "_updated", "capacity", "earn", "floor", "horizon")

    def __init__(
        self,
        *,
        capacity: float = 10.0,
        floor: float = 1.0,
        earn: float = 0.1,
        horizon: float = 10.0,
    ) -> None:
        self.capacity = max(1.0, capacity)
        self.floor = max(0.0, floor)
        self.earn = max(0.0, earn)
        self.horizon = max(1e-3, horizon)
        self._tokens = self.capacity
        self._updated: float | None = None
        self._oks: deque[float] = deque()

    def _success_rate(self, now: float) -> float:
        oks, edge = self._oks, now - self.horizon
        while oks and oks[0] <= edge:
            oks.popleft()
        return len(oks) / self.horizon

    def income(self, now: float) -> float:
        """Tokens per second right now: ``max(floor, earn * success_rate)``."""
        return max(self.floor, self.earn * self._success_rate(now))

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
            return
        dt = now - self._updated
        if dt > 0:
            self._tokens = min(self.capacity, self._tokens + dt * self.income(now))
            self._updated = now

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0.0 when a retry may go now)."""
        self._refill(now)
        missing = 1.0 - self._tokens
        if missing <= 1e-9:
            return 0.0
        rate = self.income(now)
        return missing / rate if rate > 0 else math.inf

    def spend(self, now: float) -> None:
        """Take one token for a retry (the caller checked ``wait_time`` first)."""
        self._refill(now)
        self._tokens -= 1.0

    def refund(self, now: float) -> None:
        """Give back the token of a retry that was never sent."""
        self._refill(now)
        self._tokens = min(self.capacity, self._tokens + 1.0)

    def success(self, now: float) -> None:
        """Record an OK response: it raises the income (``earn`` per success per second)."""
        if self._tokens < self.capacity or self._updated is None:
            self._refill(now)
        elif now > self._updated:  # full: the refill would only move the clock on
            self._updated = now
        oks, edge = self._oks, now - self.horizon
        oks.append(now)
        while oks[0] <= edge:  # (the income only counts the last ``horizon`` seconds)
            oks.popleft()
