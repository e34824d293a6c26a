"""Rate-limit header parsing (pure: no clock, no I/O).

Every function takes the headers of one response (any case; plain dicts and aiohttp's
``CIMultiDictProxy``) and, where an HTTP-date or an epoch must be turned into a delay, ``wall_now``
(Unix time). ``parse_headers`` returns a ``RateLimitInfo``: what the response says, not what to do
about it (that is ``bulksend.ratelimit.bucket``'s job).

Fields read
-----------
* ``X-RateLimit-Limit`` (GitHub, SendGrid, Flask-Limiter/slowapi, the providers in this project),
  ``RateLimit-Limit`` (IETF drafts up to -06, also ``100, 100;w=60`` lists) and IETF draft-08+
  ``RateLimit-Policy: "burst";q=100;w=1, "day";q=5000;w=86400`` (several named policies, each
  with ``q`` quota, optional ``w`` window in seconds and ``pk`` partition key): the limits. A count
  without a window says nothing about the window (``Policy.window`` is None): the window is
  inferred from what the answers show (``bulksend.ratelimit.window``).
* ``X-RateLimit-Remaining``, ``RateLimit-Remaining``, IETF ``RateLimit: "burst";r=12;t=30``
  (several items: the lowest remaining binds), draft-07 ``RateLimit: limit=, remaining=, reset=``,
  and GitHub's ``x-ratelimit-used`` (remaining = limit - used when Remaining is absent).
* The reset: ``X-RateLimit-Reset`` as seconds until, epoch seconds (> 1e9), epoch milliseconds
  (> 1e12) or an HTTP-date; ``X-RateLimit-Reset-After``; ``RateLimit-Reset``; IETF ``t``.
  ``RateLimitInfo.reset_quantum`` says how coarse it is (1.0 for whole seconds: Flask-Limiter's
  epoch is rounded up to the next second, IETF ``t`` is an integer). An absolute reset (an epoch,
  an HTTP-date) is read against the server's own ``Date`` when it sent one, so a clock
  difference between the server and us costs nothing (a second coarser); without ``Date``,
  ``reset_epoch`` says the difference is in it.
* ``Retry-After``: delay-seconds, a decimal, or an HTTP-date (one ``parse_retry_after`` for every
  provider). Flask-Limiter sends it on every answer, 200s included: it pauses only when the
  answer is a throttle or a server error (the caller decides).
* ``x-ratelimit-resource`` (GitHub) and IETF ``pk``: the partition a quota belongs to.

Malformed values (text, negative numbers, exponents, NaN) are ignored; dates in the past read as
0; waits are capped at ``MAX_DELAY`` (one day).

``throttle_evidence`` says whether a refusal (403, 429) carries rate-limit evidence: a 403 with
``x-ratelimit-remaining: 0`` or a ``Retry-After`` is a spent quota (GitHub's secondary limits),
not a rejected key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy, istr

__all__ = [
    "MAX_DELAY",
    "MAX_LIMIT",
    "Policy",
    "RateLimitInfo",
    "lower_headers",
    "parse_headers",
    "parse_http_date",
    "parse_reset",
    "parse_retry_after",
    "parse_seconds",
    "plain_counts",
    "throttle_evidence",
]

#: the longest wait any header can ask for (absurd values are capped to this)
MAX_DELAY = 86_400.0
#: a limit above this is read as absurd and ignored
MAX_LIMIT = 10_000_000
_EPOCH_S = 1e9
_EPOCH_MS = 1e12
_NUMBER = re.compile(r"^[0-9]+(?:\.[0-9]*)?$|^\.[0-9]+$")


# --------------------------------------------------------------------------------------------
# single values


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


def clamp_delay(seconds: float) -> float:
    """A delay in ``[0, MAX_DELAY]``."""
    return min(max(0.0, seconds), MAX_DELAY)


def parse_retry_after(value: str | None, *, wall_now: float) -> float | None:
    """Retry-After as seconds from now: delay-seconds, a decimal, or an HTTP-date.

    Dates in the past read as 0; absurd values are capped at ``MAX_DELAY``.
    """
    seconds = parse_seconds(value)
    if seconds is not None:
        return clamp_delay(seconds)
    stamp = parse_http_date(value)
    if stamp is not None:
        return clamp_delay(stamp - wall_now)
    return None


@dataclass(frozen=True, slots=True)
class _Reset:
    delay: float
    quantum: float  # 1.0 for whole seconds, 0.001 for milliseconds, 0.0 for decimals
    epoch: bool  # an absolute time read against our clock (the server's may differ)


def _quantum(text: str, unit: float) -> float:
    return 0.0 if "." in text else unit


def _absolute(stamp: float, quantum: float, date: float | None, wall_now: float) -> _Reset:
    """An absolute reset: against the server's own ``Date`` when it sent one (no clock skew;
    a second coarser), else against our clock."""
    if date is not None:
        return _Reset(clamp_delay(stamp - date), quantum + 1.0, False)
    return _Reset(clamp_delay(stamp - wall_now), quantum, True)


def _read_reset(
    value: str | None, *, wall_now: float, window: float, date: float | None = None
) -> _Reset | None:
    number = parse_seconds(value)
    if number is None:
        stamp = parse_http_date(value)
        return None if stamp is None else _absolute(stamp, 1.0, date, wall_now)
    assert value is not None
    text = value.strip()
    if number >= _EPOCH_MS:
        return _absolute(number / 1000.0, _quantum(text, 0.001), date, wall_now)
    if number >= _EPOCH_S:
        return _absolute(number, _quantum(text, 1.0), date, wall_now)
    span = max(1.5 * window, 1.5)
    if number > span and number / 1000.0 <= span:
        return _Reset(clamp_delay(number / 1000.0), _quantum(text, 0.001), False)
    return _Reset(clamp_delay(number), _quantum(text, 1.0), False)


def parse_reset(value: str | None, *, wall_now: float, window: float = 60.0) -> float | None:
    """X-RateLimit-Reset as seconds from now.

    Numbers above 1e12 are epoch milliseconds, above 1e9 epoch seconds; otherwise seconds until
    the reset -- unless the value is more than 1.5 windows yet its thousandth is within 1.5
    windows, which reads as milliseconds until the reset. HTTP-dates are accepted too.
    """
    reset = _read_reset(value, wall_now=wall_now, window=window)
    return None if reset is None else reset.delay


def _parse_count(value: str | None) -> int | None:
    """A non-negative integer count (``"600"``, ``"600.0"``); a leading one before ``,``/``;``."""
    if value is None:
        return None
    text = value.split(",", 1)[0].split(";", 1)[0].strip()
    number = parse_seconds(text)
    if number is None or number != int(number):
        return None
    return int(number)


# --------------------------------------------------------------------------------------------
# structured fields (enough of RFC 8941 for these headers)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
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


# --------------------------------------------------------------------------------------------
# whole responses


@dataclass(frozen=True, slots=True)
class Policy:
    """A quota the server announced: ``quota`` requests per ``window`` seconds.

    ``window`` is None when the server gave a count without a window (``X-RateLimit-Limit``).
    ``name`` is the IETF policy name; ``partition`` the IETF ``pk`` or GitHub's resource: policies
    with the same non-empty partition on different endpoints are one quota.
    """

    quota: int
    window: float | None = None
    name: str = ""
    partition: str = ""


@dataclass(frozen=True)  # no slots: ``counts`` fills an instance's __dict__
class RateLimitInfo:
    """What one response's headers say, with delays in seconds from the response."""

    limit: int | None = None  # the primary limit (the X-RateLimit / shortest-window policy)
    window: float | None = None  # its window, when a header said so
    policies: tuple[Policy, ...] = ()  # every quota the server announced (the primary too)
    remaining: int | None = None  # the binding (lowest) remaining
    #: the policy the binding remaining belongs to, when the server said (IETF names it)
    remaining_policy: Policy | None = None
    reset: float | None = None  # seconds until the binding quota frees
    reset_quantum: float = 0.0  # the reset's resolution (1.0: whole seconds)
    #: the reset was an absolute time read against our clock (no ``Date`` came with it), so
    #: the server's clock difference is in it
    reset_epoch: bool = False
    retry_after: float | None = None
    partition: str = ""  # GitHub x-ratelimit-resource (or the binding IETF pk)
    source: str = ""  # the field the limit came from ("X-RateLimit-Limit", "RateLimit-Policy")

    @property
    def has_rate_headers(self) -> bool:
        return self.limit is not None or self.remaining is not None or bool(self.policies)


_EMPTY = RateLimitInfo()
_new = object.__new__
_DEFAULTS = {f.name: f.default for f in fields(RateLimitInfo)}


def counts(limit: int | None, remaining: int | None) -> RateLimitInfo:
    """``RateLimitInfo(limit=limit, remaining=remaining)`` (what nearly every answer says),
    made by filling the instance's ``__dict__`` at once: the frozen ``__init__`` sets each of
    the eleven fields through ``object.__setattr__``: about 18,000 machine instructions against
    3,600, where the engine's whole dispatch costs ~200,000 a request."""
    info = _new(RateLimitInfo)
    values = info.__dict__
    values.update(_DEFAULTS)
    values["limit"] = limit
    values["remaining"] = remaining
    return info


#: every field ``parse_headers`` reads besides X-RateLimit-Limit and X-RateLimit-Remaining
_OTHER_FIELDS = frozenset(
    {
        "x-ratelimit-reset",
        "x-ratelimit-reset-after",
        "x-ratelimit-used",
        "x-ratelimit-resource",
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


def _plain_int(text: str) -> bool:
    return len(text) <= _PLAIN_DIGITS and text.isdigit() and text.isascii()


def plain_counts(headers: Mapping[str, str]) -> tuple[int | None, int | None] | None:
    """(limit, remaining) when the response's only rate-limit fields are X-RateLimit-Limit and
    X-RateLimit-Remaining as plain integers (or absent) -- the common case, which needs none of
    ``parse_headers``' machinery; None when the full parser is needed.

    The figures are what ``parse_headers`` returns for the same headers: a limit outside
    ``1..10,000,000`` reads as None, no window, no reset, no Retry-After.
    """
    fields = _plain_fields(headers)
    if fields is None:
        return None
    text, rem_text = fields
    limit = remaining = None
    if text is not None:
        if not _plain_int(text):
            return None
        limit = int(text)
        if not 0 < limit <= MAX_LIMIT:
            limit = None
    if rem_text is not None:
        if not _plain_int(rem_text):
            return None
        remaining = int(rem_text)
    return limit, remaining


def parse_headers(
    headers: Mapping[str, str], *, wall_now: float, window: float = 60.0
) -> RateLimitInfo:
    """Read every rate-limit field of one response (see the module docstring).

    ``window`` is the group's current window, used only to tell milliseconds-until from
    seconds-until in an ambiguous reset. Pure: dates and epochs become delays with ``wall_now``.
    """
    plain = plain_counts(headers)
    if plain is not None:
        limit, remaining = plain
        if limit is None and remaining is None:
            return _EMPTY
        policy = Policy(limit) if limit is not None else None
        return RateLimitInfo(
            limit=limit,
            policies=(policy,) if policy is not None else (),
            remaining=remaining,
            remaining_policy=policy if remaining is not None else None,
            source="X-RateLimit-Limit" if limit is not None else "",
        )
    return parse_all(headers, wall_now=wall_now, window=window)


@dataclass(slots=True)
class _Reading:
    """What ``parse_all`` gathers before it picks the binding figures."""

    h: Mapping[str, str]
    wall_now: float
    window: float
    limit: int | None = None
    limit_window: float | None = None
    policies: list[Policy] = field(default_factory=list)
    #: (remaining, reset, policy name) candidates; the lowest remaining binds
    candidates: list[tuple[int, _Reset | None, str]] = field(default_factory=list)
    _date: float | bool | None = False  # the server's Date; False: not read yet

    def reset(self, name: str) -> _Reset | None:
        value = self.h.get(name)
        date = self.date() if value is not None and _absolute_form(value) else None
        return _read_reset(value, wall_now=self.wall_now, window=self.window, date=date)

    def date(self) -> float | None:
        """The server's ``Date`` (read once, and only for an absolute reset)."""
        if self._date is False:
            self._date = parse_http_date(self.h.get("date"))
        return None if self._date is False else self._date


def _absolute_form(value: str) -> bool:
    """An epoch or an HTTP-date (not seconds from now)."""
    number = parse_seconds(value)
    return number >= _EPOCH_S if number is not None else any(c.isalpha() for c in value)


def _valid(count: int | None) -> bool:
    return count is not None and 0 < count <= MAX_LIMIT


def _limit_list(value: str) -> list[Policy]:
    """``600`` or the draft form ``100, 100;w=60, 1000;w=3600``."""
    out = []
    for member in _members(value):
        count = _parse_count(member.key if member.value is None else None)
        if _valid(count):
            assert count is not None
            w = parse_seconds(member.params.get("w"))
            out.append(Policy(count, w if w is not None and w > 0 else None))
    return out


def _read_x_fields(r: _Reading) -> _Reset | None:
    """X-RateLimit-* (the providers' documented headers, GitHub's, Flask-Limiter's)."""
    h = r.h
    resource = _unquote(h.get("x-ratelimit-resource", ""))[:64]
    if "x-ratelimit-limit" in h:
        listed = _limit_list(h["x-ratelimit-limit"])
        if listed:
            first = listed[0]
            r.limit, r.limit_window = first.quota, first.window
            r.policies.extend(Policy(p.quota, p.window, "", resource) for p in listed)
    reset = r.reset("x-ratelimit-reset")
    if reset is None:
        after = parse_seconds(h.get("x-ratelimit-reset-after"))
        if after is not None:
            reset = _Reset(clamp_delay(after), _quantum(h["x-ratelimit-reset-after"], 1.0), False)
    remaining = _parse_count(h.get("x-ratelimit-remaining"))
    if remaining is None and r.limit is not None:
        used = _parse_count(h.get("x-ratelimit-used"))
        if used is not None:
            remaining = max(0, r.limit - used)
    if remaining is not None:
        r.candidates.append((remaining, reset, ""))
    return reset


def _read_ietf_fields(r: _Reading) -> None:
    """IETF drafts: RateLimit-Limit/-Remaining/-Reset (<= 06), RateLimit: limit=,remaining=,
    reset= (07), RateLimit-Policy + RateLimit: "name";r=;t= (08 and later)."""
    h = r.h
    if "ratelimit-limit" in h:
        listed = _limit_list(h["ratelimit-limit"])
        r.policies.extend(listed)
        if listed and r.limit is None:
            r.limit, r.limit_window = listed[0].quota, listed[0].window
    remaining = _parse_count(h.get("ratelimit-remaining"))
    if remaining is not None:
        r.candidates.append((remaining, r.reset("ratelimit-reset"), ""))
    if "ratelimit-policy" in h:
        for member in _members(h["ratelimit-policy"]):
            q = _parse_count(member.params.get("q"))
            if _valid(q):
                assert q is not None
                w = parse_seconds(member.params.get("w"))
                pk = member.params.get("pk", "")[:64]
                r.policies.append(Policy(q, w if w is not None and w > 0 else None, member.key, pk))
    if "ratelimit" in h:
        _read_ratelimit_items(r, h["ratelimit"])


def _read_ratelimit_items(r: _Reading, value: str) -> None:
    members = _members(value)
    pairs = {m.key: m.value for m in members if m.value is not None}
    if "remaining" in pairs:  # draft 07 dictionary
        rem = _parse_count(pairs.get("remaining"))
        if rem is not None:
            t = parse_seconds(pairs.get("reset"))
            reset = None if t is None else _Reset(clamp_delay(t), 1.0, False)
            r.candidates.append((rem, reset, ""))
        lim = _parse_count(pairs.get("limit"))
        if _valid(lim):
            assert lim is not None
            r.policies.append(Policy(lim))
    for member in members:
        if member.value is not None:
            continue
        rem = _parse_count(member.params.get("r"))
        if rem is not None:
            t_text = member.params.get("t")
            t = parse_seconds(t_text)
            reset = None if t is None else _Reset(clamp_delay(t), _quantum(t_text or "", 1), False)
            r.candidates.append((rem, reset, member.key))


def parse_all(headers: Mapping[str, str], *, wall_now: float, window: float) -> RateLimitInfo:
    """``parse_headers`` without its shortcut for plain X-RateLimit-Limit/-Remaining."""
    h = headers if isinstance(headers, dict) and all(k.islower() for k in headers) else None
    h = h if h is not None else lower_headers(headers)
    r = _Reading(h, wall_now, window)
    x_reset = _read_x_fields(r)
    _read_ietf_fields(r)
    policies = list(dict.fromkeys(r.policies))
    limit, limit_window = r.limit, r.limit_window
    source = "X-RateLimit-Limit" if "x-ratelimit-limit" in h else "RateLimit-Limit"
    if limit is None and policies:
        primary = min(policies, key=lambda p: (p.window or math.inf, p.quota))
        limit, limit_window = primary.quota, primary.window
        source = "RateLimit-Policy" if "ratelimit-policy" in h else "RateLimit"

    remaining: int | None = None
    reset: _Reset | None = None
    bound: Policy | None = None
    if r.candidates:
        remaining, reset, name = min(
            r.candidates, key=lambda c: (c[0], -(c[1].delay if c[1] else 0.0))
        )
        if reset is None:
            reset = x_reset
        if name:
            bound = next((p for p in policies if p.name == name), None)
    elif x_reset is not None:
        reset = x_reset
    if bound is None and remaining is not None and limit is not None:
        bound = Policy(limit, limit_window)

    resource = _unquote(h.get("x-ratelimit-resource", ""))[:64]
    retry = h.get("retry-after")
    clock = r.date() if retry is not None and _absolute_form(retry) else None
    return RateLimitInfo(
        limit=limit,
        window=limit_window,
        policies=tuple(policies),
        remaining=remaining,
        remaining_policy=bound,
        reset=None if reset is None else reset.delay,
        reset_quantum=0.0 if reset is None else reset.quantum,
        reset_epoch=False if reset is None else reset.epoch,
        retry_after=parse_retry_after(retry, wall_now=wall_now if clock is None else clock),
        partition=resource or (bound.partition if bound else ""),
        source=source if limit is not None else "",
    )


#: headers some APIs use to say a refusal is a rate limit (Stripe; Brevo's remaining)
_REASON_FIELDS = ("stripe-rate-limited-reason", "x-ratelimit-reason", "x-rate-limit-reason")
_ZERO_FIELDS = ("x-sib-ratelimit-remaining", "x-rate-limit-remaining")


def throttle_evidence(headers: Mapping[str, str] | None, *, wall_now: float = 0.0) -> str | None:
    """What in a refusal's headers shows a spent quota, or None.

    Evidence: a Retry-After, a remaining of 0 in any of the fields ``parse_headers`` reads (or
    Brevo's ``x-sib-ratelimit-remaining``), or a header naming a rate-limit reason (Stripe's
    ``Stripe-Rate-Limited-Reason``). Used to tell a throttling 403 (GitHub's secondary limits)
    from a rejected key: a 403 without evidence still stops the send.
    """
    if not headers:
        return None
    h = lower_headers(headers)
    if parse_retry_after(h.get("retry-after"), wall_now=wall_now) is not None:
        return "retry-after"
    for name in _REASON_FIELDS:
        if h.get(name, "").strip():
            return name
    for name in _ZERO_FIELDS:
        if _parse_count(h.get(name)) == 0:
            return f"{name}: 0"
    info = parse_all(h, wall_now=wall_now, window=60.0)
    if info.remaining == 0:
        return "remaining 0"
    return None
