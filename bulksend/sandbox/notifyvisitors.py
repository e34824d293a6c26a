"""NotifyVisitors sandbox, after ``shared/seeds/notifyvisitors-api.txt``.

Readings where the doc is silent:

* Auth: ``x-api-key`` + ``x-brand-id`` (both must match) or ``Authorization: Bearer <token>``
  (token: ``SandboxConfig.token``, default the api key); otherwise 401.
* Every answer is the envelope ``{"response": {"data", "message", "status"}}``. HTTP 400 ("Invalid
  resource") for structural problems: Content-Type not application/json, malformed JSON, a body
  that is not an object, ``nv`` missing/not a non-empty array/longer than ``max_batch`` (default
  100), a record that is not an object, a missing or unknown ``channel``, ``campaign_id`` or
  ``users``. HTTP 200 with ``status: "error"`` when records are well-formed but their values are
  not (empty or missing ``userID``, ``user_attributes``/``event_attributes`` not an object, missing
  ``event``, a malformed ``timestamp``, an empty user in ``users``); then nothing of the request
  is saved, and ``data.errors`` lists ``{"index", "message"}``. 404 "Invalid URL" for unknown
  paths and wrong methods; 401 "Invalid auth"; 429 past a group's window.
* Endpoints and groups (each its own fixed window; ``limit`` overrides all four,
  ``group_limits`` one): ``POST /api/v1/user/create`` (group ``user``, 100/min) body
  ``{"nv": [{"userID", "user_attributes"}]}``; ``POST /api/v1/event/track`` (``event``, 500/min)
  body ``{"nv": [{"userID", "event", "event_attributes"?, "timestamp"?}]}``;
  ``POST /api/v1/campaign/send`` (``campaign``, 500/min) body ``{"channel": "push|email|sms",
  "campaign_id", "users": [userID, ...]}`` with at most ``max_batch`` users;
  ``GET /api/v1/report/campaign?campaign_id=`` (``reporting``, 50/min).
* Only ``X-RateLimit-Remaining`` is sent (no Limit), on the four endpoints' answers; 429 carries
  ``Retry-After`` unless switched off. A ``userID`` may be a string or an integer (kept as text).
* Timestamps are ``yyyy-MM-ddTHH:mm:ss+0000``; incoming ones may omit the seconds, as the doc's
  own example does.
* Ledger kinds: ``user`` (value userID), ``event`` (value userID, extra key ``event``),
  ``campaign`` (value userID, ``campaign`` the campaign id, extra key ``channel``).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bulksend.sandbox.common import (
    Context,
    Core,
    Handler,
    WindowDecision,
    json_response,
    parse_json,
    short,
)

NAME = "notifyvisitors"
GROUPS: Mapping[str, int] = {"user": 100, "event": 500, "campaign": 500, "reporting": 50}
DEFAULT_MAX_BATCH = 100
CHANNELS = ("push", "email", "sms")
PATHS = {
    "user": "/api/v1/user/create",
    "event": "/api/v1/event/track",
    "campaign": "/api/v1/campaign/send",
    "reporting": "/api/v1/report/campaign",
}


def stamp(epoch: float) -> str:
    """The doc's timestamp format, ``yyyy-MM-ddTHH:mm:ss+0000``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def parse_stamp(text: str) -> datetime | None:
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def envelope(data: Any, message: str, status: str) -> dict[str, Any]:
    return {"response": {"data": data, "message": message, "status": status}}


class BadRequest(ValueError):
    """HTTP 400 "Invalid resource"."""


@dataclass(frozen=True, slots=True)
class RecordError:
    index: int
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "message": self.message}


# ---------------------------------------------------------------------------- pure validation


def _records(data: Any, max_batch: int) -> list[dict[str, Any]]:
    if not isinstance(data, dict):
        raise BadRequest("Invalid resource: the body must be a JSON object")
    records = data.get("nv")
    if not isinstance(records, list) or not records:
        raise BadRequest("Invalid resource: nv must be a non-empty array")
    if len(records) > max_batch:
        raise BadRequest(f"Invalid resource: at most {max_batch} records per request")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"Invalid resource: nv[{i}] must be an object")
    return records


def _user_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def validate_users(data: Any, max_batch: int) -> tuple[list[str], list[RecordError]]:
    """(userIDs, record errors) of a user/create body; BadRequest when it is malformed."""
    ids: list[str] = []
    errors: list[RecordError] = []
    for i, record in enumerate(_records(data, max_batch)):
        user = _user_id(record.get("userID"))
        if user is None:
            errors.append(RecordError(i, "userID is required"))
            continue
        attributes = record.get("user_attributes", {})
        if not isinstance(attributes, dict):
            errors.append(RecordError(i, "user_attributes must be an object"))
            continue
        ids.append(user)
    return ids, errors


def validate_events(data: Any, max_batch: int) -> tuple[list[tuple[str, str]], list[RecordError]]:
    """((userID, event) pairs, record errors) of an event/track body."""
    events: list[tuple[str, str]] = []
    errors: list[RecordError] = []
    for i, record in enumerate(_records(data, max_batch)):
        user = _user_id(record.get("userID"))
        name = record.get("event")
        if user is None:
            errors.append(RecordError(i, "userID is required"))
        elif not isinstance(name, str) or not name.strip():
            errors.append(RecordError(i, "event is required"))
        elif not isinstance(record.get("event_attributes", {}), dict):
            errors.append(RecordError(i, "event_attributes must be an object"))
        elif "timestamp" in record and (
            not isinstance(record["timestamp"], str) or parse_stamp(record["timestamp"]) is None
        ):
            errors.append(RecordError(i, "timestamp must look like yyyy-MM-ddTHH:mm:ss+0000"))
        else:
            events.append((user, name))
    return events, errors


@dataclass(frozen=True, slots=True)
class CampaignSend:
    channel: str
    campaign_id: str
    users: list[str]


def validate_campaign(data: Any, max_batch: int) -> tuple[CampaignSend, list[RecordError]]:
    if not isinstance(data, dict):
        raise BadRequest("Invalid resource: the body must be a JSON object")
    channel = data.get("channel")
    if channel not in CHANNELS:
        raise BadRequest("Invalid resource: channel must be one of push, email, sms")
    campaign = _user_id(data.get("campaign_id"))
    if campaign is None:
        raise BadRequest("Invalid resource: campaign_id is required")
    users = data.get("users")
    if not isinstance(users, list) or not users:
        raise BadRequest("Invalid resource: users must be a non-empty array")
    if len(users) > max_batch:
        raise BadRequest(f"Invalid resource: at most {max_batch} users per request")
    ids: list[str] = []
    errors: list[RecordError] = []
    for i, value in enumerate(users):
        user = _user_id(value)
        if user is None:
            errors.append(RecordError(i, "userID must be a non-empty string or an integer"))
        else:
            ids.append(user)
    return CampaignSend(str(channel), campaign, ids), errors


# ---------------------------------------------------------------------------- aiohttp


class NotifyVisitorsDialect:
    def __init__(self, core: Core) -> None:
        config = core.config
        self._key = config.api_key.encode()
        self._brand = config.brand_id.encode()
        self._bearer = f"Bearer {config.effective_token}".encode()
        self._headers = config.ratelimit_headers

    def authorized(self, request: web.Request) -> bool:
        h = request.headers
        bearer = h.get("Authorization")
        if bearer is not None:
            return hmac.compare_digest(bearer.encode(), self._bearer)
        key, brand = h.get("x-api-key", ""), h.get("x-brand-id", "")
        ok_key = hmac.compare_digest(key.encode(), self._key)
        return ok_key & hmac.compare_digest(brand.encode(), self._brand)

    def precheck(self, request: web.Request) -> web.Response | None:
        return None

    def error(self, status: int, message: str) -> web.Response:
        text = {
            401: "Invalid auth",
            404: "Invalid URL",
            405: "Invalid URL",
            429: "Rate limit exceeded",
            500: "Internal server error",
            503: "Service temporarily unavailable",
        }.get(status, message)
        if status == 405:
            status = 404
        return json_response(envelope({}, text, "error"), status)

    def rate_headers(self, decision: WindowDecision) -> Mapping[str, str]:
        if not self._headers:
            return {}
        return {"X-RateLimit-Remaining": str(decision.remaining)}


@dataclass(slots=True)
class CampaignReport:
    campaign_id: str
    sent: int = 0
    requests: int = 0
    channels: dict[str, int] = field(default_factory=dict)
    first: float = 0.0
    last: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "sent": self.sent,
            "requests": self.requests,
            "channels": dict(self.channels),
            "first_sent": stamp(self.first),
            "last_sent": stamp(self.last),
        }


def _bad(message: str) -> web.Response:
    return json_response(envelope({}, message, "error"), 400)


def _record_errors(errors: list[RecordError], total: int) -> web.Response:
    message = f"{len(errors)} of {total} records are invalid; nothing was saved"
    data = {"errors": [e.as_json() for e in errors]}
    return json_response(envelope(data, message, "error"))


async def _body_of(request: web.Request) -> tuple[Any, bytes]:
    if request.content_type != "application/json":
        raise BadRequest("Invalid resource: Content-Type must be application/json")
    raw = await request.read()
    data, problem = parse_json(raw)
    if problem is not None:
        raise BadRequest(f"Invalid resource: {problem}")
    return data, raw


class _NotifyVisitorsApi:
    """The endpoints of one NotifyVisitors sandbox, over its campaign reports."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.dialect = NotifyVisitorsDialect(core)
        self.max_batch = core.config.max_batch or DEFAULT_MAX_BATCH
        self.reports: dict[str, CampaignReport] = {}

    def success(self, count: int) -> web.Response:
        data = {"count": count, "timestamp": stamp(self.core.wall())}
        return json_response(envelope(data, "success", "success"))

    async def user_create(self, request: web.Request, ctx: Context) -> web.Response:
        try:
            data, raw = await _body_of(request)
            ids, errors = validate_users(data, self.max_batch)
        except BadRequest as exc:
            return _bad(str(exc))
        if errors:
            return _record_errors(errors, len(ids) + len(errors))
        ctx.plain = b"\\" not in raw
        ctx.accept({"campaign": None, "kind": "user"}, ids)
        return self.success(len(ids))

    async def event_track(self, request: web.Request, ctx: Context) -> web.Response:
        try:
            data, _ = await _body_of(request)
            events, errors = validate_events(data, self.max_batch)
        except BadRequest as exc:
            return _bad(str(exc))
        if errors:
            return _record_errors(errors, len(events) + len(errors))
        for user, name in events:
            ctx.accept({"campaign": None, "kind": "event", "event": name}, [user])
        return self.success(len(events))

    async def campaign_send(self, request: web.Request, ctx: Context) -> web.Response:
        try:
            data, raw = await _body_of(request)
            send, errors = validate_campaign(data, self.max_batch)
        except BadRequest as exc:
            return _bad(str(exc))
        if errors:
            return _record_errors(errors, len(send.users) + len(errors))
        ctx.plain = b"\\" not in raw
        fields = {"campaign": send.campaign_id, "kind": "campaign", "channel": send.channel}
        ctx.accept(fields, send.users)
        self.count(send)
        return self.success(len(send.users))

    def count(self, send: CampaignSend) -> None:
        """Add an accepted campaign send to its campaign's report."""
        now = self.core.wall()
        report = self.reports.get(send.campaign_id)
        if report is None:
            report = self.reports[send.campaign_id] = CampaignReport(send.campaign_id, first=now)
        report.sent += len(send.users)
        report.requests += 1
        report.channels[send.channel] = report.channels.get(send.channel, 0) + len(send.users)
        report.last = now

    async def campaign_report(self, request: web.Request, ctx: Context) -> web.Response:
        campaign = request.query.get("campaign_id", "")
        if not campaign:
            return _bad("Invalid resource: campaign_id is required")
        report = self.reports.get(campaign)
        if report is None:
            message = f"campaign {short(campaign)!r} not found"
            return json_response(envelope({}, message, "error"))
        return json_response(envelope(report.as_json(), "success", "success"))


def build_app(core: Core) -> web.Application:
    api = _NotifyVisitorsApi(core)
    dialect = api.dialect
    app = web.Application(middlewares=[core.middleware(dialect)])

    def route(method: str, group: str, handler: Handler, *, send: bool) -> None:
        endpoint = core.endpoint(dialect, group, handler, send=send)
        app.router.add_route(method, PATHS[group], endpoint)

    route("POST", "user", api.user_create, send=True)
    route("POST", "event", api.event_track, send=True)
    route("POST", "campaign", api.campaign_send, send=True)
    route("GET", "reporting", api.campaign_report, send=False)
    return app
