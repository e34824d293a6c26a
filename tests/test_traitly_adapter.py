"""The Traitly adapter on its own: one-record bodies, headers, verdicts, reads."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bulksend.errors import AuthError, ConfigError, ProviderError, TransientError
from bulksend.models import Batch, HttpResponse, Recipient
from bulksend.providers import load, traitly
from bulksend.providers.base import Limit, Verdict
from bulksend.sources.spec import Chunk

TOKEN = {"token": "tok-42"}


def make(operation: str = "customers", message: dict[str, Any] | None = None, **api: Any) -> Any:
    secrets = api.pop("secrets", TOKEN)
    options = {**api, "operation": operation, "message": message or {}, "campaign_name": "T"}
    return traitly.build(options, secrets)


def rec(line: int, id_: str | None = "123", **attrs: str) -> Recipient:
    return Recipient(line, id_, None, attrs)


CUSTOMER = {"name": "John Smith", "email": "john@example.com", "plan": "Starter"}


def body_of(adapter: Any, recipient: Recipient) -> Any:
    request = adapter.encode(Batch(1, "api", [recipient]))
    return orjson.loads(request.body)


def error(status: int, kind: str, message: str) -> HttpResponse:
    body = orjson.dumps({"error": {"type": kind, "message": message}})
    return HttpResponse(status, {}, body)


def test_registry_and_constants() -> None:
    module = load("traitly")
    assert module is traitly
    assert module.DEFAULT_BATCH_SIZE == 1
    assert module.SECRETS == {"token": "TRAITLY_TOKEN"}
    assert module.OPERATIONS == ("customers", "events")
    adapter = make()
    assert adapter.groups == {"api": Limit(600, 60.0)}
    assert adapter.sends_rate_headers is False
    assert adapter.dedup_keys == ("id",)
    assert make("events").dedup_keys == ("uid",)
    assert "tok-42" not in repr(adapter)


def test_one_record_per_request_whatever_the_batch_size() -> None:
    b = make().batcher(100)
    batches = [b.add(rec(i, str(i), **CUSTOMER)) for i in range(1, 4)]
    assert [len(x) for x in batches if x] == [1, 1, 1]
    assert [x.number for x in batches if x] == [1, 2, 3]
    assert list(b.flush()) == []


def test_customer_body_headers_and_path() -> None:
    adapter = make(message={"top_level": ["location"]})
    r = rec(1, **CUSTOMER, created_at="1493933699", location="SF", role="manager", team="")
    request = adapter.encode(Batch(1, "api", [r]))
    assert request.method == "POST"
    assert request.path == "/api/v1/customer"
    assert request.headers == {
        "Authorization": "Token tok-42",
        "Accept": "application/json",
        "Content-Type": "application/json",
    }
    assert orjson.loads(request.body or b"") == {
        "customer_id": "123",
        **CUSTOMER,
        "created_at": 1493933699,
        "location": "SF",
        "custom_attributes": {"role": "manager"},
    }


def test_renamed_columns_and_iso_created_at() -> None:
    adapter = make(message={"columns": {"name": "full_name", "created_at": "signup"}})
    r = rec(1, full_name="Alice", email="a@example.com", plan="Pro", signup="2018-08-10T20:41:39Z")
    body = body_of(adapter, r)
    assert body == {
        "customer_id": "123",
        "name": "Alice",
        "email": "a@example.com",
        "plan": "Pro",
        "created_at": 1533933699,
    }


def test_missing_required_values_are_left_for_the_provider_and_named_by_check() -> None:
    adapter = make()
    r = rec(1, name="X", email="", plan="  ")
    assert body_of(adapter, r) == {"customer_id": "123", "name": "X"}
    assert adapter.check(r) == "missing required email, plan"
    assert adapter.check(rec(2, None, **CUSTOMER)) == "missing required customer_id"
    assert adapter.check(rec(3, **CUSTOMER)) is None
    assert "created_at" in (adapter.check(rec(4, **CUSTOMER, created_at="soon")) or "")
    renamed = make(message={"columns": {"email": "mail"}})
    assert renamed.check(rec(5, name="X", plan="P")) == "missing required mail"


def test_screen_refuses_what_check_refuses() -> None:
    adapter = make(columns={"id": "cid", "uid": None})
    good, bad = rec(1, **CUSTOMER), rec(2, None, **CUSTOMER)
    (chunk,) = adapter.screen([Chunk([good, bad], [])])
    assert chunk.recipients == [good]
    assert [(r.line, r.reason) for r in chunk.rejected] == [(2, "missing required cid")]


def test_event_body_from_columns_or_one_name() -> None:
    adapter = make("events")
    r = rec(1, name="Logged in", created_at="1494020099", extra="not sent")
    request = adapter.encode(Batch(1, "api", [r]))
    assert request.path == "/api/v1/event"
    assert orjson.loads(request.body or b"") == {
        "customer_id": "123",
        "name": "Logged in",
        "created_at": 1494020099,
    }
    fixed = make("events", {"name": "Style Widget"})
    assert body_of(fixed, rec(2)) == {"customer_id": "123", "name": "Style Widget"}
    assert fixed.describe()["event"] == "Style Widget"
    assert make("events").check(rec(3)) == "missing required name"


@pytest.mark.parametrize(
    ("operation", "message", "api", "secrets", "error"),
    [
        ("orders", {}, {}, TOKEN, "unknown operation"),
        ("customers", {"name": "x"}, {}, TOKEN, "unknown field"),
        ("customers", {"columns": {"phone": "p"}}, {}, TOKEN, "unknown field"),
        ("customers", {"columns": {"name": ""}}, {}, TOKEN, "column name"),
        ("customers", {"columns": {"name": "email"}}, {}, TOKEN, "same column"),
        ("customers", {"top_level": "location"}, {}, TOKEN, "top_level"),
        ("customers", {"top_level": ["plan"]}, {}, TOKEN, "already a field"),
        ("events", {"name": ""}, {}, TOKEN, "event name"),
        ("events", {"top_level": []}, {}, TOKEN, "unknown field"),
        ("customers", {}, {"auth": "x"}, TOKEN, "unknown key"),
        ("customers", {}, {"paths": {"customer": "x"}}, TOKEN, "paths"),
        ("customers", {}, {}, {}, "token"),
    ],
)
def test_build_rejects_bad_campaigns(
    operation: str,
    message: dict[str, Any],
    api: dict[str, Any],
    secrets: dict[str, str],
    error: str,
) -> None:
    with pytest.raises(ConfigError, match=error):
        make(operation, message, secrets=secrets, **api)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (400, Verdict.INVALID),
        (401, Verdict.AUTH),
        (403, Verdict.INVALID),
        (404, Verdict.FATAL),
        (405, Verdict.FATAL),
        (406, Verdict.FATAL),
        (429, Verdict.THROTTLED),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
    ],
)
def test_every_documented_status(status: int, verdict: Verdict) -> None:
    kind = traitly.ERROR_TYPES.get(status, "api_invalid_request_error")
    c = traitly.classify(error(status, kind, "server words"))
    assert c.verdict is verdict
    bare = traitly.classify(HttpResponse(status, {}, b""))
    assert bare.verdict is verdict
    if verdict is Verdict.FATAL:  # the stop line shows the answer itself (answers.fatal)
        assert c.message.startswith(f"{status} no content type: {kind}: server words; body: {{")
        assert bare.message == f"{status} no content type, empty body"
        return
    assert c.message == f"{status} {kind}: server words"
    assert kind in bare.message
    assert traitly.MEANINGS[status].split(" –")[0] in bare.message


def test_retry_after_is_read_and_200_is_delivered() -> None:
    c = traitly.classify(HttpResponse(503, {"Retry-After": "3"}, b""))
    assert c.retry_after == 3.0
    ok = orjson.dumps({"data": [{"customer_id": "1", "success": 1}], "object": "event"})
    assert traitly.classify(HttpResponse(200, {}, ok)).verdict is Verdict.DELIVERED
    failed = orjson.dumps({"data": [{"customer_id": "1", "success": 0}], "object": "event"})
    assert traitly.classify(HttpResponse(200, {}, failed)).verdict is Verdict.INVALID
    assert traitly.classify(HttpResponse(201, {}, b"not json")).verdict is Verdict.UNEXPECTED


def test_reads_are_built_with_the_doc_filters() -> None:
    read = traitly.customers_read("t", plan="Starter")
    assert read.path == "/api/v1/customer"
    assert read.params == {"plan": "Starter"}
    assert read.headers == {"Authorization": "Token t", "Accept": "application/json"}
    assert traitly.events_read("t", "1", "Logged in").params == {
        "customer_id": "1",
        "name": "Logged in",
    }
    actions = traitly.next_actions_read("t", "1", "Conversion")
    assert actions.path == "/api/v1/recommended-next-actions"
    assert actions.params == {"customer_id": "1", "goal_name": "Conversion"}
    assert traitly.next_actions_read("t", "1").params == {"customer_id": "1"}


def test_read_answers() -> None:
    listing = orjson.dumps({"data": [{"customer_id": "1"}, 7], "object": "customer"})
    assert traitly.read_list(HttpResponse(200, {}, listing)) == [{"customer_id": "1"}]
    with pytest.raises(AuthError):
        traitly.read_list(error(401, "api_authentication_error", "Invalid API token"))
    with pytest.raises(TransientError):
        traitly.read_list(error(503, "api_error", "down"))
    with pytest.raises(ProviderError) as info:
        traitly.read_next_actions(error(404, "api_invalid_request_error", "No such customer"))
    assert info.value.status == 404
    assert "No such customer" in str(info.value)
    with pytest.raises(ProviderError, match="not JSON"):
        traitly.read_list(HttpResponse(200, {}, b"<html>"))
    with pytest.raises(ProviderError, match="no data"):
        traitly.read_next_actions(HttpResponse(200, {}, b"{}"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1493933699", 1493933699),
        ("1493933699000", 1493933699),
        ("2017-05-04T21:34:59Z", 1493933699),
        ("2017-05-04T23:34:59+02:00", 1493933699),
        ("2017-05-04 21:34:59", 1493933699),
        ("soon", None),
        ("", None),
    ],
)
def test_unix_seconds(text: str, seconds: int | None) -> None:
    assert traitly.unix_seconds(text) == seconds
