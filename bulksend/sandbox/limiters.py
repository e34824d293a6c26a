"""Pure models of the rate limiters a sandbox can answer with (``--profile``).

Every model is a small object with two methods and no clock, no I/O and no aiohttp, so a server
(``bulksend.sandbox.common.Core``) and a discrete-event simulator can drive it alike::

    limiter = make_limiter(SandboxConfig(profile="leaky", limit=10, window=1), 10)
    decision = limiter.hit(now=12.345, wall=1_800_000_012.345)   # a request arrives
    decision.allowed, decision.status, decision.headers

* ``hit(now, wall) -> Decision``: a request arrives; the model decides and, when it counts it,
  remembers it. ``now`` is monotonic seconds, ``wall`` Unix time (for epochs in headers); each
  model reads the one its real counterpart reads (nginx: a monotonic clock in whole ms;
  ``limits``: ``time.time()``).
* ``peek(now, wall) -> Decision``: the headers for an answer that consumes nothing (a 401, an
  unknown path); ``allowed`` says whether a hit now would pass. Nothing changes.

A ``Decision`` that refuses says how to answer: ``status``, ``headers`` and either the provider's
own error body (``BodyKind.PROVIDER``) or the gateway's (``BodyKind.GATEWAY``: ``body`` and
``content_type``). An allowed one carries the headers to add to the provider's answer. Both say
``retry_in``: the seconds until the model would accept the same request (the truth, whatever the
headers say; None when allowed). Models must be driven with non-decreasing times.

The families, each with the readings of its real implementation (see docs/providers.md):

* ``FixedLimiter`` (``fixed``): the provider's own limiter as before profiles existed; its count
  headers come from the provider's dialect (``Decision.counts``), only Retry-After from here.
* ``LeakyBucket`` (``leaky``): nginx ``limit_req`` with ``nodelay``.
* ``LimitsFixedWindow`` / ``LimitsMovingWindow`` (``limits-fixed`` / ``limits-moving``): the
  ``limits`` library's memory storage, with Flask-Limiter's headers.
* ``GitHubLimiter`` (``github``), ``IetfLimiter`` (``ietf``), ``Bare429Limiter`` (``bare429``).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from bulksend.sandbox.config import LONG_LIMIT_FACTOR, SandboxConfig, SandboxConfigError

# ---------------------------------------------------------------------------- fixed windows


@dataclass(frozen=True, slots=True)
class WindowDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the current window ends


@dataclass(slots=True)
class FixedWindow:
    """``limit`` requests per ``window`` seconds, windows aligned to ``origin``.

    Only allowed requests count: a request answered 429 does not consume quota.
    """

    limit: int
    window: float
    origin: float
    _index: int = -1
    _count: int = 0

    def _roll(self, now: float) -> float:
        elapsed = max(0.0, now - self.origin)
        index = int(elapsed // self.window)
        if index != self._index:
            self._index, self._count = index, 0
        return (index + 1) * self.window - elapsed

    def hit(self, now: float) -> WindowDecision:
        reset_after = self._roll(now)
        if self._count >= self.limit:
            return WindowDecision(False, self.limit, 0, reset_after)
        self._count += 1
        return WindowDecision(True, self.limit, self.limit - self._count, reset_after)

    def peek(self, now: float) -> WindowDecision:
        reset_after = self._roll(now)
        remaining = self.limit - self._count
        return WindowDecision(remaining > 0, self.limit, remaining, reset_after)


def ceil_seconds(seconds: float) -> int:
    """Whole seconds, rounded up, at least 1 (float noise of a nanosecond is forgiven)."""
    return max(1, math.ceil(seconds - 1e-9))


def retry_after_value(seconds: float) -> str:
    """Retry-After as whole seconds (RFC 9110 delay-seconds), rounded up, at least 1."""
    return str(ceil_seconds(seconds))


# ---------------------------------------------------------------------------- decisions


class BodyKind(enum.Enum):
    NONE = "none"  # allowed: the provider answers
    PROVIDER = "provider"  # refused with the provider's own error (its dialect's 429)
    GATEWAY = "gateway"  # refused with the gateway's page: Decision.body and .content_type


@dataclass(frozen=True, slots=True)
class Decision:
    """What a limiter says to one request. See the module docstring."""

    allowed: bool
    status: int  # 200 when allowed (the provider then picks the real status)
    headers: Mapping[str, str]
    body_kind: BodyKind = BodyKind.NONE
    body: bytes = b""
    content_type: str = ""
    retry_in: float | None = None
    #: the window's counts, for the provider's own headers (the fixed profile only)
    counts: WindowDecision | None = None


class Limiter(Protocol):
    def hit(self, now: float, wall: float) -> Decision:
        """A request arrives at ``now`` (monotonic s) / ``wall`` (Unix s): the answer."""
        ...

    def peek(self, now: float, wall: float) -> Decision:
        """The headers of an answer that consumes nothing; changes nothing."""
        ...


_NO_HEADERS: Mapping[str, str] = {}
_PASS = Decision(True, 200, _NO_HEADERS)


# ---------------------------------------------------------------------------- fixed, bare429


class FixedLimiter:
    """``fixed``: the provider's own fixed windows, aligned to ``origin`` (the server's start).

    The count headers are the provider's (built by its dialect from ``Decision.counts``); this
    model adds only ``Retry-After`` on a refusal (whole seconds to the window's end, rounded
    up), unless ``retry_after`` is False. Refusals are the provider's own 429.
    """

    __slots__ = ("_window", "retry_after")

    def __init__(
        self, limit: int, window: float, origin: float = 0.0, *, retry_after: bool = True
    ) -> None:
        self._window = FixedWindow(limit, window, origin)
        self.retry_after = retry_after

    def hit(self, now: float, wall: float) -> Decision:
        counts = self._window.hit(now)
        if counts.allowed:
            return Decision(True, 200, _NO_HEADERS, counts=counts)
        headers = {"Retry-After": retry_after_value(counts.reset_after)} if self.retry_after else {}
        return Decision(
            False, 429, headers, BodyKind.PROVIDER, retry_in=counts.reset_after, counts=counts
        )

    def peek(self, now: float, wall: float) -> Decision:
        counts = self._window.peek(now)
        return Decision(counts.allowed, 200 if counts.allowed else 429, _NO_HEADERS, counts=counts)


class Bare429Limiter:
    """``bare429``: fixed windows aligned to ``origin``; a refusal is the provider's 429 with no
    header at all (no counts, no Retry-After), as Stripe's 429 or FCM's RESOURCE_EXHAUSTED."""

    __slots__ = ("_window",)

    def __init__(self, limit: int, window: float, origin: float = 0.0) -> None:
        self._window = FixedWindow(limit, window, origin)

    def hit(self, now: float, wall: float) -> Decision:
        counts = self._window.hit(now)
        if counts.allowed:
            return _PASS
        return Decision(False, 429, _NO_HEADERS, BodyKind.PROVIDER, retry_in=counts.reset_after)

    def peek(self, now: float, wall: float) -> Decision:
        allowed = self._window.peek(now).allowed
        return _PASS if allowed else Decision(False, 429, _NO_HEADERS)


# ---------------------------------------------------------------------------- nginx limit_req

#: nginx's reason phrases (ngx_http_special_response.c) for the statuses limit_req may answer
NGINX_REASONS: Mapping[int, str] = {
    429: "Too Many Requests",
    503: "Service Temporarily Unavailable",
}


def nginx_error_page(status: int) -> bytes:
    """nginx's built-in error page for ``status`` (with ``server_tokens off``), CRLF lines."""
    title = f"{status} {NGINX_REASONS[status]}"
    lines = (
        "<html>",
        f"<head><title>{title}</title></head>",
        "<body>",
        f"<center><h1>{title}</h1></center>",
        "<hr><center>nginx</center>",
        "</body>",
        "</html>",
    )
    return "".join(line + "\r\n" for line in lines).encode()


def nginx_rate(limit: int, window: float) -> int:
    """``limit`` per ``window`` s as nginx stores a rate: requests per second x 1000, truncated
    (``rate=30r/m`` is 500, as ``ctx->rate = rate * 1000 / scale``)."""
    return math.floor(limit * 1000 / window + 1e-9)


def _ms(now: float) -> int:
    """Whole milliseconds, as ngx_current_msec (the epsilon absorbs float noise: 0.7 * 1000)."""
    return math.floor(now * 1000 + 1e-6)


class LeakyBucket:
    """``leaky``: one key of nginx's ``limit_req`` (ngx_http_limit_req_lookup), ``nodelay``.

    ``rate`` is requests per second x 1000 (``nginx_rate``); ``burst`` whole requests. State:
    ``excess`` in thousandths of a request and ``last`` in ms. The first request creates the
    node (excess 0, accepted); each later one computes ``excess - rate * ms / 1000 + 1000``
    (integer arithmetic, ``ms`` since ``last``, clamped at 0 below) and is refused when that
    exceeds ``burst * 1000`` (nothing stored), else stores it (and ``last``, when ``ms`` > 0).
    So with no burst a request sooner than 1/rate after the previous accepted one is refused.
    Real nginx without ``nodelay`` would hold the accepted excess requests back to the rate;
    this model answers them at once. A refusal has no rate header and no Retry-After: status
    503 (``limit_req_status``'s default) or 429, with nginx's HTML page.
    """

    __slots__ = ("_excess", "_last", "burst", "rate", "status")

    def __init__(self, rate: int, burst: int = 0, status: int = 503) -> None:
        if rate < 1:
            raise ValueError("nginx rate must be >= 1 (0.001 requests per second)")
        if status not in NGINX_REASONS:
            raise ValueError(f"status must be one of {sorted(NGINX_REASONS)}")
        self.rate = rate
        self.burst = burst * 1000
        self.status = status
        self._excess = 0
        self._last: int | None = None

    @property
    def excess(self) -> int:
        """The stored excess, in thousandths of a request."""
        return self._excess

    def _lookup(self, now_ms: int, last: int) -> tuple[int, int]:
        ms = now_ms - last
        if ms < -60000:
            ms = 1
        elif ms < 0:
            ms = 0
        excess = self._excess - self.rate * ms // 1000 + 1000
        return max(0, excess), ms

    def hit(self, now: float, wall: float) -> Decision:
        now_ms = _ms(now)
        last = self._last
        if last is None:
            self._last, self._excess = now_ms, 0
            return _PASS
        excess, ms = self._lookup(now_ms, last)
        if excess > self.burst:
            return self._refusal(now_ms, last)
        self._excess = excess
        if ms:
            self._last = now_ms
        return _PASS

    def peek(self, now: float, wall: float) -> Decision:
        last = self._last
        if last is None or self._lookup(_ms(now), last)[0] <= self.burst:
            return _PASS
        return Decision(False, self.status, _NO_HEADERS)

    def _refusal(self, now_ms: int, last: int) -> Decision:
        # accepted once rate * ms // 1000 >= excess + 1000 - burst, ms counted from last
        need = self._excess + 1000 - self.burst
        ms = -(-need * 1000 // self.rate)
        wait = max(0, last + ms - now_ms) / 1000
        page = nginx_error_page(self.status)
        return Decision(
            False, self.status, _NO_HEADERS, BodyKind.GATEWAY, page, "text/html", retry_in=wait
        )


# ---------------------------------------------------------------------- limits (Flask-Limiter)


def limits_item(limit: int, window: int) -> str:
    """How ``limits`` prints the item of ``--limit``/``--window`` (``RateLimitItem.__repr__`` of
    "N per W seconds"): "20 per 1 second"."""
    return f"{limit} per {window} second"


def werkzeug_429_page(description: str) -> bytes:
    """werkzeug's HTML for TooManyRequests (Flask-Limiter's refusal): the item as description."""
    text = description.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    lines = (
        "<!doctype html>",
        "<html lang=en>",
        "<title>429 Too Many Requests</title>",
        "<h1>Too Many Requests</h1>",
        f"<p>{text}</p>",
    )
    return "".join(line + "\n" for line in lines).encode()


def flask_limiter_headers(
    limit: int, remaining: int, reset: float, wall: float, *, retry_after: bool = True
) -> dict[str, str]:
    """Flask-Limiter's ``__inject_headers`` for a window that frees at epoch ``reset``:
    ``X-RateLimit-Reset`` is ``int(reset + 1)`` (up to 1 s late) and ``Retry-After`` is
    ``int(that - now)`` (truncated: 0, or even negative, on a stale moving window)."""
    reset_at = int(reset + 1)
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset_at),
    }
    if retry_after:
        headers["Retry-After"] = str(int(reset_at - wall))
    return headers


class _FlaskLimited:
    """What both ``limits`` strategies share: Flask-Limiter's headers and refusal."""

    __slots__ = ("_page", "limit", "retry_after", "window")

    def __init__(self, limit: int, window: int, *, retry_after: bool = True) -> None:
        if window < 1 or window != int(window):
            raise ValueError("limits counts windows of whole seconds")
        self.limit = limit
        self.window = int(window)
        self.retry_after = retry_after
        self._page = werkzeug_429_page(limits_item(limit, self.window))

    def _answer(
        self, allowed: bool, remaining: int, reset: float, wall: float, retry_in: float = 0.0
    ) -> Decision:
        headers = flask_limiter_headers(
            self.limit, remaining, reset, wall, retry_after=self.retry_after
        )
        if allowed:
            return Decision(True, 200, headers)
        return Decision(
            False,
            429,
            headers,
            BodyKind.GATEWAY,
            self._page,
            "text/html; charset=utf-8",
            retry_in=max(0.0, retry_in),
        )


class LimitsFixedWindow(_FlaskLimited):
    """``limits-fixed``: ``FixedWindowRateLimiter`` on ``MemoryStorage``, per Flask-Limiter.

    Runs on ``wall`` (``time.time()``, as the library). The window is not aligned to any clock:
    the first hit after the previous window expired sets the expiry to that hit + ``window``
    (``incr`` sets it when the counter becomes 1); at the expiry instant the counter is gone.
    A refused hit increments the counter too (``incr`` comes first, then ``<= amount``), which
    changes nothing visible: the window is already spent and its expiry is fixed. Headers on
    every answer: Limit, Remaining ``max(0, limit - count)``, Reset ``int(expiry + 1)``,
    Retry-After ``int(Reset - now)``.
    """

    __slots__ = ("_count", "_expiry")

    def __init__(self, limit: int, window: int, *, retry_after: bool = True) -> None:
        super().__init__(limit, window, retry_after=retry_after)
        self._count = 0
        self._expiry: float | None = None

    def _get(self, wall: float) -> int:
        if self._expiry is not None and self._expiry <= wall:
            self._count, self._expiry = 0, None
        return self._count

    def hit(self, now: float, wall: float) -> Decision:
        self._count = self._get(wall) + 1
        if self._count == 1:
            self._expiry = wall + self.window
        return self._stats(self._count <= self.limit, wall)

    def peek(self, now: float, wall: float) -> Decision:
        return self._stats(self._get(wall) < self.limit, wall)

    def _stats(self, allowed: bool, wall: float) -> Decision:
        remaining = max(0, self.limit - self._get(wall))
        reset = wall if self._expiry is None else self._expiry
        return self._answer(allowed, remaining, reset, wall, reset - wall)


class LimitsMovingWindow(_FlaskLimited):
    """``limits-moving``: ``MovingWindowRateLimiter`` on ``MemoryStorage``, per Flask-Limiter.

    Runs on ``wall``. A hit is accepted unless the ``limit``-th most recent accepted hit is at or
    after ``now - window`` (``acquire_entry``); refused hits are not stored. Headers on every
    answer from ``get_moving_window``: the hits strictly after ``now - window`` are the window
    (a hit exactly ``window`` old still refuses but no longer counts), Remaining ``limit -
    count``, Reset ``int(oldest in the window + window + 1)``. Expired hits are purged the way
    the library's timer does, shortly after (a stale oldest hit is used when none is left in
    the window, as the library's ``events[oldest - 1]`` does).
    """

    __slots__ = ("_hits",)

    def __init__(self, limit: int, window: int, *, retry_after: bool = True) -> None:
        super().__init__(limit, window, retry_after=retry_after)
        self._hits: deque[float] = deque()  # accepted hits (wall), oldest first

    def hit(self, now: float, wall: float) -> Decision:
        hits = self._hits
        boundary = wall - self.window
        while hits and hits[0] < boundary:  # never one that could still refuse
            hits.popleft()
        allowed = not (len(hits) >= self.limit and hits[-self.limit] >= boundary)
        if allowed:
            hits.append(wall)
        return self._stats(allowed, wall)

    def peek(self, now: float, wall: float) -> Decision:
        start, count = self._window(wall)
        reset = start + self.window
        return self._answer(count < self.limit, self.limit - count, reset, wall, reset - wall)

    def _window(self, wall: float) -> tuple[float, int]:
        hits = self._hits
        if not hits:
            return wall, 0
        boundary = wall - self.window
        stale = 0
        while stale < len(hits) and hits[stale] <= boundary:
            stale += 1
        count = len(hits) - stale
        return (hits[stale] if count else hits[0]), count

    def _stats(self, allowed: bool, wall: float) -> Decision:
        start, count = self._window(wall)
        # refused until the limit-th most recent hit is strictly older than ``window``
        wait = 0.0 if allowed else self._hits[-self.limit] + self.window - wall
        return self._answer(allowed, self.limit - count, start + self.window, wall, wait)


# ---------------------------------------------------------------------------- GitHub

GITHUB_MESSAGE = "API rate limit exceeded for user ID 1."
GITHUB_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"


class GitHubLimiter:
    """``github``: GitHub REST's primary limit, as fixed windows aligned to ``origin``.

    Every answer carries ``x-ratelimit-limit``, ``-remaining``, ``-reset`` (the window's end as
    Unix seconds, rounded up), ``-used`` and ``x-ratelimit-resource: core``. A refusal is 403
    (or ``status`` 429) with ``x-ratelimit-remaining: 0`` and GitHub's JSON message. GitHub
    documents Retry-After only for its secondary limits, so a primary refusal carries none
    unless ``retry_after`` (then whole seconds to the window's end, rounded up).
    """

    __slots__ = ("_body", "_offset", "_window", "retry_after", "status")

    def __init__(
        self,
        limit: int,
        window: float,
        origin: float = 0.0,
        *,
        status: int = 403,
        retry_after: bool = False,
    ) -> None:
        self._window = FixedWindow(limit, window, origin)
        self.status = status
        self.retry_after = retry_after
        self._offset: float | None = None  # wall - now, fixed at the first call
        self._body = orjson.dumps({"message": GITHUB_MESSAGE, "documentation_url": GITHUB_DOCS})

    def _headers(self, counts: WindowDecision, now: float, wall: float) -> dict[str, str]:
        if self._offset is None:
            self._offset = wall - now
        end = self._offset + now + counts.reset_after
        return {
            "x-ratelimit-limit": str(counts.limit),
            "x-ratelimit-remaining": str(counts.remaining),
            "x-ratelimit-reset": str(math.ceil(end - 1e-6)),
            "x-ratelimit-used": str(counts.limit - counts.remaining),
            "x-ratelimit-resource": "core",
        }

    def hit(self, now: float, wall: float) -> Decision:
        counts = self._window.hit(now)
        headers = self._headers(counts, now, wall)
        if counts.allowed:
            return Decision(True, 200, headers)
        if self.retry_after:
            headers["retry-after"] = retry_after_value(counts.reset_after)
        return Decision(
            False,
            self.status,
            headers,
            BodyKind.GATEWAY,
            self._body,
            "application/json; charset=utf-8",
            retry_in=counts.reset_after,
        )

    def peek(self, now: float, wall: float) -> Decision:
        counts = self._window.peek(now)
        status = 200 if counts.allowed else self.status
        return Decision(counts.allowed, status, self._headers(counts, now, wall))


# ---------------------------------------------------------------------------- IETF draft

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


@dataclass(frozen=True, slots=True)
class Policy:
    """One quota policy of the IETF profile: ``quota`` requests per ``window`` whole seconds."""

    name: str
    quota: int
    window: int


class IetfLimiter:
    """``ietf``: draft-ietf-httpapi-ratelimit-headers-10, several policies at once.

    Each policy counts fixed windows aligned to ``origin``. A request is refused (429) when any
    policy is spent, and then counts against none. Every answer carries ``RateLimit-Policy``
    (``"burst";q=20;w=1, "long";q=600;w=60``) and ``RateLimit`` (``"burst";r=19;t=1, ...``,
    ``t`` = seconds until that window resets, rounded up). A refusal adds Retry-After (rounded
    up, the latest reset among the spent policies, so never earlier than their ``t``) unless
    ``retry_after`` is False, and the draft's "quota-exceeded" problem (application/problem+json)
    naming the spent policies.
    """

    __slots__ = ("_policy_field", "_windows", "retry_after")

    def __init__(
        self, policies: tuple[Policy, ...], origin: float = 0.0, *, retry_after: bool = True
    ) -> None:
        if not policies:
            raise ValueError("at least one policy")
        self._windows = tuple((p.name, FixedWindow(p.quota, p.window, origin)) for p in policies)
        self._policy_field = ", ".join(f'"{p.name}";q={p.quota};w={p.window}' for p in policies)
        self.retry_after = retry_after

    def _headers(self, states: list[tuple[str, WindowDecision]]) -> dict[str, str]:
        limits = ", ".join(
            f'"{name}";r={d.remaining};t={ceil_seconds(d.reset_after)}' for name, d in states
        )
        return {"RateLimit-Policy": self._policy_field, "RateLimit": limits}

    def hit(self, now: float, wall: float) -> Decision:
        states = [(name, w.peek(now)) for name, w in self._windows]
        spent = [(name, d) for name, d in states if d.remaining <= 0]
        if not spent:
            return Decision(True, 200, self._headers([(n, w.hit(now)) for n, w in self._windows]))
        wait = max(d.reset_after for _, d in spent)
        headers = self._headers(states)
        if self.retry_after:
            headers["Retry-After"] = retry_after_value(wait)
        problem = {
            "type": QUOTA_EXCEEDED,
            "title": "Request cannot be satisfied as assigned quota has been exceeded",
            "violated-policies": [name for name, _ in spent],
        }
        return Decision(
            False,
            429,
            headers,
            BodyKind.GATEWAY,
            orjson.dumps(problem),
            "application/problem+json",
            retry_in=wait,
        )

    def peek(self, now: float, wall: float) -> Decision:
        states = [(name, w.peek(now)) for name, w in self._windows]
        allowed = all(d.remaining > 0 for _, d in states)
        return Decision(allowed, 200 if allowed else 429, self._headers(states))


# ---------------------------------------------------------------------------- factory


def _fixed(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    return FixedLimiter(limit, c.window, origin, retry_after=c.effective_retry_after)


def _leaky(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    rate = nginx_rate(limit, c.window)
    if rate < 1:
        raise SandboxConfigError(
            f"leaky: {limit} per {c.window:g} s is below nginx's lowest rate (0.001 r/s)"
        )
    return LeakyBucket(rate, c.burst, c.effective_reject_status)


def _limits_fixed(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    return LimitsFixedWindow(limit, int(c.window), retry_after=c.effective_retry_after)


def _limits_moving(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    return LimitsMovingWindow(limit, int(c.window), retry_after=c.effective_retry_after)


def _github(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    return GitHubLimiter(
        limit,
        c.window,
        origin,
        status=c.effective_reject_status,
        retry_after=c.effective_retry_after,
    )


def _ietf(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    long_limit = limit * LONG_LIMIT_FACTOR if c.long_limit is None else c.long_limit
    policies = (
        Policy("burst", limit, int(c.window)),
        Policy("long", long_limit, int(c.effective_long_window)),
    )
    return IetfLimiter(policies, origin, retry_after=c.effective_retry_after)


def _bare429(c: SandboxConfig, limit: int, origin: float) -> Limiter:
    return Bare429Limiter(limit, c.window, origin)


_FACTORIES: Mapping[str, Callable[[SandboxConfig, int, float], Limiter]] = {
    "fixed": _fixed,
    "leaky": _leaky,
    "limits-fixed": _limits_fixed,
    "limits-moving": _limits_moving,
    "github": _github,
    "ietf": _ietf,
    "bare429": _bare429,
}


def make_limiter(config: SandboxConfig, group_limit: int, *, origin: float = 0.0) -> Limiter:
    """The limiter of ``config.profile`` for one endpoint group allowed ``group_limit`` requests
    per ``config.window`` seconds; fixed windows are aligned to ``origin`` (monotonic s)."""
    try:
        factory = _FACTORIES[config.profile]
    except KeyError:
        raise SandboxConfigError(f"unknown profile {config.profile!r}") from None
    return factory(config, group_limit, origin)
