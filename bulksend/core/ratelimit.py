"""Rate-limit header parsing and the admission math of one endpoint group (pure, sans-I/O).

Nothing here reads a clock: every method takes ``now`` (monotonic seconds, the event loop's time in
production) and, where an HTTP-date or an epoch timestamp must be read, ``wall_now`` (Unix time).
The asyncio wrapper is ``bulksend.scheduler``; a discrete-event simulator drives the same code in
``tests/sim.py``.

Pacing
------
A provider counts requests in fixed windows whose phase we do not know. ``Bucket`` therefore paces
with a sliding-window log: never more than ``L`` sends within any ``W + margin`` seconds. If the
one-way delays of two requests differ by less than ``margin``, any ``L + 1`` consecutive arrivals
then span more than ``W`` seconds, so no fixed window of the server -- whatever its phase -- sees
more than ``L``; and the long-run rate is ``L / (W + margin)``, about 99.9 % of the quota for a
60 s window. ``margin`` starts at 50 ms, or 1 % of a window shorter than 5 s (so a 1 s window
keeps 99 % of its quota, not 95 %), and follows the spread of the round-trip times seen over the
last window (capped at 1 s and at ``W / 10``). Requests in flight count against the window they
were sent in. On top of the log, sends are spaced by a GCRA at ``(W + margin) / L`` (by default
with no burst tolerance: a tolerance lets a burst through after every stall, which the log then
replays window after window), so the quota is spread evenly over the window. Only slots overdue
by at most ``slack`` (5 ms) may be caught up, because event-loop timers wake up late.

Headers (read from every response, case-insensitively)
------------------------------------------------------
* ``X-RateLimit-Limit`` (per group window unless a ``;w=`` parameter says otherwise),
  ``RateLimit-Limit``, IETF ``RateLimit-Policy: "p";q=50;w=60`` (several policies: all are
  enforced by the log, the shortest-window one sets the spacing): the limit, adopted at once.
* ``X-RateLimit-Remaining``, ``RateLimit-Remaining``, IETF ``RateLimit: "p";r=12;t=30``: the
  remaining quota as the server counted it when the request arrived. It is adopted at once,
  minus the requests we sent after that one (they count in the same window): when the adopted
  value reaches 0 nothing goes out until the window frees. The window end is the reset the server
  gave (``X-RateLimit-Reset`` as seconds-until, an epoch in seconds (> 1e9) or milliseconds
  (> 1e12), or an HTTP-date; ``X-RateLimit-Reset-After``; IETF ``t``); without one it is bounded by
  ``W`` after the first response of the current window (the first response after Remaining last
  went up), which is a safe upper bound.
* A response without ``X-RateLimit-Limit`` but with Remaining proves ``limit >= remaining + 1``:
  the configured limit is raised to that if it was lower.
* ``Retry-After`` (seconds, a decimal or an HTTP-date) pauses the whole group.
* Malformed values (text, negative numbers, exponents, NaN) are ignored; dates in the past read as
  0; waits are capped at one day (the caller turns any wait over its ``max_wait`` into a
  deferral).

Adaptation when the limit is unknown (``headers_expected=False``, or responses without headers)
-----------------------------------------------------------------------------------------------
Until the first response the configured limit is used as is.
The per-window budget ``B`` follows a CUBIC-like rule (after botocore's adaptive retry mode, in
units of windows instead of seconds), applied through the same sliding-window log:

1. Start: ``B = configured limit``. Slow start while no throttle has been seen: ``B`` doubles every
   window, ``B(t) = B0 * 2 ** (t / W)``.
2. On a 429 for a request sent after the last cut, once an OK has come back since that cut (one
   cut per congestion event; 429s while probing an exhausted window are the same event):
   ``Wmax = min(B, requests sent in the last W + margin)`` (what the server demonstrably saw; in
   the first window the count is scaled up to a whole window), ``B = 0.85 * Wmax``.
3. Afterwards ``B(t) = Wmax * (1 + 0.0375 * (t/W - 2) ** 3)``: back to ``Wmax`` after two windows,
   a plateau there, then a probe upwards that is gentle at first (+3.75 % one window later).
4. ``B`` never exceeds ``max(B after the last cut, 2 * requests sent in the last window + 1)``, so
   an idle or slow-fed group does not build up a budget it never tested.
5. A 429 with no rate headers at all also pauses the group for ``p * 2 ** (n - 1)`` seconds
   (``p = W / 60`` clamped to [0.05, 1], capped at ``W / 2``; ``n`` counts consecutive such 429s)
   and lets only one request be in flight until a response is OK again, so an exhausted fixed
   window costs a handful of 429s, not a storm.

A user ceiling (``ceiling`` requests/s) caps the limit in every mode: ``min(L, ceiling * W)``.
"""

from __future__ import annotations

import enum
import math
import re
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy, istr

from bulksend.core.backoff import RetryBudget

__all__ = [
    "MAX_DELAY",
    "Bucket",
    "BucketStats",
    "FeedbackKind",
    "RateLimitInfo",
    "lower_headers",
    "parse_headers",
    "parse_http_date",
    "parse_reset",
    "parse_retry_after",
    "parse_seconds",
    "plain_counts",
]

#: the longest wait any header can ask for (absurd values are capped to this)
MAX_DELAY = 86_400.0
#: seconds added to every window at the start of a send (see Pacing) ...
BASE_MARGIN = 0.05
#: ... or this share of the window, when that is less
MARGIN_SHARE = 0.01
_MAX_LIMIT = 10_000_000
_EPOCH_S = 1e9
_EPOCH_MS = 1e12
_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]*)?$|^\.[0-9]+$")

# CUBIC-like adaptation (see the module docstring)
BETA = 0.85
CUBIC_C = (1.0 - BETA) / 8.0  # two windows from a cut back to Wmax
CUBIC_K = ((1.0 - BETA) / CUBIC_C) ** (1.0 / 3.0)  # windows from a cut back to Wmax (= 2)


class FeedbackKind(enum.Enum):
    """What a response (or its absence) says about the provider's quota."""

    OK = "ok"  # any response that was not a throttle or a server error
    THROTTLED = "throttled"  # 429 (or 503 with Retry-After)
    ERROR = "error"  # 5xx
    NO_RESPONSE = "no_response"  # timeout / connection error


_OK, _THROTTLED, _ERROR, _NO_RESPONSE = (
    FeedbackKind.OK,
    FeedbackKind.THROTTLED,
    FeedbackKind.ERROR,
    FeedbackKind.NO_RESPONSE,
)


# --------------------------------------------------------------------------------------------
# header parsing


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers keyed by lower-case name (works for plain dicts and aiohttp's CIMultiDictProxy).

    A repeated header keeps its first value, as ``CIMultiDict.get`` does.
    """
    out: dict[str, str] = {}
    for key, value in headers.items():
        out.setdefault(str(key).lower(), str(value))
    return out


def parse_seconds(value: str | None) -> float | None:
    """A non-negative decimal number of seconds (``"7"``, ``"2.0"``, ``".5"``), else ``None``."""
    if value is None:
        return None
    text = value.strip()
    if not _NUMBER.match(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (IMF-fixdate and the obsolete forms) as Unix time, else ``None``."""
    if value is None or not value.strip() or not any(c.isalpha() for c in value):
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        stamp = when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return stamp if math.isfinite(stamp) else None


def _clamp_delay(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_DELAY)


def parse_retry_after(value: str | None, *, wall_now: float) -> float | None:
    """Retry-After as seconds from now: delay-seconds, a decimal, or an HTTP-date.

    Dates in the past read as 0; absurd values are capped at ``MAX_DELAY``.
    """
    seconds = parse_seconds(value)
    if seconds is not None:
        return _clamp_delay(seconds)
    stamp = parse_http_date(value)
    if stamp is not None:
        return _clamp_delay(stamp - wall_now)
    return None


def parse_reset(value: str | None, *, wall_now: float, window: float) -> float | None:
    """X-RateLimit-Reset as seconds from now.

    Numbers above 1e12 are epoch milliseconds, above 1e9 epoch seconds; otherwise seconds until
    the reset -- unless the value is more than 1.5 windows yet its thousandth is within 1.5
    windows, which reads as milliseconds until the reset. HTTP-dates are accepted too.
    """
    number = parse_seconds(value)
    if number is None:
        stamp = parse_http_date(value)
        return None if stamp is None else _clamp_delay(stamp - wall_now)
    if number >= _EPOCH_MS:
        return _clamp_delay(number / 1000.0 - wall_now)
    if number >= _EPOCH_S:
        return _clamp_delay(number - wall_now)
    span = max(1.5 * window, 1.5)
    if number > span and number / 1000.0 <= span:
        return _clamp_delay(number / 1000.0)
    return _clamp_delay(number)


def _parse_count(value: str | None) -> int | None:
    """A non-negative integer count (``"600"``, ``"600.0"``); a leading one before ``,``/``;``."""
    if value is None:
        return None
    text = value.split(",", 1)[0].split(";", 1)[0].strip()
    number = parse_seconds(text)
    if number is None or number != int(number):
        return None
    return int(number)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (enough of RFC 8941 for these fields)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


@dataclass(frozen=True, slots=True)
class _Member:
    key: str  # the item (policy name or bare value) or, for ``k=v``, the key
    value: str | None  # ``v`` of a ``k=v`` dictionary member
    params: Mapping[str, str]


def _members(value: str) -> list[_Member]:
    out = []
    for raw in _split(value, ","):
        pieces = _split(raw, ";")
        if not pieces:
            continue
        head, params = pieces[0], {}
        for piece in pieces[1:]:
            k, _, v = piece.partition("=")
            params[k.strip().lower()] = _unquote(v) if v else "?1"
        if "=" in head and not head.startswith('"'):
            k, _, v = head.partition("=")
            out.append(_Member(k.strip().lower(), _unquote(v), params))
        else:
            out.append(_Member(_unquote(head), None, params))
    return out


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one response's headers say, with delays in seconds from the response."""

    limit: int | None = None
    window: float | None = None  # seconds, when a header said so
    policies: tuple[tuple[int, float], ...] = ()  # every (quota, window) the server announced
    remaining: int | None = None
    reset: float | None = None  # seconds until the window frees
    retry_after: float | None = None

    @property
    def has_rate_headers(self) -> bool:
        return self.limit is not None or self.remaining is not None or bool(self.policies)


_EMPTY = RateLimitInfo()


def _window_param(params: Mapping[str, str]) -> float | None:
    w = parse_seconds(params.get("w"))
    return w if w is not None and w > 0 else None


def _limit_field(value: str, window: float) -> tuple[int | None, list[tuple[int, float]]]:
    """``600`` or the draft form ``100, 100;w=60, 1000;w=3600``: (first limit, all policies)."""
    first: int | None = None
    policies = []
    for member in _members(value):
        count = _parse_count(member.key if member.value is None else None)
        if count is None:
            continue
        w = _window_param(member.params) or window
        if first is None:
            first = count
        policies.append((count, w))
    return first, policies


#: every field ``parse_headers`` reads besides X-RateLimit-Limit and X-RateLimit-Remaining
_OTHER_FIELDS = frozenset(
    {
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
        "retry-after",
    }
)
_OTHER_KEYS = tuple(istr(name) for name in sorted(_OTHER_FIELDS))
_LIMIT_KEY = istr("x-ratelimit-limit")
_REMAINING_KEY = istr("x-ratelimit-remaining")
#: case-insensitive mappings (aiohttp's headers): looked up by name instead of scanned
_CI_TYPES = (CIMultiDictProxy, CIMultiDict)
#: plain counts up to this many digits read exactly as the full parser reads them (via float)
_PLAIN_DIGITS = 15


def _plain_fields(headers: Mapping[str, str]) -> tuple[str | None, str | None] | None:
    """The X-RateLimit-Limit and -Remaining values (first of each) when the response has no
    other rate-limit field; None when it has one."""
    if isinstance(headers, _CI_TYPES):
        if not headers.keys().isdisjoint(_OTHER_KEYS):
            return None
        return headers.get(_LIMIT_KEY), headers.get(_REMAINING_KEY)
    limit = remaining = None
    for key, value in headers.items():
        name = str(key).lower()
        if name == "x-ratelimit-limit":
            if limit is None:
                limit = str(value)
        elif name == "x-ratelimit-remaining":
            if remaining is None:
                remaining = str(value)
        elif name in _OTHER_FIELDS:
            return None
    return limit, remaining


def plain_counts(headers: Mapping[str, str]) -> tuple[int | None, int | None] | None:
    """(limit, remaining) when the response's only rate-limit fields are X-RateLimit-Limit and
    X-RateLimit-Remaining as plain integers (or absent) -- the common case, which needs none of
    ``parse_headers``' machinery; None when the full parser is needed.

    The figures are what ``parse_headers`` returns for the same headers: a limit outside
    ``1..10,000,000`` reads as None, the window as the group's, no reset, no Retry-After.
    """
    if isinstance(headers, _CI_TYPES):  # the common case, inlined from _plain_fields
        if not headers.keys().isdisjoint(_OTHER_KEYS):
            return None
        text, rem_text = headers.get(_LIMIT_KEY), headers.get(_REMAINING_KEY)
    else:
        fields = _plain_fields(headers)
        if fields is None:
            return None
        text, rem_text = fields
    limit = remaining = None
    if text is not None:
        if not (len(text) <= _PLAIN_DIGITS and text.isdigit() and text.isascii()):
            return None
        limit = int(text)
        if not 0 < limit <= _MAX_LIMIT:
            limit = None
    if rem_text is not None:
        if not (len(rem_text) <= _PLAIN_DIGITS and rem_text.isdigit() and rem_text.isascii()):
            return None
        remaining = int(rem_text)
    return limit, remaining


def parse_headers(
    headers: Mapping[str, str], *, wall_now: float, window: float = 60.0
) -> RateLimitInfo:
    """Read every rate-limit field of one response (see the module docstring).

    ``window`` is the group's window, the unit of a bare ``X-RateLimit-Limit``. Pure: HTTP-dates
    and epoch timestamps are turned into delays with ``wall_now``.
    """
    plain = plain_counts(headers)
    if plain is not None:
        limit, remaining = plain
        if limit is None and remaining is None:
            return _EMPTY
        return RateLimitInfo(limit=limit, remaining=remaining)
    return _parse_all(headers, wall_now=wall_now, window=window)


def _parse_all(headers: Mapping[str, str], *, wall_now: float, window: float) -> RateLimitInfo:
    """``parse_headers`` without its shortcut for plain X-RateLimit-Limit/-Remaining."""
    h = headers if isinstance(headers, dict) and all(k.islower() for k in headers) else None
    h = h if h is not None else lower_headers(headers)

    limit: int | None = None
    limit_window: float | None = None
    policies: list[tuple[int, float]] = []
    candidates: list[tuple[int, float | None]] = []  # (remaining, reset)

    # X-RateLimit-* (the providers' documented headers) first
    if "x-ratelimit-limit" in h:
        first, pols = _limit_field(h["x-ratelimit-limit"], window)
        if first is not None and 0 < first <= _MAX_LIMIT:
            limit = first
            limit_window = pols[0][1] if pols and pols[0][1] != window else None
    x_reset = parse_reset(h.get("x-ratelimit-reset"), wall_now=wall_now, window=window)
    if x_reset is None:
        x_reset = parse_seconds(h.get("x-ratelimit-reset-after"))
        x_reset = None if x_reset is None else _clamp_delay(x_reset)
    x_remaining = _parse_count(h.get("x-ratelimit-remaining"))
    if x_remaining is not None:
        candidates.append((x_remaining, x_reset))

    # IETF drafts: RateLimit-Limit/-Remaining/-Reset (<= 06), RateLimit: limit=,remaining=,reset=
    # (07), RateLimit-Policy + RateLimit: "name";r=;t= (08 and later)
    if "ratelimit-limit" in h:
        first, pols = _limit_field(h["ratelimit-limit"], window)
        if first is not None and 0 < first <= _MAX_LIMIT:
            policies.extend(p for p in pols if 0 < p[0] <= _MAX_LIMIT)
            if limit is None:
                limit = first
    ietf_reset = parse_seconds(h.get("ratelimit-reset"))
    ietf_remaining = _parse_count(h.get("ratelimit-remaining"))
    if ietf_remaining is not None:
        candidates.append((ietf_remaining, ietf_reset))
    if "ratelimit-policy" in h:
        for member in _members(h["ratelimit-policy"]):
            q = _parse_count(member.params.get("q"))
            if q is not None and 0 < q <= _MAX_LIMIT:
                policies.append((q, _window_param(member.params) or window))
    if "ratelimit" in h:
        members = _members(h["ratelimit"])
        pairs = {m.key: m.value for m in members if m.value is not None}
        if "remaining" in pairs:  # draft 07 dictionary
            rem = _parse_count(pairs.get("remaining"))
            if rem is not None:
                candidates.append((rem, parse_seconds(pairs.get("reset"))))
            lim = _parse_count(pairs.get("limit"))
            if lim is not None and 0 < lim <= _MAX_LIMIT:
                policies.append((lim, window))
        for member in members:
            if member.value is not None:
                continue
            rem = _parse_count(member.params.get("r"))
            if rem is not None:
                candidates.append((rem, parse_seconds(member.params.get("t"))))

    if limit is None and policies:
        limit, limit_window = min(policies, key=lambda p: (p[1], p[0]))
        if limit_window == window:
            limit_window = None

    remaining: int | None = None
    reset: float | None = None
    if candidates:
        remaining, reset = min(candidates, key=lambda c: (c[0], -(c[1] or 0.0)))
        if reset is None:
            reset = x_reset if x_reset is not None else ietf_reset
        if reset is not None:
            reset = _clamp_delay(reset)
    elif x_reset is not None:
        reset = x_reset

    retry_after = parse_retry_after(h.get("retry-after"), wall_now=wall_now)
    return RateLimitInfo(
        limit=limit,
        window=limit_window,
        policies=tuple(dict.fromkeys(policies)),
        remaining=remaining,
        reset=reset,
        retry_after=retry_after,
    )


# --------------------------------------------------------------------------------------------
# the bucket


@dataclass(slots=True)
class BucketStats:
    sent: int = 0
    ok: int = 0
    throttled: int = 0
    errors: int = 0
    no_response: int = 0
    retries: int = 0
    returned: int = 0  # permits handed back unused (cancelled waiters)


@dataclass(slots=True)
class _Adaptive:
    slow_start: bool = True
    b_start: float = 1.0  # B right after the last cut (or the configured limit)
    w_max: float = 1.0
    t_event: float | None = None  # start, or time of the last cut
    started: float = 0.0  # time of the first send
    cut_seq: int = 0  # requests sent up to this one belong to the last congestion event
    recovered: bool = True  # an OK came back for a request sent after the last cut


@dataclass(slots=True)
class Bucket:
    """Admission state of one endpoint group. Pure: every method takes ``now``.

    Use: ``wait_time(now, retry)`` -> 0 when a send may go now, ``math.inf`` while the in-flight
    cap is reached; ``send(now, retry)`` when one goes (returns its sequence number and the GCRA
    cost to hand back to ``unsend`` if it is never used); ``feedback(...)`` when it completes.
    """

    configured: int
    window: float
    max_in_flight: int = 16
    ceiling: float | None = None  # requests per second
    adaptive_only: bool = False  # the provider sends no rate headers
    base_margin: float = BASE_MARGIN
    max_margin: float = 1.0
    burst: float = 0.0
    slack: float = 0.005  # seconds of overdue GCRA slots a late timer may still use
    resolution: float = 0.001  # a shorter pacing wait is no wait (see wait_time)
    budget: RetryBudget = field(default_factory=RetryBudget)

    stats: BucketStats = field(default_factory=BucketStats)
    in_flight: int = 0
    headers_seen: bool = False
    answered: bool = False  # a response (of any kind) has come back
    header_limit: int | None = None
    floor_limit: int = 0
    extra: tuple[tuple[int, float], ...] = ()
    pause_until: float = -math.inf
    recovering: bool = False
    strikes: int = 0

    _log: list[float] = field(default_factory=list)
    _trim_at: int = 1024
    _tat: float = -math.inf
    _next_seq: int = 1
    _returned: list[int] = field(default_factory=list)
    _open: list[int] = field(default_factory=list)  # sequence numbers in flight, ascending
    _rem_allow: int | None = None
    _rem_seq: int = 0
    _rem_hold: float = -math.inf
    _run_seq: int = 0
    _run_r: int | None = None
    _run_start: float = -math.inf
    _rtt_lo: deque[tuple[float, float]] = field(default_factory=deque)
    _rtt_hi: deque[tuple[float, float]] = field(default_factory=deque)
    _ad: _Adaptive = field(default_factory=_Adaptive)
    _margin: float = 0.0  # margin(), kept up to date by _update_margin and _rtt_sample
    _margin_cap: float = 1.0  # the most the margin may be (for the current window)
    _margin_floor: float = BASE_MARGIN  # the least (for the current window)

    def __post_init__(self) -> None:
        self.configured = max(1, int(self.configured))
        self.window = float(self.window) if self.window > 0 else 60.0
        self.max_in_flight = max(1, int(self.max_in_flight))
        if self.ceiling is not None and not self.ceiling > 0:
            self.ceiling = None
        self._ad.b_start = self._ad.w_max = float(self.configured)
        self._update_margin()

    # ---- derived figures -------------------------------------------------------------------

    @property
    def adaptive(self) -> bool:
        """True while the limit is discovered from 429s: the provider sends no rate headers, or
        responses came back and none carried any."""
        return self.adaptive_only or (self.answered and not self.headers_seen)

    @property
    def mode(self) -> str:
        if self.header_limit is not None:
            return "headers"
        return "adaptive" if self.adaptive else "configured"

    def margin(self) -> float:
        """Seconds added to the window: covers the spread of one-way delays (see docstring)."""
        return self._margin

    def _update_margin(self) -> None:
        """Recompute ``margin()`` (after a change of window; ``_rtt_sample`` keeps it too)."""
        self._margin_floor = min(self.base_margin, MARGIN_SHARE * self.window)
        self._margin_cap = max(self._margin_floor, min(self.max_margin, 0.1 * self.window))
        m = self._margin_floor
        if self._rtt_lo and self._rtt_hi:
            m = max(m, self._rtt_hi[0][1] - self._rtt_lo[0][1])
        self._margin = min(m, self._margin_cap)

    def used(self, now: float) -> int:
        """Requests sent within the last ``window + margin`` seconds."""
        return len(self._log) - bisect_right(self._log, now - self.window - self.margin())

    def _adaptive_limit(self, now: float) -> float:
        ad = self._ad
        if ad.t_event is None:
            return float(self.configured)
        tau = (now - ad.t_event) / self.window
        if ad.slow_start:
            curve = ad.b_start * math.pow(2.0, min(tau, 40.0))
        else:
            curve = ad.w_max * (1.0 + CUBIC_C * math.pow(tau - CUBIC_K, 3))
        app_limited = max(ad.b_start, 2.0 * self.used(now) + 1.0)
        return max(1.0, min(curve, app_limited, float(_MAX_LIMIT)))

    def limit(self, now: float) -> int:
        """Requests allowed per ``window`` right now (the lower of provider and user ceiling)."""
        if self.header_limit is not None:
            value = float(self.header_limit)
        elif self.adaptive_only or (self.answered and not self.headers_seen):  # adaptive
            value = self._adaptive_limit(now)
        else:
            configured, floor = self.configured, self.floor_limit
            value = float(configured if configured >= floor else floor)
        if self.ceiling is not None:
            value = min(value, max(1.0, self.ceiling * self.window))
        return int(value) if value >= 1.0 else 1

    def _log_limit(self, now: float, limit: int) -> int:
        """The sliding-log cap. After a cut in adaptive mode it stays at ``Wmax`` (what got
        through), so the cut slows the pace instead of stopping the group until the log ages."""
        if self.header_limit is None and not self._ad.slow_start and self.adaptive:
            cap = int(self._ad.w_max)
            if self.ceiling is not None:
                cap = min(cap, max(1, int(self.ceiling * self.window)))
            return max(limit, cap)
        return limit

    def interval(self, now: float) -> float:
        """GCRA spacing between sends: ``(window + margin) / limit`` (and the user ceiling)."""
        spacing = (self.window + self._margin) / self.limit(now)
        if self.ceiling is not None:
            spacing = max(spacing, 1.0 / self.ceiling)
        return spacing

    def rate(self, now: float) -> float:
        """Requests per second the bucket admits at most right now."""
        return 1.0 / self.interval(now)

    # ---- admission ---------------------------------------------------------------------------

    def hold_until(self, now: float) -> float:
        """When the provider's own signals (Retry-After, exhausted Remaining) let sends go."""
        t = self.pause_until
        if self._rem_allow is not None and self._rem_allow <= 0:
            if now >= self._rem_hold:
                # the window we were told about has freed; its late responses no longer count
                self._rem_allow = None
                self._rem_seq = self._next_seq - 1
            else:
                t = max(t, self._rem_hold)
        return t

    def wait_time(self, now: float, retry: bool = False) -> float:
        """Seconds until a (re)try may be sent; ``math.inf`` while the in-flight cap is reached."""
        if self.in_flight >= (1 if self.recovering else self.max_in_flight):
            return math.inf
        allow = self._rem_allow
        t = self.hold_until(now) if allow is not None and allow <= 0 else self.pause_until
        if t < now:
            t = now
        limit = self.limit(now)
        margin = self._margin
        window = self.window
        log = self._log
        cap = limit if self.header_limit is not None else self._log_limit(now, limit)
        if len(log) >= cap:
            t = max(t, log[-cap] + window + margin)
        for quota, span in self.extra:
            if len(log) >= quota:
                t = max(t, log[-quota] + span + margin)
        spacing = (window + margin) / limit
        if self.ceiling is not None:
            spacing = max(spacing, 1.0 / self.ceiling)
        burst = self.burst * limit
        tolerance = 0.0 if retry or burst <= 1.0 else (burst - 1.0) * spacing
        # a pacing wait shorter than ``resolution`` goes at once: no timer would wake sooner,
        # and a fast quota (the sandbox's: 60 ns apart) would send every request via a timer
        gcra = self._tat - tolerance
        if gcra - t >= self.resolution:
            t = gcra
        if retry:
            t = max(t, now + self.budget.wait_time(now))
        return t - now

    def send(self, now: float, retry: bool = False) -> tuple[int, float]:
        """Record a send at ``now``; returns (sequence number, GCRA cost)."""
        ad = self._ad
        if ad.t_event is None:
            ad.t_event = ad.started = now
        cost = (self.window + self._margin) / self.limit(now)  # interval(now), inlined
        if self.ceiling is not None:
            cost = max(cost, 1.0 / self.ceiling)
        # a timer that fires late (event loops wake at ~1 ms granularity) may catch up on the
        # slots it overslept, up to ``slack`` seconds' worth; the log still bounds every window
        tat, earliest = self._tat, now - self.slack
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
        self._open.append(seq)
        if self._rem_allow is not None:
            self._rem_allow -= 1
        stats = self.stats
        stats.sent += 1
        if retry:
            stats.retries += 1
            self.budget.spend(now)
        return seq, cost

    def _reprice(self, now: float, before: float) -> None:
        """The GCRA slots already taken, at the new spacing: a limit the headers raise (the
        first answer usually does) frees the pace at once instead of after the slots priced at
        the assumed limit; a lowered one stretches them. The log still bounds every window."""
        after = self.interval(now)
        if self._tat > now and after != before:
            self._tat = now + (self._tat - now) * (after / before)

    def _trim(self, now: float) -> None:
        spans = [self.window, *(span for _, span in self.extra)]
        horizon = max(spans) + max(self.margin(), self.max_margin)
        cut = bisect_right(self._log, now - horizon)
        if cut:
            del self._log[:cut]
        self._trim_at = max(1024, 2 * len(self._log))

    def unsend(self, now: float, seq: int, sent_at: float, cost: float, retry: bool) -> None:
        """Undo ``send`` for a permit that was never used (its waiter was cancelled)."""
        log = self._log
        i = bisect_right(log, sent_at) - 1
        if i >= 0 and log[i] == sent_at:
            del log[i]
        self._tat -= cost
        self.in_flight = max(0, self.in_flight - 1)
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

    # ---- feedback ----------------------------------------------------------------------------

    def feedback(
        self,
        now: float,
        *,
        seq: int,
        sent_at: float,
        kind: FeedbackKind,
        headers: Mapping[str, str] | None = None,
        wall_now: float = 0.0,
    ) -> None:
        """Take the outcome of send ``seq``: counts, RTT, headers, pauses and adaptation."""
        self.in_flight = self.in_flight - 1 if self.in_flight > 0 else 0
        open_ = self._open
        if open_ and open_[0] == seq:  # answers mostly come back in order
            del open_[0]
        else:
            self._close(seq)
        st = self.stats
        if kind is _NO_RESPONSE:
            st.no_response += 1
        else:
            self.answered = True
            self._rtt_sample(now, now - sent_at)

        limit = remaining = None
        window = reset = retry_after = None
        policies: tuple[tuple[int, float], ...] = ()
        if headers:
            plain = plain_counts(headers)
            if plain is not None:
                limit, remaining = plain
            else:
                info = _parse_all(headers, wall_now=wall_now, window=self.window)
                limit, window, policies = info.limit, info.window, info.policies
                remaining, reset, retry_after = info.remaining, info.reset, info.retry_after
        spacing: float | None = None  # the GCRA spacing before the headers changed it
        if limit is not None or remaining is not None or policies:
            self.headers_seen = True
            if limit is not None:
                if limit != self.header_limit or (window is not None and window != self.window):
                    spacing = self.interval(now)
                self.header_limit = limit
                if window is not None:
                    self.window = window
                    self._update_margin()
            if policies:
                current = (self.limit(now), self.window)
                self.extra = tuple(p for p in policies if p != current)
            else:
                self.extra = ()

        throttled = kind is _THROTTLED
        if throttled and remaining is not None:
            remaining = 0  # a 429 says this window is spent, whatever else it claims
        if remaining is not None:
            self._track_run(seq, remaining, now)
            if limit is None and remaining >= self.floor_limit:
                if spacing is None:
                    spacing = self.interval(now)
                self.floor_limit = remaining + 1
            if seq > self._rem_seq:
                self._rem_seq = seq
                self._rem_allow = remaining - self._not_counted(seq)
                self._rem_hold = self._window_end(now, reset if reset is not None else retry_after)
        if spacing is not None:
            self._reprice(now, spacing)

        if kind is _OK:
            st.ok += 1
            self.budget.success(now)
            self.strikes = 0
            self.recovering = False
            if seq > self._ad.cut_seq:
                self._ad.recovered = True
            return
        if kind is _ERROR:
            st.errors += 1

        if retry_after is not None and (throttled or kind is _ERROR):
            self.pause_until = max(self.pause_until, now + retry_after)
        if throttled:
            st.throttled += 1
            if self.adaptive and seq > self._ad.cut_seq and self._ad.recovered:
                self._cut(now)
            if retry_after is None and remaining is None:
                if reset is not None:
                    self.pause_until = max(self.pause_until, now + reset)
                else:
                    self.pause_until = max(self.pause_until, now + self._strike_pause())
                    self.recovering = True

    def _track_run(self, seq: int, remaining: int, now: float) -> None:
        """Remember when the server's current window was first seen (Remaining last went up)."""
        if seq > self._run_seq:
            # Remaining going up by more than reordering can explain: the sends in between and
            # those still in flight may have arrived in any order
            jitter = seq - self._run_seq + len(self._open)
            if self._run_r is None or remaining - self._run_r > jitter:
                self._run_start = now
            self._run_seq = seq
            self._run_r = remaining

    def _window_end(self, now: float, reset: float | None) -> float:
        if reset is not None:
            if reset <= 0:
                return now + min(1.0, self.window / 10.0)
            return now + reset
        end = self._run_start + self.window + self._margin
        if end > now:
            return end
        return now + self._strike_pause()

    def _strike_pause(self) -> float:
        """Exponential pause after a 429 we cannot place in a window (``strikes`` in a row)."""
        self.strikes += 1
        base = min(1.0, max(0.05, self.window / 60.0))
        return min(max(base, self.window / 2.0), base * 2.0 ** min(self.strikes - 1, 30))

    def _cut(self, now: float) -> None:
        ad = self._ad
        # what the server saw from us over the last window (scaled up in the first window)
        seen = self.used(now) * self.window / max(1e-9, min(self.window, now - ad.started))
        w = max(1.0, min(float(self.limit(now)), seen))
        ad.w_max = w
        ad.b_start = max(1.0, BETA * w)
        ad.t_event = now
        ad.slow_start = False
        ad.cut_seq = self._next_seq - 1
        ad.recovered = False

    def _rtt_sample(self, now: float, rtt: float) -> None:
        """Keep the lowest and highest RTT of the last window (monotonic deques) and the margin
        they give (what ``_update_margin`` computes, inlined: this runs for every response)."""
        if not 0.0 <= rtt < math.inf:  # also False for NaN
            return
        lo, hi, edge, sample = self._rtt_lo, self._rtt_hi, now - self.window, (now, rtt)
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
        spread, m = hi[0][1] - lo[0][1], self._margin_floor
        if spread > m:
            m = spread
        self._margin = m if m < self._margin_cap else self._margin_cap
