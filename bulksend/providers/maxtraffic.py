"""MaxTraffic web push (``../shared/seeds/maxtraffic-api.txt``; readings in docs/providers.md).

Request: ``POST {base}/v1/notifications`` with ``Authorization: key=…`` and a JSON body
``{"messages": [...], "to_ids": [...], "to_uids": [...], "icon", "image", "campaign"}``.
Each array that is sent is non-empty and unique and holds at most ``batch_size`` strings; an
array with nothing to carry is left out (see docs/providers.md for why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bulksend.models import Batch, HttpRequest, HttpResponse, Recipient
from bulksend.providers.answers import fatal, json_typed, read_json, unexpected
from bulksend.providers.base import (
    Classification,
    CountBatcher,
    Limit,
    Verdict,
    checked_options,
    checked_paths,
)
from bulksend.providers.status import common_verdict
from bulksend.recipients import Recipients

NAME = "maxtraffic"
DEFAULT_BASE_URL = "https://api.maxtraffic.com"
DEFAULT_BATCH_SIZE = 1000
#: one quota per API key ("per consumer"), shared by every endpoint
GROUP = "api"
PATHS = {
    "notifications": "/v1/notifications",
    "visitor": "/v1/visitors/{id}",
    "leads": "/v1/leads",
    "campaign_leads": "/v1/campaigns/{id}/leads",
}
#: the doc gives the limit only in headers; 600/min is what we assume until a header says otherwise
DEFAULT_LIMITS: Mapping[str, Limit] = {GROUP: Limit(600, 60.0)}


def NotificationBatcher(size: int) -> CountBatcher:
    """At most ``size`` rows per request, so ``to_ids`` and ``to_uids`` each hold <= ``size``.

    (A row contributes at most one entry to each array.) Dedup happens upstream.
    """
    return CountBatcher(size, GROUP)


def notification_body(message: Mapping[str, Any], recipients: Sequence[Recipient]) -> bytes:
    body: dict[str, Any] = dict(message)
    if isinstance(recipients, Recipients):  # columns: no recipient object is made
        ids = _present(recipients.ids)
        uids = _present(recipients.uids)
    else:
        ids = [r.id for r in recipients if r.id is not None]
        uids = [r.uid for r in recipients if r.uid is not None]
    if ids:
        body["to_ids"] = ids
    if uids:
        body["to_uids"] = uids
    return orjson.dumps(body)


def _present(values: list[str | None] | None) -> list[str | None]:
    if values is None:
        return []
    if all(values):  # (no None: a truth test is 3x as fast as ``None in values``)
        return values
    return [v for v in values if v is not None]


@dataclass(slots=True)
class MaxTraffic:
    """The MaxTraffic adapter. ``message`` holds messages/icon/image/campaign from the campaign."""

    api_key: str = field(repr=False)
    message: Mapping[str, Any]
    paths: Mapping[str, str] = field(default_factory=lambda: dict(PATHS))
    name: str = NAME
    groups: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    sends_rate_headers: bool = True
    dedup_keys: tuple[str, ...] = ("id", "uid")

    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"key={self.api_key}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

    def batcher(self, batch_size: int) -> CountBatcher:
        return NotificationBatcher(batch_size)

    def encode(self, batch: Batch) -> HttpRequest:
        body = notification_body(self.message, batch.recipients)
        return HttpRequest("POST", self.paths["notifications"], self.headers(), body)

    def classify(self, response: HttpResponse) -> Classification:
        return classify(response)

    def describe(self) -> Mapping[str, Any]:
        return {"provider": self.name, "operation": "notify", "path": self.paths["notifications"]}


def error_message(body: bytes) -> str:
    """The server's own words from a JSON error body, else its first 200 characters."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        for key in ("message", "error", "msg", "errors"):
            if key in data:
                value = data[key]
                return value if isinstance(value, str) else orjson.dumps(value).decode()
    return orjson.dumps(data).decode()[:200]


_DELIVERED = Classification(Verdict.DELIVERED)  # frozen: one for every accepted batch
#: the doc's success answer (its "Response samples"), as servers write it: read without parsing
_OK_BODIES = frozenset({b'{"success":true}', b'{"success": true}'})
#: how messages name the documented success answer
ANSWER = "MaxTraffic's JSON answer"


def classify(response: HttpResponse) -> Classification:
    """Status -> verdict: a 2xx is delivered only when it is the doc's ``{"success": true}``
    (JSON), else unexpected (``bulksend.providers.answers``); then the shared ladder
    (``bulksend.providers.status``), the doc's 422 (and 400) as invalid data; anything else
    (404 on the endpoint, 405, a redirect, ...) stops the send (``answers.fatal``)."""
    status = response.status
    if 200 <= status < 300:
        if response.body in _OK_BODIES and json_typed(response.headers):
            return _DELIVERED
        return success(response)
    message = error_message(response.body)
    common = common_verdict(status, response.headers, message)
    if common is not None:
        return common
    if status == 422 or status == 400:
        return Classification(Verdict.INVALID, message or f"{status} invalid request")
    return fatal(response, message)


def success(response: HttpResponse) -> Classification:
    """A 2xx: delivered when its JSON is an object with ``success: true`` (other keys are
    allowed), else an unexpected answer."""
    data = read_json(response)
    if isinstance(data, dict) and data.get("success") is True:
        return _DELIVERED
    return unexpected(response, ANSWER, '{"success": true}')


#: secrets this provider needs: name -> default environment variable
SECRETS: Mapping[str, str] = {"api_key": "MAXTRAFFIC_API_KEY"}
OPERATIONS: tuple[str, ...] = ("notify",)
MESSAGE_FIELDS = ("messages", "icon", "image", "campaign")


def build(options: Mapping[str, Any], secrets: Mapping[str, str]) -> MaxTraffic:
    """Make the adapter from the campaign's ``[message]``/``[provider]`` tables (validated)."""
    from bulksend.errors import ConfigError

    _, message = checked_options(
        NAME,
        options,
        operations=OPERATIONS,
        api_keys=("paths",),
        message_fields=MESSAGE_FIELDS,
    )
    messages = message.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ConfigError("[message].messages: a non-empty list of message tables is required")
    if not all(isinstance(m, dict) and m for m in messages):
        raise ConfigError("[message].messages: every entry must be a non-empty table")
    if len({orjson.dumps(m, option=orjson.OPT_SORT_KEYS) for m in messages}) != len(messages):
        raise ConfigError("[message].messages: entries must be unique")
    for key in ("icon", "image", "campaign"):
        if key in message and not isinstance(message[key], str):
            raise ConfigError(f"[message].{key}: must be a string")
    paths = checked_paths(options, PATHS)
    return MaxTraffic(api_key=secrets["api_key"], message=dict(message), paths=paths)
