"""A circuit breaker per endpoint group: pure, driven by ``now``.

::

    closed ──(sustained failures)──► open ──(cooldown)──► half-open
      ▲                                ▲                      │ one probe
      └───────── probe succeeds ───────┴── probe fails ◄──────┘ (cooldown doubles)

A *failure* is a 5xx, a timeout or a broken connection: the endpoint is unwell. Anything else
(including a 429, which the rate limiter handles) is a success. While open, nothing is sent to
the group; half-open lets exactly one request through and waits for its outcome.

*Sustained failures* open it: ``threshold`` failures in a row (5) **and** at least
``failure_rate`` (half) of the last ``window`` outcomes (50; fewer at the start of a send, all
of them counted) failed. A dead endpoint or a wrong base URL fails everything: it opens after
``threshold`` failures at the start of a send, and after at most ``failure_rate * window`` (25)
once many good answers came before. Random failures of an endpoint that works do not open it:
at 200 requests a second with 20 % failing, 5 in a row come every 20 s or so, but half of the
last 50 failing as well is 4 standard deviations from the 20 % expected (2 in 10,000 such runs:
about one pause a day at that pace; at 30 % failing, one every 2 minutes). Counting consecutive
failures alone paused a group that worked every 20 s, for 2 s each time.

*Giving up*: ``exhausted(max_probes)`` says when an open circuit has failed enough probes that
the send should stop. An endpoint that never answered well (a wrong base URL, a provider down
from the start) is given up after at most 3 probes, sooner than one that worked and then went
away (``max_probes``, the send's ``max_attempts``).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Circuit:
    threshold: int = 5
    cooldown: float = 2.0
    max_cooldown: float = 60.0
    #: outcomes the failure share is measured over, and the share that (with ``threshold`` in a
    #: row) opens the circuit
    window: int = 50
    failure_rate: float = 0.5
    state: State = State.CLOSED
    failures: int = 0  # consecutive failures
    opened_at: float = 0.0
    current_cooldown: float = 0.0
    probing: bool = False
    opened: int = 0  # how many times it opened (for the summary and tests)
    failed_probes: int = 0  # consecutive half-open probes that failed
    outcomes: int = 0  # every outcome recorded
    answered: bool = False  # at least one good answer came back
    _failed: deque[int] = field(default_factory=deque)  # outcome numbers of the recent failures

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

    def succeeded(self) -> None:
        """A success while closed: what ``on_result(now, failure=False)`` does then, cheaply."""
        self.outcomes += 1
        self.failures = 0

    def failure_share(self) -> float:
        """The share of the last ``window`` outcomes that failed (0.0 before any)."""
        failed, edge = self._failed, self.outcomes - max(1, self.window)
        while failed and failed[0] < edge:
            failed.popleft()
        seen = min(self.outcomes, max(1, self.window))
        return len(failed) / seen if seen else 0.0

    def sustained(self) -> bool:
        """Whether the failures seen now would open a closed circuit."""
        return self.failures >= self.threshold and self.failure_share() >= self.failure_rate

    def exhausted(self, max_probes: int) -> bool:
        """Whether the send should give this group up: open after too many failed probes."""
        limit = max_probes if self.answered else min(3, max_probes)
        return self.state is State.OPEN and self.failed_probes >= limit

    def on_result(self, now: float, *, failure: bool, answered: bool = True) -> State | None:
        """Record an outcome; returns the new state when it changed. ``answered`` False: a
        success that is not the provider's answer (an unexpected 2xx) does not count as the
        group having answered well."""
        was = self.state
        if answered and not failure:
            self.answered = True
        if failure:
            self._failed.append(self.outcomes)
        self.outcomes += 1
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
            if self.state is State.CLOSED and self.sustained():
                self.state, self.opened_at = State.OPEN, now
                self.current_cooldown = self.cooldown
                self.opened += 1
        elif self.state is State.CLOSED:
            self.failures = 0
        return self.state if self.state is not was else None
