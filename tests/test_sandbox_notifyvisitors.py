"""The NotifyVisitors sandbox, with real aiohttp requests on loopback."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.sandbox import PROVIDERS, Sandbox
from bulksend.sandbox.notifyvisitors import parse_stamp, stamp
from bulksend.sandbox.testing import FakeClock, sandbox

HEADERS = {
    "x-api-key": "sandbox-key",
    "x-brand-id": "sandbox-brand",
    "Content-Type": "application/json",
}
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0000$")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def nv(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with sandbox("notifyvisitors", tmp_path=tmp_path) as sb:
        yield sb


async def call(
    http: aiohttp.ClientSession,
    sb: Sandbox,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    hdrs = HEADERS if headers is None else headers
    async with http.request(method, sb.base_url + path, data=data, headers=hdrs) as r:
        return r.status, await r.json(content_type=None), r.headers


def users(*ids: Any) -> dict[str, Any]:
    return {"nv": [{"userID": i, "user_attributes": {"name": f"n{i}"}} for i in ids]}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (HEADERS, 200),
        ({"Authorization": "Bearer sandbox-key", "Content-Type": "application/json"}, 200),
        ({**HEADERS, "x-brand-id": "other"}, 401),
        ({"x-api-key": "sandbox-key", "Content-Type": "application/json"}, 401),
        ({**HEADERS, "x-api-key": "nope"}, 401),
        ({**HEADERS, "Authorization": "Bearer wrong"}, 401),
        ({"Content-Type": "application/json"}, 401),
    ],
)
async def test_auth(
    http: aiohttp.ClientSession, nv: Sandbox, headers: dict[str, str], status: int
) -> None:
    got, data, _ = await call(http, nv, "/api/v1/user/create", users("1"), headers)
    assert got == status
    if status == 401:
        assert data == {"response": {"data": {}, "message": "Invalid auth", "status": "error"}}
        assert nv.ledger_entries() == []


async def test_bearer_token_is_configurable(http: aiohttp.ClientSession) -> None:
    async with sandbox("notifyvisitors", token="partner-token") as sb:
        headers = {"Authorization": "Bearer partner-token", "Content-Type": "application/json"}
        assert (await call(http, sb, "/api/v1/user/create", users("1"), headers))[0] == 200


async def test_user_create_success(http: aiohttp.ClientSession, nv: Sandbox) -> None:
    status, data, h = await call(http, nv, "/api/v1/user/create", users("1234", 99))
    assert status == 200
    assert data["response"]["status"] == "success"
    assert data["response"]["message"] == "success"
    assert data["response"]["data"]["count"] == 2
    assert STAMP.match(data["response"]["data"]["timestamp"])
    assert h["X-RateLimit-Remaining"] == "99"
    assert "X-RateLimit-Limit" not in h
    entries = nv.ledger_entries()
    assert [(e["kind"], e["value"], e["campaign"]) for e in entries] == [
        ("user", "1234", None),
        ("user", "99", None),
    ]


async def test_invalid_records_are_http_200_with_status_error(
    http: aiohttp.ClientSession, nv: Sandbox
) -> None:
    body = {"nv": [{"userID": "ok"}, {"userID": ""}, {"user_attributes": {}}]}
    status, data, _ = await call(http, nv, "/api/v1/user/create", body)
    assert status == 200
    response = data["response"]
    assert response["status"] == "error"
    assert response["message"] == "2 of 3 records are invalid; nothing was saved"
    assert response["data"]["errors"] == [
        {"index": 1, "message": "userID is required"},
        {"index": 2, "message": "userID is required"},
    ]
    body = {"nv": [{"userID": "a", "user_attributes": "x"}]}
    status, data, _ = await call(http, nv, "/api/v1/user/create", body)
    assert (status, data["response"]["status"]) == (200, "error")
    assert nv.ledger_entries() == []
    assert nv.stats.accepted == 0


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{nope", "application/json", "Invalid resource: request body is not valid JSON"),
        (orjson.dumps(users("1")), "text/plain", "Invalid resource: Content-Type must be"),
        (orjson.dumps({"nv": []}), "application/json", "Invalid resource: nv must be"),
        (orjson.dumps({"users": []}), "application/json", "Invalid resource: nv must be"),
        (orjson.dumps({"nv": ["1"]}), "application/json", "Invalid resource: nv[0] must be"),
        (orjson.dumps([1]), "application/json", "Invalid resource: the body must be"),
        (
            orjson.dumps(users(*range(101))),
            "application/json",
            "Invalid resource: at most 100 records per request",
        ),
    ],
)
async def test_malformed_requests_are_400(
    http: aiohttp.ClientSession, nv: Sandbox, body: bytes, content_type: str, message: str
) -> None:
    headers = {**HEADERS, "Content-Type": content_type}
    status, data, _ = await call(http, nv, "/api/v1/user/create", body, headers)
    assert status == 400
    assert data["response"]["status"] == "error"
    assert data["response"]["message"].startswith(message)


async def test_events(http: aiohttp.ClientSession, nv: Sandbox) -> None:
    body = {
        "nv": [
            {"userID": "u1", "event": "purchase", "timestamp": "2013-01-26T07:31+0000"},
            {"userID": "u2", "event": "login", "event_attributes": {"x": 1}},
            {"userID": "u1", "event": "login", "timestamp": "2024-05-01T10:00:00+0000"},
        ]
    }
    status, data, h = await call(http, nv, "/api/v1/event/track", body)
    assert (status, data["response"]["data"]["count"]) == (200, 3)
    assert h["X-RateLimit-Remaining"] == "499"
    assert [(e["kind"], e["event"], e["value"]) for e in nv.ledger_entries()] == [
        ("event", "purchase", "u1"),
        ("event", "login", "u2"),
        ("event", "login", "u1"),
    ]
    bad = {"nv": [{"userID": "u1", "event": "x", "timestamp": "yesterday"}, {"userID": "u"}]}
    status, data, _ = await call(http, nv, "/api/v1/event/track", bad)
    assert (status, data["response"]["status"]) == (200, "error")
    assert [e["message"] for e in data["response"]["data"]["errors"]] == [
        "timestamp must look like yyyy-MM-ddTHH:mm:ss+0000",
        "event is required",
    ]


async def test_campaign_send_and_report(http: aiohttp.ClientSession, nv: Sandbox) -> None:
    body = {"channel": "push", "campaign_id": 42, "users": ["u1", "u2"]}
    status, data, h = await call(http, nv, "/api/v1/campaign/send", body)
    assert (status, data["response"]["status"], h["X-RateLimit-Remaining"]) == (
        200,
        "success",
        "499",
    )
    body = {"channel": "sms", "campaign_id": "42", "users": ["u3"]}
    assert (await call(http, nv, "/api/v1/campaign/send", body))[0] == 200
    entries = nv.ledger_entries()
    assert [(e["campaign"], e["channel"], e["value"]) for e in entries] == [
        ("42", "push", "u1"),
        ("42", "push", "u2"),
        ("42", "sms", "u3"),
    ]
    status, data, h = await call(http, nv, "/api/v1/report/campaign?campaign_id=42", method="GET")
    assert status == 200
    report = data["response"]["data"]
    assert (report["sent"], report["requests"]) == (3, 2)
    assert report["channels"] == {"push": 2, "sms": 1}
    assert STAMP.match(report["first_sent"])
    assert h["X-RateLimit-Remaining"] == "49"
    status, data, _ = await call(http, nv, "/api/v1/report/campaign?campaign_id=7", method="GET")
    assert (status, data["response"]["status"]) == (200, "error")
    status, _, _ = await call(http, nv, "/api/v1/report/campaign", method="GET")
    assert status == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"channel": "fax", "campaign_id": 1, "users": ["a"]}, "channel must be one of"),
        ({"channel": "email", "users": ["a"]}, "campaign_id is required"),
        ({"channel": "email", "campaign_id": 1, "users": []}, "users must be a non-empty"),
        ({"channel": "email", "campaign_id": 1, "users": ["a"] * 101}, "at most 100 users"),
    ],
)
async def test_campaign_send_400s(
    http: aiohttp.ClientSession, nv: Sandbox, body: Any, message: str
) -> None:
    status, data, _ = await call(http, nv, "/api/v1/campaign/send", body)
    assert status == 400
    assert message in data["response"]["message"]


async def test_campaign_send_empty_user_is_status_error(
    http: aiohttp.ClientSession, nv: Sandbox
) -> None:
    body = {"channel": "email", "campaign_id": 1, "users": ["a", ""]}
    status, data, _ = await call(http, nv, "/api/v1/campaign/send", body)
    assert (status, data["response"]["status"]) == (200, "error")
    assert nv.ledger_entries() == []


async def test_each_group_has_its_own_window(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = FakeClock()
    async with sandbox(
        "notifyvisitors", tmp_path=tmp_path, group_limits={"user": 2}, clock=clock
    ) as sb:
        for expected in ("1", "0"):
            assert (await call(http, sb, "/api/v1/user/create", users("a")))[2][
                "X-RateLimit-Remaining"
            ] == expected
        clock.advance(15)
        status, data, h = await call(http, sb, "/api/v1/user/create", users("a"))
        assert status == 429
        assert data["response"] == {"data": {}, "message": "Rate limit exceeded", "status": "error"}
        assert (h["X-RateLimit-Remaining"], h["Retry-After"]) == ("0", "45")
        event = {"nv": [{"userID": "a", "event": "e"}]}
        status, _, h = await call(http, sb, "/api/v1/event/track", event)
        assert (status, h["X-RateLimit-Remaining"]) == (200, "499")
        clock.advance(45)
        assert (await call(http, sb, "/api/v1/user/create", users("a")))[0] == 200


async def test_limit_overrides_every_group(http: aiohttp.ClientSession) -> None:
    async with sandbox("notifyvisitors", limit=1) as sb:
        event = {"nv": [{"userID": "a", "event": "e"}]}
        statuses = [(await call(http, sb, "/api/v1/event/track", event))[0] for _ in range(2)]
        assert statuses == [200, 429]
        url = "/api/v1/report/campaign?campaign_id=1"
        statuses = [(await call(http, sb, url, method="GET"))[0] for _ in range(2)]
        assert statuses == [200, 429]


async def test_unknown_url_and_wrong_method_are_404(
    http: aiohttp.ClientSession, nv: Sandbox
) -> None:
    for method, path in [("POST", "/api/v1/user/delete"), ("GET", "/api/v1/user/create")]:
        status, data, _ = await call(http, nv, path, method=method)
        assert (status, data["response"]["message"]) == (404, "Invalid URL")


async def test_faults_hit_send_endpoints_only(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("notifyvisitors", tmp_path=tmp_path, faults={"fail_rate": 1.0}) as sb:
        statuses = set()
        for _ in range(12):
            status, data, _ = await call(http, sb, "/api/v1/user/create", users("a"))
            statuses.add(status)
            assert data["response"]["status"] == "error"
        assert statuses == {500, 503}
        url = "/api/v1/report/campaign?campaign_id=1"
        assert (await call(http, sb, url, method="GET"))[0] == 200
        assert sb.ledger_entries() == []
    faults = {"drop_after_accept_rate": 1.0}
    async with sandbox("notifyvisitors", tmp_path=tmp_path / "b", faults=faults) as sb:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(http, sb, "/api/v1/user/create", users("z"))
        assert [e["value"] for e in sb.ledger_entries()] == ["z"]


def test_stamps() -> None:
    assert stamp(0) == "1970-01-01T00:00:00+0000"
    assert parse_stamp("2013-01-26T07:31+0000") is not None
    assert parse_stamp("2013-01-26 07:31") is None
    assert PROVIDERS["notifyvisitors"].groups == {
        "user": 100,
        "event": 500,
        "campaign": 500,
        "reporting": 50,
    }
