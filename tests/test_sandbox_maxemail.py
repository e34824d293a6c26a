"""The Maxemail sandbox, with real aiohttp requests on loopback."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.sandbox import Sandbox
from bulksend.sandbox.maxemail import ApiError, Method, State, arguments, call
from bulksend.sandbox.testing import FakeClock, sandbox


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = basic("sandbox@example.com", "sandbox-key")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def mx(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with sandbox("maxemail", tmp_path=tmp_path) as sb:
        yield sb


async def api(
    http: aiohttp.ClientSession,
    sb: Sandbox,
    service: str,
    params: dict[str, str],
    *,
    auth: str | None = AUTH,
    method: str = "POST",
) -> tuple[int, Any, Any]:
    url = f"{sb.base_url}/api/json/{service}"
    headers = {"Authorization": auth} if auth is not None else {}
    if method == "GET":
        ctx = http.get(url, params=params, headers=headers)
    else:
        ctx = http.post(url, data=params, headers=headers)
    async with ctx as r:
        return r.status, await r.json(content_type=None), r.headers


def obj(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


async def test_auth(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    params = {"method": "findByEmailAddress", "emailAddress": "a@example.com"}
    for auth in (None, basic("sandbox@example.com", "wrong")):
        status, data, h = await api(http, mx, "recipient", params, auth=auth)
        assert (status, data) == (
            401,
            {"success": False, "msg": "Authentication failed", "code": 401},
        )
        assert h["WWW-Authenticate"] == 'Basic realm="MxmApi"'
    url = f"{mx.base_url}/api/json/recipient"
    async with http.post(url, data=params, headers={"Authorization": "Basic !!!"}) as r:
        assert r.status == 401
    status, data, h = await api(http, mx, "recipient", params)
    assert (status, data) == (200, None)
    assert h["Content-Type"] == "application/json; charset=utf-8"


async def test_password_is_configurable(http: aiohttp.ClientSession) -> None:
    async with sandbox("maxemail", username="me@example.com", password="pw") as sb:
        params = {"method": "findByEmailAddress", "emailAddress": "a@example.com"}
        auth = basic("me@example.com", "pw")
        assert (await api(http, sb, "recipient", params, auth=auth))[0] == 200
        assert (await api(http, sb, "recipient", params))[0] == 401


async def test_insert_find_update_and_list(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    data = obj(email_address="Ann@Example.com", first_name="Ann")
    status, rid, _ = await api(http, mx, "recipient", {"method": "insert", "arg0": data})
    assert (status, rid) == (200, 1)
    found = await api(
        http, mx, "recipient", {"method": "findByEmailAddress", "arg0": "ann@example.com"}
    )
    assert found[:2] == (200, 1)
    status, data, _ = await api(
        http, mx, "recipient", {"method": "insert", "data": obj(email_address="ann@example.com")}
    )
    assert status == 400
    assert data["msg"] == "Recipient with email_address 'ann@example.com' already exists"
    update = {"method": "update", "recipientId": "1", "data": obj(email_address="ann2@example.com")}
    assert (await api(http, mx, "recipient", update))[:2] == (200, True)
    missing = {"method": "update", "recipientId": "9", "data": "{}"}
    status, data, _ = await api(http, mx, "recipient", missing)
    assert (status, data) == (404, {"success": False, "msg": "Recipient 9 not found", "code": 404})
    assert (await api(http, mx, "list", {"method": "addRecipient", "arg0": "7", "arg1": "1"}))[
        :2
    ] == (200, True)
    entries = [(e["kind"], e["campaign"], e["value"]) for e in mx.ledger_entries()]
    assert entries == [
        ("recipient", None, "ann@example.com"),
        ("update", None, "ann2@example.com"),
        ("list", "7", "ann2@example.com"),
    ]


async def test_trigger_folder_arity_is_the_docs_400(
    http: aiohttp.ClientSession, mx: Sandbox
) -> None:
    status, data, _ = await api(http, mx, "email_send", {"method": "triggerFolder"})
    assert status == 400
    assert data == {
        "success": False,
        "msg": "Invalid Method Call to triggerFolder. Requires 3, 0 given.",
        "code": 400,
    }
    two = {"method": "triggerFolder", "folderId": "5", "recipientId": "a@example.com"}
    assert (await api(http, mx, "email_send", two))[1]["msg"].endswith("Requires 3, 2 given.")
    four = {**two, "params": "{}", "arg3": "x"}
    assert (await api(http, mx, "email_send", four))[1]["msg"].endswith("Requires 3, 4 given.")
    assert mx.ledger_entries() == []


async def test_trigger_folder(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    params = {"method": "triggerFolder", "arg0": "12", "arg1": "new@example.com", "arg2": obj(x=1)}
    status, data, h = await api(http, mx, "email_send", params)
    assert (status, data) == (200, True)
    assert "Warning" not in h
    by_id = {"method": "triggerFolder", "folderId": "12", "recipientId": "1", "params": "{}"}
    assert (await api(http, mx, "email_send", by_id))[:2] == (200, True)
    entries = [(e["kind"], e["campaign"], e["value"]) for e in mx.ledger_entries()]
    assert entries == [("email", "12", "new@example.com")] * 2
    bad_params = {**by_id, "params": "[1"}
    status, data, _ = await api(http, mx, "email_send", bad_params)
    assert (status, data["msg"]) == (400, "Parameter params must be a JSON object")
    bad_folder = {**by_id, "folderId": "x"}
    assert (await api(http, mx, "email_send", bad_folder))[0] == 400


async def test_deprecated_method_warns(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    await api(http, mx, "recipient", {"method": "insert", "arg0": obj(email_address="a@b.co")})
    status, data, h = await api(
        http, mx, "list", {"method": "insertRecipient", "arg0": "3", "arg1": "1"}
    )
    assert (status, data) == (200, True)
    assert h["Warning"] == '299 MxmApi/v100 "insertRecipient Deprecated: 100 Use list.addRecipient"'


@pytest.mark.parametrize(
    ("service", "params", "status", "msg"),
    [
        ("nope", {"method": "x"}, 404, "Unknown service 'nope'"),
        ("recipient", {}, 400, "No method specified"),
        (
            "recipient",
            {"method": "explode"},
            400,
            "Invalid method 'explode' for service 'recipient'",
        ),
        (
            "recipient",
            {"method": "findByEmailAddress", "arg0": "not-an-email"},
            400,
            "Invalid email address for emailAddress: 'not-an-email'",
        ),
        (
            "recipient",
            {"method": "insert", "arg0": "[]"},
            400,
            "Parameter data must be a JSON object",
        ),
        ("recipient", {"method": "insert", "arg0": "{}"}, 400, "data.email_address is required"),
    ],
)
async def test_errors(
    http: aiohttp.ClientSession,
    mx: Sandbox,
    service: str,
    params: dict[str, str],
    status: int,
    msg: str,
) -> None:
    got, data, _ = await api(http, mx, service, params)
    assert (got, data) == (status, {"success": False, "msg": msg, "code": status})


async def test_email_campaign_insert_like_the_doc(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    data = obj(
        folder_id=1,
        name="test email",
        subject_line="test subject",
        from_address="from@example.com",
        from_address_alias="From Address",
    )
    status, body, _ = await api(http, mx, "email_campaign", {"method": "insert", "arg0": data})
    assert status == 200
    assert body["email_id"] == 340
    assert body["subject_line"] == "test subject"
    assert body["template_id"] is None


async def test_get_reads_but_never_writes(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    params = {"method": "findByEmailAddress", "emailAddress": "a@example.com"}
    assert (await api(http, mx, "recipient", params, method="GET"))[:2] == (200, None)
    insert = {"method": "insert", "arg0": obj(email_address="a@example.com")}
    status, data, _ = await api(http, mx, "recipient", insert, method="GET")
    assert (status, data["msg"]) == (400, "insert changes data: call it with POST")
    assert mx.ledger_entries() == []


async def test_content_type_must_be_form(http: aiohttp.ClientSession, mx: Sandbox) -> None:
    url = f"{mx.base_url}/api/json/recipient"
    body = orjson.dumps({"method": "findByEmailAddress", "emailAddress": "a@example.com"})
    headers = {"Authorization": AUTH, "Content-Type": "application/json"}
    async with http.post(url, data=body, headers=headers) as r:
        assert r.status == 415
        assert (await r.json())["msg"] == "Content-type must be application/x-www-form-urlencoded"
    form = aiohttp.FormData()
    form.add_field("method", "findByEmailAddress")
    form.add_field("file", b"x", filename="a.csv")
    async with http.post(url, data=form, headers={"Authorization": AUTH}) as r:
        assert r.status == 415


async def test_hidden_limit(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = FakeClock()
    async with sandbox("maxemail", limit=2, clock=clock) as sb:
        params = {"method": "findByEmailAddress", "emailAddress": "a@example.com"}
        results = [await api(http, sb, "recipient", params) for _ in range(3)]
        assert [r[0] for r in results] == [200, 200, 429]
        assert results[2][1] == {"success": False, "msg": "Too many requests", "code": 429}
        for _, _, h in results:
            assert not any(k.lower().startswith("x-ratelimit") for k in h)
            assert "Retry-After" not in h
        clock.advance(60)
        assert (await api(http, sb, "recipient", params))[0] == 200


async def test_faults_hit_writes_only(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxemail", tmp_path=tmp_path, faults={"fail_rate": 1.0}) as sb:
        read = {"method": "findByEmailAddress", "emailAddress": "a@example.com"}
        assert (await api(http, sb, "recipient", read))[0] == 200
        trigger = {"method": "triggerFolder", "arg0": "1", "arg1": "a@example.com", "arg2": "{}"}
        statuses = {(await api(http, sb, "email_send", trigger))[0] for _ in range(12)}
        assert statuses == {500, 503}
        assert sb.ledger_entries() == []
    async with sandbox("maxemail", tmp_path=tmp_path / "b", faults={"reset_rate": 1.0}) as sb:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await api(http, sb, "email_send", trigger)
        assert sb.ledger_entries() == []


def test_pure_call_and_arity() -> None:
    state = State()
    assert (
        call(state, "recipient", {"method": "insert", "data": '{"email_address": "x@y.io"}'}).value
        == 1
    )
    method = Method(("a", "b"), State.find_by_email, writes=False)
    assert arguments("m", method, {"arg0": "1", "b": "2"}) == ["1", "2"]
    with pytest.raises(ApiError, match=r"Requires 2, 1 given\."):
        arguments("m", method, {"a": "1"})
