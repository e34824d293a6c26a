"""The admission math of one endpoint group (pure, sans-I/O): when may the next request go?

Nothing here reads a clock: every method takes ``now`` (monotonic seconds, the event loop's time in
production) and, where an HTTP-date or an epoch must be read, ``wall_now`` (Unix time). The asyncio
wrapper is ``bulksend.ratelimit.scheduler``; a discrete-event simulator drives the same code in
``tests/sim.py``.

Quotas in force
---------------
Every quota is ``q`` requests per ``w`` seconds, enforced two ways: a sliding-window log (never
more than ``q`` sends within any ``w + margin`` seconds) and even spacing (a GCRA at
``(w + margin) / q``). The quotas are:

* **The server's.** Before the first answer: the limit the user stated (``--limit``), else the
  provider's documented default -- a starting guess. With rate-limit headers: the announced limit
  (``X-RateLimit-Limit``, IETF policies: every one of them), its window as announced (IETF ``w``)
  or inferred from the answers (``ratelimit.window``; the documented window is only the first
  guess). A response with Remaining but no limit proves ``limit >= remaining + 1``. Without any
  headers: the rate ``ratelimit.discovery`` discovers from 429s (and the window it learns from
  stalls).
* **The user's.** A stated ``--limit`` is what the user knows about the provider: a hard cap that
  headers may lower but never raise, and discovery never probes above it. ``--rate`` (``ceiling``,
  requests per second) is an absolute ceiling: sends are at least ``1.01 / ceiling`` apart.

Why the log and the margin: a provider counts requests in windows whose phase we do not know. If
the one-way delays of two requests differ by less than ``margin``, any ``q + 1`` consecutive
arrivals span more than ``w``, so no window of the server -- whatever its phase -- sees more than
``q``; the long-run rate is ``q / (w + margin)``. ``margin`` is at least 50 ms, or 1 % of a
window shorter than 5 s, and follows the spread of the round-trip times seen over the last window
(over 32 round trips at least; capped at 1 s and ``w / 10``); until 8 round trips were seen the
spread is not known yet, and the longest round trip stands in for it (no one-way delay is
longer). Only GCRA slots overdue by at most ``slack`` (5 ms) may be caught up, because
event-loop timers wake up late.

The server's own signals
------------------------
* **Remaining** (the binding one when several policies answer): the quota the server has left for
  the window the request arrived in, minus the requests sent after it. When that reaches 0 and our
  own log does not explain the server's count (another client on the key, or a window still
  unknown), nothing goes out until the window frees: at the reset the server gave (read against
  the server's own ``Date`` when it sends one), else one window after the last refill. When the
  log does explain it, the log already holds the next send out of the exhausted window, so a
  whole-second epoch reset or an IETF ``t`` rounded up costs nothing.
* **Retry-After** on a 429 or a 5xx pauses the whole group (on a 200 it is ignored: Flask-Limiter
  sends one on every answer).
* **A 429 with no rate headers** (or a 503 without Retry-After) also pauses the group for
  ``p * 2 ** (n - 1)`` seconds (``p`` = one send interval, within [0.01 s, 1 s]; ``n`` counts
  the refused probes; at most window / 15, at least 50 ms) and lets one request at a time go
  until an answer is OK again, so an exhausted window costs a handful of 429s, not a storm; it
  also feeds the rate discovery, even when other answers carry headers (a gateway in front of an
  API can have a limit of its own).
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from bulksend.ratelimit.backoff import RetryBudget
from bulksend.ratelimit.discovery import RateProbe
from bulksend.ratelimit.headers import MAX_LIMIT, RateLimitInfo, counts, parse_all, plain_counts
from bulksend.ratelimit.window import SendTimes, WindowEstimator

__all__ = [
    "BASE_MARGIN",
    "MARGIN_SHARE",
    "Belief",
    "Bucket",
    "BucketStats",
    "FeedbackKind",
]

#: seconds added to every window at the start of a send (see the module docstring) ...
BASE_MARGIN = 0.05
#: ... or this share of the window, when that is less
MARGIN_SHARE = 0.01
#: round trips seen before their spread (not the longest) sets the margin
_RTT_SAMPLES = 8
#: the spread is taken over the last window, and over at least this many round trips
_RTT_KEEP = 32
#: window estimates that moved less than this share do not reprice the pace yet
_REPACE = 0.002
#: window estimates that moved less than this share are not reported as a change
_WINDOW_CHANGE = 0.05


class FeedbackKind(enum.Enum):
    """What a response (or its absence) says about the provider's quota."""

    OK = "ok"  # any response that was not a throttle or a server error
    THROTTLED = "throttled"  # 429, a 403 with rate-limit evidence, a 503 with Retry-After
    ERROR = "error"  # 5xx
    NO_RESPONSE = "no_response"  # timeout / connection error


_OK, _THROTTLED, _ERROR, _NO_RESPONSE = (
    FeedbackKind.OK,
    FeedbackKind.THROTTLED,
    FeedbackKind.ERROR,
    FeedbackKind.NO_RESPONSE,
)


@dataclass(slots=True)
class BucketStats:
    sent: int = 0
    ok: int = 0
    throttled: int = 0
    errors: int = 0
    no_response: int = 0
    retries: int = 0
    returned: int = 0  # permits handed back unused (cancelled waiters)


@dataclass(frozen=True, slots=True)
class Belief:
    """What the bucket believes about the group's quota: ``limit`` per ``window`` seconds."""

    limit: int
    window: float
    evidence: str  # "documented default", "your --limit", "X-RateLimit-Limit", ...
    mode: str  # "configured", "headers" or "adaptive"

    def text(self) -> str:
        return f"{self.limit}/{self.window:g}s"


Quota = tuple[int, float]


class Bucket:
    """Admission state of one endpoint group. Pure: every method takes ``now``.

    Use: ``wait_time(now, retry)`` -> 0 when a send may go now, ``math.inf`` while the in-flight
    cap is reached; ``send(now, retry)`` when one goes (returns its sequence number and the GCRA
    cost to hand back to ``unsend`` if it is never used); ``feedback(...)`` when it completes.

    ``configured``/``window``: the provider's documented limit (a starting guess); ``stated``: the
    limit the user stated (a hard cap); ``ceiling``: the user's ceiling in requests per second.
    """

    def __init__(
        self,
        configured: int,
        window: float,
        *,
        stated: Quota | None = None,
        max_in_flight: int = 16,
        ceiling: float | None = None,
        adaptive_only: bool = False,
        base_margin: float = BASE_MARGIN,
        max_margin: float = 1.0,
        burst: float = 0.0,
        slack: float = 0.005,
        resolution: float = 0.001,
        budget: RetryBudget | None = None,
        infer_window: bool = True,
    ) -> None:
        self.configured = max(1, int(configured))
        self.guess_window = float(window) if window > 0 else 60.0
        self.stated: Quota | None = None
        if stated is not None and stated[0] >= 1 and stated[1] > 0:
            self.stated = (int(stated[0]), float(stated[1]))
        self.max_in_flight = max(1, int(max_in_flight))
        self.ceiling = ceiling if ceiling is not None and ceiling > 0 else None
        self.adaptive_only = adaptive_only
        self.base_margin = base_margin
        self.max_margin = max_margin
        self.burst = burst
        self.slack = slack
        self.resolution = resolution
        self.budget = budget if budget is not None else RetryBudget()
        #: read the window off the answers (off when other clients share the counts: the
        #: Redis-shared scheduler, whose gate paces every worker)
        self.infer_window = infer_window
        self.stats = BucketStats()
        self.in_flight = 0
        self.headers_seen = False
        self.answered = False  # a response (of any kind) has come back
        self.header_limit: int | None = None
        self.partition = ""  # the quota partition the answers named (GitHub resource, IETF pk)
        self.delegated = False  # the server's quota is paced by a shared bucket (delegate())
        self._limit_source = "X-RateLimit-Limit"  # the header field the limit came from
        self._rem_peak = 0  # the highest Remaining of this window and the last, plus one
        self._peak_now = self._peak_prev = 0
        self._peak_at = -math.inf  # the boundary the current peak began at
        self.extra: tuple[Quota, ...] = ()  # further quotas the server announced
        self.pause_until = -math.inf
        self.recovering = False
        self.strikes = 0
        self._strike_seq = 0
        self.changes = 0  # bumped whenever the belief changes (the scheduler logs it)
        self.change_note = ""
        start = self.stated or (self.configured, self.guess_window)
        self.estimator = WindowEstimator(start[1])
        self.probe = RateProbe(
            start[0] / start[1],
            cap=None if self.stated is None else self.stated[0] / self.stated[1],
        )
        self._probing = adaptive_only  # the probe's rate is a cap (headerless 429s were seen)
        self._log: list[float] = []
        self._trim_at = 1024
        self._times = SendTimes()
        self._tat = -math.inf
        self._next_seq = 1
        self._returned: list[int] = []
        self._open: list[int] = []  # sequence numbers in flight, ascending
        self._rem_allow: int | None = None
        self._rem_seq = 0
        self._rem_hold = -math.inf
        self._rem_explained = False
        self._run_start = -math.inf
        self._throttles_seen = False  # a 429 without rate headers came back
        self._rtt_lo: deque[tuple[float, float]] = deque()
        self._rtt_hi: deque[tuple[float, float]] = deque()
        self._rtt_count = 0
        self._rtt_times: deque[float] = deque(maxlen=_RTT_KEEP)
        self._margin = 0.0
        self._margin_cap = 1.0
        self._margin_floor = BASE_MARGIN
        self._shown: Belief | None = None
        self._caps: tuple[Quota, ...] = ()
        self._window = self.guess_window
        self._spacing = 1.0
        self._burst_count = 0.0
        self._refresh(None)

    # ---- what is believed ----------------------------------------------------------------------

    @property
    def adaptive(self) -> bool:
        """True while the limit is discovered from 429s: the provider sends no rate headers, or
        responses came back and none carried any."""
        return self.adaptive_only or (self.answered and not self.headers_seen)

    @property
    def mode(self) -> str:
        if self.header_limit is not None or (self.headers_seen and self._rem_peak):
            return "headers"
        return "adaptive" if self.adaptive else "configured"

    @property
    def window(self) -> float:
        """The window of the quota that binds (the slowest spacing)."""
        return self._window

    def delegate(self) -> None:
        """The server's quota is shared with other groups and kept in a bucket of its own (the
        scheduler's): this one keeps only the user's caps and the group's in-flight cap."""
        self.delegated = True
        self._rem_allow = None
        self._refresh(None)

    def _server_quota(self) -> Quota | None:
        """The server's count-per-window quota as believed now (None: rate-only discovery)."""
        if self.delegated and not self.adaptive:
            return None
        if self.adaptive:
            learned = self.probe.learned
            return None if learned is None else (learned.quota, learned.window)
        count = self._count_limit()
        if count is None:
            return self.stated or (self.configured, self.guess_window)
        return count, self.estimator.window

    def _count_limit(self) -> int | None:
        if self.header_limit is not None:
            return self.header_limit
        if not self._rem_peak:
            return None
        # Remaining without a limit: at least what it showed; the documented limit until a
        # refill shows a window from its start
        if self.estimator.last_boundary > -math.inf:
            return self._rem_peak
        return max(self._rem_peak, self.configured)

    def _quotas(self) -> list[Quota]:
        quotas = [q for q in (self._server_quota(), self.stated) if q is not None]
        quotas.extend(self.extra)
        return quotas

    def _binding(self) -> Quota | None:
        """The quota with the slowest spacing (None: only a discovered rate applies)."""
        margin = self._margin
        quotas = self._caps
        if not quotas:
            return None
        return max(quotas, key=lambda q: (q[1] + margin) / q[0])

    def belief(self, now: float) -> Belief:
        """The binding quota and what it rests on (for events, the summary and the snapshot)."""
        quota = self._binding()
        if quota is not None and not (self._probing and self._probe_binds(now, quota)):
            return Belief(quota[0], quota[1], self._evidence(quota), self.mode)
        if quota is None and self.delegated and not self.adaptive:
            limit = self.header_limit or self._rem_peak or self.configured
            return Belief(
                limit, self.estimator.window, "a quota shared with other groups", "headers"
            )
        window = self.guess_window if quota is None else quota[1]
        rate = self.rate(now)  # what goes out: the rate discovered, under the user's caps
        if not math.isfinite(rate):
            rate = self._probe_rate(now)
        limit = max(1, int(rate * window))
        probe = self.probe
        if probe.learned:
            evidence = "learned from 429 stalls"
        elif probe.slow_start:
            evidence = "no 429 yet: probing upwards"
        else:
            evidence = "discovered from 429s"
        return Belief(limit, window, evidence, self.mode)

    def remaining(self, now: float, limit: int, window: float) -> int:
        """Requests it believes may still go in the current window of ``limit`` per ``window``
        seconds (``belief``'s): the server's last Remaining less the sends it had not counted,
        while that window lasts; else ``limit`` less the sends of the last window (and margin)."""
        allow = self._rem_allow
        if allow is not None and now < self._rem_hold:
            return max(0, allow)
        log = self._log
        used = len(log) - bisect_right(log, now - window - self._margin)
        return max(0, limit - used)

    def _probe_binds(self, now: float, quota: Quota) -> bool:
        return self._probe_rate(now) * (quota[1] + self._margin) < quota[0]

    def _evidence(self, quota: Quota) -> str:
        if quota == self.stated and self.stated is not None:
            return "your --limit"
        if quota in self.extra:
            return "announced policy"
        if self.adaptive:
            return "learned from 429 stalls" if self.probe.learned else "discovered from 429s"
        if self.header_limit is None and not self._rem_peak:
            return "documented default"
        source = self._limit_source if self.header_limit is not None else "Remaining"
        return f"{source}, window {self._window_evidence()}"

    def _window_evidence(self) -> str:
        return {
            "header": "announced",
            "guess": "documented (not yet confirmed)",
            "spans": "inferred from counted spans",
            "confirmed": "documented, consistent with the answers",
            "refills": "inferred from refills",
        }.get(self.estimator.evidence, self.estimator.evidence)

    def margin(self) -> float:
        """Seconds added to the window: covers the spread of one-way delays (see docstring)."""
        return self._margin

    def _update_margin(self) -> None:
        """Recompute ``margin()`` (after a change of window; ``_rtt_sample`` keeps it too)."""
        window = self._window
        self._margin_floor = min(self.base_margin, MARGIN_SHARE * window)
        self._margin_cap = max(self._margin_floor, min(self.max_margin, 0.1 * window))
        m = self._margin_floor
        if self._rtt_lo and self._rtt_hi:
            spread = self._rtt_hi[0][1]
            if self._rtt_count >= _RTT_SAMPLES:
                spread -= self._rtt_lo[0][1]
            m = max(m, spread)
        self._margin = min(m, self._margin_cap)

    def _probe_rate(self, now: float) -> float:
        return self.probe.rate(now)

    def limit(self, now: float) -> int:
        """Requests allowed per ``window`` right now (the binding quota)."""
        return self.belief(now).limit

    def interval(self, now: float) -> float:
        """Seconds between sends: the slowest spacing of every quota and the user's ceiling."""
        spacing = self._spacing
        if self._probing:
            rate = self._probe_rate(now)
            spacing = max(spacing, 1.0 / rate) if rate > 0 else math.inf
        return spacing

    def rate(self, now: float) -> float:
        """Requests per second the bucket admits at most right now (inf: nothing paces it)."""
        interval = self.interval(now)
        return 1.0 / interval if interval > 0 else math.inf

    def _refresh(self, now: float | None) -> None:
        """Recompute the cached quotas and spacing after a change of belief (repricing the GCRA
        slots already taken: a limit the headers raise frees the pace at once)."""
        before = self._spacing
        self._caps = tuple(self._quotas())
        binding = self._binding()
        self._window = self.guess_window if binding is None else binding[1]
        self._update_margin()
        margin = self._margin
        binding = self._binding()
        spacing = 0.0 if binding is None else (binding[1] + margin) / binding[0]
        self._burst_count = 0.0 if binding is None else self.burst * binding[0]
        if self.ceiling is not None:  # the user's ceiling, with a window's margin share
            spacing = max(spacing, (1.0 + MARGIN_SHARE) / self.ceiling)
        self._spacing = spacing
        if now is not None and self._tat > now and spacing != before and before > 0 and spacing:
            self._tat = now + (self._tat - now) * (spacing / before)
        self._note_change(now)

    def _note_change(self, now: float | None) -> None:
        """Count a change of the believed limit, window (by more than 5 %) or mode: what the
        scheduler logs (a change of evidence alone is kept, not logged)."""
        shown = self.belief(now if now is not None else 0.0)
        old = self._shown
        same = old is not None and old.mode == shown.mode and old.limit == shown.limit
        if (
            old is not None
            and same
            and abs(shown.window - old.window) <= _WINDOW_CHANGE * old.window
        ):
            self._shown = Belief(old.limit, old.window, shown.evidence, old.mode)
            return
        if old is not None:
            self.changes += 1
            self.change_note = f"{old.text()} -> {shown.text()} ({shown.evidence})"
        self._shown = shown

    # ---- admission -----------------------------------------------------------------------------

    def hold_until(self, now: float) -> float:
        """When the provider's own signals (Retry-After, exhausted Remaining) let sends go."""
        t = self.pause_until
        allow = self._rem_allow
        if allow is not None and allow <= 0:
            if now >= self._rem_hold:
                # the window we were told about has freed; its late answers no longer count
                self._rem_allow = None
                self._rem_seq = self._next_seq - 1
            elif not self._rem_explained:
                t = max(t, self._rem_hold)
        return t

    def _log_explains(self, seq: int, quota: Quota | None, counted: int, trusted: bool) -> bool:
        """Whether our own sends explain the count the server gave for send ``seq`` (then the
        log holds the next send out of the exhausted window by itself: no need to wait for a
        reset rounded up). Only when that window is known: announced, or inferred."""
        sent_at = self._times.at(seq)
        if quota is None or not trusted or sent_at is None:
            return False
        log = self._log
        ours = bisect_right(log, sent_at) - bisect_left(log, sent_at - quota[1] - self._margin)
        return ours >= counted

    def wait_time(self, now: float, retry: bool = False) -> float:
        """Seconds until a (re)try may be sent; ``math.inf`` while the in-flight cap is reached."""
        if self.in_flight >= (1 if self.recovering else self.max_in_flight):
            return math.inf
        allow = self._rem_allow
        t = self.hold_until(now) if allow is not None and allow <= 0 else self.pause_until
        if t < now:
            t = now
        margin = self._margin
        log = self._log
        n = len(log)
        for quota, span in self._caps:
            if n >= quota:
                free = log[-quota] + span + margin
                if free > t:
                    t = free
        spacing = self.interval(now) if self._probing else self._spacing
        burst = self._burst_count
        tolerance = 0.0 if retry or burst <= 1.0 else (burst - 1.0) * spacing
        # a pacing wait shorter than ``resolution`` goes at once: no timer would wake sooner,
        # and a fast quota (the sandbox's: 60 ns apart) would send every request via a timer
        gcra = self._tat - tolerance
        if gcra - t >= (self.resolution if not self._probing else self.resolution * 0.1):
            t = gcra
        if retry:
            t = max(t, now + self.budget.wait_time(now))
        return t - now

    def send(self, now: float, retry: bool = False) -> tuple[int, float]:
        """Record a send at ``now``; returns (sequence number, GCRA cost)."""
        cost = self.interval(now) if self._probing else self._spacing
        if self._probing:  # (measured against the probe's own pace: a slower cap freezes it)
            self.probe.on_send(now, 1.0 / self.probe.rate(now))
        # a timer that fires late (event loops wake at ~1 ms granularity) may catch up on the
        # slots it overslept, up to ``slack`` seconds' worth; the log still bounds every window
        # (not when discovering a rate, perhaps a leaky bucket's, which refuses anything early)
        slack = self.slack if not self._probing else 0.0
        tat, earliest = self._tat, now - slack
        if tat == -math.inf:
            tat = now
        self._tat = (tat if tat >= earliest else earliest) + cost
        log = self._log
        log.append(now)
        if len(log) > self._trim_at:
            self._trim(now)
        self.in_flight += 1
        seq = self._next_seq
        self._next_seq = seq + 1
        self._times.add(seq, now)
        self._open.append(seq)
        if self._rem_allow is not None:
            self._rem_allow -= 1
        stats = self.stats
        stats.sent += 1
        if retry:
            stats.retries += 1
            self.budget.spend(now)
        return seq, cost

    def _trim(self, now: float) -> None:
        spans = [w for _, w in self._caps] or [self.guess_window]
        horizon = max(*spans, self.estimator.window, self.guess_window) * 2.0 + self.max_margin
        cut = bisect_right(self._log, now - horizon)
        if cut:
            del self._log[:cut]
        self._times.trim(now - horizon)
        self._trim_at = max(1024, 2 * len(self._log))

    def unsend(self, now: float, seq: int, sent_at: float, cost: float, retry: bool) -> None:
        """Undo ``send`` for a permit that was never used (its waiter was cancelled)."""
        log = self._log
        i = bisect_right(log, sent_at) - 1
        if i >= 0 and log[i] == sent_at:
            del log[i]
        self._tat -= cost
        self.in_flight = max(0, self.in_flight - 1)
        self._times.refuse(seq)  # it never went out: the server did not count it
        self._close(seq)
        self.stats.sent -= 1
        self.stats.returned += 1
        if retry:
            self.stats.retries -= 1
            self.budget.refund(now)
        if self._rem_allow is not None and seq > self._rem_seq:
            self._rem_allow += 1
        insort(self._returned, seq)
        if len(self._returned) > 4096:
            del self._returned[:2048]

    def _close(self, seq: int) -> None:
        i = bisect_left(self._open, seq)
        if i < len(self._open) and self._open[i] == seq:
            del self._open[i]

    def _not_counted(self, seq: int) -> int:
        """Sends the server may not have counted when it answered ``seq`` with a Remaining.

        Every send after ``seq`` (it counts in the same window) and every earlier one still
        unanswered (it may have arrived after ``seq``).
        """
        later = self._next_seq - 1 - seq
        if self._returned:
            later -= len(self._returned) - bisect_right(self._returned, seq)
        return (later if later > 0 else 0) + bisect_left(self._open, seq)

    # ---- feedback ------------------------------------------------------------------------------

    def feedback(
        self,
        now: float,
        *,
        seq: int,
        sent_at: float,
        kind: FeedbackKind,
        headers: Mapping[str, str] | None = None,
        wall_now: float = 0.0,
        status: int | None = None,
    ) -> None:
        """Take the outcome of send ``seq``: counts, RTT, headers, pauses and adaptation.

        ``status`` 503 on an ERROR without Retry-After also counts as congestion (nginx's
        ``limit_req`` refuses with 503 unless told otherwise)."""
        self.in_flight = self.in_flight - 1 if self.in_flight > 0 else 0
        open_ = self._open
        if open_ and open_[0] == seq:  # answers mostly come back in order
            del open_[0]
        else:
            self._close(seq)
        if kind is _NO_RESPONSE:
            self.stats.no_response += 1
            self._times.unsure(seq)
        else:
            self.answered = True
            self._rtt_sample(now, now - sent_at)
        info = self._read(headers, wall_now) if headers else None
        if info is not None:
            self._take_headers(now, seq, kind, info)
        elif self.answered and not self.headers_seen and not self._probing:
            # answers come back without rate headers: the rate is discovered from 429s
            self._probing = True
            self._refresh(now)
        if kind is _OK:
            self._ok(now, seq, sent_at)
        elif kind is _ERROR:
            self.stats.errors += 1
            self._times.unsure(seq)
            if info is not None and info.retry_after is not None:
                self.pause_until = max(self.pause_until, now + info.retry_after)
            elif status == 503 and (info is None or not info.has_rate_headers):
                self._congested(now, seq, sent_at, info)
        elif kind is _THROTTLED:
            self._throttled(now, seq, sent_at, info)

    def _read(self, headers: Mapping[str, str], wall_now: float) -> RateLimitInfo | None:
        plain = plain_counts(headers)
        if plain is not None:
            limit, remaining = plain
            if limit is None and remaining is None:
                return None
            return counts(limit, remaining)
        info = parse_all(headers, wall_now=wall_now, window=self.window)
        if info.has_rate_headers or info.retry_after is not None or info.reset is not None:
            return info
        return None

    def _ok(self, now: float, seq: int, sent_at: float) -> None:
        self.stats.ok += 1
        self.budget.success(now)
        self.strikes = 0
        self.recovering = False
        if self._probing:
            probe = self.probe
            learned, r_max = probe.learned, probe.r_max
            probe.on_ok(now, seq, sent_at)
            if probe.learned is not learned or probe.r_max != r_max:
                self._refresh(now)

    def _throttled(self, now: float, seq: int, sent_at: float, info: RateLimitInfo | None) -> None:
        self.stats.throttled += 1
        self._times.refuse(seq)
        retry_after = info.retry_after if info is not None else None
        if retry_after is not None:
            self.pause_until = max(self.pause_until, now + retry_after)
        if info is None or not info.has_rate_headers:
            self._congested(now, seq, sent_at, info)

    def _congested(self, now: float, seq: int, sent_at: float, info: RateLimitInfo | None) -> None:
        """A refusal that says nothing of the quota: discovery takes it, and the group pauses
        briefly (one request at a time until an answer is OK again)."""
        retry_after = info.retry_after if info is not None else None
        if not self._probing or not self._throttles_seen:
            rate = self.rate(now)
            self.probe.restart(now, rate if math.isfinite(rate) else self.probe.start)
        self._probing = self._throttles_seen = True
        rate = self._probe_rate(now)
        probe = self.probe
        learned = probe.learned
        probe.on_throttle(now, seq, sent_at, rate=rate, last_sent=self._next_seq - 1)
        if probe.learned is not learned or probe.t_event == now:
            self._refresh(now)
        if retry_after is None:
            reset = info.reset if info is not None else None
            pause = reset if reset is not None else self._strike_pause(seq, self.rate(now))
            self.pause_until = max(self.pause_until, now + pause)
            if reset is None:
                self.recovering = True

    def _take_headers(self, now: float, seq: int, kind: FeedbackKind, info: RateLimitInfo) -> None:
        if not info.has_rate_headers:
            return
        first = not self.headers_seen
        self.headers_seen = True
        if info.partition:
            self.partition = info.partition
        if first and not self._throttles_seen:
            self._probing = False  # the headers say the quota: nothing to discover
        self.probe.learning = False  # (a headerless 429 behind headers only cuts the rate)
        changed = first
        if info.limit is not None and info.source:
            self._limit_source = info.source
        if info.limit is not None and info.limit != self.header_limit:
            changed = True
            self.estimator.rebase()  # the counts change basis
            if self.header_limit is None:
                self.estimator.restart(self._window_guess(info.limit))
            self.header_limit = info.limit
        if info.window is not None and info.window != self.estimator.explicit:
            self.estimator.declare(info.window)
            changed = True
        extra = self._announced(info)
        if extra != self.extra:
            self.extra, changed = extra, True
        if info.remaining is not None:
            changed = self._take_remaining(now, seq, kind, info) or changed
        if changed:
            self._refresh(now)

    def _window_guess(self, limit: int) -> float:
        """The first guess at the window of an announced limit: the user's window when the
        header's count is the one the user stated, else the documented window."""
        if self.stated is not None and self.stated[0] == limit:
            return self.stated[1]
        return self.guess_window

    def _announced(self, info: RateLimitInfo) -> tuple[Quota, ...]:
        """The quotas the server announced with a window, beside the primary one."""
        primary = (info.limit, info.window)
        out = []
        for p in info.policies:
            if p.window is not None and (p.quota, p.window) != primary and 0 < p.quota <= MAX_LIMIT:
                out.append((p.quota, p.window))
        return tuple(dict.fromkeys(out))

    def _take_remaining(
        self, now: float, seq: int, kind: FeedbackKind, info: RateLimitInfo
    ) -> bool:
        remaining = info.remaining
        assert remaining is not None
        throttled = kind is _THROTTLED
        basis = self._count_limit()
        changed = False if throttled else self._note_peak(remaining)
        # a 429 that says quota remains was refused by another limit (a secondary or burst
        # limit, a provider-wide storm): it says nothing of how long this quota's window is
        other_limit = throttled and remaining > 0
        if throttled:
            remaining = 0  # a 429 says this window is spent, whatever else it claims
        quota, inferred = self._remaining_quota(info)
        estimator = self.estimator
        if quota is not None and inferred and self.infer_window and not other_limit:
            before = estimator.window
            count = quota[0] + 1 if throttled else quota[0] - remaining
            estimator.observe(
                now,
                seq,
                count,
                self._times,
                ok=not throttled,
                tolerance=self._reordering(seq),
                jitter=self._margin,
                end=self._reset_end(now, info),
                exact=self.header_limit is not None or not inferred,
            )
            if abs(estimator.window - before) > _REPACE * before:
                changed = True  # (smaller moves wait: repricing on every answer costs)
        if self._count_limit() != basis:  # a peak or a refill changed the limit: the counts
            self.estimator.rebase()  # change basis (that is not a refill)
            changed = True
        if self._run_start == -math.inf:
            self._run_start = now  # the first answer: its window ends within one window
        if seq > self._rem_seq and not self.delegated:
            self._rem_seq = seq
            self._rem_allow = remaining - self._not_counted(seq)
            trusted = not inferred or estimator.evidence != "guess"
            counted = 0 if quota is None else quota[0] - remaining
            self._rem_explained = self._log_explains(seq, quota, counted, trusted)
            self._rem_hold = self._window_end(now, info)
        return changed

    @staticmethod
    def _reset_end(now: float, info: RateLimitInfo) -> tuple[float, float] | None:
        """When the window the answer was counted in ends (our clock), and how far off that may
        be: the reset's resolution, plus a second of clock difference for an epoch read
        against our clock (no ``Date``); an epoch reset at or before our now says nothing."""
        reset = info.reset
        if reset is None and info.retry_after is not None:
            # no reset, but a Retry-After beside the counts (Flask-Limiter sends it on every
            # answer): the seconds until the window frees, whole and truncated
            return now + info.retry_after, 1.0
        if reset is None or (info.reset_epoch and reset <= 0.0):
            return None
        slack = info.reset_quantum + (1.0 if info.reset_epoch else 0.0)
        return now + reset, slack

    def _reordering(self, seq: int) -> int:
        """How many sends around ``seq`` may have reached the server in another order: those
        still in flight, and twice those sent within one delay spread of each other."""
        spacing = self._spacing if self._spacing > 0 else self.interval(0.0)
        around = 2 * math.ceil(self._margin / spacing) if spacing > 0 else self.max_in_flight
        return max(bisect_left(self._open, seq), min(around, 2 * self.max_in_flight)) + 1

    def _note_peak(self, remaining: int) -> bool:
        """Keep the highest Remaining (plus one) of this window and the one before it: without
        a limit header that is the limit, and a lowered one shows within two windows. True when
        that changes what the group believes."""
        boundary = self.estimator.last_boundary
        if boundary != self._peak_at:  # a new window began
            self._peak_at = boundary
            self._peak_prev, self._peak_now = self._peak_now, 0
        if remaining + 1 > self._peak_now:
            self._peak_now = remaining + 1
        peak = max(self._peak_now, self._peak_prev)
        if peak == self._rem_peak:
            return False
        before = self._count_limit()
        self._rem_peak = peak
        return self.header_limit is None and self._count_limit() != before

    def _remaining_quota(self, info: RateLimitInfo) -> tuple[Quota | None, bool]:
        """The quota the binding Remaining belongs to, and whether its window is inferred."""
        policy = info.remaining_policy
        if policy is not None and policy.window is not None:
            return (policy.quota, policy.window), False
        count = self._count_limit()
        if count is None:
            return None, True
        if self.estimator.explicit is not None:
            return (count, self.estimator.explicit), False
        return (count, self.estimator.window), True

    def _window_end(self, now: float, info: RateLimitInfo) -> float:
        reset = info.reset if info.reset is not None else info.retry_after
        if reset is not None:
            if reset <= 0:
                return now + min(1.0, self.window / 10.0)
            return now + reset
        start = max(self.estimator.last_boundary, self._run_start)
        end = start + self.window + self._margin
        if end > now:
            return end
        return now + self._strike_pause(self._rem_seq)

    def _strike_pause(self, seq: int, rate: float | None = None) -> float:
        """Exponential pause after a 429 we cannot place in a window: ``p * 2 ** (n - 1)``, ``n``
        counting the refused probes (requests sent after the previous pause began; the others
        were in flight and belong to the same refusal), capped at ``window / 15`` (at least
        50 ms, at most half a window) so the end of a long stall is found within that. ``p``
        is one send interval at ``rate`` when one is given (a leaky bucket lets a request
        through one interval later), else window / 60; within [0.01 s, 1 s]."""
        if seq > self._strike_seq:
            self.strikes += 1
            self._strike_seq = self._next_seq - 1
        window = self.window
        base = 1.0 / rate if rate else window / 60.0
        base = min(1.0, max(0.01, base))
        cap = min(max(base, window / 2.0), max(0.05, window / 15.0))
        return min(cap, base * 2.0 ** min(max(self.strikes, 1) - 1, 30))

    def _rtt_sample(self, now: float, rtt: float) -> None:
        """Keep the lowest and highest RTT of the last window -- and of the last 32 answers at
        least, so a window with few sends still sees the spread -- (monotonic deques) and the
        margin they give (what ``_update_margin`` computes, inlined: this runs per response)."""
        if not 0.0 <= rtt < math.inf:  # also False for NaN
            return
        recent = self._rtt_times
        recent.append(now)
        edge = now - self._window
        if recent[0] < edge:
            edge = recent[0]
        lo, hi, sample = self._rtt_lo, self._rtt_hi, (now, rtt)
        while lo and lo[-1][1] >= rtt:
            lo.pop()
        lo.append(sample)
        while hi and hi[-1][1] <= rtt:
            hi.pop()
        hi.append(sample)
        while lo[0][0] < edge:
            lo.popleft()
        while hi[0][0] < edge:
            hi.popleft()
        self._rtt_count += 1
        spread, m = hi[0][1], self._margin_floor
        if self._rtt_count >= _RTT_SAMPLES:
            spread -= lo[0][1]
        if spread > m:
            m = spread
        self._margin = m if m < self._margin_cap else self._margin_cap
