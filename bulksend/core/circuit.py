"""A circuit breaker per endpoint group: pure, driven by ``now``.

::

    closed ──(threshold consecutive failures)──► open ──(cooldown)──► half-open
      ▲                                           ▲                      │ one probe
      └────────────── probe succeeds ─────────────┴── probe fails ◄──────┘ (cooldown doubles)

A *failure* is a 5xx, a timeout or a broken connection: the endpoint is unwell. Anything else
(including a 429, which the rate limiter handles) is a success. While open, nothing is sent to
the group; half-open lets exactly one request through and waits for its outcome.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Circuit:
    threshold: int = 5
    cooldown: float = 2.0
    max_cooldown: float = 60.0
    state: State = State.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    current_cooldown: float = 0.0
    probing: bool = False
    opened: int = 0  # how many times it opened (for the summary and tests)
    failed_probes: int = 0  # consecutive half-open probes that failed

    def wait_time(self, now: float) -> float | None:
        """Seconds to wait before sending; None: wait for the probe in flight to finish."""
        if self.state is State.CLOSED:
            return 0.0
        if self.state is State.OPEN:
            left = self.opened_at + self.current_cooldown - now
            if left > 0:
                return left
            self.state = State.HALF_OPEN
        return None if self.probing else 0.0

    def on_send(self) -> bool:
        """Call when a request is about to go; True when it is the half-open probe."""
        if self.state is State.HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def on_result(self, now: float, *, failure: bool) -> State | None:
        """Record an outcome; returns the new state when it changed."""
        was = self.state
        if self.state is State.HALF_OPEN and self.probing:
            self.probing = False
            if failure:
                self.current_cooldown = min(self.max_cooldown, self.current_cooldown * 2)
                self.state, self.opened_at = State.OPEN, now
                self.failed_probes += 1
            else:
                self.state, self.failures, self.failed_probes = State.CLOSED, 0, 0
        elif failure:
            self.failures += 1
            if self.state is State.CLOSED and self.failures >= self.threshold:
                self.state, self.opened_at = State.OPEN, now
                self.current_cooldown = self.cooldown
                self.opened += 1
        elif self.state is State.CLOSED:
            self.failures = 0
        return self.state if self.state is not was else None
