"""Traitly sandbox, after ``shared/seeds/traitly-api.txt``.

Readings where the doc is silent:

* ``Authorization: Token <token>`` (``SandboxConfig.token``, default the api key), else 401.
  Errors are ``{"error": {"type", "message"}}`` with the doc's types: ``api_authentication_error``
  (401), ``api_error`` (429, 500, 503), ``api_invalid_request_error`` (400, 403, 404, 405, 406).
* 406 when an ``Accept`` header is present and admits no JSON (``application/json``,
  ``application/*`` or ``*/*`` with q > 0); a missing Accept is fine (the doc's curl examples send
  none). The Content-Type of a POST is not checked (the doc's curl examples send form-encoded
  headers with a JSON body); the body must be a JSON object, else 400.
* 403 "hidden" resources: customer ids starting with ``hidden`` (any read or write about them).
* Endpoints: ``POST/GET /api/v1/customer`` (required customer_id, name, email, plan; optional
  created_at as UNIX seconds, custom_attributes object; other fields kept; a known customer_id
  is updated); ``POST/GET /api/v1/event`` and the doc's alias ``/api/event`` (POST: customer_id,
  name, optional created_at; GET: customer_id and name required; events for unknown customers
  are accepted); ``GET /api/v1/recommended-next-actions?customer_id=&goal_name=`` (404 for an
  unknown customer; deterministic synthetic actions from the seed). customer_id may be a string
  or an integer (kept as text). Other methods on these paths are 405 with ``Allow``; other paths
  404. Timestamps are UNIX seconds as strings, as in the doc.
* One hidden window (group ``api``, default 600 per 60 s): no X-RateLimit headers (the doc names
  none); 429 carries Retry-After unless switched off.
* Faults hit the two POSTs. Ledger kinds ``customer`` (value customer_id) and ``event`` (value
  customer_id, extra key ``event``).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from bulksend.net.http import accepts_json
from bulksend.sandbox.common import (
    Context,
    Core,
    Handler,
    WindowDecision,
    json_response,
    parse_json,
    short,
)

NAME = "traitly"
GROUPS: Mapping[str, int] = {"api": 600}
DEFAULT_MAX_BATCH = None
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TYPES = {
    401: "api_authentication_error",
    429: "api_error",
    500: "api_error",
    503: "api_error",
}
MESSAGES = {
    401: "Invalid API token",
    403: "The requested resource is hidden",
    404: "The specified resource could not be found",
    405: "Method not allowed for this resource",
    406: "Only JSON responses are available",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service temporarily unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def hidden(customer_id: str) -> bool:
    return customer_id.startswith("hidden")


def _text_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _required(data: Mapping[str, Any], names: tuple[str, ...]) -> None:
    missing = [n for n in names if data.get(n) in (None, "")]
    if missing:
        raise ApiError(400, f"Missing required parameter: {', '.join(missing)}")


def _created_at(data: Mapping[str, Any], now: float) -> str:
    value = data.get("created_at")
    if value is None:
        return str(int(now))
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and value.isdigit())
    ):
        raise ApiError(400, "created_at must be a UNIX timestamp in seconds")
    return str(int(value))


def validate_customer(data: Any, now: float) -> dict[str, Any]:
    """The customer a POST body describes, or ApiError."""
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object")
    _required(data, ("customer_id", "name", "email", "plan"))
    customer_id = _text_id(data["customer_id"])
    if customer_id is None:
        raise ApiError(400, "customer_id must be a non-empty string or an integer")
    if hidden(customer_id):
        raise ApiError(403, MESSAGES[403])
    for key in ("name", "email", "plan"):
        if not isinstance(data[key], str):
            raise ApiError(400, f"{key} must be a string")
    if not EMAIL.match(data["email"]):
        raise ApiError(400, f"email is not a valid address: {short(data['email'])!r}")
    attributes = data.get("custom_attributes", {})
    if not isinstance(attributes, dict):
        raise ApiError(400, "custom_attributes must be an object")
    return {
        **data,
        "customer_id": customer_id,
        "created_at": _created_at(data, now),
        "custom_attributes": attributes,
    }


def validate_event(data: Any, now: float) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object")
    _required(data, ("customer_id", "name"))
    customer_id = _text_id(data["customer_id"])
    if customer_id is None:
        raise ApiError(400, "customer_id must be a non-empty string or an integer")
    if hidden(customer_id):
        raise ApiError(403, MESSAGES[403])
    if not isinstance(data["name"], str):
        raise ApiError(400, "name must be a string")
    return {
        "customer_id": customer_id,
        "name": data["name"],
        "created_at": _created_at(data, now),
        "success": 1,
    }


def recommendations(seed: int, customer_id: str, goal: str) -> dict[str, Any]:
    """Deterministic synthetic next actions for a customer and goal."""
    digest = hashlib.sha256(f"{seed}:{customer_id}:{goal}".encode()).digest()
    rng = random.Random(digest)
    names = ["Style Widget", "Invite Teammate", "Connect Data Source", "Create Report"]
    picks = rng.sample(names, rng.randint(1, 3))
    weights = [rng.random() + 0.1 for _ in picks]
    total = sum(weights)
    data = [
        {
            "event_name": name,
            "goal_num_completed": rng.randint(0, 3),
            "total_num_completed": rng.randint(3, 9),
            "goal_days_left": rng.randint(1, 30),
            "importance": round(w / total, 3),
            "message_plaintext": f"It's time to complete {name}...",
            "message_html": f"<p>It's time to complete {name}...</p>",
        }
        for name, w in zip(picks, weights, strict=True)
    ]
    return {"data": data, "likelihood": round(rng.random(), 3)}


# ---------------------------------------------------------------------------- aiohttp


class TraitlyDialect:
    def __init__(self, core: Core) -> None:
        self._expected = f"Token {core.config.effective_token}".encode()

    def authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), self._expected)

    def precheck(self, request: web.Request) -> web.Response | None:
        if not accepts_json(request.headers.get("Accept")):
            return self.error(406, MESSAGES[406])
        return None

    def error(self, status: int, message: str) -> web.Response:
        generic = message in ("not found", "method not allowed", "unauthorized")
        if status in MESSAGES and (generic or status in (429, 500, 503)):
            message = MESSAGES[status]
        kind = TYPES.get(status, "api_invalid_request_error")
        return json_response({"error": {"type": kind, "message": message}}, status)

    def rate_headers(self, decision: WindowDecision) -> Mapping[str, str]:
        return {}  # the doc names no rate-limit headers


async def _body_of(request: web.Request) -> Any:
    data, problem = parse_json(await request.read())
    if problem is not None:
        raise ApiError(400, problem)
    return data


class _TraitlyApi:
    """The endpoints of one Traitly sandbox, over its customers and events."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.dialect = TraitlyDialect(core)
        self.seed = core.config.seed_value
        self.customers: dict[str, dict[str, Any]] = {}
        self.events: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def error(self, exc: ApiError) -> web.Response:
        return self.dialect.error(exc.status, exc.message)

    def listing(
        self, kind: str, data: list[dict[str, Any]], key: str = "retrieved"
    ) -> web.Response:
        body = {"data": data, "metadata": {}, key: str(int(self.core.wall())), "object": kind}
        return json_response(body)

    async def create_customer(self, request: web.Request, ctx: Context) -> web.Response:
        try:
            customer = validate_customer(await _body_of(request), self.core.wall())
        except ApiError as exc:
            return self.error(exc)
        customer_id = customer["customer_id"]
        customers = self.customers
        customers[customer_id] = {**customers.get(customer_id, {}), **customer}
        ctx.accept({"campaign": None, "kind": "customer"}, [customer_id])
        return self.listing("customer", [customers[customer_id]], "created")

    async def list_customers(self, request: web.Request, ctx: Context) -> web.Response:
        q = request.query
        wanted = q.get("customer_id")
        if wanted is not None and hidden(wanted):
            return self.dialect.error(403, MESSAGES[403])
        found = [
            c
            for c in self.customers.values()
            if all(q.get(k) is None or c.get(k) == q[k] for k in ("customer_id", "name", "plan"))
        ]
        return self.listing("customer", found)

    async def create_event(self, request: web.Request, ctx: Context) -> web.Response:
        try:
            event = validate_event(await _body_of(request), self.core.wall())
        except ApiError as exc:
            return self.error(exc)
        self.events.setdefault((event["customer_id"], event["name"]), []).append(event)
        fields = {"campaign": None, "kind": "event", "event": event["name"]}
        ctx.accept(fields, [event["customer_id"]])
        return self.listing("event", [event], "created")

    async def list_events(self, request: web.Request, ctx: Context) -> web.Response:
        q = request.query
        try:
            _required(q, ("customer_id", "name"))
        except ApiError as exc:
            return self.error(exc)
        if hidden(q["customer_id"]):
            return self.dialect.error(403, MESSAGES[403])
        return self.listing("event", self.events.get((q["customer_id"], q["name"]), []))

    async def next_actions(self, request: web.Request, ctx: Context) -> web.Response:
        q = request.query
        try:
            _required(q, ("customer_id",))
        except ApiError as exc:
            return self.error(exc)
        customer_id = q["customer_id"]
        if hidden(customer_id):
            return self.dialect.error(403, MESSAGES[403])
        if customer_id not in self.customers:
            return self.dialect.error(404, f"No such customer: {short(customer_id)!r}")
        goal = q.get("goal_name", "Conversion")
        body = {
            **recommendations(self.seed, customer_id, goal),
            "meta": {"customer_id": customer_id, "goal_name": goal},
            "timestamp": int(self.core.wall()),
            "object": "recommended-next-actions",
        }
        return json_response(body)


def build_app(core: Core) -> web.Application:
    api = _TraitlyApi(core)
    dialect = api.dialect
    app = web.Application(middlewares=[core.middleware(dialect)])

    def route(method: str, path: str, handler: Handler, *, send: bool = False) -> None:
        app.router.add_route(method, path, core.endpoint(dialect, "api", handler, send=send))

    route("POST", "/api/v1/customer", api.create_customer, send=True)
    route("GET", "/api/v1/customer", api.list_customers)
    for path in ("/api/v1/event", "/api/event"):
        route("POST", path, api.create_event, send=True)
        route("GET", path, api.list_events)
    route("GET", "/api/v1/recommended-next-actions", api.next_actions)
    return app
