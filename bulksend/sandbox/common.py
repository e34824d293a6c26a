"""Shared by every sandbox: fixed window, fault plan, ledger, stats and the request
pipeline (auth -> rate limit -> faults -> provider handler -> ledger -> faults after accept).

The pure parts (``FixedWindow``, ``storm_left``, ``FaultPlan``, ``ledger_blob``) take ``now`` and
data in and hand decisions out; ``Core`` and the aiohttp glue are thin wrappers around them.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from bulksend.sandbox.config import FaultConfig, SandboxConfig
from bulksend.sandbox.ledger import Ledger

Clock = Callable[[], float]

# ---------------------------------------------------------------------------- pure logic


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


def storm_left(elapsed: float, every: float, length: float) -> float | None:
    """Seconds left in the 429 storm at ``elapsed`` seconds after start, or None outside one.

    Storms take the last ``length`` seconds of every ``every``-second period, so the first one
    starts ``every - length`` seconds after the server.
    """
    if every <= 0 or length <= 0:
        return None
    phase = elapsed % every
    if phase >= every - length:
        return every - phase
    return None


def retry_after_value(seconds: float) -> str:
    """Retry-After as whole seconds (RFC 9110 delay-seconds), at least 1."""
    return str(max(1, math.ceil(seconds - 1e-9)))


class Fault(enum.Enum):
    NONE = "none"
    ERROR_500 = "500"
    ERROR_503 = "503"
    RESET = "reset"
    DROP_AFTER_ACCEPT = "drop_after_accept"


@dataclass(frozen=True, slots=True)
class FaultDraw:
    fault: Fault
    slow: bool


class FaultPlan:
    """Deterministic fault decisions: the n-th send request always gets the same draw for a seed."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self._active = config.any

    def draw(self) -> FaultDraw:
        if not self._active:
            return _NO_FAULT
        c = self.config
        u = self._rng.random()
        slow = self._rng.random() < c.slow_rate
        half = c.fail_rate / 2
        fault = Fault.NONE
        if u < half:
            fault = Fault.ERROR_500
        elif u < c.fail_rate:
            fault = Fault.ERROR_503
        elif u < c.fail_rate + c.reset_rate:
            fault = Fault.RESET
        elif u < c.fail_rate + c.reset_rate + c.drop_after_accept_rate:
            fault = Fault.DROP_AFTER_ACCEPT
        return FaultDraw(fault, slow)


_NO_FAULT = FaultDraw(Fault.NONE, False)


def ledger_head(fields: Mapping[str, Any]) -> bytes:
    """The JSON of ``fields`` plus ``"value":``, without the value and the closing brace."""
    return orjson.dumps({**fields, "value": None})[:-5]


def ledger_blob(fields: Mapping[str, Any], values: list[str], *, plain: bool = False) -> bytes:
    """One JSON line per value: ``{**fields, "value": v}``.

    ``plain`` promises that no value holds a quote, a backslash or a control character (true
    when the request body they were decoded from holds no backslash, since JSON must escape
    those inside strings); the lines are then joined as text, about 5 times faster.
    """
    if not values:
        return b""
    head = ledger_head(fields)
    if plain:
        text = head.decode()
        sep = '"}\n' + text + '"'
        return (text + '"' + sep.join(values) + '"}\n').encode()
    return b"".join(head + orjson.dumps(v) + b"}\n" for v in values)


# ---------------------------------------------------------------------------- I/O wrappers


@dataclass(slots=True)
class Stats:
    """Counters of one sandbox run (read them from tests and benchmarks)."""

    requests: int = 0
    accepted: int = 0  # requests that were accepted (and recorded in the ledger)
    recipients: int = 0  # ledger lines written
    rate_limited: int = 0  # 429 from the window (not storms)
    storm_limited: int = 0  # 429 from a storm
    unauthorized: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "recipients": self.recipients,
            "rate_limited": self.rate_limited,
            "storm_limited": self.storm_limited,
            "unauthorized": self.unauthorized,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(sorted(self.faults.items())),
        }


class Dialect(Protocol):
    """How one provider spells auth, errors and rate-limit headers."""

    def authorized(self, request: web.Request) -> bool: ...

    def precheck(self, request: web.Request) -> web.Response | None:
        """A provider-wide check after auth (e.g. Traitly's Accept), or None."""
        ...

    def error(self, status: int, message: str) -> web.Response: ...

    def rate_headers(self, decision: WindowDecision) -> Mapping[str, str]: ...


@dataclass(slots=True)
class Context:
    """Per-request facts handed to a provider handler."""

    core: Core
    number: int
    accepted: bool = False
    #: set by a handler when the values it accepts hold no character JSON must escape
    plain: bool = False

    def accept(self, fields: Mapping[str, Any], values: list[str]) -> None:
        """Record ``values`` (one ledger line each) as accepted by this request."""
        core = self.core
        if core.ledger.enabled:
            head = {"ts": round(core.wall(), 3), "request": self.number, **fields}
            if core.per_request_ledger:
                core.ledger.write(orjson.dumps({**head, "values": values}) + b"\n")
            else:
                core.ledger.write(ledger_blob(head, values, plain=self.plain))
        core.stats.recipients += len(values)
        self.accepted = True


Handler = Callable[[web.Request, Context], Awaitable[web.Response]]
SendPredicate = Callable[[web.Request], Awaitable[bool]]

REQUEST_NUMBER: web.RequestKey[int] = web.RequestKey("sandbox_request_number", int)


class Core:
    """Runtime state of one sandbox: config, windows, fault plan, ledger, stats and clocks."""

    def __init__(
        self,
        config: SandboxConfig,
        groups: Mapping[str, int],
        *,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.start = clock()
        self.started_at = wall()
        self.stats = Stats()
        self.ledger = Ledger(config.ledger)
        self.per_request_ledger = config.ledger_format == "requests"
        self.faults = FaultPlan(config.faults, config.seed_value)
        self.windows: dict[str, FixedWindow] = {}
        for name, default in groups.items():
            limit = config.limit if config.limit is not None else default
            limit = config.group_limits.get(name, limit)
            self.windows[name] = FixedWindow(limit, config.window, self.start)
        unknown = sorted(set(config.group_limits) - set(groups))
        if unknown:
            from bulksend.sandbox.config import SandboxConfigError

            known = ", ".join(groups)
            raise SandboxConfigError(
                f"unknown limit group(s) {', '.join(unknown)} (known: {known})"
            )
        self._number = 0
        self._latency = config.latency_ms / 1000.0

    def next_number(self) -> int:
        self._number += 1
        return self._number

    def close(self) -> None:
        self.ledger.close()

    # -- aiohttp glue -------------------------------------------------------------------------

    def middleware(self, dialect: Dialect, *, headers_from: str | None = None) -> Any:
        """Counts, delays, authenticates and turns router 404/405 into the provider's errors.

        ``headers_from``: a group whose current window headers go on the answers made here
        (401, 404, 405, prechecks), for providers that send them on every response.
        """
        stats = self.stats
        peek = self.windows[headers_from].peek if headers_from is not None else None

        @web.middleware
        async def sandbox_middleware(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            stats.requests += 1
            request[REQUEST_NUMBER] = self.next_number()
            if self._latency:
                await asyncio.sleep(self._latency)
            response: web.StreamResponse
            local = True
            if not dialect.authorized(request):
                stats.unauthorized += 1
                response = dialect.error(401, "unauthorized")
            else:
                early = dialect.precheck(request)
                if early is not None:
                    response = early
                else:
                    try:
                        response = await handler(request)
                        local = False
                    except ConnectionError:
                        # the client went away mid-request: nothing to answer, nothing to log
                        stats.by_status[DROPPED] += 1
                        return _drop(request)
                    except web.HTTPException as exc:
                        if exc.status == 405:
                            response = dialect.error(405, "method not allowed")
                            allow = exc.headers.get("Allow")
                            if allow:
                                response.headers["Allow"] = allow
                        elif exc.status == 404:
                            response = dialect.error(404, "not found")
                        else:
                            response = dialect.error(exc.status, exc.reason)
            if local and peek is not None:
                response.headers.update(dialect.rate_headers(peek(self.clock())))
            stats.by_status[response.status] += 1
            return response

        return sandbox_middleware

    def endpoint(
        self,
        dialect: Dialect,
        group: str,
        handler: Handler,
        *,
        send: bool | SendPredicate,
        retry_after: bool | None = None,
    ) -> Any:
        """Wrap a provider handler with the group's window and, on send endpoints, the faults.

        ``send`` may be a predicate on the request, for APIs (Maxemail) whose one path carries
        both reads and sends; ``retry_after`` None follows the config.
        """
        window = self.windows[group]
        faults = self.config.faults
        storms = faults.storm_every > 0
        if retry_after is None:
            retry_after = self.config.retry_after
        stats = self.stats

        async def endpoint(request: web.Request) -> web.StreamResponse:
            now = self.clock()
            is_send = send if isinstance(send, bool) else await send(request)
            if storms and is_send:
                left = storm_left(now - self.start, faults.storm_every, faults.storm_for)
                if left is not None:
                    stats.storm_limited += 1
                    stats.faults["storm"] += 1
                    response = dialect.error(429, "too many requests")
                    response.headers.update(dialect.rate_headers(window.peek(now)))
                    response.headers["Retry-After"] = retry_after_value(left)
                    return response
            decision = window.hit(now)
            headers = dialect.rate_headers(decision)
            if not decision.allowed:
                stats.rate_limited += 1
                response = dialect.error(429, "too many requests")
                response.headers.update(headers)
                if retry_after:
                    response.headers["Retry-After"] = retry_after_value(decision.reset_after)
                return response
            draw = self.faults.draw() if is_send else _NO_FAULT
            fault = draw.fault
            if fault is Fault.ERROR_500 or fault is Fault.ERROR_503:
                stats.faults[fault.value] += 1
                status = 500 if fault is Fault.ERROR_500 else 503
                response = dialect.error(status, "injected server error")
                response.headers.update(headers)
                if status == 503 and faults.retry_after_503:
                    response.headers["Retry-After"] = "1"
                return response
            if fault is Fault.RESET:
                stats.faults["reset"] += 1
                return _drop(request)
            ctx = Context(self, request[REQUEST_NUMBER])
            response = await handler(request, ctx)
            if ctx.accepted:
                await self.ledger.commit()
                stats.accepted += 1
                if fault is Fault.DROP_AFTER_ACCEPT:
                    stats.faults["drop_after_accept"] += 1
                    return _drop(request)
            if draw.slow:
                stats.faults["slow"] += 1
                await asyncio.sleep(faults.slow_ms / 1000.0)
            if headers:
                response.headers.update(headers)
            return response

        return endpoint


#: the status counted (never sent) for a connection closed without an answer, as nginx does
DROPPED = 499


def _drop(request: web.Request) -> web.Response:
    """Close the connection at once; aiohttp then discards the response returned here."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=DROPPED)


def json_response(
    data: Any,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    charset: str | None = None,
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        headers=headers,
        content_type="application/json",
        charset=charset,
    )


def parse_json(body: bytes) -> tuple[Any, str | None]:
    """(data, None) or (None, error message) for a request body."""
    if not body:
        return None, "request body is empty"
    try:
        return orjson.loads(body), None
    except orjson.JSONDecodeError as exc:
        return None, f"request body is not valid JSON: {exc}"


def first_duplicate(values: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"
