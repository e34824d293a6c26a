"""A 2xx is delivered only when it is the provider's documented success answer (pure checks)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bulksend.models import HttpResponse
from bulksend.output.logs import redactor
from bulksend.providers import maxemail, maxtraffic, notifyvisitors, traitly
from bulksend.providers.answers import (
    NOT_JSON,
    answered,
    body_start,
    fatal,
    json_typed,
    likely_fix,
    public_url,
    read_json,
    redirect_target,
    stop_line,
    unexpected,
)
from bulksend.providers.base import Verdict

PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\n\x1b[0m\x00"
    + "\u202e".encode()
    + b"</html>"
)


@pytest.mark.parametrize(
    ("headers", "typed"),
    [
        ({"Content-Type": "application/json"}, True),
        ({"Content-Type": "application/json; charset=utf-8"}, True),
        ({"content-type": "Application/JSON;charset=UTF-8"}, True),
        ({"Content-Type": "application/vnd.api+json"}, True),
        ({"Content-Type": "text/json"}, True),
        ({}, True),  # no Content-Type: the body decides
        ({"Content-Type": "text/html"}, False),
        ({"Content-Type": "text/html; charset=utf-8"}, False),
        ({"Content-Type": "text/plain"}, False),
        ({"Content-Type": "application/xml"}, False),
        ({"Content-Type": "text/vnd.x+json"}, False),
    ],
)
def test_json_content_types(headers: dict[str, str], typed: bool) -> None:
    assert json_typed(headers) is typed


def test_read_json_needs_the_type_and_the_syntax() -> None:
    json = {"Content-Type": "application/json"}
    assert read_json(HttpResponse(200, json, b"null")) is None
    assert read_json(HttpResponse(200, json, b"12345")) == 12345
    assert read_json(HttpResponse(200, json, b"<html>")) is NOT_JSON
    assert read_json(HttpResponse(200, json, b"")) is NOT_JSON
    assert read_json(HttpResponse(200, {"Content-Type": "text/html"}, b"{}")) is NOT_JSON


def test_the_body_is_shown_bounded_escaped_and_on_one_line() -> None:
    shown = body_start(PAGE)
    assert shown == (
        "<html>\\r\\n<head><title>502 Bad Gateway</title></head>\\n\\x1b[0m\\x00\\u202e</html>"
    )
    assert body_start(b"x" * 1000) == "x" * 80 + "…"
    assert body_start(b"\xff\xfe" + b"a" * 10) == "\ufffd\ufffd" + "a" * 10  # undecodable bytes
    assert body_start(b"  \n") == "(empty)"


def test_credentials_a_body_echoes_are_removed() -> None:
    redactor.register(["sandbox-secret-value-42"])
    echo = orjson.dumps(
        {
            "headers": {"Authorization": "key=abc123xyz", "X-Api-Key": "k9"},
            "n": "sandbox-secret-value-42",
        }
    )
    shown = body_start(echo, limit=200)
    assert "abc123xyz" not in shown
    assert "k9" not in shown
    assert "sandbox-secret-value-42" not in shown
    assert '"Authorization": "key=[redacted]"' in shown.replace('":"', '": "')


def test_an_unexpected_answer_names_status_type_expected_shape_and_body() -> None:
    answer = HttpResponse(200, {"Content-Type": "text/html; charset=utf-8"}, PAGE)
    c = unexpected(answer, "MaxTraffic's JSON answer", '{"success": true}')
    assert c.verdict is Verdict.UNEXPECTED
    assert c.unexpected == "200 text/html, not MaxTraffic's JSON answer"
    assert c.message.startswith(
        'unexpected answer: 200 text/html, not MaxTraffic\'s JSON answer ({"success": true}); '
        "body: <html>\\r\\n<head>"
    )
    bare = unexpected(HttpResponse(204, {}, b""), "Traitly's JSON answer")
    assert (
        bare.message
        == "unexpected answer: 204 no content type, not Traitly's JSON answer; body: (empty)"
    )


JSON = {"Content-Type": "application/json"}
HTML = {"Content-Type": "text/html"}


@pytest.mark.parametrize(
    ("status", "headers", "body", "verdict"),
    [
        (200, JSON, b'{"success": true}', Verdict.DELIVERED),
        (200, {}, b'{"success":true}', Verdict.DELIVERED),
        (
            200,
            {"Content-Type": "application/json; charset=utf-8"},
            b'{"success": true, "id": 7}',
            Verdict.DELIVERED,
        ),
        (201, JSON, b'{ "success" : true }', Verdict.DELIVERED),
        (200, HTML, b'{"success": true}', Verdict.UNEXPECTED),
        (200, HTML, PAGE, Verdict.UNEXPECTED),
        (200, JSON, b'{"success": false}', Verdict.UNEXPECTED),
        (200, JSON, b'{"status": "ok"}', Verdict.UNEXPECTED),
        (200, JSON, b"[]", Verdict.UNEXPECTED),
        (204, {}, b"", Verdict.UNEXPECTED),
    ],
)
def test_maxtraffic_delivers_only_its_success_answer(
    status: int, headers: dict[str, str], body: bytes, verdict: Verdict
) -> None:
    assert maxtraffic.classify(HttpResponse(status, headers, body)).verdict is verdict


def envelope(status: str) -> bytes:
    return orjson.dumps({"response": {"data": {}, "message": status, "status": status}})


@pytest.mark.parametrize(
    ("headers", "body", "verdict"),
    [
        (JSON, envelope("success"), Verdict.DELIVERED),
        (
            {"Content-Type": "application/json; charset=UTF-8"},
            envelope("Success"),
            Verdict.DELIVERED,
        ),
        (JSON, envelope("error"), Verdict.INVALID),
        (JSON, envelope("queued"), Verdict.UNEXPECTED),
        (JSON, b'{"status": "success"}', Verdict.UNEXPECTED),
        (HTML, envelope("success"), Verdict.UNEXPECTED),
        (HTML, PAGE, Verdict.UNEXPECTED),
    ],
)
def test_notifyvisitors_delivers_only_a_success_envelope(
    headers: dict[str, str], body: bytes, verdict: Verdict
) -> None:
    assert notifyvisitors.classify(HttpResponse(200, headers, body)).verdict is verdict


@pytest.mark.parametrize(
    ("headers", "body", "verdict"),
    [
        ({"Content-Type": "application/json; charset=utf-8"}, b"12345", Verdict.DELIVERED),
        (JSON, b"true", Verdict.DELIVERED),
        (JSON, b"null", Verdict.DELIVERED),  # findByEmailAddress of an unknown address
        (JSON, b'{"email_id": 340, "campaign_id": "298"}', Verdict.DELIVERED),
        (JSON, b'{"success": false, "msg": "Service down", "code": 503}', Verdict.UNEXPECTED),
        (JSON, b"", Verdict.UNEXPECTED),
        (HTML, b"true", Verdict.UNEXPECTED),
        (HTML, PAGE, Verdict.UNEXPECTED),
    ],
)
def test_maxemail_delivers_any_json_result(
    headers: dict[str, str], body: bytes, verdict: Verdict
) -> None:
    assert maxemail.classify(HttpResponse(200, headers, body)).verdict is verdict


@pytest.mark.parametrize(
    ("headers", "body", "verdict"),
    [
        (JSON, b'{"data": [{"customer_id": "1"}], "object": "customer"}', Verdict.DELIVERED),
        (JSON, b'{"data": [], "metadata": {}}', Verdict.DELIVERED),  # shape only: see below
        (JSON, b'{"data": [{"customer_id": "1", "success": 0}]}', Verdict.INVALID),
        (JSON, b'{"object": "customer"}', Verdict.UNEXPECTED),
        (JSON, b'{"data": {"customer_id": "1"}}', Verdict.UNEXPECTED),
        (HTML, b'{"data": []}', Verdict.UNEXPECTED),
        (HTML, PAGE, Verdict.UNEXPECTED),
    ],
)
def test_traitly_delivers_only_its_data_answer(
    headers: dict[str, str], body: bytes, verdict: Verdict
) -> None:
    assert traitly.classify(HttpResponse(201, headers, body)).verdict is verdict


def test_a_maxemail_warning_survives_on_an_unexpected_answer() -> None:
    adapter = maxemail.build(
        {"message": {"service": "email_send", "method": "triggerFolder", "args": ["1", "{id}"]}},
        {"username": "u@example.com", "password": "p"},
    )
    header = '299 MxmApi/v100 "triggerFolder Deprecated: 99 use another"'
    c = adapter.classify(HttpResponse(200, {**HTML, "Warning": header}, PAGE))
    assert c.verdict is Verdict.UNEXPECTED
    assert c.unexpected == "200 text/html, not Maxemail's JSON answer"
    assert c.warning is not None


def test_the_leads_export_and_the_audience_check_refuse_a_page_the_same_way() -> None:
    from bulksend.errors import UnavailableError
    from bulksend.providers.maxtraffic_audience import LookupVerdict, read_lookup
    from bulksend.providers.maxtraffic_leads import LeadsQuery, read_leads

    page = HttpResponse(200, HTML, PAGE)
    reading = read_leads(page, LeadsQuery())
    assert isinstance(reading.error, UnavailableError)
    assert str(reading.error).startswith(
        "leads: answered 200 text/html, not MaxTraffic's leads (a JSON array of leads: "
    )
    assert "; body: <html>\\r\\n" in str(reading.error)
    assert str(reading.error).endswith(": is --base-url right?")
    assert read_leads(HttpResponse(200, JSON, b'[{"email": "a@b.c"}]'), LeadsQuery()).leads
    lookup = read_lookup(page)
    assert lookup.verdict is LookupVerdict.FATAL
    assert lookup.message.startswith("visitor lookup: answered 200 text/html, not ")
    visitor = HttpResponse(200, JSON, b'{"id": "v1", "web_push_subscriber": true}')
    assert read_lookup(visitor).verdict is LookupVerdict.ANSWER


# ---------------------------------------------------------------------------- final answers


def test_a_final_answer_names_status_type_words_and_body_start() -> None:
    assert answered(HttpResponse(404, {}, b"")) == "404 no content type, empty body"
    assert answered(HttpResponse(405, HTML, b"  \n")) == "405 text/html, empty body"
    page = answered(HttpResponse(404, HTML, PAGE))
    assert page.startswith("404 text/html; body: <html>\\r\\n<head><title>502 Bad Gateway")
    assert "\x1b" not in page
    json = HttpResponse(400, JSON, b'{"success": false, "msg": "No method specified"}')
    assert answered(json, "No method specified") == (
        '400 application/json: No method specified; body: {"success": false, "msg": "No method'
        ' specified"}'
    )
    # words that only repeat the body are not shown twice
    assert answered(HttpResponse(404, HTML, b"Not Found\n"), "Not Found") == (
        "404 text/html; body: Not Found"
    )
    long = answered(HttpResponse(400, JSON, b"{}"), "x" * 500)
    assert len(long) < 250


def test_a_redirect_names_where_it_points_without_credentials_or_query() -> None:
    moved = HttpResponse(
        302, {"location": "https://user:pw@portal.example/login?next=/v1#top"}, b"<html>moved"
    )
    assert redirect_target(moved) == "https://portal.example/login"
    assert answered(moved) == (
        "302 no content type, a redirect to https://portal.example/login; body: <html>moved"
    )
    assert redirect_target(HttpResponse(301, {}, b"")) == "no Location"
    assert redirect_target(HttpResponse(200, {"Location": "/x"}, b"")) is None


def test_the_likely_fix_and_the_stop_line() -> None:
    for status in (301, 302, 307, 308, 404, 405, 410, 409, 400):
        assert likely_fix(status) == "is --base-url right?"
    assert "--batch-size" in likely_fix(413)
    assert "JSON" in likely_fix(406)
    assert "JSON" in likely_fix(415)
    assert public_url("https://u:p@h.example:8443/v1/leads?from=x#f") == (
        "https://h.example:8443/v1/leads"
    )
    line = stop_line("https://u:p@h.example/v1/leads?key=s3cret", "404 text/html", "is it?")
    assert line == "https://h.example/v1/leads answered 404 text/html: is it?"
    assert stop_line("", "404 text/html", "is it?") == "answered 404 text/html: is it?"
    c = fatal(HttpResponse(410, {}, b""))
    assert (c.verdict, c.message, c.hint) == (
        Verdict.FATAL,
        "410 no content type, empty body",
        "is --base-url right?",
    )
    assert fatal(HttpResponse(400, {}, b""), fix="check the call").hint == "check the call"


FATAL_ANSWERS = [
    (HttpResponse(404, {}, b""), "404 no content type, empty body"),
    (HttpResponse(405, {}, b""), "405 no content type, empty body"),
    (HttpResponse(410, {}, b""), "410 no content type, empty body"),
    (
        HttpResponse(404, {"Content-Type": "text/plain; charset=utf-8"}, b"404: Not Found"),
        "404 text/plain; body: 404: Not Found",
    ),
    (
        HttpResponse(302, {**HTML, "Location": "https://example.com/login"}, b"<a>moved</a>"),
        "302 text/html, a redirect to https://example.com/login; body: <a>moved</a>",
    ),
    (HttpResponse(307, {"Location": "/v2/x"}, b""), "307 no content type, a redirect to /v2/x, "
     "empty body"),
]  # fmt: skip


@pytest.mark.parametrize("classify", [
    maxtraffic.classify, notifyvisitors.classify, maxemail.classify, traitly.classify
], ids=["maxtraffic", "notifyvisitors", "maxemail", "traitly"])  # fmt: skip
@pytest.mark.parametrize(("response", "said"), FATAL_ANSWERS)
def test_every_provider_stops_on_a_missing_endpoint_naming_the_answer(
    classify: Any, response: HttpResponse, said: str
) -> None:
    """404/405/410 without the provider's own error, and a redirect: the request can never
    work. The message is the answer itself (no ``404: `` with nothing after it)."""
    c = classify(response)
    assert c.verdict is Verdict.FATAL
    assert c.message == said
    assert c.hint == "is --base-url right?"


def test_a_fatal_answer_keeps_the_providers_own_words() -> None:
    nv = notifyvisitors.classify(
        HttpResponse(
            404, JSON, orjson.dumps({"response": {"status": "error", "message": "Invalid URL"}})
        )
    )
    assert nv.message.startswith("404 application/json: Invalid URL; body: {")
    mt = maxtraffic.classify(HttpResponse(405, JSON, b'{"message": "Method Not Allowed"}'))
    assert (
        mt.message
        == '405 application/json: Method Not Allowed; body: {"message": "Method Not Allowed"}'
    )
    body = orjson.dumps({"error": {"type": "api_invalid_request_error", "message": "Nope"}})
    tr = traitly.classify(HttpResponse(406, JSON, body))
    assert tr.message.startswith("406 application/json: api_invalid_request_error: Nope; body: ")
    assert "JSON" in (tr.hint or "")
    me = maxemail.classify(
        HttpResponse(404, JSON, b'{"success": false, "msg": "Unknown service \'x\'"}')
    )
    assert me.hint == maxemail.CALL_FIX


CREATED = {"customer_id": "123", "name": "John Smith", "created_at": "1493933699"}


@pytest.mark.parametrize(
    ("operation", "answer", "verdict"),
    [
        # the doc's create answers: the created record in data, the operation's object
        ("customers", {"data": [CREATED], "metadata": {}, "created": "1", "object": "customer"},
         Verdict.DELIVERED),
        ("customers", {"data": [{**CREATED, "customer_id": 123}], "object": "customer"},
         Verdict.DELIVERED),
        ("events", {"data": [{"customer_id": "123", "name": "Logged in", "success": 1}],
                    "object": "event"}, Verdict.DELIVERED),
        ("events", {"data": [{"customer_id": "123", "name": "Logged in", "success": 0}],
                    "object": "event"}, Verdict.INVALID),
        # the operator's report: an empty data array is not the record sent
        ("customers", {"status": "ok", "data": []}, Verdict.UNEXPECTED),
        ("customers", {"data": [], "object": "customer"}, Verdict.UNEXPECTED),
        ("customers", {"data": [{**CREATED, "customer_id": "456"}], "object": "customer"},
         Verdict.UNEXPECTED),
        ("customers", {"data": [CREATED], "object": "event"}, Verdict.UNEXPECTED),
        ("customers", {"data": [CREATED]}, Verdict.UNEXPECTED),
        ("customers", {"data": ["123"], "object": "customer"}, Verdict.UNEXPECTED),
        ("events", {"data": [{"customer_id": "123", "name": "x"}], "object": "customer"},
         Verdict.UNEXPECTED),
    ],
)  # fmt: skip
def test_traitly_delivers_only_an_answer_that_names_the_record_sent(
    operation: str, answer: dict[str, Any], verdict: Verdict
) -> None:
    from bulksend.models import Batch, Recipient

    attrs = {"name": "John Smith", "email": "john@example.com", "plan": "Starter"}
    message = {"name": "Logged in"} if operation == "events" else {}
    adapter = traitly.build(
        {"operation": operation, "message": message, "campaign_name": "T"}, {"token": "t"}
    )
    request = adapter.encode(Batch(1, "api", [Recipient(2, "123", None, attrs)]))
    c = adapter.classify_sent(request, HttpResponse(201, JSON, orjson.dumps(answer)))
    assert c.verdict is verdict
    if verdict is Verdict.UNEXPECTED:  # JSON of another shape: the engine marks it unknown
        assert c.maybe_provider
        assert c.unexpected == "201 application/json, not Traitly's JSON answer"
        assert '"customer_id": "123"' in c.message
    # the request-less check still sees the object
    if answer.get("object") not in (None, traitly.OBJECTS[operation]):
        assert adapter.classify(HttpResponse(201, JSON, orjson.dumps(answer))).verdict is verdict
