"""NotifyVisitors (``shared/seeds/notifyvisitors-api.txt``; readings in docs/providers.md).

Operations (the campaign's ``operation``), each in its own endpoint group with the doc's default
limit (the server sends only ``X-RateLimit-Remaining``; the scheduler pairs it with the limit):

* ``users`` (default): ``POST /api/v1/user/create``, group ``user`` (100/min), body
  ``{"nv": [{"userID", "user_attributes"}]}``: userID from the ``id`` column, attributes from
  the other columns (empty cells left out) over ``[message].attributes``.
* ``events``: ``POST /api/v1/event/track``, group ``event`` (500/min), body
  ``{"nv": [{"userID", "event", "event_attributes", "timestamp"}]}``: the event name from
  ``[message].event``, attributes as for users, the timestamp (optional) from the column named
  by ``[message].timestamp_column`` (default ``timestamp``) in the doc's
  ``yyyy-MM-ddTHH:mm:ss+0000`` form. Deduplicated only on an event key column mapped as
  ``[recipients].uid`` (a user has many events); users and campaign sends on the userID.
* ``campaign``: ``POST /api/v1/campaign/send``, group ``campaign`` (500/min), body
  ``{"channel", "campaign_id", "users": [userID, ...]}`` with channel (push, email or sms) and
  campaign_id from ``[message]``.
* the campaign report, a read: ``GET /api/v1/report/campaign?campaign_id=`` (group
  ``reporting``, 50/min): ``report_read`` + ``read_report`` here, ``campaign_report`` in
  ``bulksend.providers.notifyvisitors_api``.

Auth: ``x-api-key`` + ``x-brand-id`` (secrets ``api_key`` and ``brand_id``), or with
``[api] auth = "bearer"`` a partner app's ``Authorization: Bearer <token>`` (secret ``token``;
``secrets_for`` tells the config which secrets a campaign needs).

Rows that cannot be sent (no userID; an events timestamp that is not a time) are refused before
sending by ``screen`` and reported invalid with the file and line.

Answers are the envelope ``{"response": {"data", "message", "status"}}``; ``status: "error"`` is
a failure even on HTTP 200. The per-record positions the server names in ``data.errors``
(``[{"index", "message"}]``) become ``Classification.rejected``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bulksend.errors import AuthError, ConfigError, ProviderError, TransientError
from bulksend.models import Batch, HttpRequest, HttpResponse, Recipient
from bulksend.providers.answers import fatal, json_typed, unexpected
from bulksend.providers.base import (
    Classification,
    CountBatcher,
    Limit,
    Verdict,
    checked_options,
    checked_paths,
    screen_with,
)
from bulksend.providers.reads import ReadRequest
from bulksend.providers.status import common_verdict
from bulksend.ratelimit.headers import parse_seconds
from bulksend.sources.spec import Chunk

NAME = "notifyvisitors"
DEFAULT_BASE_URL = "https://analytics.notifyvisitors.com"
#: records (or users) per request; the provider's cap, raised with ``[api] max_batch``
DEFAULT_BATCH_SIZE = 100
MAX_BATCH = 100
PATHS: Mapping[str, str] = {
    "user": "/api/v1/user/create",
    "event": "/api/v1/event/track",
    "campaign": "/api/v1/campaign/send",
    "reporting": "/api/v1/report/campaign",
}
#: the doc's default limits per endpoint group ("per minute")
DEFAULT_LIMITS: Mapping[str, Limit] = {
    "user": Limit(100, 60.0),
    "event": Limit(500, 60.0),
    "campaign": Limit(500, 60.0),
    "reporting": Limit(50, 60.0),
}
OPERATIONS: tuple[str, ...] = ("users", "events", "campaign")
#: the endpoint group (and path key) of each operation
GROUP_OF: Mapping[str, str] = {"users": "user", "events": "event", "campaign": "campaign"}
CHANNELS = ("push", "email", "sms")
AUTH_MODES = ("key", "bearer")
#: secrets this provider needs by default: name -> default environment variable
SECRETS: Mapping[str, str] = {
    "api_key": "NOTIFYVISITORS_API_KEY",
    "brand_id": "NOTIFYVISITORS_BRAND_ID",
}
#: the secrets with ``[api] auth = "bearer"`` (partner apps)
BEARER_SECRETS: Mapping[str, str] = {"token": "NOTIFYVISITORS_TOKEN"}
MESSAGE_FIELDS: Mapping[str, frozenset[str]] = {
    "users": frozenset({"attributes"}),
    "events": frozenset({"event", "attributes", "timestamp_column"}),
    "campaign": frozenset({"channel", "campaign_id"}),
}
API_OPTIONS = frozenset({"auth", "paths", "max_batch"})
#: what config.load_settings adds to the [api] table


def secrets_for(api: Mapping[str, Any]) -> Mapping[str, str]:
    """The secrets a campaign with this ``[api]`` table needs (name -> default variable)."""
    return BEARER_SECRETS if api.get("auth") == "bearer" else SECRETS


# ---------------------------------------------------------------------------- pure helpers


def format_timestamp(moment: datetime) -> str:
    """The doc's form, ``yyyy-MM-ddTHH:mm:ss+0000`` (UTC); a naive time is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def parse_timestamp(text: str) -> datetime | None:
    """A column value as a time: UNIX seconds (milliseconds above 1e12) or ISO 8601.

    ISO 8601 may carry ``Z``, ``+00:00`` or ``+0000`` (the doc's own example omits the seconds:
    ``2013-01-26T07:31+0000``); one without an offset is UTC. ``None`` when unreadable.
    """
    value = text.strip()
    if not value:
        return None
    number = parse_seconds(value)
    if number is not None:
        if number >= 1e12:
            number /= 1000.0
        try:
            return datetime.fromtimestamp(number, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Auth:
    """Credentials: the key pair, or a partner app's bearer token."""

    api_key: str | None = field(default=None, repr=False)
    brand_id: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return "bearer" if self.token is not None else "key"

    def headers(self) -> dict[str, str]:
        if self.token is not None:
            auth = {"Authorization": f"Bearer {self.token}"}
        else:
            auth = {"x-api-key": self.api_key or "", "x-brand-id": self.brand_id or ""}
        return {**auth, "Accept": "application/json", "Content-Type": "application/json"}

    @classmethod
    def from_secrets(cls, mode: str, secrets: Mapping[str, str]) -> Auth:
        needed = BEARER_SECRETS if mode == "bearer" else SECRETS
        missing = [name for name in needed if not secrets.get(name)]
        if missing:
            raise ConfigError(
                f"notifyvisitors: auth {mode!r} needs the secret(s) {', '.join(missing)} "
                f"(environment: {', '.join(needed[m] for m in missing)})"
            )
        if mode == "bearer":
            return cls(token=secrets["token"])
        return cls(api_key=secrets["api_key"], brand_id=secrets["brand_id"])


def attributes(
    recipient: Recipient, static: Mapping[str, Any], skip: str | None = None
) -> dict[str, Any]:
    """``static`` overlaid with the recipient's non-empty extra columns (except ``skip``)."""
    out = dict(static)
    for name, value in recipient.attrs.items():
        if name != skip and value != "":
            out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class Envelope:
    status: str
    message: str
    data: Any


def read_envelope(body: bytes) -> Envelope | None:
    """The ``{"response": {...}}`` envelope of an answer, or None if the body is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    response = parsed.get("response") if isinstance(parsed, dict) else None
    if not isinstance(response, dict):
        return None
    status, message = response.get("status"), response.get("message")
    return Envelope(
        str(status).lower() if isinstance(status, str) else "",
        message if isinstance(message, str) else "",
        response.get("data"),
    )


def record_errors(data: Any) -> dict[int, str]:
    """``data.errors`` (``[{"index", "message"}]``) as {position: reason}; bad items skipped."""
    errors = data.get("errors") if isinstance(data, dict) else None
    out: dict[int, str] = {}
    if not isinstance(errors, list):
        return out
    for item in errors:
        if not isinstance(item, dict):
            continue
        index, message = item.get("index"), item.get("message")
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            out[index] = message if isinstance(message, str) and message else "invalid record"
    return out


def _snippet(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip()


_DELIVERED = Classification(Verdict.DELIVERED)
#: how messages name the documented success answer
ANSWER = "NotifyVisitors' JSON envelope"
_SHAPE = '{"response": {"status": "success", ...}}'


def _success(response: HttpResponse, env: Envelope | None) -> Classification:
    """A 2xx: its envelope's status decides; anything else is an unexpected answer."""
    if env is None or not json_typed(response.headers):
        return unexpected(response, ANSWER, _SHAPE)
    if env.status == "success":
        return _DELIVERED
    if env.status == "error":
        rejected = record_errors(env.data)
        message = env.message or "status=error"
        return Classification(Verdict.INVALID, message, rejected=rejected or None)
    return unexpected(response, ANSWER, _SHAPE)


def classify(response: HttpResponse) -> Classification:
    """Status and envelope -> verdict (see the table in docs/providers.md).

    2xx: the envelope decides (``status: "error"`` is a failure even on HTTP 200); a 2xx that
    is not a JSON envelope with status "success" or "error" is an unexpected answer. Other
    statuses: the shared ladder (``bulksend.providers.status``), then the doc's "400 Invalid
    resource" as invalid; anything else (404 "Invalid URL", 405, ...) stops the send.
    """
    status = response.status
    env = read_envelope(response.body)
    if 200 <= status < 300:
        return _success(response, env)
    text = env.message if env is not None and env.message else _snippet(response.body)
    message = f"{status} {text}".strip()
    common = common_verdict(status, response.headers, message)
    if common is not None:
        return common
    if status == 400:
        return Classification(Verdict.INVALID, message)
    return fatal(response, text)  # 404 "Invalid URL", 405, a redirect, ...


# ---------------------------------------------------------------------------- the adapter


@dataclass(slots=True)
class NotifyVisitors:
    """One operation against NotifyVisitors; ``message`` is the checked ``[message]`` table."""

    auth: Auth
    operation: str
    message: Mapping[str, Any]
    paths: Mapping[str, str] = field(default_factory=lambda: dict(PATHS))
    max_batch: int = MAX_BATCH
    id_column: str = "id"  # the recipient file's column holding the userID (for messages)
    name: str = NAME
    groups: Mapping[str, Limit] = field(default_factory=dict)
    sends_rate_headers: bool = True
    dedup_keys: tuple[str, ...] = ("id",)

    def __post_init__(self) -> None:
        if not self.groups:
            self.groups = {self.group: DEFAULT_LIMITS[self.group]}
        if self.operation == "events":
            # a user has many events: only an event key column (mapped as uid) deduplicates
            self.dedup_keys = ("uid",)

    @property
    def group(self) -> str:
        return GROUP_OF[self.operation]

    def headers(self) -> dict[str, str]:
        return self.auth.headers()

    def batcher(self, batch_size: int) -> CountBatcher:
        return CountBatcher(max(1, min(batch_size, self.max_batch)), self.group)

    def body(self, recipients: Sequence[Recipient]) -> dict[str, Any]:
        """The JSON body for ``recipients`` (one record or user each, in order)."""
        m = self.message
        if self.operation == "campaign":
            users = [r.id for r in recipients]
            return {"channel": m["channel"], "campaign_id": m["campaign_id"], "users": users}
        static = m.get("attributes", {})
        if self.operation == "users":
            records = [
                {"userID": r.id, "user_attributes": attributes(r, static)} for r in recipients
            ]
            return {"nv": records}
        column = m.get("timestamp_column", "timestamp")
        records = []
        for r in recipients:
            record: dict[str, Any] = {"userID": r.id, "event": m["event"]}
            attrs = attributes(r, static, skip=column)
            if attrs:
                record["event_attributes"] = attrs
            raw = r.attrs.get(column, "")
            if raw.strip():
                moment = parse_timestamp(raw)
                # unreadable (only when not screened): as written, the provider names it
                record["timestamp"] = format_timestamp(moment) if moment else raw
            records.append(record)
        return {"nv": records}

    def encode(self, batch: Batch) -> HttpRequest:
        body = orjson.dumps(self.body(batch.recipients))
        return HttpRequest("POST", self.paths[self.group], self.headers(), body)

    def classify(self, response: HttpResponse) -> Classification:
        return classify(response)

    def check(self, recipient: Recipient) -> str | None:
        """Why this row cannot be sent (reported invalid before sending), or None."""
        if recipient.id is None:
            return f"missing userID (column {self.id_column!r})"
        if self.operation == "events":
            column = self.message.get("timestamp_column", "timestamp")
            raw = recipient.attrs.get(column, "")
            if raw.strip() and parse_timestamp(raw) is None:
                return f"column {column!r}: not a time (UNIX seconds or ISO 8601): {raw[:40]!r}"
        return None

    def screen(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Chunks with the rows ``check`` refuses moved to ``rejected`` (nothing is sent for
        them). Without it, the provider's per-record errors name the same rows."""
        events = self.operation == "events"
        for chunk in chunks:
            if not events and all(r.id is not None for r in chunk.recipients):
                yield chunk  # users and campaign sends need only the id: nothing to refuse
            else:
                yield from screen_with(self.check, [chunk])

    def describe(self) -> Mapping[str, Any]:
        facts: dict[str, Any] = {
            "provider": self.name,
            "operation": self.operation,
            "group": self.group,
            "path": self.paths[self.group],
            "auth": self.auth.mode,
        }
        for key in ("event", "channel", "campaign_id"):
            if key in self.message:
                facts[key] = self.message[key]
        return facts

    # -- the reporting read ---------------------------------------------------------------
    def report_read(self, campaign_id: str) -> ReadRequest:
        return report_read(self.auth, campaign_id, self.paths)


def report_read(auth: Auth, campaign_id: str, paths: Mapping[str, str] = PATHS) -> ReadRequest:
    """``GET /api/v1/report/campaign?campaign_id=...`` (group ``reporting``, 50/min)."""
    headers = {k: v for k, v in auth.headers().items() if k != "Content-Type"}
    return ReadRequest(paths["reporting"], {"campaign_id": campaign_id}, headers)


def read_report(response: HttpResponse) -> dict[str, Any]:
    """The report's ``data`` from an answer, or the error tree's exception for a failure.

    401 -> AuthError; 429 and 5xx -> TransientError; anything else that is not a success
    envelope (400, 404, HTTP 200 with ``status: "error"`` such as an unknown campaign, a 2xx
    that is no envelope) -> ProviderError with the server's message (or the answer's start).
    """
    verdict = classify(response)
    env = read_envelope(response.body)
    if verdict.verdict is Verdict.DELIVERED and env is not None:
        return env.data if isinstance(env.data, dict) else {}
    status = response.status
    message = verdict.message or f"{status} {_snippet(response.body)}"
    if verdict.verdict is Verdict.AUTH:
        raise AuthError(f"notifyvisitors report: {message}", status=status)
    if verdict.verdict in (Verdict.THROTTLED, Verdict.RETRY):
        raise TransientError(f"notifyvisitors report: {message}", status=status)
    raise ProviderError(f"notifyvisitors report: {message}", status=status)


# ---------------------------------------------------------------------------- build


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
        raise ConfigError(f"{where}: a non-empty string is required")
    return str(value)


def _check_message(operation: str, message: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(message)  # field names were checked by checked_options
    if "attributes" in out and not isinstance(out["attributes"], dict):
        raise ConfigError("[message].attributes: must be a table of attribute values")
    if operation == "events":
        out["event"] = _text(out.get("event"), "[message].event (the event name)")
        if "timestamp_column" in out:
            out["timestamp_column"] = _text(out["timestamp_column"], "[message].timestamp_column")
    if operation == "campaign":
        channel = out.get("channel")
        if channel not in CHANNELS:
            raise ConfigError(f"[message].channel: one of {', '.join(CHANNELS)} is required")
        out["campaign_id"] = _text(out.get("campaign_id"), "[message].campaign_id")
    return out


def build(options: Mapping[str, Any], secrets: Mapping[str, str]) -> NotifyVisitors:
    """The adapter from the campaign's ``[api]`` table, operation and ``[message]`` (checked)."""
    operation, _ = checked_options(
        NAME,
        options,
        operations=OPERATIONS,
        api_keys=API_OPTIONS,
        message_fields=MESSAGE_FIELDS,
    )
    mode = options.get("auth", "key")
    if mode not in AUTH_MODES:
        raise ConfigError(f"[api].auth: {mode!r} is not one of {', '.join(AUTH_MODES)}")
    paths = checked_paths(options, PATHS)
    max_batch = options.get("max_batch", MAX_BATCH)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError("[api].max_batch: a whole number >= 1")
    message = _check_message(operation, options.get("message", {}))
    id_column = options.get("columns", {}).get("id") or "id"
    return NotifyVisitors(
        auth=Auth.from_secrets(mode, secrets),
        operation=operation,
        message=message,
        paths=paths,
        max_batch=max_batch,
        id_column=str(id_column),
    )
