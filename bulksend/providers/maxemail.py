"""Maxemail JSON API (``../shared/seeds/maxemail-api.txt``; readings in docs/providers.md).

One API method call per recipient, from a template in the campaign file::

    operation = "call"
    [message]
    service = "email_send"
    method = "triggerFolder"
    args = ["12", "{id}", { first_name = "{first_name}" }]      # sent as arg0, arg1, arg2
    # params = { folderId = "12", recipientId = "{id}" }        # or by name (both may be mixed)

Request: ``POST {base}/api/json/{service}``, ``Content-Type: application/x-www-form-urlencoded``,
``Authorization: Basic base64(username:password)``, body ``method=NAME`` plus the parameters.
Strings are sent as they are; numbers and booleans as JSON scalars (``12``, ``true``); arrays and
tables as JSON strings, as the doc requires.

Placeholders: ``{id}`` is the recipient's id column (the email address, the dedup key), ``{uid}``
its uid column, ``{NAME}`` any other column (exact name, else case-insensitive); ``{{``/``}}``
are literal braces. A recipient lacking a placeholder's column is reported ``invalid`` by
``screen`` before anything is sent (the columns of a JSON Lines file vary per row, so this cannot
be decided when the campaign is loaded).
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from bulksend.errors import ConfigError, InputError, MissingColumn
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
from bulksend.providers.status import common_verdict
from bulksend.sources.spec import Chunk

NAME = "maxemail"
DEFAULT_BASE_URL = "https://mxm.xtremepush.com"
#: the API takes one call per request: every batch holds one recipient
DEFAULT_BATCH_SIZE = 1
GROUP = "api"
PATHS = {"json": "/api/json/{service}"}
#: the doc gives no limit and no headers; 600/min is where the adaptive scheduler starts
DEFAULT_LIMITS: Mapping[str, Limit] = {GROUP: Limit(600, 60.0)}
#: secrets: name -> default environment variable (names match SandboxConfig's fields)
SECRETS: Mapping[str, str] = {
    "username": "MAXEMAIL_USERNAME",
    "password": "MAXEMAIL_PASSWORD",
}
OPERATIONS: tuple[str, ...] = ("call",)
MESSAGE_FIELDS = ("service", "method", "args", "params")
API_FIELDS = ("paths",)

_SERVICE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ARG = re.compile(r"^arg\d+$")
_FIELD = re.compile(r"\{([^{}]*)\}|\{\{|\}\}|[{}]")


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class Field:
    """A ``{name}`` placeholder."""

    name: str


#: a compiled string: literal text and fields, in order
Text = tuple[str | Field, ...]


def compile_text(text: str, where: str) -> Text | str:
    """``"Hi {first_name}!"`` -> ``("Hi ", Field("first_name"), "!")``; plain text stays a str."""
    parts: list[str | Field] = []
    literal: list[str] = []
    pos = 0
    for m in _FIELD.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token == "{{":
            literal.append("{")
        elif token == "}}":
            literal.append("}")
        elif m.group(1) is None:
            raise ConfigError(
                f"{where}: unbalanced {token!r} in {text!r} (write {token * 2} for a literal brace)"
            )
        else:
            name = m.group(1).strip()
            if not name:
                raise ConfigError(f"{where}: empty placeholder {{}} in {text!r}")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(Field(name))
    literal.append(text[pos:])
    rest = "".join(literal)
    if not any(isinstance(p, Field) for p in parts):
        return rest
    if rest:
        parts.append(rest)
    return tuple(parts)


def compile_value(value: Any, where: str) -> Any:
    """A template value: strings compiled, lists and tables walked, scalars kept."""
    if isinstance(value, str):
        return compile_text(value, where)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, list):
        return [compile_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): compile_value(v, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(
        f"{where}: {type(value).__name__} values are not supported; write it as a string"
    )


def fields_of(template: Any) -> set[str]:
    """Every placeholder name a compiled template uses."""
    if isinstance(template, tuple):
        return {p.name for p in template if isinstance(p, Field)}
    if isinstance(template, list):
        return set().union(*(fields_of(v) for v in template)) if template else set()
    if isinstance(template, dict):
        return set().union(*(fields_of(v) for v in template.values())) if template else set()
    return set()


def fill(template: Any, value_of: Any) -> Any:
    """The template with every field replaced by ``value_of(name)`` (MissingColumn if absent)."""
    if isinstance(template, tuple):
        return "".join(p if isinstance(p, str) else value_of(p.name) for p in template)
    if isinstance(template, list):
        return [fill(v, value_of) for v in template]
    if isinstance(template, dict):
        return {k: fill(v, value_of) for k, v in template.items()}
    return template


def form_value(value: Any) -> str:
    """A parameter as the API reads it: strings as is, anything else JSON-encoded."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class ColumnLookup:
    """Placeholder values of one recipient: ``id``, ``uid`` (or their column names), attrs."""

    __slots__ = ("_aliases", "_attrs", "_folded", "_recipient")

    def __init__(self, recipient: Recipient, aliases: Mapping[str, str]) -> None:
        self._recipient = recipient
        self._aliases = aliases
        self._attrs = recipient.attrs
        self._folded: dict[str, str] | None = None

    def __call__(self, name: str) -> str:
        key = self._aliases.get(name) or self._aliases.get(name.lower())
        if key is not None:
            value = self._recipient.id if key == "id" else self._recipient.uid
            if value is None:
                raise MissingColumn(name)
            return value
        found = self._attrs.get(name)
        if found is not None:
            return found
        if self._folded is None:
            self._folded = {k.lower(): v for k, v in self._attrs.items()}
        found = self._folded.get(name.lower())
        if found is None:
            raise MissingColumn(name)
        return found


# ---------------------------------------------------------------------------- warnings


@dataclass(frozen=True, slots=True)
class WarningValue:
    """One ``warning-value`` of an HTTP ``Warning`` header (RFC 7234 section 5.5)."""

    code: int
    agent: str
    text: str
    date: str | None = None


@dataclass(frozen=True, slots=True)
class Deprecation:
    """The doc's deprecation text: ``"METHOD Deprecated: VERSION REASON"``."""

    method: str
    since: str
    reason: str


_WARNING = re.compile(
    r'\s*(\d{3})\s+([^\s,"]+)\s+"((?:[^"\\]|\\.)*)"(?:\s+"([^"]*)")?\s*(?:,|$)', re.DOTALL
)
_DEPRECATED = re.compile(r"^\s*(\S+)\s+Deprecated:\s*(\S+)\s*(.*?)\s*$", re.DOTALL | re.IGNORECASE)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_warning(value: str) -> list[WarningValue]:
    """The warning-values of a ``Warning`` header; parsing stops at the first malformed one."""
    out: list[WarningValue] = []
    pos = 0
    while pos < len(value) and value[pos:].strip():
        m = _WARNING.match(value, pos)
        if m is None or m.end() == pos:
            break
        text = _ESCAPE.sub(r"\1", m.group(3))
        out.append(WarningValue(int(m.group(1)), m.group(2), text, m.group(4)))
        pos = m.end()
    return out


def parse_deprecation(text: str) -> Deprecation | None:
    m = _DEPRECATED.match(text)
    return Deprecation(m.group(1), m.group(2), m.group(3)) if m else None


def describe_warning(warning: WarningValue, service: str = "") -> str:
    """A one-line text for the log and the summary."""
    dep = parse_deprecation(warning.text)
    if dep is None:
        return f"maxemail warning {warning.code} ({warning.agent}): {warning.text}"
    method = dep.method if "." in dep.method or not service else f"{service}.{dep.method}"
    reason = f": {dep.reason}" if dep.reason else ""
    return f"maxemail: {method} is deprecated (since API version {dep.since}){reason}"


def response_warnings(headers: Mapping[str, str], service: str = "") -> str | None:
    """Every ``Warning`` header of a response, described and joined; None when there is none."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        raw: list[str] = list(getall("Warning", []))
    else:
        raw = [v for k, v in headers.items() if k.lower() == "warning"]
    texts = [describe_warning(w, service) for value in raw for w in parse_warning(value)]
    return "; ".join(dict.fromkeys(texts)) or None


# ---------------------------------------------------------------------------- classification


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """``{"success": false, "msg": ..., "code": ...}``; ``envelope`` False for any other body."""

    message: str
    envelope: bool


def error_body(body: bytes) -> ErrorBody:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ErrorBody(body[:200].decode("utf-8", "replace").strip(), False)
    if isinstance(data, dict) and "msg" in data:
        msg = data["msg"]
        return ErrorBody(msg if isinstance(msg, str) else orjson.dumps(msg).decode(), True)
    return ErrorBody(orjson.dumps(data).decode()[:200], False)


#: the call itself is wrong, so it is wrong for every recipient: stop the send
_TEMPLATE_ERRORS = re.compile(
    r"^(invalid method call to |invalid method\b|no method\b|unknown method\b|unknown service\b)",
    re.IGNORECASE,
)
_NAMES_CALL = re.compile(r"\b(service|method)\b", re.IGNORECASE)


_DELIVERED = Classification(Verdict.DELIVERED)
#: how messages name the documented success answer
ANSWER = "Maxemail's JSON answer"
#: the likely fix when Maxemail says the call itself is wrong (unknown service or method, arity)
CALL_FIX = "are the campaign's [message] service, method and arguments right?"


def success(response: HttpResponse) -> Classification:
    """A 2xx: delivered when its body is JSON (any value: the method's result, ``12345`` or
    ``true`` or an object); a page, an empty body or the doc's error object
    (``{"success": false, "msg"}``, which comes with a 4xx/5xx) is an unexpected answer."""
    data = read_json(response)
    if data is NOT_JSON:
        return unexpected(response, ANSWER, "the method's result as JSON")
    if isinstance(data, dict) and data.get("success") is False:  # it says it did not act
        said = unexpected(response, ANSWER, "the method's result as JSON")
        return dataclasses.replace(said, maybe_provider=False)
    return _DELIVERED


def classify(response: HttpResponse) -> Classification:
    """A response's verdict (the warning is added by the adapter, which knows the service)."""
    status = response.status
    if 200 <= status < 300:
        return success(response)
    err = error_body(response.body)
    message = err.message or f"HTTP {status}"
    common = common_verdict(status, response.headers, message)
    if common is not None:
        return common
    if status == 400:
        if _TEMPLATE_ERRORS.match(message):
            return fatal(response, err.message, CALL_FIX)
        return Classification(Verdict.INVALID, message)
    if status == 404:
        # a JSON error naming something else (a recipient, a list) refuses this recipient only;
        # an unknown service or method, the router's "Not Found" or a non-JSON page: the call
        # or the base URL is wrong for everyone
        if err.envelope and not _NAMES_CALL.search(message) and message.lower() != "not found":
            return Classification(Verdict.INVALID, message)
        names_call = err.envelope and _NAMES_CALL.search(message) is not None
        return fatal(response, err.message, CALL_FIX if names_call else "")
    if status in (409, 422) and err.envelope:
        return Classification(Verdict.INVALID, message)
    return fatal(response, err.message)  # 405, 415, a redirect, ...


# ---------------------------------------------------------------------------- the adapter


@dataclass(slots=True)
class SingleBatcher:
    """One recipient per batch (the API takes one call per request)."""

    _number: int = 0

    def add(self, recipient: Recipient) -> Batch:
        self._number += 1
        return Batch(self._number, GROUP, [recipient])

    def flush(self) -> Iterable[Batch]:
        return []


def basic_auth(username: str, password: str) -> str:
    """``Basic base64(username:password)`` (UTF-8, RFC 7617)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


@dataclass(slots=True)
class Maxemail:
    """The Maxemail adapter: one ``service.method`` call per recipient, from a template."""

    username: str = field(repr=False)
    password: str = field(repr=False)
    service: str
    method: str
    #: compiled templates: positional (sent as argN) and named parameters
    args: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    paths: Mapping[str, str] = field(default_factory=lambda: dict(PATHS))
    #: placeholder names that mean the recipient's id/uid (besides "id" and "uid")
    aliases: Mapping[str, str] = field(default_factory=lambda: {"id": "id", "uid": "uid"})
    name: str = NAME
    groups: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    sends_rate_headers: bool = False
    dedup_keys: tuple[str, ...] = ("id",)
    _path: str = ""
    _headers: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._path = self.paths["json"].replace("{service}", self.service)
        self._headers = {
            "Authorization": basic_auth(self.username, self.password),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }

    @property
    def placeholders(self) -> set[str]:
        return fields_of(self.args) | fields_of(self.params)

    def batcher(self, batch_size: int) -> SingleBatcher:
        return SingleBatcher()

    def parameters(self, recipient: Recipient) -> list[tuple[str, str]]:
        """The form fields for one recipient (MissingColumn when a placeholder has no value)."""
        value_of = ColumnLookup(recipient, self.aliases)
        pairs = [("method", self.method)]
        pairs += [(f"arg{i}", form_value(fill(t, value_of))) for i, t in enumerate(self.args)]
        pairs += [(k, form_value(fill(t, value_of))) for k, t in self.params.items()]
        return pairs

    def check(self, recipient: Recipient) -> str | None:
        """Why this recipient cannot be sent (a reason for ``invalid``), or None."""
        if recipient.id is None:
            return "missing id (the email address)"
        try:
            self.parameters(recipient)
        except MissingColumn as exc:
            return missing_reason(exc.name, self.aliases)
        return None

    def screen(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Chunks with the recipients ``check`` refuses moved to ``rejected``."""
        return screen_with(self.check, chunks)

    def encode(self, batch: Batch) -> HttpRequest:
        (recipient,) = batch.recipients
        try:
            body = urlencode(self.parameters(recipient)).encode("ascii")
        except MissingColumn as exc:  # only when the engine did not screen the rows
            raise InputError(
                f"line {recipient.line}: {missing_reason(exc.name, self.aliases)}"
            ) from None
        return HttpRequest("POST", self._path, self._headers, body)

    def classify(self, response: HttpResponse) -> Classification:
        c = classify(response)
        warning = response_warnings(response.headers, self.service)
        if warning is None:
            return c
        return dataclasses.replace(c, warning=warning)

    def describe(self) -> Mapping[str, Any]:
        return {
            "provider": self.name,
            "operation": "call",
            "call": f"{self.service}.{self.method}",
            "path": self._path,
        }


def missing_reason(name: str, aliases: Mapping[str, str]) -> str:
    """The reason a row lacks a placeholder's value; hints at ``{id}`` for the id column."""
    if name in aliases or name.lower() in aliases:
        return f"no value for placeholder {{{name}}}: the row has no {aliases[name.lower()]}"
    return (
        f"no value for placeholder {{{name}}}: the row has no column {name!r} "
        "(the id column itself is written {id})"
    )


def build(options: Mapping[str, Any], secrets: Mapping[str, str]) -> Maxemail:
    """Make the adapter from the campaign's ``[message]`` (the call) and ``[api]`` tables."""
    _, message = checked_options(
        NAME,
        options,
        operations=OPERATIONS,
        api_keys=API_FIELDS,
        message_fields=MESSAGE_FIELDS,
    )
    service = message.get("service")
    if not isinstance(service, str) or not _SERVICE.match(service):
        raise ConfigError(
            "[message].service: the API service to call is required, e.g. 'email_send' "
            "(letters, digits and _)"
        )
    method = message.get("method")
    if not isinstance(method, str) or not method.strip():
        raise ConfigError("[message].method: the method to call is required, e.g. 'triggerFolder'")
    raw_args = message.get("args", [])
    if not isinstance(raw_args, list):
        raise ConfigError("[message].args: must be a list (sent as arg0, arg1, ...)")
    raw_params = message.get("params", {})
    if not isinstance(raw_params, dict):
        raise ConfigError("[message].params: must be a table of named parameters")
    for key in raw_params:
        if key == "method":
            raise ConfigError("[message].params: 'method' is reserved; set [message].method")
        if _ARG.match(key) and int(key[3:]) < len(raw_args):
            raise ConfigError(f"[message].params.{key}: also given by [message].args")
    args = [compile_value(v, f"[message].args[{i}]") for i, v in enumerate(raw_args)]
    params = {str(k): compile_value(v, f"[message].params.{k}") for k, v in raw_params.items()}
    paths = checked_paths(options, PATHS)
    if "{service}" not in paths["json"]:
        raise ConfigError("[api].paths.json: must contain {service}, e.g. '/api/json/{service}'")
    aliases = {"id": "id", "uid": "uid"}
    columns = options.get("columns", {})  # the recipient file's id/uid column names
    for key in ("id", "uid"):
        column = columns.get(key)
        if isinstance(column, str) and column:
            aliases.setdefault(column, key)
            aliases.setdefault(column.lower(), key)
    username, password = secrets["username"], secrets["password"]
    if ":" in username:
        raise ConfigError("maxemail: the username must not contain ':' (HTTP Basic auth)")
    return Maxemail(
        username=username,
        password=password,
        service=service,
        method=method.strip(),
        args=args,
        params=params,
        paths=paths,
        aliases=aliases,
    )
