"""Pure retry timing: capped exponential full-jitter backoff and a retry budget.

Nothing here reads a clock or a random generator: callers pass ``now`` (monotonic seconds) and
``u`` (a uniform draw in ``[0, 1)``), so every decision can be replayed in a test.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter")::

    delay(attempt) = u * min(cap, base * 2 ** (attempt - 1))        attempt = 1, 2, ...

Retry budget: retries are allowed as a share of successes, plus a floor (the idea of botocore's
retry quota, ``botocore/retries/quota.py``, of Finagle's ``RetryBudget`` and of gRPC's retry
throttling). Every retry spends one token; first attempts spend nothing, so the budget limits
retries and never first attempts. Tokens come from two sources:

* ``earn`` tokens for each successful response, at once (the scheduler's default is 1: retries
  may reach the rate of successes, never more);
* ``floor`` tokens per second whatever happens (default 1/s), so retries never stop completely.

The bucket holds at most ``capacity`` tokens (the scheduler gives it 10 % of a window's quota, at
least 10): a short blip is retried at once, and what a long-gone success earned cannot be saved
up for later. Why these numbers:

* a flaky but working endpoint must not be starved: when a fraction ``p`` of requests fails at
  random, a batch needs ``p / (1 - p)`` retries for each success -- 25 % at ``p = 0.2``, 67 % at
  ``p = 0.4`` -- so earning 1 a success keeps up with random failure rates up to one half, where
  the circuit breaker (``ratelimit.circuit``) starts to pause the group. A budget that falls
  behind is worse than it looks: batches waiting for a token are parked, and when too many are
  the engine's workers wait too, so fewer first attempts succeed, which earns fewer tokens;
* a storm (nearly every response fails) earns nearly nothing: retries are held to ``floor`` plus
  what the full bucket held when it started (``capacity + floor * T`` over ``T`` seconds), and
  they go through the group's rate limit with first attempts, which retries can slow down but
  never multiply.

The earlier budget (0.1 of the success rate, smoothed over up to ten seconds) could not keep up
with 20 % random failures -- a send fell to a few requests a second against a quota of 200 --
and its smoothing kept paying retries for a while after a storm began.
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
    """Tokens that retries spend; successes and time earn them (pure: pass ``now`` in).

    ``capacity``: the most tokens held (a blip of that many retries goes at once).
    ``floor``: tokens per second whatever happens (retries never stop completely).
    ``earn``: tokens per successful response (1.0: retries may reach the rate of successes).
    ``horizon``: seconds over which ``income()`` measures the success rate (a reported figure).
    """

    __slots__ = ("_oks", "_tokens", "_updated", "capacity", "earn", "floor", "horizon")

    def __init__(
        self,
        *,
        capacity: float = 10.0,
        floor: float = 1.0,
        earn: float = 1.0,
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
        """Tokens per second earned lately: ``floor + earn * success_rate`` (over ``horizon``)."""
        return self.floor + self.earn * self._success_rate(now)

    def _refill(self, now: float) -> None:
        """Add the floor's tokens for the time since the last call."""
        if self._updated is None:
            self._updated = now
            return
        dt = now - self._updated
        if dt > 0:
            self._tokens = min(self.capacity, self._tokens + dt * self.floor)
            self._updated = now

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available (0.0 when a retry may go now).

        Counts on the floor alone: a success before then only shortens the wait.
        """
        self._refill(now)
        missing = 1.0 - self._tokens
        if missing <= 1e-9:
            return 0.0
        return missing / self.floor if self.floor > 0 else math.inf

    def spend(self, now: float) -> None:
        """Take one token for a retry (the caller checked ``wait_time`` first)."""
        self._refill(now)
        self._tokens -= 1.0

    def refund(self, now: float) -> None:
        """Give back the token of a retry that was never sent."""
        self._refill(now)
        self._tokens = min(self.capacity, self._tokens + 1.0)

    def success(self, now: float) -> None:
        """Record an OK response: it earns ``earn`` tokens at once."""
        if self._tokens < self.capacity or self._updated is None:
            self._refill(now)
            self._tokens = min(self.capacity, self._tokens + self.earn)
        elif now > self._updated:  # full: the refill would only move the clock on
            self._updated = now
        oks, edge = self._oks, now - self.horizon
        oks.append(now)
        while oks[0] <= edge:  # (income() only counts the last ``horizon`` seconds)
            oks.popleft()
