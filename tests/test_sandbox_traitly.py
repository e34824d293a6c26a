"""The Traitly sandbox, with real aiohttp requests on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.net.http import accepts_json
from bulksend.sandbox import Sandbox
from bulksend.sandbox.testing import FakeClock, sandbox
from bulksend.sandbox.traitly import recommendations

AUTH = {"Authorization": "Token sandbox-key"}
CUSTOMER = {
    "customer_id": "123",
    "name": "John Smith",
    "email": "john@example.com",
    "plan": "Starter",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def tr(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with sandbox("traitly", tmp_path=tmp_path) as sb:
        yield sb


async def call(
    http: aiohttp.ClientSession,
    sb: Sandbox,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = AUTH if headers is None else headers
    async with http.request(method, sb.base_url + path, data=data, headers=hdrs) as r:
        return r.status, await r.json(content_type=None), r.headers


def err(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


@pytest.mark.parametrize("header", [None, "Token wrong", "Bearer sandbox-key", "sandbox-key"])
async def test_auth(http: aiohttp.ClientSession, tr: Sandbox, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    status, data, _ = await call(http, tr, "POST", "/api/v1/customer", CUSTOMER, headers)
    assert (status, data) == (401, err("api_authentication_error", "Invalid API token"))
    assert tr.ledger_entries() == []


async def test_create_and_list_customers(http: aiohttp.ClientSession, tr: Sandbox) -> None:
    body = {
        **CUSTOMER,
        "created_at": 1493933699,
        "custom_attributes": {"role": "manager"},
        "location": "SF",
    }
    status, data, h = await call(http, tr, "POST", "/api/v1/customer", body)
    assert status == 200
    assert data["object"] == "customer"
    assert data["created"].isdigit()
    assert data["data"][0]["created_at"] == "1493933699"
    assert data["data"][0]["location"] == "SF"
    assert not any(k.lower().startswith("x-ratelimit") for k in h)
    other = {**CUSTOMER, "customer_id": 456, "name": "Alice", "plan": "Freemium"}
    assert (await call(http, tr, "POST", "/api/v1/customer", other))[0] == 200
    _, listed, _ = await call(http, tr, "GET", "/api/v1/customer")
    assert [c["customer_id"] for c in listed["data"]] == ["123", "456"]
    assert listed["retrieved"].isdigit()
    _, starter, _ = await call(http, tr, "GET", "/api/v1/customer?plan=Starter")
    assert [c["name"] for c in starter["data"]] == ["John Smith"]
    _, none, _ = await call(http, tr, "GET", "/api/v1/customer?name=Nobody")
    assert none["data"] == []
    assert [(e["kind"], e["value"]) for e in tr.ledger_entries()] == [
        ("customer", "123"),
        ("customer", "456"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"customer_id": "1", "name": "A"}, "Missing required parameter: email, plan"),
        ({**CUSTOMER, "email": "nope"}, "email is not a valid address: 'nope'"),
        ({**CUSTOMER, "created_at": "yesterday"}, "created_at must be a UNIX timestamp in seconds"),
        ({**CUSTOMER, "custom_attributes": [1]}, "custom_attributes must be an object"),
        ([CUSTOMER], "The request body must be a JSON object"),
        (b"{", "request body is not valid JSON"),
    ],
)
async def test_customer_400s(
    http: aiohttp.ClientSession, tr: Sandbox, body: Any, message: str
) -> None:
    status, data, _ = await call(http, tr, "POST", "/api/v1/customer", body)
    assert status == 400
    assert data["error"]["type"] == "api_invalid_request_error"
    assert data["error"]["message"].startswith(message)
    assert tr.ledger_entries() == []


async def test_events(http: aiohttp.ClientSession, tr: Sandbox) -> None:
    body = {"customer_id": "1", "name": "Logged in", "created_at": "1494020099"}
    status, data, _ = await call(http, tr, "POST", "/api/v1/event", body)
    assert status == 200
    assert data["data"] == [
        {"customer_id": "1", "name": "Logged in", "created_at": "1494020099", "success": 1}
    ]
    assert (await call(http, tr, "POST", "/api/event", {"customer_id": 1, "name": "Logged in"}))[
        0
    ] == 200
    _, listed, _ = await call(http, tr, "GET", "/api/v1/event?customer_id=1&name=Logged%20in")
    assert len(listed["data"]) == 2
    assert listed["object"] == "event"
    status, data, _ = await call(http, tr, "GET", "/api/v1/event?customer_id=1")
    assert (status, data) == (
        400,
        err("api_invalid_request_error", "Missing required parameter: name"),
    )
    status, data, _ = await call(http, tr, "POST", "/api/v1/event", {"customer_id": "1"})
    assert status == 400
    assert [(e["kind"], e["event"], e["value"]) for e in tr.ledger_entries()] == [
        ("event", "Logged in", "1"),
        ("event", "Logged in", "1"),
    ]


async def test_hidden_resources_are_403(http: aiohttp.ClientSession, tr: Sandbox) -> None:
    hidden = err("api_invalid_request_error", "The requested resource is hidden")
    cases = [
        ("POST", "/api/v1/customer", {**CUSTOMER, "customer_id": "hidden-1"}),
        ("POST", "/api/v1/event", {"customer_id": "hidden-1", "name": "x"}),
        ("GET", "/api/v1/customer?customer_id=hidden-1", None),
        ("GET", "/api/v1/event?customer_id=hidden-1&name=x", None),
        ("GET", "/api/v1/recommended-next-actions?customer_id=hidden-1", None),
    ]
    for method, path, body in cases:
        assert (await call(http, tr, method, path, body))[:2] == (403, hidden)
    assert tr.ledger_entries() == []


async def test_recommended_next_actions(http: aiohttp.ClientSession, tr: Sandbox) -> None:
    status, data, _ = await call(
        http, tr, "GET", "/api/v1/recommended-next-actions?customer_id=123"
    )
    assert status == 404
    assert data["error"]["message"] == "No such customer: '123'"
    await call(http, tr, "POST", "/api/v1/customer", CUSTOMER)
    path = "/api/v1/recommended-next-actions?customer_id=123&goal_name=30-day%20Conversion"
    status, data, _ = await call(http, tr, "GET", path)
    assert status == 200
    assert data["object"] == "recommended-next-actions"
    assert data["meta"] == {"customer_id": "123", "goal_name": "30-day Conversion"}
    assert 1 <= len(data["data"]) <= 3
    assert set(data["data"][0]) >= {"event_name", "importance", "message_html"}
    assert data["data"] == recommendations(0, "123", "30-day Conversion")["data"]
    status, _, _ = await call(http, tr, "GET", "/api/v1/recommended-next-actions")
    assert status == 400


async def test_404_405_406(http: aiohttp.ClientSession, tr: Sandbox) -> None:
    status, data, _ = await call(http, tr, "GET", "/api/v1/nothing")
    assert (status, data["error"]["type"]) == (404, "api_invalid_request_error")
    status, data, h = await call(http, tr, "DELETE", "/api/v1/customer")
    assert status == 405
    assert set(h["Allow"].split(",")) >= {"GET", "POST"}
    assert data == err("api_invalid_request_error", "Method not allowed for this resource")
    status, _, _ = await call(http, tr, "POST", "/api/v1/recommended-next-actions", {})
    assert status == 405
    for accept, expected in [
        ("text/html", 406),
        ("application/json", 200),
        ("*/*", 200),
        ("text/html, application/*;q=0.5", 200),
        ("application/json;q=0", 406),
    ]:
        headers = {**AUTH, "Accept": accept}
        status, data, _ = await call(http, tr, "GET", "/api/v1/customer", None, headers)
        assert status == expected, accept
        if status == 406:
            assert data == err("api_invalid_request_error", "Only JSON responses are available")


async def test_limit_and_faults(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = FakeClock()
    async with sandbox("traitly", limit=1, window=30, clock=clock) as sb:
        assert (await call(http, sb, "GET", "/api/v1/customer"))[0] == 200
        status, data, h = await call(http, sb, "GET", "/api/v1/customer")
        assert (status, data) == (429, err("api_error", "Too many requests"))
        assert h["Retry-After"] == "30"
    async with sandbox("traitly", tmp_path=tmp_path, faults={"fail_rate": 1.0}) as sb:
        statuses = set()
        for _ in range(12):
            status, data, _ = await call(http, sb, "POST", "/api/v1/customer", CUSTOMER)
            statuses.add(status)
            assert data["error"]["type"] == "api_error"
        assert statuses == {500, 503}
        assert (await call(http, sb, "GET", "/api/v1/customer"))[0] == 200
        assert sb.ledger_entries() == []
    faults = {"slow_rate": 1.0, "slow_ms": 50}
    async with sandbox("traitly", tmp_path=tmp_path / "b", faults=faults) as sb:
        assert (await call(http, sb, "POST", "/api/v1/event", {"customer_id": "1", "name": "e"}))[
            0
        ] == 200
        assert sb.stats.faults["slow"] == 1


def test_accepts_json() -> None:
    assert accepts_json(None)
    assert accepts_json("")
    assert accepts_json("application/json; charset=utf-8")
    assert not accepts_json("text/plain, text/html")
    assert not accepts_json("*/*;q=zero")
