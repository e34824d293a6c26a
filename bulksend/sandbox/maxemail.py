"""Maxemail sandbox, after ``shared/seeds/maxemail-api.txt`` (the JSON API communication spec).

Readings where the doc is silent:

* ``POST /api/json/<service>``, body ``application/x-www-form-urlencoded`` with ``method`` and the
  parameters by name or as ``argN``; arrays/objects are JSON strings. GET with the same query
  parameters works for the read-only methods; a method that changes data over GET is 400.
  A POST with another Content-Type is 415 (multipart/form-data too: no file uploads here).
* Basic auth (``SandboxConfig.username`` / ``password``, default the api key); otherwise 401 with
  ``WWW-Authenticate: Basic realm="MxmApi"`` (the doc notes .NET clients need the challenge).
* Success: HTTP 200 with the JSON-encoded return value (``12345``, ``null``, ``true``, an object),
  ``Content-Type: application/json; charset=utf-8``. Errors: ``{"success": false, "msg", "code"}``
  with ``code`` equal to the HTTP status: 400 wrong arity (``Invalid Method Call to M. Requires N,
  G given.``, exactly the doc's words), missing/unknown method, bad JSON parameter, invalid email,
  duplicate recipient; 404 unknown service or unknown recipient id; 401; 429; 500/503.
* Methods: ``recipient.findByEmailAddress(emailAddress)`` -> id or null;
  ``recipient.insert(data)`` (object with ``email_address`` and any fields) -> new id;
  ``recipient.update(recipientId, data)`` -> true; ``list.addRecipient(listId, recipientId)`` ->
  true; ``list.insertRecipient(listId, recipientId)``: the same, deprecated (answers carry
  ``Warning: 299 MxmApi/v100 "insertRecipient Deprecated: 100 Use list.addRecipient"``);
  ``email_send.triggerFolder(folderId, recipientId, params)`` (recipientId an id or an email
  address, created when new; params a JSON object) -> true; ``email_campaign.insert(data)`` ->
  the campaign object as in the doc.
* No rate-limit headers and no Retry-After ever: the limit (group ``api``, default 600 requests
  per 60 s) is hidden and only shows as 429. Injected 503s still carry Retry-After unless off.
* Faults hit the methods that change data (insert, update, addRecipient, insertRecipient,
  triggerFolder). Ledger kinds: ``recipient`` (insert; value the email address), ``update``,
  ``list`` (campaign = list id), ``email`` (triggerFolder; campaign = folder id); the value is
  always the recipient's email address.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from bulksend.sandbox.common import Context, Core, WindowDecision, json_response, short

NAME = "maxemail"
GROUPS: Mapping[str, int] = {"api": 600}
DEFAULT_MAX_BATCH = None
API_VERSION = "v100"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Record:
    """A ledger line the call asks for: kind, campaign (or None), value."""

    kind: str
    campaign: str | None
    value: str


@dataclass(slots=True)
class Result:
    value: Any
    records: list[Record] = field(default_factory=list)
    warning: str | None = None


@dataclass(frozen=True, slots=True)
class Method:
    params: tuple[str, ...]
    run: Callable[[State, list[str]], Result]
    writes: bool
    deprecated: str | None = None  # reason, when deprecated


def _email(value: str, name: str) -> str:
    if not EMAIL.match(value):
        raise ApiError(400, f"Invalid email address for {name}: {short(value)!r}")
    return value.lower()


def _object(value: str, name: str) -> dict[str, Any]:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, f"Parameter {name} must be a JSON object")
    return data


def _positive(value: str, name: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ApiError(400, f"Parameter {name} must be a positive integer")
    return int(value)


@dataclass(slots=True)
class State:
    """The provider's data: recipients and list members, in memory. Pure: no I/O, no clock."""

    recipients: dict[int, dict[str, Any]] = field(default_factory=dict)
    by_email: dict[str, int] = field(default_factory=dict)
    lists: dict[int, set[int]] = field(default_factory=dict)
    next_recipient: int = 1
    next_email: int = 340

    def _recipient(self, value: str, name: str, *, create: bool = False) -> int:
        if value.isdigit():
            rid = int(value)
            if rid not in self.recipients:
                raise ApiError(404, f"Recipient {rid} not found")
            return rid
        email = _email(value, name)
        found = self.by_email.get(email)
        if found is None:
            if not create:
                raise ApiError(404, f"Recipient {short(email)!r} not found")
            found = self._add({"email_address": email})
        return found

    def _add(self, data: dict[str, Any]) -> int:
        rid = self.next_recipient
        self.next_recipient += 1
        self.recipients[rid] = data
        self.by_email[data["email_address"]] = rid
        return rid

    def find_by_email(self, args: list[str]) -> Result:
        return Result(self.by_email.get(_email(args[0], "emailAddress")))

    def insert(self, args: list[str]) -> Result:
        data = _object(args[0], "data")
        address = data.get("email_address")
        if not isinstance(address, str):
            raise ApiError(400, "data.email_address is required")
        email = _email(address, "email_address")
        if email in self.by_email:
            raise ApiError(400, f"Recipient with email_address {short(email)!r} already exists")
        rid = self._add({**data, "email_address": email})
        return Result(rid, [Record("recipient", None, email)])

    def update(self, args: list[str]) -> Result:
        rid = self._recipient(args[0], "recipientId")
        data = _object(args[1], "data")
        current = self.recipients[rid]
        new_email = data.get("email_address", current["email_address"])
        if not isinstance(new_email, str):
            raise ApiError(400, "data.email_address must be a string")
        new_email = _email(new_email, "email_address")
        other = self.by_email.get(new_email)
        if other is not None and other != rid:
            raise ApiError(400, f"Recipient with email_address {short(new_email)!r} already exists")
        del self.by_email[current["email_address"]]
        current.update(data)
        current["email_address"] = new_email
        self.by_email[new_email] = rid
        return Result(True, [Record("update", None, new_email)])

    def add_to_list(self, args: list[str]) -> Result:
        list_id = _positive(args[0], "listId")
        rid = self._recipient(args[1], "recipientId")
        self.lists.setdefault(list_id, set()).add(rid)
        email = self.recipients[rid]["email_address"]
        return Result(True, [Record("list", str(list_id), email)])

    def trigger_folder(self, args: list[str]) -> Result:
        folder = _positive(args[0], "folderId")
        rid = self._recipient(args[1], "recipientId", create=True)
        _object(args[2], "params")
        email = self.recipients[rid]["email_address"]
        return Result(True, [Record("email", str(folder), email)])

    def insert_campaign(self, args: list[str]) -> Result:
        data = _object(args[0], "data")
        for key in ("folder_id", "name", "subject_line"):
            if key not in data:
                raise ApiError(400, f"data.{key} is required")
        email_id = self.next_email
        self.next_email += 1
        return Result(
            {
                "email_id": email_id,
                "campaign_id": str(email_id - 42),
                "name": data["name"],
                "subject_line": data["subject_line"],
                "message_type": data.get("message_type", "both"),
                "from_address": data.get("from_address"),
                "from_address_alias": data.get("from_address_alias"),
                "template_id": data.get("template_id"),
            }
        )


SERVICES: Mapping[str, Mapping[str, Method]] = {
    "recipient": {
        "findByEmailAddress": Method(("emailAddress",), State.find_by_email, writes=False),
        "insert": Method(("data",), State.insert, writes=True),
        "update": Method(("recipientId", "data"), State.update, writes=True),
    },
    "list": {
        "addRecipient": Method(("listId", "recipientId"), State.add_to_list, writes=True),
        "insertRecipient": Method(
            ("listId", "recipientId"),
            State.add_to_list,
            writes=True,
            deprecated="Use list.addRecipient",
        ),
    },
    "email_send": {
        "triggerFolder": Method(
            ("folderId", "recipientId", "params"), State.trigger_folder, writes=True
        ),
    },
    "email_campaign": {
        "insert": Method(("data",), State.insert_campaign, writes=True),
    },
}


def lookup(service: str, params: Mapping[str, str]) -> tuple[str, Method]:
    """The method a request names, or ApiError."""
    methods = SERVICES.get(service)
    if methods is None:
        raise ApiError(404, f"Unknown service {short(service)!r}")
    name = params.get("method", "")
    if not name:
        raise ApiError(400, "No method specified")
    method = methods.get(name)
    if method is None:
        raise ApiError(400, f"Invalid method {short(name)!r} for service {service!r}")
    return name, method


def arguments(name: str, method: Method, params: Mapping[str, str]) -> list[str]:
    """The positional arguments, named or ``argN``; wrong arity is the doc's 400."""
    values: list[str | None] = []
    for i, param in enumerate(method.params):
        value = params.get(param)
        values.append(value if value is not None else params.get(f"arg{i}"))
    given = sum(v is not None for v in values)
    extra = re.compile(r"^arg(\d+)$")
    given += sum(
        1 for key in params if (m := extra.match(key)) and int(m.group(1)) >= len(method.params)
    )
    if given != len(method.params) or any(v is None for v in values):
        raise ApiError(
            400, f"Invalid Method Call to {name}. Requires {len(method.params)}, {given} given."
        )
    return [v for v in values if v is not None]


def deprecation(name: str, method: Method) -> str | None:
    """The Warning header a deprecated method's answers carry (successes and errors alike)."""
    if not method.deprecated:
        return None
    return f'299 MxmApi/{API_VERSION} "{name} Deprecated: {API_VERSION[1:]} {method.deprecated}"'


def call(state: State, service: str, params: Mapping[str, str]) -> Result:
    name, method = lookup(service, params)
    result = method.run(state, arguments(name, method, params))
    result.warning = deprecation(name, method)
    return result


# ---------------------------------------------------------------------------- aiohttp


class MaxemailDialect:
    def __init__(self, core: Core) -> None:
        config = core.config
        pair = f"{config.username}:{config.effective_password}".encode()
        self._expected = pair

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)

    def precheck(self, request: web.Request) -> web.Response | None:
        return None

    def error(self, status: int, message: str) -> web.Response:
        text = {
            401: "Authentication failed",
            429: "Too many requests",
            500: "Internal server error",
            503: "Service temporarily unavailable",
        }.get(status, message)
        if status == 404 and message == "not found":
            text = "Not Found"
        headers = {"WWW-Authenticate": 'Basic realm="MxmApi"'} if status == 401 else None
        return json_response(
            {"success": False, "msg": text, "code": status}, status, headers, charset="utf-8"
        )

    def rate_headers(self, decision: WindowDecision) -> Mapping[str, str]:
        return {}  # the limit is hidden


PARAMS: web.RequestKey[Mapping[str, str]] = web.RequestKey("maxemail_params", Mapping)


async def params_of(request: web.Request) -> Mapping[str, str]:
    """The request's parameters (query for GET, form for POST), parsed once."""
    if PARAMS in request:
        return request[PARAMS]
    if request.method == "GET":
        params: Mapping[str, str] = dict(request.query)
    elif request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
    else:
        params = {}
    request[PARAMS] = params
    return params


def build_app(core: Core) -> web.Application:
    dialect = MaxemailDialect(core)
    state = State()

    def error(exc: ApiError) -> web.Response:
        return dialect.error(exc.status, exc.message)

    async def is_send(request: web.Request) -> bool:
        if request.method != "POST":
            return False
        methods = SERVICES.get(request.match_info["service"], {})
        method = methods.get((await params_of(request)).get("method", ""))
        return method is not None and method.writes

    async def service(request: web.Request, ctx: Context) -> web.Response:
        if request.method == "POST" and request.content_type != "application/x-www-form-urlencoded":
            if request.content_type == "multipart/form-data":
                message = "File uploads (multipart/form-data) are not supported by the sandbox"
            else:
                message = "Content-type must be application/x-www-form-urlencoded"
            return dialect.error(415, message)
        params = await params_of(request)
        name = request.match_info["service"]
        warning = None
        try:
            method_name, method = lookup(name, params)
            warning = deprecation(method_name, method)
            if method.writes and request.method == "GET":
                raise ApiError(400, f"{method_name} changes data: call it with POST")
            result = call(state, name, params)
        except ApiError as exc:
            answer = error(exc)
            if warning:
                answer.headers["Warning"] = warning
            return answer
        for record in result.records:
            ctx.accept({"campaign": record.campaign, "kind": record.kind}, [record.value])
        headers = {"Warning": result.warning} if result.warning else None
        return json_response(result.value, headers=headers, charset="utf-8")

    app = web.Application(middlewares=[core.middleware(dialect)])
    endpoint = core.endpoint(dialect, "api", service, send=is_send, retry_after=False)
    app.router.add_route("POST", "/api/json/{service}", endpoint)
    app.router.add_route("GET", "/api/json/{service}", endpoint)
    return app
