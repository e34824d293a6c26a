"""The Maxemail adapter: templates, encoding, classification and Warning headers (pure)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from multidict import CIMultiDict

from bulksend.errors import ConfigError, InputError
from bulksend.models import Batch, HttpResponse, Recipient, Rejected
from bulksend.providers import maxemail
from bulksend.providers.base import Limit, Verdict
from bulksend.sources.spec import Chunk

SECRETS = {"username": "api@example.com", "password": "s3cret:pass"}
TRIGGER = {
    "service": "email_send",
    "method": "triggerFolder",
    "args": ["12", "{id}", {"first_name": "{first_name}", "n": 3}],
}


def build(message: dict[str, Any], **api: Any) -> maxemail.Maxemail:
    options = {**api, "operation": "call", "message": message, "campaign_name": "t"}
    return maxemail.build(options, SECRETS)


def form(provider: maxemail.Maxemail, recipient: Recipient) -> list[tuple[str, str]]:
    request = provider.encode(Batch(1, "api", [recipient]))
    assert request.body is not None
    return parse_qsl(request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def response(status: int, body: Any = None, **headers: str) -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status, CIMultiDict(headers), raw)


def error(status: int, msg: str) -> HttpResponse:
    return response(status, {"success": False, "msg": msg, "code": status})


# ---------------------------------------------------------------------------- encoding


def test_positional_call_is_form_encoded_with_objects_as_json_strings() -> None:
    p = build(TRIGGER)
    r = Recipient(2, "ann+1@example.com", None, {"first_name": "Ann & Bob"})
    assert form(p, r) == [
        ("method", "triggerFolder"),
        ("arg0", "12"),
        ("arg1", "ann+1@example.com"),
        ("arg2", '{"first_name":"Ann & Bob","n":3}'),
    ]
    request = p.encode(Batch(1, "api", [r]))
    assert request.method == "POST"
    assert request.path == "/api/json/email_send"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    scheme, token = request.headers["Authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token).decode() == "api@example.com:s3cret:pass"


def test_the_docs_example_body_is_reproduced_exactly() -> None:
    p = build(
        {
            "service": "recipient",
            "method": "findByEmailAddress",
            "params": {"emailAddress": "{id}"},
        }
    )
    body = p.encode(Batch(1, "api", [Recipient(1, "recipient@example.com")])).body
    assert body == b"method=findByEmailAddress&emailAddress=recipient%40example.com"


def test_named_params_scalars_lists_and_literal_braces() -> None:
    p = build(
        {
            "service": "recipient",
            "method": "update",
            "args": ["{uid}"],
            "params": {
                "data": {"tags": ["{plan}", "vip"], "flag": True, "raw": "{{x}}"},
                "note": "Hi {first_name}, {{literally}}",
                "count": 5,
                "on": False,
            },
        }
    )
    r = Recipient(3, "a@b.co", "77", {"plan": "pro", "First_Name": "Zoë"})
    assert form(p, r) == [
        ("method", "update"),
        ("arg0", "77"),
        ("data", '{"tags":["pro","vip"],"flag":true,"raw":"{x}"}'),
        ("note", "Hi Zoë, {literally}"),  # a column is found case-insensitively
        ("count", "5"),
        ("on", "false"),
    ]


def test_the_id_column_name_works_as_a_placeholder_when_config_passes_columns() -> None:
    message = {"service": "email_send", "method": "triggerFolder", "args": ["1", "{email}", {}]}
    p = build(message, columns={"id": "email", "uid": None})
    assert form(p, Recipient(1, "x@y.zz"))[2] == ("arg1", "x@y.zz")
    reason = build(message).check(Recipient(1, "x@y.zz"))
    assert reason is not None
    assert "{email}" in reason
    assert "{id}" in reason


def test_one_recipient_per_batch_whatever_the_batch_size() -> None:
    b = build(TRIGGER).batcher(500)
    batches = [b.add(Recipient(i, f"u{i}@x.io")) for i in range(1, 4)]
    assert [(x.number, x.group, len(x)) for x in batches if x] == [
        (1, "api", 1),
        (2, "api", 1),
        (3, "api", 1),
    ]
    assert list(b.flush()) == []


def test_adapter_facts() -> None:
    p = build(TRIGGER)
    assert p.dedup_keys == ("id",)
    assert p.sends_rate_headers is False
    assert p.groups == {"api": Limit(600, 60.0)}
    assert p.describe()["call"] == "email_send.triggerFolder"
    assert "s3cret" not in repr(p)
    assert p.placeholders == {"id", "first_name"}


# ---------------------------------------------------------------------------- screening


def test_screen_moves_rows_without_a_placeholder_column_to_rejected() -> None:
    p = build(TRIGGER)
    good = Recipient(2, "a@x.io", None, {"first_name": "A"})
    no_column = Recipient(3, "b@x.io", None, {"plan": "pro"})
    no_id = Recipient(4, None, "u4", {"first_name": "C"})
    earlier = Rejected(5, "malformed JSON")
    (chunk,) = list(p.screen([Chunk([good, no_column, no_id], [earlier])]))
    assert chunk.recipients == [good]
    assert [(x.line, x.id) for x in chunk.rejected] == [(5, None), (3, "b@x.io"), (4, None)]
    assert "{first_name}" in chunk.rejected[1].reason
    assert chunk.rejected[2].reason == "missing id (the email address)"


def test_encode_of_an_unscreened_row_names_its_line() -> None:
    p = build(TRIGGER)
    with pytest.raises(InputError, match=r"^line 9: no value for placeholder \{first_name\}"):
        p.encode(Batch(1, "api", [Recipient(9, "a@x.io")]))


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("message", "api", "match"),
    [
        ({"method": "m"}, {}, r"\[message\]\.service"),
        ({"service": "a/b", "method": "m"}, {}, r"\[message\]\.service"),
        ({"service": "s"}, {}, r"\[message\]\.method"),
        ({"service": "s", "method": "m", "args": "x"}, {}, r"\[message\]\.args"),
        ({"service": "s", "method": "m", "params": ["x"]}, {}, r"\[message\]\.params"),
        ({"service": "s", "method": "m", "params": {"method": "x"}}, {}, "reserved"),
        ({"service": "s", "method": "m", "args": [1], "params": {"arg0": 2}}, {}, "arg0"),
        ({"service": "s", "method": "m", "args": ["{a"]}, {}, r"unbalanced '\{'"),
        ({"service": "s", "method": "m", "args": ["a}"]}, {}, r"unbalanced '\}'"),
        ({"service": "s", "method": "m", "args": ["{ }"]}, {}, "empty placeholder"),
        ({"service": "s", "method": "m", "subject": "x"}, {}, "unknown field.*subject"),
        ({"service": "s", "method": "m"}, {"batch": 3}, r"\[api\]: unknown key.*batch"),
        ({"service": "s", "method": "m"}, {"paths": {"json": "/x"}}, r"\{service\}"),
    ],
)
def test_config_errors_name_the_key(
    message: dict[str, Any], api: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build(message, **api)


def test_unknown_operation_and_a_colon_in_the_username_are_refused() -> None:
    with pytest.raises(ConfigError, match="operation"):
        maxemail.build({"operation": "send", "message": TRIGGER}, SECRETS)
    with pytest.raises(ConfigError, match="must not contain ':'") as exc:
        maxemail.build({"message": TRIGGER}, {"username": "a:b", "password": "pw"})
    assert "a:b" not in str(exc.value)


def test_path_override() -> None:
    p = build(TRIGGER, paths={"json": "/v2/json/{service}"})
    assert p.encode(Batch(1, "api", [Recipient(1, "a@b.cd", None, {"first_name": ""})])).path == (
        "/v2/json/email_send"
    )


# ---------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("resp", "verdict"),
    [
        (response(200, True), Verdict.DELIVERED),
        (response(200, 12345), Verdict.DELIVERED),
        (error(400, "Invalid email address for recipientId: 'x'"), Verdict.INVALID),
        (error(400, "Invalid Method Call to triggerFolder. Requires 3, 0 given."), Verdict.FATAL),
        (error(400, "Invalid method 'nope' for service 'list'"), Verdict.FATAL),
        (error(400, "No method specified"), Verdict.FATAL),
        (error(404, "Unknown service 'emial_send'"), Verdict.FATAL),
        (error(404, "Recipient 'a@b.cd' not found"), Verdict.INVALID),
        (error(404, "Not Found"), Verdict.FATAL),
        (response(404, b"<html>nginx</html>"), Verdict.FATAL),
        (error(401, "Authentication failed"), Verdict.AUTH),
        (error(403, "Forbidden"), Verdict.AUTH),
        (error(429, "Too many requests"), Verdict.THROTTLED),
        (error(500, "Internal server error"), Verdict.RETRY),
        (error(503, "Service temporarily unavailable"), Verdict.RETRY),
        (error(415, "Content-type must be application/x-www-form-urlencoded"), Verdict.FATAL),
        (error(422, "bad data"), Verdict.INVALID),
    ],
)
def test_classify(resp: HttpResponse, verdict: Verdict) -> None:
    assert maxemail.classify(resp).verdict is verdict


def test_errors_carry_the_servers_message_and_retry_after() -> None:
    arity = error(400, "Invalid Method Call to triggerFolder. Requires 3, 0 given.")
    fatal = maxemail.classify(arity)
    assert fatal.message.startswith(
        "400 no content type: Invalid Method Call to triggerFolder. Requires 3, 0 given.; body: {"
    )
    assert fatal.hint == maxemail.CALL_FIX
    busy = response(503, {"success": False, "msg": "down", "code": 503}, **{"Retry-After": "2"})
    c = maxemail.classify(busy)
    assert (c.verdict, c.message, c.retry_after) == (Verdict.RETRY, "down", 2.0)
    assert maxemail.classify(response(500, b"")).message == "HTTP 500"


# ---------------------------------------------------------------------------- warnings


def test_parse_warning_reads_the_docs_example() -> None:
    value = '299 MxmApi/v123 "methodName Deprecated: 123 Reason or explanation of alternative"'
    (w,) = maxemail.parse_warning(value)
    assert w == maxemail.WarningValue(
        299, "MxmApi/v123", "methodName Deprecated: 123 Reason or explanation of alternative"
    )
    assert maxemail.parse_deprecation(w.text) == maxemail.Deprecation(
        "methodName", "123", "Reason or explanation of alternative"
    )


def test_parse_warning_several_values_escapes_dates_and_garbage() -> None:
    value = (
        '299 MxmApi/v1 "a Deprecated: 1 use \\"b\\", not a" "Wed, 1 Jan 2020 00:00:00 GMT", '
        '199 - "misc warning"  , junk 12 "x"'
    )
    assert maxemail.parse_warning(value) == [
        maxemail.WarningValue(
            299, "MxmApi/v1", 'a Deprecated: 1 use "b", not a', "Wed, 1 Jan 2020 00:00:00 GMT"
        ),
        maxemail.WarningValue(199, "-", "misc warning"),
    ]
    assert maxemail.parse_warning("") == []
    assert maxemail.parse_warning("299 agent no-quotes") == []
    assert maxemail.parse_deprecation("just a note") is None


def test_classification_carries_the_deprecation_as_a_warning() -> None:
    p = build({"service": "list", "method": "insertRecipient", "args": ["7", "{id}"]})
    header = '299 MxmApi/v100 "insertRecipient Deprecated: 100 Use list.addRecipient"'
    c = p.classify(response(200, True, Warning=header))
    assert c.verdict is Verdict.DELIVERED
    assert c.warning == (
        "maxemail: list.insertRecipient is deprecated (since API version 100): "
        "Use list.addRecipient"
    )
    assert p.classify(response(200, True)).warning is None
    other = p.classify(response(200, 1, Warning='199 x "hi"'))
    assert other.warning == "maxemail warning 199 (x): hi"


def test_every_warning_header_is_read_once() -> None:
    headers = CIMultiDict(
        [("Warning", '299 A/1 "m Deprecated: 2 r"'), ("Warning", '299 A/1 "m Deprecated: 2 r"')]
    )
    headers.add("warning", '199 B "other"')
    text = maxemail.response_warnings(headers, "svc")
    assert (
        text
        == "maxemail: svc.m is deprecated (since API version 2): r; maxemail warning 199 (B): other"
    )
    plain = {"warning": '299 A/1 "x.m Deprecated: 2"'}
    assert maxemail.response_warnings(plain, "svc") == (
        "maxemail: x.m is deprecated (since API version 2)"
    )
