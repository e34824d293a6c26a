"""Discovering a quota the server does not announce (pure, sans-I/O): 429s are the only signal.

Gateways such as nginx ``limit_req`` answer 429 (or 503) with no counts at all; some APIs
(Stripe, FCM) give no counts either. ``RateProbe`` finds the rate such a server sustains:

1. **Slow start.** From the starting rate (the user's stated limit, else the provider's
   documented default), the rate doubles every ``SLOW_START`` seconds (0.5 s) until the first
   throttle -- so a guess 10 times too low is left behind in under two seconds.
2. **A cut on each congestion event** (a 429 for a request sent after the previous cut, once an OK
   came back since) at rate ``r``: the rate drops to ``0.85 r``, or ``0.97 r`` when ``r`` is
   within 10 % of the previous event's (the limit is found: a gentle cut; 0.92 r for the first
   refusal out of slow start when the last OKs came at about ``r``), and the plateau
   ``r_max`` is set at ``0.98 r``, just below where it failed. When ``r`` is more than twice the
   rate of the last OKs (a guess 10 times too high), twice that rate stands for ``r``.
3. **CUBIC between events**: ``r(t) = r_max * (1 + C * (t/tau - K) ** 3)``: back at ``r_max`` after
   ``K = 2`` periods, a plateau there, then a gentle probe upwards (+3.75 % one period later).
   The period ``tau`` is ``max(0.5 s, 60 / r_max)``: at least about 60 requests between probes,
   which keeps 429s to a few per hundred requests.
4. **Windows learned from stalls.** A fixed or moving window refuses everything until it frees: a
   *stall* -- after a 429, the requests sent once it was known (the probes) are refused too, at
   least twice, for at least a quarter of the cycle and four send intervals. (Requests already in
   flight when the first 429 came back belong to the run that ended: their OKs and 429s are the
   edge of the window.) The cycle from the first OK after one stall to the first OK after the
   next holds exactly one window: ``L`` = the OKs before the stall; the window began between the
   last refused probe and the first OK at the start, and ended likewise at the end, which bounds
   ``W`` from both sides. Each agreeing cycle narrows the bounds; ``W`` is their midpoint (too
   short a guess shows as one more, shorter stall, which narrows them further).
   Once two consecutive cycles agree within 15 % (a run of 3 OKs at least, a cycle of a second
   at least), ``(L, W)`` is enforced as a quota (no more than ``L`` in any ``W`` plus margin,
   evenly spaced) and the curve's plateau is set at ``L / W``, which removes the stalls. (One
   long outage is one cycle: never enforced.) Learning is on only when the
   server sends no rate headers at all; behind headers a headerless 429 just cuts the curve. A
   leaky bucket (nginx) never
   stalls that long -- a request one interval later goes through -- so it is paced by the rate.
5. The rate never exceeds ``cap`` (a limit the user stated: never probed above), and it grows
   only while the sends keep its pace: a gap between two sends longer than twice the spacing
   stops the clock of the curve for that long (an idle or slow-fed group does not build up a
   rate it never tested; Linux CUBIC does the same for an application-limited window).

Every method takes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["BETA", "Learned", "RateProbe"]

BETA = 0.85
#: the cut when a refusal comes at about the level of the previous one (within NEAR)
BETA_NEAR = 0.97
#: the first cut out of slow start, when the last OKs came at about the refused rate
BETA_FIRST = 0.92
NEAR = 0.1
#: the plateau sits this much below the rate that was refused
PLATEAU = 0.98
CUBIC_K = 2.0
CUBIC_C = (1.0 - BETA) / CUBIC_K**3  # the probe above the plateau: +3.75 % one period after
SLOW_START = 0.5  # seconds per doubling
MIN_PERIOD = 0.5
REQUESTS_PER_PERIOD = 60.0
#: a stall is at least this many 429s in a row ...
STALL_429S = 2
#: ... lasting at least this share of its cycle and this many send intervals
STALL_SHARE = 0.25
STALL_INTERVALS = 4.0
#: ... after a run of at least this many OKs, in a cycle of at least this many seconds (a leaky
#: bucket refuses a request or two and lets one through an interval later: not a window)
STALL_RUN = 3
STALL_CYCLE = 1.0
#: two cycles agree when their counts and lengths are this close
AGREE = 0.15


@dataclass(frozen=True, slots=True)
class Learned:
    """A window learned from the stalls: ``quota`` requests per ``window`` seconds."""

    quota: int
    window: float


class RateProbe:
    """The rate to send at when the server says nothing but 429 (see the module docstring)."""

    __slots__ = (
        "_approach",
        "_candidate",
        "_cycle_floor",
        "_cycle_oks",
        "_cycle_seq",
        "_cycle_start",
        "_event",
        "_first_send",
        "_last_send",
        "_oks",
        "_refused_at",
        "_run_oks",
        "_stall_429s",
        "_stall_rate",
        "_stall_seq",
        "_stall_start",
        "cap",
        "cut_seq",
        "learned",
        "learning",
        "r_max",
        "recovered",
        "slow_start",
        "start",
        "t_event",
    )

    def __init__(self, start: float, cap: float | None = None) -> None:
        self.cap = cap if cap is not None and cap > 0 else None
        self.start = self._capped(max(start, 1e-6))
        self.slow_start = True
        self.r_max = self.start
        self.t_event: float | None = None  # the first send, then the time of the last cut
        self.cut_seq = 0  # requests up to this one belong to the last congestion event
        self.recovered = True  # an OK came back for a request sent after the last cut
        self.learned: Learned | None = None
        self.learning = True  # learn windows from stalls (off behind rate headers)
        self._candidate: _Cycle | None = None
        self._cycle_start: float | None = None  # send time of the cycle's first OK
        self._cycle_seq = 0
        self._cycle_oks = 0
        self._run_oks: int | None = None  # OKs before the current stall began
        self._stall_seq = 0
        self._stall_start = 0.0
        self._event: float | None = None  # the rate of the last congestion event
        self._approach = CUBIC_C  # the cubic coefficient from the cut up to the plateau
        self._refused_at = -math.inf  # send time of the latest refused probe
        self._cycle_floor = -math.inf  # ... before the current cycle began
        self._stall_429s = 0
        self._stall_rate = 0.0
        self._last_send: float | None = None
        self._first_send: float | None = None
        self._oks: deque[float] = deque(maxlen=8)  # the last OKs' times

    def restart(self, now: float, rate: float) -> None:
        """Take over at ``rate`` (the pace so far) when 429s without counts start to come."""
        self.start = self.r_max = self._capped(max(rate, 1e-6))
        self.slow_start = False
        self.t_event = now - CUBIC_K * self.period()  # on the plateau: at ``rate`` now
        self.recovered = True

    def _capped(self, rate: float) -> float:
        return rate if self.cap is None or rate <= self.cap else self.cap

    def period(self) -> float:
        """The CUBIC time unit: long enough for about 60 requests between probes."""
        return max(MIN_PERIOD, REQUESTS_PER_PERIOD / max(self.r_max, 1e-6))

    def rate(self, now: float) -> float:
        """Requests per second to send at."""
        if self.t_event is None:
            return self.start
        elapsed = max(0.0, now - self.t_event)
        if self.slow_start:
            curve = self.start * math.pow(2.0, min(elapsed / SLOW_START, 40.0))
        else:
            x = elapsed / self.period() - CUBIC_K
            c = self._approach if x < 0.0 else CUBIC_C
            curve = self.r_max * (1.0 + c * x * x * x)
        return self._capped(max(1e-3, curve))

    def on_send(self, now: float, spacing: float) -> None:
        """A send at ``now``; ``spacing`` is the interval the pace asked for before it."""
        if self.t_event is None:
            self.t_event = now
        if self._first_send is None:
            self._first_send = now
        last, self._last_send = self._last_send, now
        if last is not None:
            gap = now - last
            if gap > 2.0 * spacing:  # held back by something else: the curve's clock stops
                self.t_event += gap

    def _through(self, now: float) -> float:
        """The rate of the last OKs (up to 8, over the last second at most); 0 when fewer than
        4 came back in that second (too few to tell)."""
        oks = self._oks
        recent = [t for t in oks if t >= now - 1.0]
        if len(recent) < 4 or recent[-1] <= recent[0]:
            return 0.0
        return (len(recent) - 1) / (recent[-1] - recent[0])

    def on_ok(self, now: float, seq: int, sent_at: float) -> None:
        self._oks.append(now)
        if seq > self.cut_seq:
            self.recovered = True
        if self._run_oks is not None:
            if seq > self._stall_seq:  # a probe went through: the stall is over
                self._close_cycle(now, sent_at)
                self._cycle_start, self._cycle_seq, self._cycle_oks = sent_at, seq, 0
                self._cycle_floor = self._refused_at
            else:  # in flight when the stall began: the end of the run
                self._run_oks += 1
        if self._cycle_start is None:
            self._cycle_start, self._cycle_seq = sent_at, seq
        self._cycle_oks += 1

    def on_throttle(
        self, now: float, seq: int, sent_at: float, *, rate: float, last_sent: int
    ) -> None:
        """A 429 for send ``seq``; ``rate`` is the rate in force now, ``last_sent`` the newest
        sequence number sent so far (its answers belong to this congestion event)."""
        if seq >= self._cycle_seq:
            if self._run_oks is None:
                self._run_oks = self._cycle_oks
                self._stall_seq, self._stall_start, self._stall_429s = last_sent, sent_at, 0
                self._stall_rate = rate
            elif seq > self._stall_seq:  # a probe sent after the stall began was refused
                self._stall_429s += 1
                self._refused_at = max(self._refused_at, sent_at)
        if seq > self.cut_seq and self.recovered:
            self._cut(now, rate, last_sent)

    def _cut(self, now: float, rate: float, last_sent: int) -> None:
        event = rate
        through = self._through(now)
        if 0.0 < 2.0 * through < rate:  # far above what the server lets through
            event = 2.0 * through
        # a refusal at about the level of the previous one: the limit is found, cut gently;
        # the first one out of slow start while nearly everything got through, a little less so
        previous, self._event = self._event, event
        near = previous is not None and abs(event - previous) <= NEAR * previous
        beta = BETA_NEAR if near else BETA
        if self.slow_start and through >= (1.0 - NEAR) * rate:
            beta = BETA_FIRST
        self.r_max = self._capped(max(PLATEAU * event, 1e-3))
        # the curve starts at ``beta * event`` and reaches the plateau after K periods
        self._approach = max(0.0, 1.0 - beta / PLATEAU) / CUBIC_K**3
        self.t_event = now
        self.slow_start = False
        self.cut_seq = max(last_sent, self.cut_seq)
        self.recovered = False

    def _close_cycle(self, now: float, ok_sent_at: float) -> None:
        run_oks, start, floor = self._run_oks, self._cycle_start, self._cycle_floor
        self._run_oks = None
        if start is None or run_oks is None or floor == -math.inf or not self.learning:
            return  # (the first run began with the send, not with a window: no cycle)
        # The window began between the last refused probe before ``start`` and ``start``, and
        # ended between the last refused probe of this stall and this OK: that bounds it.
        upper, lower = ok_sent_at - floor, self._refused_at - start
        stall = ok_sent_at - self._stall_start
        interval = 1.0 / max(self._stall_rate, 1e-6)
        if (
            self._stall_429s < STALL_429S
            or run_oks < STALL_RUN
            or upper < STALL_CYCLE
            or stall < STALL_SHARE * upper
            or stall < STALL_INTERVALS * interval
        ):
            return
        seen = _Cycle(run_oks, lower, upper)
        previous, self._candidate = self._candidate, seen
        if previous is None or not previous.agrees(seen):
            return
        both = previous.narrowed(seen)  # two cycles agree: a window, enforced as a quota
        self._candidate = both
        self.learned = Learned(both.quota, both.window)
        self.r_max = self._capped(both.quota / both.window)  # the curve's plateau at its rate
        self.slow_start = False
        self.t_event = now - CUBIC_K * self.period()


@dataclass(frozen=True, slots=True)
class _Cycle:
    """One cycle between stalls: ``quota`` OKs, a window between ``lower`` and ``upper``."""

    quota: int
    lower: float
    upper: float

    @property
    def window(self) -> float:
        return (max(self.lower, 0.0) + self.upper) / 2.0

    def agrees(self, other: _Cycle) -> bool:
        same_quota = abs(self.quota - other.quota) <= AGREE * max(self.quota, other.quota)
        overlap = max(self.lower, other.lower) <= min(self.upper, other.upper) * (1.0 + AGREE)
        return same_quota and overlap

    def narrowed(self, other: _Cycle) -> _Cycle:
        lower, upper = max(self.lower, other.lower), min(self.upper, other.upper)
        if lower > upper:  # (jitter) the later cycle wins
            lower, upper = other.lower, other.upper
        return _Cycle(other.quota, lower, upper)
