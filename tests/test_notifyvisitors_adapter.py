"""The NotifyVisitors adapter on its own: bodies, headers, batching, verdicts, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.errors import AuthError, ConfigError, ProviderError, TransientError
from bulksend.models import Batch, HttpResponse, Recipient, Rejected
from bulksend.providers import load, notifyvisitors
from bulksend.providers.base import Limit, Verdict
from bulksend.sources.spec import Chunk

KEYS = {"api_key": "k-123", "brand_id": "b-9"}


def make(operation: str = "users", message: dict[str, Any] | None = None, **api: Any) -> Any:
    secrets = api.pop("secrets", KEYS)
    options = {**api, "operation": operation, "message": message or {}, "campaign_name": "T"}
    return notifyvisitors.build(options, secrets)


def rec(line: int, id_: str | None = None, **attrs: str) -> Recipient:
    return Recipient(line, id_ if id_ is not None else f"u{line}", None, attrs)


def body_of(adapter: Any, recipients: list[Recipient]) -> Any:
    request = adapter.encode(Batch(1, adapter.group, recipients))
    return orjson.loads(request.body)


def envelope(status: str, message: str = "", data: Any = None) -> bytes:
    return orjson.dumps({"response": {"data": data or {}, "message": message, "status": status}})


def test_registry_loads_the_module_with_its_constants() -> None:
    module = load("notifyvisitors")
    assert module is notifyvisitors
    assert module.NAME == "notifyvisitors"
    assert module.DEFAULT_BATCH_SIZE == 100
    assert module.OPERATIONS[0] == "users"
    assert set(module.SECRETS) == {"api_key", "brand_id"}


def test_documented_limits_one_group_per_operation() -> None:
    documented = {
        "user": Limit(100, 60.0),
        "event": Limit(500, 60.0),
        "campaign": Limit(500, 60.0),
        "reporting": Limit(50, 60.0),
    }
    assert dict(notifyvisitors.DEFAULT_LIMITS) == documented
    message = {"events": {"event": "e"}, "campaign": {"channel": "sms", "campaign_id": "c"}}
    seen = {}
    for operation, group in notifyvisitors.GROUP_OF.items():
        adapter = make(operation, message.get(operation))
        assert adapter.groups == {group: notifyvisitors.DEFAULT_LIMITS[group]}
        assert adapter.sends_rate_headers is True
        batch = adapter.batcher(1).add(rec(1))
        assert batch is not None
        assert batch.group == group
        seen[operation] = adapter.encode(batch).path
    assert seen == {
        "users": "/api/v1/user/create",
        "events": "/api/v1/event/track",
        "campaign": "/api/v1/campaign/send",
    }


def test_key_headers_by_default_and_bearer_for_partner_apps() -> None:
    request = make().encode(Batch(1, "user", [rec(1)]))
    assert request.method == "POST"
    assert request.headers["x-api-key"] == "k-123"
    assert request.headers["x-brand-id"] == "b-9"
    assert request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in request.headers
    bearer = make(auth="bearer", secrets={"token": "t-1"})
    headers = bearer.encode(Batch(1, "user", [rec(1)])).headers
    assert headers["Authorization"] == "Bearer t-1"
    assert "x-api-key" not in headers
    assert notifyvisitors.secrets_for({"auth": "bearer"}) == {"token": "NOTIFYVISITORS_TOKEN"}
    assert notifyvisitors.secrets_for({}) == notifyvisitors.SECRETS
    assert "k-123" not in repr(make())
    assert "t-1" not in repr(bearer)


@pytest.mark.parametrize(
    ("operation", "message", "api", "error"),
    [
        ("nope", {}, {}, "unknown operation"),
        ("users", {"event": "x"}, {}, "unknown field"),
        ("users", {"attributes": "x"}, {}, "attributes"),
        ("events", {}, {}, "event"),
        ("events", {"event": "  "}, {}, "event"),
        ("campaign", {"campaign_id": "c"}, {}, "channel"),
        ("campaign", {"channel": "fax", "campaign_id": "c"}, {}, "channel"),
        ("campaign", {"channel": "push"}, {}, "campaign_id"),
        ("users", {}, {"auth": "basic"}, "auth"),
        ("users", {}, {"nope": 1}, "unknown key"),
        ("users", {}, {"max_batch": 0}, "max_batch"),
        ("users", {}, {"paths": {"user": "no-slash"}}, "paths"),
        ("users", {}, {"paths": {"other": "/x"}}, "unknown endpoint"),
        ("users", {}, {"auth": "bearer"}, "token"),
    ],
)
def test_build_rejects_bad_campaigns(
    operation: str, message: dict[str, Any], api: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError, match=error):
        make(operation, message, **api)


def test_key_mode_needs_both_secrets() -> None:
    with pytest.raises(ConfigError, match="brand_id"):
        make(secrets={"api_key": "k"})


def test_batcher_packs_in_order_and_never_exceeds_the_provider_cap() -> None:
    adapter = make(max_batch=3)
    b = adapter.batcher(10)  # clamped to max_batch
    out = [batch for r in (rec(i) for i in range(1, 8)) if (batch := b.add(r))]
    out.extend(b.flush())
    assert [len(x) for x in out] == [3, 3, 1]
    assert [x.number for x in out] == [1, 2, 3]
    assert [r.line for x in out for r in x.recipients] == list(range(1, 8))
    assert list(b.flush()) == []
    capped = make().batcher(500)  # the default cap: 100
    assert all(capped.add(rec(i)) is None for i in range(99))
    full = capped.add(rec(99))
    assert full is not None
    assert len(full) == 100


def test_users_body_columns_over_static_attributes_empty_cells_left_out() -> None:
    adapter = make("users", {"attributes": {"source": "crm", "city": "?"}})
    rows = [rec(1, "1001", name="Asha", city="Mumbai", mobile=""), rec(2, "1002")]
    assert body_of(adapter, rows) == {
        "nv": [
            {
                "userID": "1001",
                "user_attributes": {"source": "crm", "city": "Mumbai", "name": "Asha"},
            },
            {"userID": "1002", "user_attributes": {"source": "crm", "city": "?"}},
        ]
    }
    assert adapter.dedup_keys == ("id",)


def test_events_body_with_timestamps_in_the_documented_form() -> None:
    adapter = make("events", {"event": "purchase"})
    rows = [
        rec(1, timestamp="2024-03-02T18:40:12+05:30", sku="7"),
        rec(2, timestamp="1709300000"),
        rec(3, timestamp=""),
        rec(4, timestamp="yesterday"),
    ]
    nv = body_of(adapter, rows)["nv"]
    assert nv[0] == {
        "userID": "u1",
        "event": "purchase",
        "event_attributes": {"sku": "7"},
        "timestamp": "2024-03-02T13:10:12+0000",
    }
    assert nv[1] == {"userID": "u2", "event": "purchase", "timestamp": "2024-03-01T13:33:20+0000"}
    assert nv[2] == {"userID": "u3", "event": "purchase"}
    assert nv[3]["timestamp"] == "yesterday"  # sent as written: the provider names the record
    assert "timestamp" in (adapter.check(rows[3]) or "")
    assert adapter.check(rows[0]) is None
    assert adapter.dedup_keys == ("uid",)  # one user, many events


def test_events_timestamp_column_is_configurable() -> None:
    adapter = make("events", {"event": "e", "timestamp_column": "at"})
    (record,) = body_of(adapter, [rec(1, at="2013-01-26T07:31+0000", timestamp="kept")])["nv"]
    assert record["timestamp"] == "2013-01-26T07:31:00+0000"
    assert record["event_attributes"] == {"timestamp": "kept"}


def test_campaign_body_lists_the_batch_users() -> None:
    adapter = make("campaign", {"channel": "email", "campaign_id": 42})
    body = body_of(adapter, [rec(1, "a", name="x"), rec(2, "b")])
    assert body == {"channel": "email", "campaign_id": "42", "users": ["a", "b"]}
    assert adapter.describe()["campaign_id"] == "42"
    assert adapter.describe()["path"] == "/api/v1/campaign/send"


def test_check_names_a_row_without_user_id() -> None:
    assert make().check(Recipient(1, None, "x")) == "missing userID (column 'id')"
    named = make(columns={"id": "user_id", "uid": None})
    assert named.check(Recipient(1, None, "x")) == "missing userID (column 'user_id')"
    assert make().check(rec(1)) is None


def test_screen_moves_refused_rows_to_rejected_and_keeps_order() -> None:
    adapter = make("events", {"event": "e"})
    good, no_id, bad_time = rec(1), Recipient(2, None, "x"), rec(3, timestamp="never")
    earlier = Rejected(4, "wrong number of fields")
    (chunk,) = adapter.screen([Chunk([good, no_id, bad_time], [earlier])])
    assert chunk.recipients == [good]
    assert [(r.line, r.reason[:16]) for r in chunk.rejected] == [
        (4, "wrong number of "),
        (2, "missing userID ("),
        (3, "column 'timestam"),
    ]
    assert chunk.rejected[2].id == "u3"
    users = make()
    untouched = Chunk([good], [])
    assert next(iter(users.screen([untouched]))) is untouched  # nothing to refuse: same chunk


@pytest.mark.parametrize(
    ("status", "body", "headers", "verdict"),
    [
        (200, envelope("success", "success", {"count": 2}), {}, Verdict.DELIVERED),
        (200, b"", {}, Verdict.UNEXPECTED),
        (200, b"<html>ok</html>", {"Content-Type": "text/html"}, Verdict.UNEXPECTED),
        (200, envelope("error", "2 of 3 records are invalid"), {}, Verdict.INVALID),
        (400, envelope("error", "Invalid resource: nv"), {}, Verdict.INVALID),
        (401, envelope("error", "Invalid auth"), {}, Verdict.AUTH),
        (403, b"forbidden", {}, Verdict.AUTH),
        (404, envelope("error", "Invalid URL"), {}, Verdict.FATAL),
        (405, b"", {}, Verdict.FATAL),
        (429, envelope("error", "Rate limit exceeded"), {"Retry-After": "7"}, Verdict.THROTTLED),
        (500, envelope("error", "Internal server error"), {}, Verdict.RETRY),
        (503, b"<html>down</html>", {"Retry-After": "2"}, Verdict.RETRY),
    ],
)
def test_classify_follows_the_doc(
    status: int, body: bytes, headers: dict[str, str], verdict: Verdict
) -> None:
    c = notifyvisitors.classify(HttpResponse(status, headers, body))
    assert c.verdict is verdict
    if status >= 400:
        assert str(status) in c.message
    if "Retry-After" in headers:
        assert c.retry_after == float(headers["Retry-After"])


def test_status_error_on_200_names_the_bad_positions() -> None:
    data = {"errors": [{"index": 2, "message": "userID is required"}, {"index": 0}, "junk"]}
    c = notifyvisitors.classify(HttpResponse(200, {}, envelope("error", "2 of 4", data)))
    assert c.verdict is Verdict.INVALID
    assert c.rejected == {2: "userID is required", 0: "invalid record"}
    assert c.message == "2 of 4"
    whole = notifyvisitors.classify(HttpResponse(200, {}, envelope("error", "bad")))
    assert whole.rejected is None


def test_envelope_messages_are_kept_and_bodies_trimmed() -> None:
    c = notifyvisitors.classify(HttpResponse(400, {}, envelope("error", "Invalid resource: x")))
    assert c.message == "400 Invalid resource: x"
    long = notifyvisitors.classify(HttpResponse(502, {}, b"x" * 5000))
    assert len(long.message) < 220


def test_report_read_and_its_answers() -> None:
    adapter = make("campaign", {"channel": "push", "campaign_id": "c"})
    read = adapter.report_read("spring sale")
    assert read.path == "/api/v1/report/campaign"
    assert read.params == {"campaign_id": "spring sale"}
    assert read.headers["x-api-key"] == "k-123"
    data = {"campaign_id": "c", "sent": 3}
    ok = HttpResponse(200, {}, envelope("success", "success", data))
    assert notifyvisitors.read_report(ok) == data
    with pytest.raises(ProviderError, match="not found"):
        notifyvisitors.read_report(HttpResponse(200, {}, envelope("error", "campaign not found")))
    with pytest.raises(AuthError):
        notifyvisitors.read_report(HttpResponse(401, {}, envelope("error", "Invalid auth")))
    with pytest.raises(TransientError):
        notifyvisitors.read_report(HttpResponse(429, {}, b""))
    with pytest.raises(ProviderError, match="not NotifyVisitors' JSON envelope"):
        notifyvisitors.read_report(HttpResponse(200, {}, b"[]"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-01-26T07:31+0000", "2013-01-26T07:31:00+0000"),
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05+0000"),
        ("2024-01-02 03:04:05", "2024-01-02T03:04:05+0000"),  # naive: UTC
        ("2024-01-02T03:04:05-02:00", "2024-01-02T05:04:05+0000"),
        ("1704164645", "2024-01-02T03:04:05+0000"),
        ("1704164645123", "2024-01-02T03:04:05+0000"),  # milliseconds
        ("1704164645.9", "2024-01-02T03:04:05+0000"),
    ],
)
def test_timestamps(text: str, expected: str) -> None:
    moment = notifyvisitors.parse_timestamp(text)
    assert moment is not None
    assert notifyvisitors.format_timestamp(moment) == expected


@pytest.mark.parametrize("text", ["", "  ", "soon", "2024-13-01", "-5", "1e9"])
def test_unreadable_timestamps(text: str) -> None:
    assert notifyvisitors.parse_timestamp(text) is None


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_formatted_times_read_back_to_the_same_second(moment: datetime, offset: int) -> None:
    aware = moment.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset)))
    text = notifyvisitors.format_timestamp(aware)
    assert len(text) == len("yyyy-MM-ddTHH:mm:ss+0000")
    back = notifyvisitors.parse_timestamp(text)
    assert back == aware.astimezone(UTC)
