"""Pacing: requests leave one after another, not in bunches (pure: the caller gives the time).

A send keeps up to ``in_flight`` requests out. When many answers come together (a server that
answered them one after another, a pause of the event loop), their next requests would leave
together too, and a bunch, once formed, stays one: every request of it waits at the server for
the ones before. The pacer lets requests out at most at ``in_flight`` per least round trip seen
(a token bucket with a burst of ``BURST``): as fast as the requests in flight can come back, so
it never holds a send below the pace its round trips allow, only spreads a bunch over one round
trip. Before the first round trip is known nothing waits. A send whose requests are further
apart than that anyway (the client's CPU sets the pace) never waits either.

Measured (benchmarks/README.md, "Pacing"): at 20 ms of added latency and 32 in flight against
the sandbox, which answers one request at a time, the round trip fell from ~25 ms to ~21 ms.
"""

from __future__ import annotations

#: requests that may leave together (a token bucket's capacity)
BURST = 4
#: a whole token, give or take the rounding of a wait computed to make one
_WHOLE = 1.0 - 1e-9


class Pacer:
    """``delay(now)`` before each request; ``observe(round_trip)`` after each answer."""

    __slots__ = ("_in_flight", "_last", "_least", "_tokens")

    def __init__(self, in_flight: int) -> None:
        self._in_flight = max(in_flight, 1)
        self._least: float | None = None  # the least round trip seen (seconds)
        self._tokens = float(BURST)
        self._last = 0.0

    @property
    def rate(self) -> float | None:
        """Requests a second it lets out at most; None before a round trip is known."""
        if self._least is None:
            return None
        return self._in_flight / self._least

    def observe(self, round_trip: float) -> None:
        """An answer came ``round_trip`` seconds after its request left."""
        if round_trip > 0 and (self._least is None or round_trip < self._least):
            self._least = round_trip

    def delay(self, now: float) -> float:
        """Seconds to wait before the next request may leave; 0 means it leaves now (and
        takes its turn: call again after waiting)."""
        rate = self.rate
        if rate is None:
            return 0.0
        tokens = self._tokens + (now - self._last) * rate if now > self._last else self._tokens
        self._last = now
        if tokens >= _WHOLE:
            self._tokens = max(min(tokens, float(BURST)) - 1.0, 0.0)
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / rate
