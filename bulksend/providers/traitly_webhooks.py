"""A receiver for Traitly's prediction webhooks that writes a campaign audience.

Traitly POSTs two kinds of JSON payload to an endpoint you register
(``shared/seeds/traitly-api.txt``, "Goal Predictions" and "Webhook: Goal Propensity Change")::

    {"data": [{"event_name", "goal_num_completed", ...}], "meta": {"customer_id", "goal_name"},
     "timestamp": 123456789, "object": "recommended-next-actions"}
    {"data": [{"likelihood": 0.5}], "meta": {...}, "timestamp": ...,
     "object": "goal-propensity-change"}

Each valid payload becomes one JSON line appended to the output file, flat so that
``bulksend send`` reads it as a JSON Lines recipient source (``id`` is the customer id)::

    {"id": "123456", "customer_id": "123456", "goal_name": "30-day Conversion",
     "object": "goal-propensity-change", "likelihood": 0.82, "timestamp": 123456789,
     "received_at": "2024-05-01T10:00:00Z"}

Recommended next actions add ``next_event``, ``next_importance``, ``next_message_plaintext``,
``next_message_html``, ``goal_days_left`` (of the most important action) and ``actions`` (how
many). ``min_likelihood`` keeps only payloads whose likelihood reaches it (a payload without one,
i.e. next actions, is kept), so the file is directly the audience of a follow-up campaign.

Answers: 200 ``{"status": "recorded"}`` or ``{"status": "filtered", "reason"}``; 400 with a
message for a payload of the wrong shape; 401 without the shared token (when one is set:
``Authorization: Token <t>`` or ``Bearer <t>``, or ``?token=<t>`` in the registered URL); 406
when ``Accept`` admits no JSON; 413 when the body is larger than ``max_body`` bytes
(``MAX_BODY``, 256 KiB, by default); 415 when the body is not ``application/json``. The doc
defines no authentication for webhooks; the token is this receiver's own.

Exposure: whoever can POST to the receiver adds people to an audience. Without a token it
listens only on a loopback address (``127.0.0.1``, ``::1``, ``localhost``): anywhere else
``serving`` refuses unless ``insecure_no_token`` says the user wants it so. Tokens are
compared in constant time (``hmac.compare_digest`` on their SHA-256 digests, so not even the
length shows) and never logged, printed or echoed in an answer.

The pure parts (``parse_payload``, ``flatten``, ``keep``) take data in and hand rows out; the
aiohttp glue (``build_app``, ``serving``) is thin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from bulksend.errors import PayloadError
from bulksend.net.http import accepts_json
from bulksend.output.private import open_private

__all__ = [
    "OBJECTS",
    "Payload",
    "PayloadError",
    "Receiver",
    "ReceiverConfig",
    "Recorder",
    "build_app",
    "flatten",
    "is_loopback",
    "keep",
    "parse_payload",
    "serving",
]

#: the default cap on a payload's size, in bytes (Traitly's payloads are a few KiB)
MAX_BODY = 256 * 1024
NEXT_ACTIONS = "recommended-next-actions"
PROPENSITY = "goal-propensity-change"
OBJECTS = (NEXT_ACTIONS, PROPENSITY)
#: the documented fields of a recommended action and their JSON types
ACTION_FIELDS: Mapping[str, tuple[type, ...]] = {
    "event_name": (str,),
    "goal_num_completed": (int,),
    "total_num_completed": (int,),
    "goal_days_left": (int,),
    "importance": (int, float),
    "message_plaintext": (str,),
    "message_html": (str,),
}


@dataclass(frozen=True, slots=True)
class Payload:
    object: str
    customer_id: str
    goal_name: str
    timestamp: float | None
    likelihood: float | None
    actions: tuple[Mapping[str, Any], ...] = ()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _likelihood(value: Any, where: str) -> float:
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise PayloadError(f"{where} must be a number between 0 and 1")
    return float(value)


def _action(item: Any, i: int) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise PayloadError(f"data[{i}] must be an object")
    name = item.get("event_name")
    if not isinstance(name, str) or not name.strip():
        raise PayloadError(f"data[{i}].event_name must be a non-empty string")
    for key, types in ACTION_FIELDS.items():
        value = item.get(key)
        if value is None:
            continue
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and float in types:
            ok = _is_number(value)
        if not ok:
            kind = {str: "a string", int: "an integer"}.get(types[0], "a number")
            if float in types:
                kind = "a number"
            raise PayloadError(f"data[{i}].{key} must be {kind}")
    return item


def parse_payload(data: Any) -> Payload:
    """Validate a decoded payload against the doc; ``PayloadError`` says what is wrong."""
    if not isinstance(data, dict):
        raise PayloadError("the payload must be a JSON object")
    kind = data.get("object")
    if kind not in OBJECTS:
        raise PayloadError(f"object must be one of {', '.join(OBJECTS)}")
    meta = data.get("meta")
    if not isinstance(meta, dict):
        raise PayloadError("meta must be an object with customer_id and goal_name")
    customer = meta.get("customer_id")
    if isinstance(customer, int) and not isinstance(customer, bool):
        customer = str(customer)
    if not isinstance(customer, str) or not customer.strip():
        raise PayloadError("meta.customer_id must be a non-empty string")
    goal = meta.get("goal_name")
    if not isinstance(goal, str) or not goal.strip():
        raise PayloadError("meta.goal_name must be a non-empty string")
    stamp = data.get("timestamp")
    if stamp is not None and not _is_number(stamp):
        raise PayloadError("timestamp must be a number (UNIX seconds)")
    items = data.get("data")
    if not isinstance(items, list) or not items:
        raise PayloadError("data must be a non-empty array")
    timestamp = float(stamp) if stamp is not None else None
    if kind == PROPENSITY:
        first = items[0]
        if not isinstance(first, dict) or "likelihood" not in first:
            raise PayloadError("data[0].likelihood is required")
        chance = _likelihood(first["likelihood"], "data[0].likelihood")
        return Payload(kind, customer.strip(), goal, timestamp, chance)
    actions = tuple(_action(item, i) for i, item in enumerate(items))
    top = data.get("likelihood")  # the GET answer's shape carries one; the webhook's may not
    likelihood = None if top is None else _likelihood(top, "likelihood")
    return Payload(kind, customer.strip(), goal, timestamp, likelihood, actions)


def keep(payload: Payload, min_likelihood: float, objects: frozenset[str]) -> str | None:
    """None when the payload belongs in the audience, else why not."""
    if payload.object not in objects:
        return f"object {payload.object} is not recorded here"
    if payload.likelihood is not None and payload.likelihood < min_likelihood:
        return f"likelihood {payload.likelihood:g} is below {min_likelihood:g}"
    return None


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def flatten(payload: Payload, received_at: float) -> dict[str, Any]:
    """The payload as one flat recipient row (``id`` = the customer id)."""
    row: dict[str, Any] = {
        "id": payload.customer_id,
        "customer_id": payload.customer_id,
        "goal_name": payload.goal_name,
        "object": payload.object,
    }
    if payload.likelihood is not None:
        row["likelihood"] = payload.likelihood
    if payload.actions:
        best = max(payload.actions, key=lambda a: a.get("importance") or 0.0)
        row["next_event"] = best["event_name"]
        for key, name in (
            ("importance", "next_importance"),
            ("message_plaintext", "next_message_plaintext"),
            ("message_html", "next_message_html"),
            ("goal_days_left", "goal_days_left"),
        ):
            if best.get(key) is not None:
                row[name] = best[key]
        row["actions"] = len(payload.actions)
    if payload.timestamp is not None:
        ts = payload.timestamp
        row["timestamp"] = int(ts) if ts == int(ts) else ts
    row["received_at"] = _stamp(received_at)
    return row


# ---------------------------------------------------------------------------- I/O


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    out: Path
    min_likelihood: float = 0.0
    token: str | None = field(default=None, repr=False)
    objects: frozenset[str] = frozenset(OBJECTS)
    path: str = "/"
    max_body: int = MAX_BODY
    #: listen without a token on an address others can reach (refused otherwise)
    insecure_no_token: bool = False

    def validate(self, host: str | None = None) -> None:
        """ValueError naming what is wrong; with ``host``, also whether it may listen there."""
        if host is not None and not (self.token or self.insecure_no_token or is_loopback(host)):
            shown = host or "every address"
            raise ValueError(
                f"will not listen on {shown} without a token: anyone who can reach it could add "
                "people to the audience; give a token (--token-env VAR), listen on 127.0.0.1, "
                "or say --insecure-no-token"
            )
        if self.max_body < 1:
            raise ValueError("max_body must be at least 1 byte")
        if not 0.0 <= self.min_likelihood <= 1.0:
            raise ValueError("min_likelihood must be between 0 and 1")
        if not self.objects or not self.objects <= set(OBJECTS):
            raise ValueError(f"objects must be some of {', '.join(OBJECTS)}")
        if not self.path.startswith("/"):
            raise ValueError("path must start with '/'")


@dataclass(slots=True)
class Counts:
    received: int = 0
    recorded: int = 0
    filtered: int = 0
    rejected: int = 0


class Recorder:
    """Appends one JSON line per row to ``path`` and hands it to the OS before answering."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] = open_private(path, "ab")

    def write(self, row: Mapping[str, Any]) -> None:
        self._file.write(orjson.dumps(row) + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def is_loopback(host: str) -> bool:
    """Is ``host`` a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``)? A host name
    other than localhost is not: it may resolve to anything."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _same_token(given: str, token: bytes) -> bool:
    """In constant time, whatever either's length (digests of equal length are compared)."""
    mine = hashlib.sha256(token).digest()
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), mine)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)


def _authorized(request: web.Request, token: bytes) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and given.strip():
        return _same_token(given.strip(), token)
    query = request.query.get("token")
    return query is not None and _same_token(query, token)


def build_app(
    config: ReceiverConfig,
    recorder: Recorder,
    counts: Counts,
    *,
    wall: Callable[[], float] = time.time,
) -> web.Application:
    """The aiohttp app: ``POST config.path`` takes payloads; everything else is a JSON error."""
    token = config.token.encode() if config.token else None

    def _too_large() -> web.Response:
        return _error(413, f"the payload must be at most {config.max_body} bytes")

    @web.middleware
    async def json_errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            counts.rejected += 1
            return _too_large()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _error(exc.status, exc.reason)
            allow = exc.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
            return response

    async def receive(request: web.Request) -> web.Response:
        counts.received += 1
        if token is not None and not _authorized(request, token):
            counts.rejected += 1
            return _error(401, "a valid token is required")
        if (request.content_length or 0) > config.max_body:  # said at once: not read at all
            counts.rejected += 1
            return _too_large()
        if not accepts_json(request.headers.get("Accept")):
            counts.rejected += 1
            return _error(406, "the answer is application/json")
        if request.content_type != "application/json":
            counts.rejected += 1
            return _error(415, "the payload must be application/json")
        try:
            data = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            counts.rejected += 1
            return _error(400, f"malformed JSON: {exc.msg} at column {exc.colno}")
        try:
            payload = parse_payload(data)
        except PayloadError as exc:
            counts.rejected += 1
            return _error(400, str(exc))
        reason = keep(payload, config.min_likelihood, config.objects)
        if reason is not None:
            counts.filtered += 1
            return web.json_response({"status": "filtered", "reason": reason})
        recorder.write(flatten(payload, wall()))
        counts.recorded += 1
        return web.json_response({"status": "recorded"})

    # a body that turns out longer than it said (chunked) stops being read at max_body
    app = web.Application(middlewares=[json_errors], client_max_size=config.max_body)
    app.router.add_post(config.path, receive)
    return app


@dataclass(slots=True)
class Receiver:
    """A running receiver: where it listens and what it counted."""

    host: str
    port: int
    counts: Counts

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@asynccontextmanager
async def serving(
    config: ReceiverConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    wall: Callable[[], float] = time.time,
) -> AsyncIterator[Receiver]:
    """Serve the receiver in the running loop until the block ends (port 0: a free one).

    ValueError when ``config`` is wrong or may not listen on ``host`` (no token, not loopback,
    not ``insecure_no_token``)."""
    config.validate(host)
    counts = Counts()
    recorder = Recorder(config.out)
    runner = web.AppRunner(
        build_app(config, recorder, counts, wall=wall),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        address = runner.addresses[0]
        yield Receiver(str(address[0]), int(address[1]), counts)
    finally:
        await runner.cleanup()
        recorder.close()
