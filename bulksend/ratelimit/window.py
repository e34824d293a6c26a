"""Inferring the window of a quota the server counts but does not describe (pure, sans-I/O).

``X-RateLimit-Limit: 50`` says how many requests a window allows, not how long the window is.
A documented window ("per minute") is a starting guess; the window is then read off what the
answers show, using only our own send times (so neither clock skew nor whole-second resets can
mislead it):

* **Counted spans.** An answer to send ``s`` with ``Remaining R`` of a limit ``L`` says the server
  counted ``c = L - R`` requests in its window, ``s`` included. If those are our sends
  ``s-c+1 .. s``, they all fell in one window: ``W > t(s) - t(s-c+1)`` (a lower bound ``lo``, true
  for fixed and moving windows). A 429 says ``L`` were counted before ``s``: ``W > t(s) - t(s-L)``.
* **The send the server forgot.** Send ``s-c`` was no longer counted. In a moving window (the
  ``limits`` library's, GitHub's secondary limits) that means it left the window:
  ``W <= t(s) - t(s-c)`` (an upper bound ``hi``). In a fixed window it only means a window started
  since. The two kinds are told apart by how often the count forgets: in a moving window (or with
  sends so sparse that each lands in a window of its own) nearly every answer forgets a send; in
  a fixed window only the first answer of each window does, and right after each boundary ``hi``
  drops below ``lo``. ``hi`` is used only while it stays consistent with ``lo`` and at least half
  of the recent answers (8 at least) forgot a send, with three sends or more counted per window
  -- or nine in ten with fewer: with one or two sends per window a fixed window can look like a
  moving one, and the fixed reading is the safe one.
* **Resets.** A reset says when the window holding the counted sends ends: that window began
  after ``s-c`` and no later than ``s-c+1`` (a moving one: at ``s-c+1``), so
  ``end - t(s-c+1) <= W <= end - t(s-c)``, whatever the kind of window -- widened by the reset's
  resolution (whole seconds: Flask-Limiter rounds its epoch up, others round down) and, for an
  epoch, by a second of clock difference (larger skews are corrected from ``Date`` first). One
  answer bounds the window this way; the bound is loose with whole seconds, so it serves to
  leave a far-off guess quickly, and the spans and refills narrow it.
* **Refills.** In a fixed window the count falls back (Remaining jumps up) at each boundary; the
  boundary lies between sends ``s-c`` and ``s-c+1``. Two boundaries ``j`` and ``k`` give
  ``W <= t_k(s-c+1) - t_j(s-c)`` (for clock-aligned windows, whose boundaries are ``W`` apart,
  and for windows that start at the first request, as the ``limits`` library's fixed window does,
  whose boundaries are at least ``W`` apart); the smallest such bound over the last few
  boundaries approaches ``W`` from above as the sends fall at different phases.

The estimate: ``hi`` while it is trusted (the answers keep forgetting), else the refill period;
a reset's bound where it is tighter; never below ``lo``. An upper bound above the guess leaves
the guess standing ("confirmed"): only ``lo`` raises a window above the guess, and nothing goes
below ``lo`` (plus 1 %: the spans fall a send interval short). Without new evidence the last
estimate stands. Sends the server counted but we did not make (another client on the same key)
lengthen the spans: the window reads longer than it is, which is safe but slow -- several
workers on one key should share the Redis limiter, which does not infer windows.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections import deque

__all__ = ["SendTimes", "WindowEstimator"]

#: no window read off the answers is shorter than this (nginx counts whole milliseconds)
_SHORTEST = 0.001
#: a window raised to ``lo`` is padded by this share (``lo`` is a send interval short of it)
_PAD = 0.01
#: how many boundaries are remembered for the refill period
_BOUNDARIES = 6
#: ``hi`` counts as consistent with ``lo`` down to this share of it (send-order jitter)
_CONSISTENT = 0.9
#: ``hi`` is trusted when at least this share of the recent answers forgot a send ...
_FORGETTING = 0.9
#: ... out of this many (and at least a quarter of them)
_RECENT = 16


class _Runs:
    """A set of sequence numbers kept as sorted runs of consecutive ones (they come mostly in
    order and in runs: a storm of 5xx, a stall of 429s), so every query is a bisection."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, seq: int) -> None:
        starts, ends = self._starts, self._ends
        if ends and ends[-1] == seq - 1:  # the common case: the latest run grows
            ends[-1] = seq
            return
        i = bisect_right(starts, seq)
        if i and ends[i - 1] >= seq:
            return  # already in
        if i and ends[i - 1] == seq - 1:
            ends[i - 1] = seq
            if i < len(starts) and starts[i] == seq + 1:  # it closes a gap: merge
                ends[i - 1] = ends[i]
                del starts[i], ends[i]
        elif i < len(starts) and starts[i] == seq + 1:
            starts[i] = seq
        else:
            starts.insert(i, seq)
            ends.insert(i, seq)

    def run_at(self, seq: int) -> int:
        """The first number of the run holding ``seq``, or ``seq + 1`` when it is not held."""
        i = bisect_right(self._starts, seq) - 1
        if i >= 0 and self._ends[i] >= seq:
            return self._starts[i]
        return seq + 1

    def count(self, first: int, last: int) -> int:
        """How many numbers in ``[first, last]`` are held."""
        starts, ends = self._starts, self._ends
        total, i = 0, max(0, bisect_right(ends, first - 1))
        while i < len(starts) and starts[i] <= last:
            total += min(ends[i], last) - max(starts[i], first) + 1
            i += 1
        return total

    def drop_below(self, base: int) -> None:
        cut = bisect_right(self._ends, base - 1)
        if cut:
            del self._starts[:cut], self._ends[:cut]
        if self._starts and self._starts[0] < base:
            self._starts[0] = base


class SendTimes:
    """The send time of every sequence number (consecutive from 1), trimmed from the old end,
    and which sends the server surely did not count (refused: a 429; cancelled before they went)
    or may not have counted (a 5xx, no answer)."""

    __slots__ = ("_base", "_refused", "_t", "_unsure")

    def __init__(self) -> None:
        self._t = array("d")
        self._base = 1  # the sequence number of ``_t[0]``
        self._refused = _Runs()
        self._unsure = _Runs()  # refused or unsure: not surely counted

    def add(self, seq: int, t: float) -> None:
        """Record send ``seq`` at ``t`` (sequence numbers come in order, times never go back)."""
        missing = seq - self._base - len(self._t)
        if missing < 0:
            return
        if missing:
            self._t.extend([t] * missing)
        self._t.append(t)

    def at(self, seq: int) -> float | None:
        i = seq - self._base
        t = self._t
        return t[i] if 0 <= i < len(t) else None

    def trim(self, before: float) -> None:
        """Forget sends made before ``before``."""
        cut = bisect_left(self._t, before)
        if cut:
            del self._t[:cut]
            self._base += cut
            self._refused.drop_below(self._base)
            self._unsure.drop_below(self._base)

    def refuse(self, seq: int) -> None:
        """The server did not count send ``seq`` (refused, or it never went out)."""
        if seq >= self._base:
            self._refused.add(seq)
            self._unsure.add(seq)

    def unsure(self, seq: int) -> None:
        """Send ``seq`` failed (a 5xx, no answer): the server may or may not have counted it."""
        if seq >= self._base:
            self._unsure.add(seq)

    def refused_between(self, first: int, last: int) -> int:
        """Refused sends strictly between ``first`` and ``last``."""
        return self._refused.count(first + 1, last - 1)

    def counted_back(self, seq: int, count: int) -> int:
        """The sequence number of the ``count``-th send back from ``seq`` (itself the first)
        that the server did not refuse."""
        first = seq - count + 1
        missing = self._refused.count(first, seq)
        while missing:
            lower = first - missing
            missing = self._refused.count(lower, first - 1)
            first = lower
        return first

    def uncounted_before(self, seq: int) -> int:
        """The newest send before ``seq`` that the server surely counted (not refused, not
        failed): the last one of an earlier window when ``seq`` opened a new one."""
        k = seq - 1
        return self._unsure.run_at(k) - 1

    def __len__(self) -> int:
        return len(self._t)


class _Extreme:
    """A running maximum (or minimum) over the samples of the last ``horizon`` seconds."""

    __slots__ = ("_q", "_sign")

    def __init__(self, *, maximum: bool) -> None:
        self._q: deque[tuple[float, float]] = deque()
        self._sign = 1.0 if maximum else -1.0

    def push(self, now: float, value: float, edge: float) -> None:
        q, v = self._q, self._sign * value
        while q and q[-1][1] <= v:
            q.pop()
        q.append((now, v))
        while q[0][0] < edge:
            q.popleft()

    def value(self, edge: float) -> float | None:
        q = self._q
        while q and q[0][0] < edge:
            q.popleft()
        return self._sign * q[0][1] if q else None

    def clear(self) -> None:
        self._q.clear()


class WindowEstimator:
    """The window of one quota, from a guess and the answers (see the module docstring)."""

    __slots__ = (
        "_bounds",
        "_floor_count",
        "_forgets",
        "_hi",
        "_lo",
        "_prev_count",
        "_prev_seq",
        "_sure",
        "evidence",
        "explicit",
        "guess",
        "last_boundary",
        "window",
    )

    def __init__(self, guess: float) -> None:
        self.guess = guess
        self.explicit: float | None = None
        self._lo = _Extreme(maximum=True)
        self._hi = _Extreme(maximum=False)
        self._sure = _Extreme(maximum=False)  # upper bounds from the resets
        self._bounds: deque[tuple[float, float]] = deque(maxlen=_BOUNDARIES)
        self._forgets: deque[bool] = deque(maxlen=_RECENT)
        self.restart(guess)

    def restart(self, guess: float) -> None:
        """A new quota (the limit changed): forget the evidence and start again from ``guess``."""
        self.guess = guess
        self.explicit = None
        self.window = guess
        self.evidence = "guess"
        self.last_boundary = -math.inf  # when the latest boundary was seen (the answer's time)
        self._lo.clear()
        self._hi.clear()
        self._sure.clear()
        self._forgets.clear()
        self._prev_seq = 0
        self._prev_count = 0
        self._floor_count = 0  # the count at the last boundary (for counts off by a constant)
        self._bounds.clear()

    def rebase(self) -> None:
        """The counts will be read against another limit: the next one is not compared with
        the last (a change of basis is not a refill)."""
        self._prev_seq = self._prev_count = self._floor_count = 0

    def declare(self, window: float | None) -> None:
        """The server said the window (IETF ``w``): it replaces every inference."""
        if window is not None and window > 0:
            self.explicit = self.window = window
            self.evidence = "header"
        elif self.explicit is not None:
            self.explicit = None
            self.window, self.evidence = self.guess, "guess"

    def observe(
        self,
        now: float,
        seq: int,
        count: int,
        times: SendTimes,
        *,
        ok: bool,
        tolerance: int,
        jitter: float,
        end: tuple[float, float] | None = None,
        exact: bool = True,
    ) -> None:
        """Take one answer: send ``seq`` was the ``count``-th request the server counted in its
        window (for a 429: ``count`` is the limit + 1). ``tolerance``: sends that may have
        reached the server out of order; ``jitter``: the round-trip spread (seconds); ``end``:
        when the server said the window ends (our clock) and how far off that may be.
        ``exact`` False: ``count`` is off by an unknown constant (Remaining without a limit):
        only its changes are read (the refills), not the spans."""
        t_s = times.at(seq)
        if t_s is None or count < 1:
            return
        if exact:
            first_seq = times.counted_back(seq, count)
            first = times.at(first_seq)
            before = times.at(times.uncounted_before(first_seq))
        else:  # the sends counted are unknown: a boundary lies since the previous answer's
            first, before = t_s, times.at(self._prev_seq) if self._prev_seq else None
        if first is None:  # the server counted requests we did not send
            return
        edge = now - max(2.0 * self.window, 1.0)
        if exact:
            self._lo.push(now, t_s - first - jitter, edge)
            if end is not None:
                self._reset_bounds(now, end, first, before, jitter, edge)
        if ok and seq > self._prev_seq:  # (an answer overtaken by a later one says nothing new)
            if not self._prev_seq:  # the first answer (on this basis): the window's count so far
                self._floor_count = count - 1
            if self._prev_seq and before is not None:
                sent = seq - self._prev_seq - times.refused_between(self._prev_seq, seq)
                forgotten = self._prev_count + sent - count
                self._forgets.append(forgotten >= 1)
                if forgotten >= 1 and exact:  # a send left the count since the previous answer
                    self._hi.push(now, t_s - before + jitter, edge)
                # more than reordering explains, and most of the window: a new window (when
                # the count is off by a constant, against what it rose since the last one)
                held = self._prev_count - (0 if exact else self._floor_count)
                if forgotten > tolerance and 2 * forgotten > held:
                    self._floor_count = count
                    # (widened by half the round-trip spread, about the one-way delay spread:
                    # the order in which the sends arrived is what counts)
                    self._boundary(now, before - jitter / 4.0, first + jitter / 4.0)
            self._prev_seq, self._prev_count = seq, count
        if self.explicit is None:
            self._estimate(edge)

    def _reset_bounds(
        self,
        now: float,
        end: tuple[float, float],
        first: float,
        before: float | None,
        jitter: float,
        edge: float,
    ) -> None:
        """The window holding the counted sends began after ``before`` and no later than
        ``first`` (moving: at ``first``), and ends at ``end``: whatever the kind of window,
        ``end - first <= W <= end - before``."""
        at, slack = end
        self._lo.push(now, at - slack - first - jitter, edge)
        if before is not None:
            self._sure.push(now, at + slack - before + jitter, edge)

    def _boundary(self, now: float, before: float, first: float) -> None:
        self.last_boundary = now
        bounds = self._bounds
        if not bounds:
            bounds.append((before, first))
            return
        last_before, last_first = bounds[-1]
        if before >= last_first:
            bounds.append((before, first))
        elif first > last_first:  # overlapping: the same boundary, seen again out of order
            narrowed = (max(before, last_before), last_first)
            if narrowed[0] <= narrowed[1]:
                bounds[-1] = narrowed

    def _period(self, lo: float) -> float | None:
        """The smallest upper bound two recent boundaries give, of those consistent with ``lo``."""
        b = self._bounds
        bounds = [b[i][1] - b[i - 1][0] for i in range(1, len(b))]
        bounds = [g for g in bounds if g >= _CONSISTENT * lo and g > 0]
        return min(bounds) if bounds else None

    def _estimate(self, edge: float) -> None:
        lo = self._lo.value(edge) or 0.0
        hi = self._hi.value(edge)
        forgets = self._forgets
        share = sum(forgets) / len(forgets) if len(forgets) >= _RECENT // 2 else 0.0
        # (with three or more sends counted per window, a fixed window forgets at most one
        # answer in three; with fewer, only answers that nearly all forget are trusted)
        moving = share >= _FORGETTING or (share >= 0.5 and self._prev_count >= 3)
        if hi is None or not moving or hi < _CONSISTENT * lo:
            hi = None
        period = None if hi is not None else self._period(lo)
        sure = self._sure.value(edge)
        value, evidence = self.window, self.evidence  # what the last evidence said stands ...
        typed = hi if hi is not None else period  # (hi while the answers keep forgetting)
        if typed is not None:  # ... unless the spans or the refills say otherwise
            if typed < self.guess:
                value, evidence = typed, "refills" if typed == period else "spans"
            else:  # only ``lo`` raises a window above the guess
                value, evidence = self.guess, "confirmed"
        if sure is not None and lo * _CONSISTENT <= sure < value:  # a reset's bound: for
            value, evidence = sure, "resets"  # every kind of window (unless its clock is off)
        if lo > value:  # (the spans fall a send interval short of the window: a 1 % pad)
            value, evidence = lo * (1.0 + _PAD), "spans"
        self.window, self.evidence = max(value, _SHORTEST), evidence
