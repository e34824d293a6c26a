"""MaxTraffic sandbox, after ``shared/seeds/maxtraffic-api.txt``; paths from the adapter's PATHS.

Readings where the doc is silent (also in the package docstring of ``bulksend.sandbox``):

* One fixed window per API key ("per consumer") shared by every endpoint: group ``api``,
  600 requests per 60 s by default. ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining`` on every
  response (401/404/422 too); 429 ``{"message": ...}`` past the limit with ``Retry-After`` (whole
  seconds to the window's end). Requests answered 429 or 401 do not consume quota.
* Errors are ``{"message": "..."}``. A POST whose Content-Type is not application/json is answered
  422 (the doc lists 422 and no 415). Unknown paths 404, wrong methods 405.
* ``POST /v1/notifications``: ``messages`` (required, non-empty array of unique non-empty
  objects), optional string ``icon``/``image``/``campaign`` (missing, null or empty campaign:
  ``default``), ``to_ids``/``to_uids`` arrays of unique non-empty strings, each non-empty and at
  most ``max_batch`` (default 1000) long when present, and at least one of them present
  (``strict_arrays``: both required). Unknown top-level keys are ignored. 200 ``{"success": true}``.
* ``GET /v1/visitors/{id}``: from ``--visitors`` (only the file's ids exist) or else synthetic:
  an id containing ``unknown`` is 404, so is a seeded ``unknown_visitor_rate`` fraction; an id
  containing ``unsubscribed`` is not a web push subscriber; the user_id is a UUID derived from
  the seed and the id.
* ``GET /v1/leads`` and ``GET /v1/campaigns/{id}/leads``: a JSON array of ``{"email",
  "timestamp", "campaign"}``, ``leads`` synthetic leads over the 30 days before the start, across
  campaigns 1..4; ``from`` inclusive, ``to`` exclusive; a malformed date or ``from`` after ``to``
  is 422; an unknown campaign id is 404.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bulksend.providers.maxtraffic import PATHS
from bulksend.sandbox.common import (
    Context,
    Core,
    Handler,
    WindowDecision,
    json_response,
    parse_json,
    short,
)
from bulksend.sandbox.config import SandboxConfig, SandboxConfigError

NAME = "maxtraffic"
GROUPS: Mapping[str, int] = {"api": 600}
DEFAULT_MAX_BATCH = 1000
CAMPAIGNS: Mapping[str, str] = {
    "1": "Summer sale",
    "2": "Cart abandonment",
    "3": "Black Friday",
    "4": "Newsletter",
}


class Invalid(ValueError):
    """A request the provider answers 422; the message names the field."""


# ---------------------------------------------------------------------------- pure validation


@dataclass(frozen=True, slots=True)
class Notification:
    campaign: str
    ids: list[str]
    uids: list[str]


def _string_array(data: Mapping[str, Any], key: str, max_batch: int) -> list[str] | None:
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list):
        raise Invalid(f"{key}: must be an array of strings")
    if not value:
        raise Invalid(f"{key}: must not be empty")
    if len(value) > max_batch:
        raise Invalid(f"{key}: at most {max_batch} entries allowed (got {len(value)})")
    try:
        "".join(value)  # the fastest all-strings check: TypeError on the first non-string
    except TypeError:
        index = next(i for i, v in enumerate(value) if not isinstance(v, str))
        raise Invalid(f"{key}[{index}]: must be a string") from None
    unique = set(value)
    if "" in unique:
        raise Invalid(f"{key}[{value.index('')}]: must not be empty")
    if len(unique) != len(value):
        seen: set[str] = set()
        for v in value:
            if v in seen:
                raise Invalid(f"{key}: duplicate value {short(v)!r}")
            seen.add(v)
    return value


def _check_messages(data: Mapping[str, Any]) -> None:
    """``messages``: required, a non-empty array of unique non-empty objects."""
    messages = data.get("messages")
    if messages is None:
        raise Invalid("messages: required")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: must be a non-empty array of objects")
    keys: set[bytes] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not m:
            raise Invalid(f"messages[{i}]: must be a non-empty object")
        encoded = orjson.dumps(m, option=orjson.OPT_SORT_KEYS)
        if encoded in keys:
            raise Invalid(f"messages[{i}]: duplicate message")
        keys.add(encoded)


def _check_optional_strings(data: Mapping[str, Any]) -> None:
    """``icon``, ``image`` and ``campaign``: missing, null or a string."""
    for key in ("icon", "image", "campaign"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise Invalid(f"{key}: must be a string")


def _recipients(
    data: Mapping[str, Any], max_batch: int, strict_arrays: bool
) -> tuple[list[str] | None, list[str] | None]:
    """``to_ids`` and ``to_uids`` (None: absent): one at least, both when ``strict_arrays``."""
    ids = _string_array(data, "to_ids", max_batch)
    uids = _string_array(data, "to_uids", max_batch)
    if strict_arrays:
        if ids is None:
            raise Invalid("to_ids: required")
        if uids is None:
            raise Invalid("to_uids: required")
    elif ids is None and uids is None:
        raise Invalid("to_ids or to_uids: at least one is required")
    return ids, uids


def _check_marker(marker: str, ids: list[str], uids: list[str]) -> None:
    """Refuse the first id or uid containing ``marker``, naming it."""
    for key, values in (("to_ids", ids), ("to_uids", uids)):
        for i, v in enumerate(values):
            if marker in v:
                raise Invalid(f"{key}[{i}]: not a known visitor: {short(v)!r}")


def validate_notification(
    data: Any, *, max_batch: int, strict_arrays: bool, reject_marker: str | None = None
) -> Notification:
    """The notification a body asks for, or ``Invalid`` naming the first problem.

    ``reject_marker``: an id or uid containing it is refused like data the provider does not
    accept ("contained invalid data", 422), naming the entry — to exercise a client's handling
    of one bad recipient in a batch.
    """
    if not isinstance(data, dict):
        raise Invalid("request body must be a JSON object")
    _check_messages(data)
    _check_optional_strings(data)
    ids, uids = _recipients(data, max_batch, strict_arrays)
    if reject_marker:
        _check_marker(reject_marker, ids or [], uids or [])
    return Notification(data.get("campaign") or "default", ids or [], uids or [])


# ---------------------------------------------------------------------------- visitors


@dataclass(frozen=True, slots=True)
class Visitor:
    id: str
    user_id: str
    web_push_subscriber: bool


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SandboxConfigError(f"{where}: web_push_subscriber must be true or false, got {value!r}")


def load_visitors(path: Path) -> dict[str, Visitor]:
    """Visitors from a CSV (header id,user_id,web_push_subscriber) or JSON Lines file."""
    out: dict[str, Visitor] = {}
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = orjson.loads(line)
                if not isinstance(row, dict) or not row.get("id"):
                    raise SandboxConfigError(f"{path}:{n}: an object with an id is required")
                subscriber = _flag(row.get("web_push_subscriber", True), f"{path}:{n}")
                out[str(row["id"])] = Visitor(
                    str(row["id"]), str(row.get("user_id") or ""), subscriber
                )
        return out
    with path.open(newline="", encoding="utf-8") as f:
        for n, rec in enumerate(csv.DictReader(f), 2):
            if not rec.get("id"):
                raise SandboxConfigError(f"{path}:{n}: the id column is required")
            subscriber = _flag(rec.get("web_push_subscriber") or "true", f"{path}:{n}")
            out[rec["id"]] = Visitor(rec["id"], rec.get("user_id") or "", subscriber)
    return out


def _unit(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def synthetic_visitor(visitor_id: str, *, seed: int, unknown_rate: float) -> Visitor | None:
    """The visitor the sandbox invents for ``visitor_id`` (None: 404)."""
    if "unknown" in visitor_id or _unit(seed, "visitor:" + visitor_id) < unknown_rate:
        return None
    digest = hashlib.sha256(f"{seed}:user:{visitor_id}".encode()).digest()
    user_id = str(uuid.UUID(bytes=digest[:16], version=4))
    return Visitor(visitor_id, user_id, "unsubscribed" not in visitor_id)


# ---------------------------------------------------------------------------- leads


@dataclass(frozen=True, slots=True)
class Lead:
    email: str
    at: datetime
    campaign_id: str

    def as_json(self) -> dict[str, str]:
        return {
            "email": self.email,
            "timestamp": self.at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "campaign": CAMPAIGNS[self.campaign_id],
        }


def synthetic_leads(count: int, *, seed: int, anchor: float) -> list[Lead]:
    """``count`` leads spread over the 30 days before ``anchor`` (epoch seconds), sorted."""
    rng = random.Random(seed)
    end = datetime.fromtimestamp(int(anchor), UTC)
    ids = sorted(CAMPAIGNS)
    leads = [
        Lead(
            f"lead{i + 1}@example.com",
            end - timedelta(seconds=rng.randrange(30 * 86400)),
            rng.choice(ids),
        )
        for i in range(count)
    ]
    return sorted(leads, key=lambda lead: (lead.at, lead.email))


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 date or date-time (naive means UTC), or ``Invalid``."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{name}: not an ISO 8601 date-time: {short(text)!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def filter_leads(leads: list[Lead], query: Mapping[str, str], campaign: str | None) -> list[Lead]:
    start = parse_instant("from", query["from"]) if "from" in query else None
    end = parse_instant("to", query["to"]) if "to" in query else None
    if start is not None and end is not None and start > end:
        raise Invalid("from: must not be after to")
    return [
        lead
        for lead in leads
        if (campaign is None or lead.campaign_id == campaign)
        and (start is None or lead.at >= start)
        and (end is None or lead.at < end)
    ]


# ---------------------------------------------------------------------------- aiohttp


class MaxTrafficDialect:
    def __init__(self, config: SandboxConfig) -> None:
        self._expected = f"key={config.api_key}".encode()
        self._headers = config.ratelimit_headers

    def authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), self._expected)

    def precheck(self, request: web.Request) -> web.Response | None:
        return None

    def error(self, status: int, message: str) -> web.Response:
        if status == 401:
            message = "Unauthorized: wrong or empty Authorization header"
        elif status == 429:
            message = "Too Many Requests"
        elif status == 404 and message == "not found":
            message = "Not Found"
        return json_response({"message": message}, status)

    def rate_headers(self, decision: WindowDecision) -> Mapping[str, str]:
        if not self._headers:
            return {}
        return {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
        }


_OK = orjson.dumps({"success": True})


class _MaxTrafficApi:
    """The endpoints of one MaxTraffic sandbox, over its visitors and leads."""

    def __init__(self, core: Core) -> None:
        config = core.config
        self.config = config
        self.dialect = MaxTrafficDialect(config)
        self.max_batch = config.max_batch or DEFAULT_MAX_BATCH
        self.seed = config.seed_value
        self.visitors = load_visitors(config.visitors) if config.visitors is not None else None
        self.leads = synthetic_leads(config.leads, seed=self.seed, anchor=core.started_at)

    def invalid(self, message: str) -> web.Response:
        return self.dialect.error(422, message)

    async def notifications(self, request: web.Request, ctx: Context) -> web.Response:
        if request.content_type != "application/json":
            return self.invalid("Content-Type must be application/json")
        body = await request.read()
        data, problem = parse_json(body)
        if problem is not None:
            return self.invalid(problem)
        ctx.plain = b"\\" not in body
        try:
            note = validate_notification(
                data,
                max_batch=self.max_batch,
                strict_arrays=self.config.strict_arrays,
                reject_marker=self.config.reject_marker,
            )
        except Invalid as exc:
            return self.invalid(str(exc))
        if note.ids:
            ctx.accept({"campaign": note.campaign, "kind": "id"}, note.ids)
        if note.uids:
            ctx.accept({"campaign": note.campaign, "kind": "uid"}, note.uids)
        return web.Response(body=_OK, content_type="application/json")

    async def visitor(self, request: web.Request, ctx: Context) -> web.Response:
        visitor_id = request.match_info["id"]
        if self.visitors is not None:
            found = self.visitors.get(visitor_id)
        else:
            found = synthetic_visitor(
                visitor_id, seed=self.seed, unknown_rate=self.config.unknown_visitor_rate
            )
        if found is None:
            return self.dialect.error(404, f"Visitor {short(visitor_id)!r} not found")
        return json_response(
            {
                "id": found.id,
                "user_id": found.user_id,
                "web_push_subscriber": found.web_push_subscriber,
            }
        )

    async def all_leads(self, request: web.Request, ctx: Context) -> web.Response:
        try:
            chosen = filter_leads(self.leads, request.query, None)
        except Invalid as exc:
            return self.invalid(str(exc))
        return json_response([lead.as_json() for lead in chosen])

    async def campaign_leads(self, request: web.Request, ctx: Context) -> web.Response:
        campaign = request.match_info["id"]
        if campaign not in CAMPAIGNS:
            return self.dialect.error(404, f"Campaign {short(campaign)!r} not found")
        try:
            chosen = filter_leads(self.leads, request.query, campaign)
        except Invalid as exc:
            return self.invalid(str(exc))
        return json_response([lead.as_json() for lead in chosen])


def build_app(core: Core) -> web.Application:
    api = _MaxTrafficApi(core)
    dialect = api.dialect
    # every response carries the window's headers, including 401/404/405 from the middleware
    app = web.Application(middlewares=[core.middleware(dialect, headers_from="api")])

    def route(method: str, path: str, handler: Handler, *, send: bool = False) -> None:
        app.router.add_route(method, path, core.endpoint(dialect, "api", handler, send=send))

    route("POST", PATHS["notifications"], api.notifications, send=True)
    route("GET", PATHS["visitor"], api.visitor)
    route("GET", PATHS["leads"], api.all_leads)
    route("GET", PATHS["campaign_leads"], api.campaign_leads)
    return app
