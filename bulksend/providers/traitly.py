"""Traitly (``shared/seeds/traitly-api.txt``; readings in docs/providers.md).

One record per request (the API takes one object per POST), with
``Authorization: Token <token>`` (secret ``token``), ``Content-Type`` and ``Accept``
``application/json``. Operations (the campaign's ``operation``):

* ``customers`` (default): ``POST /api/v1/customer`` with ``customer_id`` (the ``id`` column),
  the required ``name``, ``email`` and ``plan``, the optional ``created_at`` (UNIX seconds) from
  the columns of the same names (renamed with ``[message].columns``), and the other columns in
  ``custom_attributes`` (or at the top level: ``[message].top_level``). Deduplicated on
  customer_id.
* ``events``: ``POST /api/v1/event`` with ``customer_id``, ``name`` (the ``name`` column, or one
  name for every row in ``[message].name``) and the optional ``created_at``. Other columns are
  not sent (the doc defines no other event field). Not deduplicated on customer_id, since one
  customer has many events; an event key column mapped as ``[recipients].uid`` deduplicates.

A 2xx is delivered only when it is the doc's create answer: a JSON object whose ``object`` is
the operation's (``customer``, ``event``) and whose ``data`` holds the record sent (its
customer_id; ``classify_sent``, which the engine prefers to ``classify``); anything else is an
unexpected answer.

Rows missing a required value (or with an unreadable ``created_at``) are refused before sending
by ``screen`` and reported invalid with the file and line; Traitly's 400 would name them too.

The doc names no rate limit and no rate-limit headers: one group, ``api``, starting at
600/min and adapting to 429s (``[send].limit`` sets another start).

The list endpoints and recommended next actions are reads: ``customers_read``, ``events_read``,
``next_actions_read`` build them, ``read_list`` / ``read_next_actions`` interpret the answer;
``bulksend.providers.traitly_api`` sends them through a ``Transport``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bulksend.errors import AuthError, ConfigError, ProviderError, TransientError
from bulksend.models import Batch, HttpRequest, HttpResponse, Recipient
from bulksend.providers.answers import NOT_JSON, fatal, read_json, unexpected
from bulksend.providers.base import (
    Classification,
    Limit,
    Verdict,
    checked_options,
    checked_paths,
    screen_with,
)
from bulksend.providers.reads import ReadRequest
from bulksend.providers.status import common_verdict, throttled
from bulksend.ratelimit.headers import parse_seconds
from bulksend.sources.spec import Chunk

NAME = "traitly"
DEFAULT_BASE_URL = "https://api.traitly.com"
DEFAULT_BATCH_SIZE = 1  # one object per request: the API has no batch form
GROUP = "api"
PATHS: Mapping[str, str] = {
    "customer": "/api/v1/customer",
    "event": "/api/v1/event",
    "next_actions": "/api/v1/recommended-next-actions",
}
#: not documented: where the scheduler starts (it adapts to 429s; no headers to read)
DEFAULT_LIMITS: Mapping[str, Limit] = {GROUP: Limit(600, 60.0)}
SECRETS: Mapping[str, str] = {"token": "TRAITLY_TOKEN"}
OPERATIONS: tuple[str, ...] = ("customers", "events")
PATH_OF: Mapping[str, str] = {"customers": "customer", "events": "event"}
#: the fields each operation reads from columns (the doc's POST parameters besides customer_id)
FIELDS: Mapping[str, tuple[str, ...]] = {
    "customers": ("name", "email", "plan", "created_at"),
    "events": ("name", "created_at"),
}
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "customers": ("name", "email", "plan"),
    "events": ("name",),
}
MESSAGE_FIELDS: Mapping[str, frozenset[str]] = {
    "customers": frozenset({"columns", "top_level"}),
    "events": frozenset({"columns", "name"}),
}
API_OPTIONS = frozenset({"paths"})
#: the doc's error types, by the status they come with (the sandbox's reading)
ERROR_TYPES: Mapping[int, str] = {
    401: "api_authentication_error",
    429: "api_error",
    500: "api_error",
    503: "api_error",
}
#: the doc's meaning of each status, for answers without a message of their own
MEANINGS: Mapping[int, str] = {
    400: "Bad Request",
    401: "Unauthorized – Your API key is invalid",
    403: "Forbidden – The requested resource is hidden",
    404: "Not Found – The specified resource could not be found",
    405: "Method Not Allowed – You tried to access a resource with an invalid method",
    406: "Not Acceptable – You requested a format that isn’t json",
    429: "Too Many Requests – You’re requesting too many resources",
    500: "Internal Server Error – We had a problem with our server. Try again later.",
    503: "Service Unavailable – We’re temporarily offline for maintenance.",
}


def headers(token: str, *, body: bool = True) -> dict[str, str]:
    out = {"Authorization": f"Token {token}", "Accept": "application/json"}
    if body:
        out["Content-Type"] = "application/json"
    return out


# ---------------------------------------------------------------------------- pure helpers


def unix_seconds(text: str) -> int | None:
    """A column value as UNIX seconds: digits (milliseconds above 1e12) or ISO 8601 (naive: UTC)."""
    value = text.strip()
    if not value:
        return None
    number = parse_seconds(value)
    if number is not None:
        return int(number / 1000.0 if number >= 1e12 else number)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def error_of(response: HttpResponse) -> tuple[str, str]:
    """(type, message) of an error answer ``{"error": {"type", "message"}}``, else the doc's."""
    status = response.status
    kind = ERROR_TYPES.get(status, "api_invalid_request_error")
    message = MEANINGS.get(status, "")
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        text = response.body[:200].decode("utf-8", "replace").strip()
        return kind, text or message
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        if isinstance(error.get("type"), str):
            kind = error["type"]
        if isinstance(error.get("message"), str) and error["message"]:
            message = error["message"]
    elif isinstance(error, str) and error:
        message = error
    elif isinstance(data, dict) and isinstance(data.get("message"), str):
        message = data["message"]
    return kind, message


_DELIVERED = Classification(Verdict.DELIVERED)
#: how messages name the documented success answer
ANSWER = "Traitly's JSON answer"


#: the ``object`` of the doc's create answers, by operation
OBJECTS: Mapping[str, str] = {"customers": "customer", "events": "event"}


@dataclass(frozen=True, slots=True)
class Sent:
    """What a create answer must name: its ``object`` and, when known, the customer_id sent."""

    object: str
    customer_id: str | None = None


def _text(value: Any) -> str | None:
    """An id as text: a string, or an integer (the sandbox keeps either as text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _shape(sent: Sent | None) -> str:
    if sent is None:
        return '{"data": [...], "object": ...}'
    item = "..."
    if sent.customer_id is not None:
        item = f'{{"customer_id": {orjson.dumps(sent.customer_id[:40]).decode()}, ...}}'
    return f'{{"data": [{item}], "object": "{sent.object}"}}'


def success(response: HttpResponse, sent: Sent | None = None) -> Classification:
    """A 2xx: the doc's create answer ``{"data": [the record], "object": "customer"}`` (JSON)
    is delivered, unless its item has ``success`` 0 (or false): invalid. With ``sent``, the
    ``object`` must be the operation's and an item of ``data`` must carry the customer_id sent
    (the doc's create answers hold the created record). Anything else is an unexpected answer
    (JSON of another shape: the engine cannot tell whether Traitly acted, ``unknown``)."""
    body = read_json(response)
    items = body.get("data") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return unexpected(response, ANSWER, _shape(sent))
    if sent is not None:
        if body.get("object") != sent.object:
            return unexpected(response, ANSWER, _shape(sent))
        if sent.customer_id is not None:
            items = [
                item
                for item in items
                if isinstance(item, dict) and _text(item.get("customer_id")) == sent.customer_id
            ]
            if not items:
                return unexpected(response, ANSWER, _shape(sent))
    for item in items:
        if isinstance(item, dict) and "success" in item and item["success"] in (0, False):
            message = f"{response.status}: Traitly answered success: 0"
            return Classification(Verdict.INVALID, message)
    return _DELIVERED


def sent_of(operation: str, request: HttpRequest | None) -> Sent:
    """What the answer to ``request`` (a create of ``operation``) must name."""
    customer_id = None
    if request is not None and request.body:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            customer_id = _text(body.get("customer_id"))
    return Sent(OBJECTS[operation], customer_id)


def classify(response: HttpResponse, sent: Sent | None = None) -> Classification:
    """Status -> verdict; the message carries the doc's error type (docs/providers.md).
    ``sent``: what a 2xx must name (``success``)."""
    status = response.status
    if 200 <= status < 300:
        return success(response, sent)
    kind, text = error_of(response)
    message = f"{status} {kind}: {text}"
    # 403 is "the requested resource is hidden" (this record), unless it shows a spent quota
    common = common_verdict(status, response.headers, message, forbidden=Verdict.INVALID)
    if common is not None:
        return common
    if status in (400, 422):
        return Classification(Verdict.INVALID, message)
    # 404, 405, 406, a redirect: the request can never work; the body's own words, if any
    said = f"{kind}: {text}" if read_json(response) is not NOT_JSON else ""
    return fatal(response, said)


@dataclass(slots=True)
class OneByOne:
    """One recipient per batch: Traitly takes one object per POST."""

    group: str = GROUP
    _number: int = 0

    def add(self, recipient: Recipient) -> Batch | None:
        self._number += 1
        return Batch(self._number, self.group, [recipient])

    def flush(self) -> Iterable[Batch]:
        return []


# ---------------------------------------------------------------------------- the adapter


@dataclass(slots=True)
class Traitly:
    """Customers or events into Traitly; ``columns`` maps each field to its column."""

    token: str = field(repr=False)
    operation: str
    columns: Mapping[str, str]
    event_name: str | None = None  # events: one name for every row
    top_level: tuple[str, ...] = ()  # customers: columns sent as top-level fields
    id_column: str = "customer_id"  # the recipient file's column holding it (for messages)
    paths: Mapping[str, str] = field(default_factory=lambda: dict(PATHS))
    name: str = NAME
    groups: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    sends_rate_headers: bool = False
    dedup_keys: tuple[str, ...] = ("id",)

    def headers(self) -> dict[str, str]:
        return headers(self.token)

    def batcher(self, batch_size: int) -> OneByOne:
        return OneByOne()

    def _value(self, recipient: Recipient, name: str) -> str | None:
        if name == "name" and self.event_name is not None:
            return self.event_name
        value = recipient.attrs.get(self.columns[name], "")
        return value if value.strip() else None

    def body(self, recipient: Recipient) -> dict[str, Any]:
        """The one JSON object for ``recipient``; a missing value is left out (the API says)."""
        out: dict[str, Any] = {}
        if recipient.id is not None:
            out["customer_id"] = recipient.id
        for name in FIELDS[self.operation]:
            value = self._value(recipient, name)
            if value is None:
                continue
            if name == "created_at":
                seconds = unix_seconds(value)
                out[name] = value if seconds is None else seconds
            else:
                out[name] = value
        if self.operation == "customers":
            used = set(self.columns.values())
            custom = {}
            for column, value in recipient.attrs.items():
                if column in used or value == "":
                    continue
                if column in self.top_level:
                    out.setdefault(column, value)
                else:
                    custom[column] = value
            if custom:
                out["custom_attributes"] = custom
        return out

    def encode(self, batch: Batch) -> HttpRequest:
        (recipient,) = batch.recipients
        body = orjson.dumps(self.body(recipient))
        return HttpRequest("POST", self.paths[PATH_OF[self.operation]], self.headers(), body)

    def classify(self, response: HttpResponse) -> Classification:
        """Without the request: the answer's shape and ``object`` (``classify_sent`` also
        checks that it names the record sent; the engine uses that one)."""
        return classify(response, Sent(OBJECTS[self.operation]))

    def classify_sent(self, request: HttpRequest, response: HttpResponse) -> Classification:
        """The verdict on ``response``, the answer to ``request``: a 2xx must hold the record
        sent (its customer_id) and the operation's ``object``."""
        if not 200 <= response.status < 300:
            return classify(response)
        return classify(response, sent_of(self.operation, request))

    def check(self, recipient: Recipient) -> str | None:
        """Why this row cannot be sent (reported invalid before sending), or None."""
        missing = [] if recipient.id is not None else [self.id_column]
        for name in REQUIRED[self.operation]:
            if self._value(recipient, name) is None:
                missing.append(name if self.columns[name] == name else self.columns[name])
        if missing:
            return f"missing required {', '.join(missing)}"
        created = self._value(recipient, "created_at")
        if created is not None and unix_seconds(created) is None:
            return f"created_at: not UNIX seconds or ISO 8601: {created[:40]!r}"
        return None

    def screen(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Chunks with the rows ``check`` refuses moved to ``rejected`` (no request for them).
        Without it, Traitly's 400 answers name the same rows, one request each."""
        return screen_with(self.check, chunks)

    def describe(self) -> Mapping[str, Any]:
        facts: dict[str, Any] = {
            "provider": self.name,
            "operation": self.operation,
            "group": GROUP,
            "path": self.paths[PATH_OF[self.operation]],
        }
        if self.event_name is not None:
            facts["event"] = self.event_name
        return facts


# ---------------------------------------------------------------------------- reads


def _params(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v is not None}


def customers_read(
    token: str,
    *,
    customer_id: str | None = None,
    name: str | None = None,
    plan: str | None = None,
    paths: Mapping[str, str] = PATHS,
) -> ReadRequest:
    """``GET /api/v1/customer`` with the doc's optional filters."""
    params = _params(customer_id=customer_id, name=name, plan=plan)
    return ReadRequest(paths["customer"], params, headers(token, body=False))


def events_read(
    token: str, customer_id: str, name: str, *, paths: Mapping[str, str] = PATHS
) -> ReadRequest:
    """``GET /api/v1/event``; both filters are required by the doc."""
    params = {"customer_id": customer_id, "name": name}
    return ReadRequest(paths["event"], params, headers(token, body=False))


def next_actions_read(
    token: str,
    customer_id: str,
    goal_name: str | None = None,
    *,
    paths: Mapping[str, str] = PATHS,
) -> ReadRequest:
    """``GET /api/v1/recommended-next-actions`` for one customer (and goal)."""
    params = _params(customer_id=customer_id, goal_name=goal_name)
    return ReadRequest(paths["next_actions"], params, headers(token, body=False))


def _body(response: HttpResponse, what: str) -> dict[str, Any]:
    status = response.status
    if not 200 <= status < 300:
        kind, text = error_of(response)
        message = f"traitly {what}: {status} {kind}: {text}"
        if status == 401:
            raise AuthError(message, status=status)
        throttle = throttled(status, response.headers, f"{status} {kind}: {text}")
        if throttle is not None:  # a 429, or a 403 that shows a spent quota
            raise TransientError(f"traitly {what}: {throttle.message}", status=status)
        if status == 408 or status >= 500:
            raise TransientError(message, status=status)
        raise ProviderError(message, status=status)
    try:
        data = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        message = f"traitly {what}: {status}: the answer is not JSON"
        raise ProviderError(message, status=status) from None
    if not isinstance(data, dict):
        raise ProviderError(f"traitly {what}: {status}: the answer is not an object", status=status)
    return data


def read_list(response: HttpResponse, what: str = "list") -> list[dict[str, Any]]:
    """The ``data`` array of a list answer; AuthError / TransientError / ProviderError else."""
    data = _body(response, what).get("data")
    if not isinstance(data, list):
        raise ProviderError(f"traitly {what}: the answer has no data array", status=response.status)
    return [item for item in data if isinstance(item, dict)]


def read_next_actions(response: HttpResponse) -> dict[str, Any]:
    """The recommended-next-actions object (``data``, ``likelihood``, ``meta``, ...)."""
    body = _body(response, "recommended-next-actions")
    if not isinstance(body.get("data"), list):
        message = "traitly recommended-next-actions: the answer has no data array"
        raise ProviderError(message, status=response.status)
    return body


# ---------------------------------------------------------------------------- build


def _columns(operation: str, given: Any) -> dict[str, str]:
    if not isinstance(given, dict):
        raise ConfigError("[message].columns: a table of field = column name")
    fields = FIELDS[operation]
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(
            f"[message].columns: unknown field(s) {', '.join(unknown)} for traitly "
            f"{operation} (known: {', '.join(fields)})"
        )
    out = {name: name for name in fields}
    for name, column in given.items():
        if not isinstance(column, str) or not column.strip():
            raise ConfigError(f"[message].columns.{name}: a column name is required")
        out[name] = column
    if len(set(out.values())) != len(out):
        raise ConfigError("[message].columns: two fields read the same column")
    return out


def build(options: Mapping[str, Any], secrets: Mapping[str, str]) -> Traitly:
    """The adapter from the campaign's ``[api]`` table, operation and ``[message]`` (checked)."""
    operation, message = checked_options(
        NAME,
        options,
        operations=OPERATIONS,
        api_keys=API_OPTIONS,
        message_fields=MESSAGE_FIELDS,
    )
    paths = checked_paths(options, PATHS)
    columns = _columns(operation, message.get("columns", {}))
    event_name = message.get("name")
    if event_name is not None and (not isinstance(event_name, str) or not event_name.strip()):
        raise ConfigError("[message].name: the event name must be a non-empty string")
    top_level = message.get("top_level", [])
    if not isinstance(top_level, list) or not all(isinstance(c, str) for c in top_level):
        raise ConfigError("[message].top_level: a list of column names")
    clash = sorted(set(top_level) & {"customer_id", "custom_attributes", *FIELDS[operation]})
    if clash:
        raise ConfigError(f"[message].top_level: {', '.join(clash)} is already a field")
    id_column = options.get("columns", {}).get("id") or "customer_id"
    token = secrets.get("token")
    if not token:
        raise ConfigError("traitly: the secret 'token' is required (environment: TRAITLY_TOKEN)")
    return Traitly(
        token=token,
        operation=operation,
        columns=columns,
        event_name=event_name,
        top_level=tuple(top_level),
        id_column=str(id_column),
        paths=paths,
        dedup_keys=("id",) if operation == "customers" else ("uid",),
    )
