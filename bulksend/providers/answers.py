"""Is a 2xx the provider's own answer? Shared by the adapters, the audience check and leads.

A load balancer's default page, a captive portal or a wrong path can answer ``200 text/html``;
counting that as delivered loses every recipient silently. So each provider checks that a 2xx
carries its documented success answer: a JSON content type (``json_typed``) and the documented
shape (the provider's own test, on ``read_json``'s value). Anything else is an *unexpected
answer* (``unexpected``): ``Verdict.UNEXPECTED`` with a reason that names the status, the
content type and the start of the body — bounded, control characters escaped, secrets removed.

JSON content types: ``application/json``, ``text/json`` and ``application/*+json``, with any
parameters (``application/json; charset=utf-8``) and in any case. An answer without a
Content-Type header is judged by its body alone (HTTP lets a server leave it out; the shape
check still tells a page from the provider's JSON).

An answer that ends the whole send (a 404 on the endpoint, a 405, a redirect: ``fatal``) is
told the same way, so its stop line says what came back and what to check::

    https://api.example.com/v1/notifications answered 404 no content type, empty body:
    is --base-url right?

(``stop_line``: the URL without credentials or query, the status, the content type, the
provider's own words when the body has any, the start of the body, the likely fix.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import orjson
from multidict import istr

from bulksend.models import HttpResponse
from bulksend.output.printable import escaped as _escaped
from bulksend.providers.base import Classification, Verdict

__all__ = [
    "BASE_URL_HINT",
    "NOT_JSON",
    "answered",
    "body_start",
    "content_type",
    "describe",
    "fatal",
    "json_typed",
    "likely_fix",
    "public_url",
    "read_json",
    "redirect_target",
    "shown_type",
    "stop_line",
    "unexpected",
    "unexpected_answer",
]

#: characters of a body shown in a reason (after decoding)
BODY_CHARS = 80
_TYPE_CHARS = 60
_JSON_TYPES = frozenset({"application/json", "text/json"})
#: the header's name as aiohttp's headers look it up fastest (a plain dict takes it too)
_CONTENT_TYPE = istr("Content-Type")
#: header value -> is it a JSON media type (servers send one or two values: a small cache)
_typed: dict[str, bool] = {}
#: credentials a body may echo back (an echo service, a debug page): the value is removed
_CREDENTIALS = re.compile(
    r"(?i)\b(authorization|x-api-key|x-brand-id|api[_-]?key|token|password)"
    r"(\W{1,4})(key=|bearer\s+|basic\s+|token\s+)?[^\s\"',;&}]+"
)


class _NotJson:
    """``read_json``'s answer for a body that is not JSON (``None`` is the JSON ``null``)."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Final = _NotJson()


def content_type(headers: Mapping[str, str]) -> str | None:
    """The Content-Type header's value, or None without one (any case of the name)."""
    value = headers.get("Content-Type")
    if value is None:
        for name, found in headers.items():
            if str(name).lower() == "content-type":
                return str(found)
    return value


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def json_typed(headers: Mapping[str, str]) -> bool:
    """Whether the answer says it is JSON (or says nothing: judged by its body then)."""
    value = headers.get(_CONTENT_TYPE)
    if value is not None:  # a value seen before is looked up only (nearly every answer)
        known = _typed.get(value)
        if known is not None:
            return known
    return _json_typed(headers)


def _json_typed(headers: Mapping[str, str]) -> bool:
    value = content_type(headers)
    if value is None:
        return True
    known = _typed.get(value)
    if known is None:
        media = _media_type(value)
        suffixed = media.startswith("application/") and media.endswith("+json")
        known = media in _JSON_TYPES or suffixed
        if len(_typed) >= 64:
            _typed.clear()
        _typed[value] = known
    return known


def read_json(response: HttpResponse) -> Any:
    """The body's JSON value when the answer is typed JSON and parses; else ``NOT_JSON``."""
    if not json_typed(response.headers):
        return NOT_JSON
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return NOT_JSON


def _scrubbed(text: str) -> str:
    from bulksend.output.logs import REDACTED, redactor  # the send's registered secrets

    text = _CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}{REDACTED}", text)
    return redactor.scrub(text)


def body_start(body: bytes, limit: int = BODY_CHARS) -> str:
    """The first ``limit`` characters of a body, one line, escaped, secrets removed."""
    if not body.strip():
        return "(empty)"
    # secrets are removed before the cut, so none is shown in part
    text = _scrubbed(body[: limit * 4].decode("utf-8", "replace").strip())
    cut = len(text) > limit or len(body) > limit * 4
    return _escaped(text[:limit]) + ("…" if cut else "")


def shown_type(headers: Mapping[str, str]) -> str:
    """The media type for a message: ``text/html``, or ``no content type``."""
    value = content_type(headers)
    if value is None or not value.strip():
        return "no content type"
    return _escaped(_media_type(value)[:_TYPE_CHARS])


def describe(response: HttpResponse, expected: str) -> str:
    """``200 text/html, not MaxTraffic's JSON answer``: the answer in short, for one line."""
    return f"{response.status} {shown_type(response.headers)}, not {expected}"


def unexpected_answer(response: HttpResponse, expected: str, shape: str = "") -> str:
    """``200 text/html, not MaxTraffic's JSON answer ({"success": true}); body: <html>…``"""
    said = f" ({shape})" if shape else ""
    return f"{describe(response, expected)}{said}; body: {body_start(response.body)}"


def unexpected(response: HttpResponse, expected: str, shape: str = "") -> Classification:
    """The verdict on a 2xx that is not the provider's documented success answer.

    ``expected`` names the answer (``MaxTraffic's JSON answer``); ``shape`` shows it
    (``{"success": true}``). The message, for every recipient of the batch::

        unexpected answer: 200 text/html, not MaxTraffic's JSON answer ({"success": true});
        body: <html>\\n<head><title>Welcome to nginx!</title>…
    """
    short = describe(response, expected)
    message = f"unexpected answer: {unexpected_answer(response, expected, shape)}"
    maybe = read_json(response) is not NOT_JSON
    return Classification(Verdict.UNEXPECTED, message, unexpected=short, maybe_provider=maybe)


# ---------------------------------------------------------------------------- final answers

#: the likely fix when the endpoint is not there (404, 405, 410, a redirect, a stray status)
BASE_URL_HINT = "is --base-url right?"
_FIXES: Mapping[int, str] = {
    406: "is --base-url the provider's API? (it will not answer in JSON)",
    413: "is --batch-size too large?",
    415: "is --base-url the provider's API? (it will not take JSON)",
}
_SAID_CHARS = 160
_URL_CHARS = 200


def public_url(url: str) -> str:
    """``url`` for messages: without a user name, password, query or fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def likely_fix(status: int) -> str:
    """What to check after a final answer with ``status``, as a question for the stop line."""
    return _FIXES.get(status, BASE_URL_HINT)


def redirect_target(response: HttpResponse) -> str | None:
    """Where a 3xx points (its Location, as a public URL, escaped and bounded), else None."""
    if not 300 <= response.status < 400:
        return None
    location = None
    for name, value in response.headers.items():
        if str(name).lower() == "location":
            location = str(value).strip()
            break
    if not location:
        return "no Location"
    return _escaped(public_url(location)[:_URL_CHARS])


def _own_words(body: bytes, said: str) -> str:
    """The provider's words for a line, or "" when they are only the body's text again."""
    words = said.strip()
    if not words or body.decode("utf-8", "replace").strip().startswith(words):
        return ""
    text = _escaped(_scrubbed(words))
    return text if len(text) <= _SAID_CHARS else text[: _SAID_CHARS - 1] + "…"


def answered(response: HttpResponse, said: str = "") -> str:
    """A final answer in one line: status, content type, where a redirect points, the
    provider's own words (``said``, left out when they only repeat the body), the body's start::

        404 no content type, empty body
        302 text/html, a redirect to https://example.com/login; body: <html>…
        400 application/json: Invalid method call; body: {"success":false,"msg":"Invalid…
    """
    text = f"{response.status} {shown_type(response.headers)}"
    target = redirect_target(response)
    if target is not None:
        text += f", a redirect to {target}"
    words = _own_words(response.body, said)
    if words:
        text += f": {words}"
    if response.body.strip():
        return f"{text}; body: {body_start(response.body)}"
    return f"{text}, empty body"


def fatal(response: HttpResponse, said: str = "", fix: str = "") -> Classification:
    """The verdict on an answer that ends the send (``Verdict.FATAL``): its ``message`` is
    ``answered(response, said)`` (the reason every recipient of the batch gets), its ``hint``
    the likely fix (``fix``, else ``likely_fix(status)``) for the stop line."""
    message = answered(response, said)
    return Classification(Verdict.FATAL, message, hint=fix or likely_fix(response.status))


def stop_line(url: str, answer: str, fix: str) -> str:
    """``https://host/v1/notifications answered 404 no content type, empty body: is
    --base-url right?``: what stopped a command, for its one-line error."""
    where = f"{public_url(url)} " if url else ""
    return f"{where}answered {answer}: {fix}"
