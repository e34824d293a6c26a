"""Shared by every sandbox: fault plan, ledger, stats and the request pipeline
(auth -> rate limit -> faults -> provider handler -> ledger -> faults after accept).

The pure parts (the limiters of ``bulksend.sandbox.limiters``, ``storm_left``, ``FaultPlan``,
``ledger_blob``) take ``now`` and data in and hand decisions out; ``Core`` and the aiohttp glue are
thin wrappers around them.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from bulksend.sandbox.config import FaultConfig, SandboxConfig, SandboxConfigError
from bulksend.sandbox.ledger import Ledger
from bulksend.sandbox.limiters import BodyKind, Decision, Limiter, make_limiter

# the window model moved to bulksend.sandbox.limiters; these names stay importable from here
from bulksend.sandbox.limiters import FixedWindow as FixedWindow
from bulksend.sandbox.limiters import WindowDecision as WindowDecision
from bulksend.sandbox.limiters import retry_after_value as retry_after_value

Clock = Callable[[], float]

# ---------------------------------------------------------------------------- pure logic


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
    #: refusals by the profile's limiter (not storms), whatever their status (429, 503, 403)
    rate_limited: int = 0
    storm_limited: int = 0  # 429 from a storm
    unauthorized: int = 0
    profile: str = "fixed"
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    #: ``rate_limited`` by endpoint group
    rate_limited_by_group: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "recipients": self.recipients,
            "rate_limited": self.rate_limited,
            "storm_limited": self.storm_limited,
            "unauthorized": self.unauthorized,
            "profile": self.profile,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(sorted(self.faults.items())),
            "rate_limited_by_group": dict(sorted(self.rate_limited_by_group.items())),
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
    """Runtime state of one sandbox: config, limiters, fault plan, ledger, stats and clocks."""

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
        self.stats = Stats(profile=config.profile)
        unknown = sorted(set(config.group_limits) - set(groups))
        if unknown:
            known = ", ".join(groups)
            raise SandboxConfigError(
                f"unknown limit group(s) {', '.join(unknown)} (known: {known})"
            )
        #: one limiter per endpoint group, of the config's profile (``fixed``: the provider's own)
        self.limiters: dict[str, Limiter] = {}
        for name, default in groups.items():
            limit = config.limit if config.limit is not None else default
            limit = config.group_limits.get(name, limit)
            self.limiters[name] = make_limiter(config, limit, origin=self.start)
        #: whether the limiters are a gateway's (their own headers and refusals)
        self.gateway = config.profile != "fixed"
        self.ledger = Ledger(config.ledger)
        self.per_request_ledger = config.ledger_format == "requests"
        self.faults = FaultPlan(config.faults, config.seed_value)
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
        peek = self.limiters[headers_from].peek if headers_from is not None else None

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
                decision = peek(self.clock(), self.wall())
                response.headers.update(self.answer_headers(decision, dialect))
            stats.by_status[response.status] += 1
            return response

        return sandbox_middleware

    def answer_headers(
        self, decision: Decision, dialect: Dialect, *, retry_after: bool = True
    ) -> dict[str, str]:
        """The rate-limit headers of an answer: the gateway's, or (fixed profile) the provider's
        own from the window's counts, plus Retry-After on a refusal unless ``retry_after`` is
        False (a provider whose own limiter sends none)."""
        if decision.counts is None:
            return dict(decision.headers)
        headers = dict(dialect.rate_headers(decision.counts))
        for name, value in decision.headers.items():
            if retry_after or name.lower() != "retry-after":
                headers[name] = value
        return headers

    def _storm(self, now: float, is_send: bool) -> float | None:
        """Seconds left in the 429 storm a send arriving ``now`` falls into, or None."""
        faults = self.config.faults
        if not is_send or faults.storm_every <= 0:
            return None
        left = storm_left(now - self.start, faults.storm_every, faults.storm_for)
        if left is not None:
            self.stats.storm_limited += 1
            self.stats.faults["storm"] += 1
        return left

    def _refusal(
        self, decision: Decision, dialect: Dialect, headers: Mapping[str, str], group: str
    ) -> web.Response:
        self.stats.rate_limited += 1
        self.stats.rate_limited_by_group[group] += 1
        if decision.body_kind is BodyKind.GATEWAY:
            response = web.Response(
                body=decision.body,
                status=decision.status,
                headers={"Content-Type": decision.content_type},
            )
        else:
            response = dialect.error(decision.status, "too many requests")
        response.headers.update(headers)
        return response

    def endpoint(
        self,
        dialect: Dialect,
        group: str,
        handler: Handler,
        *,
        send: bool | SendPredicate,
        retry_after: bool | None = None,
    ) -> Any:
        """Wrap a provider handler with the group's limiter and, on send endpoints, the faults.

        ``send`` may be a predicate on the request, for APIs (Maxemail) whose one path carries
        both reads and sends; ``retry_after`` False: the provider's own (fixed) limiter sends
        no Retry-After whatever the config says (a gateway profile decides for itself).

        The fixed profile is the provider's own limiter: a storm answers first and the window
        counts only what the storm lets through. A gateway profile stands in front: it counts
        every request it lets through, and the provider behind may still answer a storm's 429.
        """
        limiter = self.limiters[group]
        keep_retry_after = retry_after is not False
        gateway = self.gateway

        def storm_answer(left: float, headers: Mapping[str, str]) -> web.Response:
            response = dialect.error(429, "too many requests")
            response.headers.update(headers)
            response.headers["Retry-After"] = retry_after_value(left)
            return response

        async def endpoint(request: web.Request) -> web.StreamResponse:
            now, wall = self.clock(), self.wall()
            is_send = send if isinstance(send, bool) else await send(request)
            if not gateway:
                left = self._storm(now, is_send)
                if left is not None:
                    return storm_answer(left, self.answer_headers(limiter.peek(now, wall), dialect))
            decision = limiter.hit(now, wall)
            headers = self.answer_headers(decision, dialect, retry_after=keep_retry_after)
            if not decision.allowed:
                return self._refusal(decision, dialect, headers, group)
            if gateway:
                left = self._storm(now, is_send)
                if left is not None:
                    return storm_answer(left, headers)
            return await self._serve(request, dialect, handler, headers, is_send)

        return endpoint

    async def _serve(
        self,
        request: web.Request,
        dialect: Dialect,
        handler: Handler,
        headers: Mapping[str, str],
        is_send: bool,
    ) -> web.StreamResponse:
        """Past the limiter: the fault draw, the provider's handler, the ledger, late faults."""
        stats, faults = self.stats, self.config.faults
        draw = self.faults.draw() if is_send else _NO_FAULT
        fault = draw.fault
        if fault is Fault.ERROR_500 or fault is Fault.ERROR_503:
            stats.faults[fault.value] += 1
            status = 500 if fault is Fault.ERROR_500 else 503
            response = dialect.error(status, "injected server error")
            response.headers.update(headers)
            if status == 503 and faults.retry_after_503:
                _raise_retry_after(response, 1)
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


def _raise_retry_after(response: web.Response, seconds: int) -> None:
    """Set Retry-After to ``seconds`` unless the answer already holds a later one (a gateway
    that sends it on every answer, as Flask-Limiter, keeps the larger of the two)."""
    current = response.headers.get("Retry-After", "")
    if current.lstrip("-").isdigit():
        seconds = max(seconds, int(current))
    response.headers["Retry-After"] = str(seconds)


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


def short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"
