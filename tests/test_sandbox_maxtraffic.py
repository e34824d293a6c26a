"""The MaxTraffic sandbox, with real aiohttp requests on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.sandbox import PROVIDERS, FaultConfig, Sandbox, SandboxConfig, running
from bulksend.sandbox.common import FaultPlan, FixedWindow, ledger_blob, storm_left
from bulksend.sandbox.config import SandboxConfigError
from bulksend.sandbox.testing import FakeClock, SandboxProcess, parse_listening_line, sandbox

KEY = "sandbox-key"
AUTH = {"Authorization": f"key={KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
MESSAGE = {"messages": [{"title": "Hi", "body": "there"}], "campaign": "Spring"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def mt(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with sandbox("maxtraffic", tmp_path=tmp_path) as sb:
        yield sb


async def post(
    http: aiohttp.ClientSession,
    sb: Sandbox,
    body: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    url = sb.base_url + "/v1/notifications"
    async with http.post(url, data=data, headers=JSON if headers is None else headers) as r:
        return r.status, await r.json(content_type=None), r.headers


async def get(http: aiohttp.ClientSession, sb: Sandbox, path: str) -> tuple[int, Any, Any]:
    async with http.get(sb.base_url + path, headers=AUTH) as r:
        return r.status, await r.json(content_type=None), r.headers


# ---------------------------------------------------------------------------- auth and success


@pytest.mark.parametrize("header", [None, "", "key=wrong", f"Bearer {KEY}", KEY, f"key={KEY}x"])
async def test_wrong_or_missing_key_is_401(
    http: aiohttp.ClientSession, mt: Sandbox, header: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    status, body, h = await post(http, mt, {**MESSAGE, "to_ids": ["a"]}, headers)
    assert status == 401
    assert "Authorization" in body["message"]
    assert h["X-RateLimit-Limit"] == "600"
    assert h["X-RateLimit-Remaining"] == "600"  # a 401 does not consume quota
    assert mt.stats.unauthorized == 1
    assert mt.ledger_entries() == []


async def test_accepted_notification_is_recorded(http: aiohttp.ClientSession, mt: Sandbox) -> None:
    before = time.time()
    body = {**MESSAGE, "to_ids": ["v1", "v2"], "to_uids": ["u1"]}
    status, data, h = await post(http, mt, body)
    assert (status, data) == (200, {"success": True})
    assert h["Content-Type"].startswith("application/json")
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("600", "599")
    entries = mt.ledger_entries()
    assert [(e["kind"], e["value"]) for e in entries] == [("id", "v1"), ("id", "v2"), ("uid", "u1")]
    assert {e["campaign"] for e in entries} == {"Spring"}
    assert {e["request"] for e in entries} == {1}
    assert all(before - 1 <= e["ts"] <= time.time() + 1 for e in entries)
    assert set(entries[0]) == {"ts", "request", "campaign", "kind", "value"}
    assert mt.stats.accepted == 1
    assert mt.stats.recipients == 3
    assert mt.stats.by_status[200] == 1


async def test_campaign_defaults_and_awkward_values_round_trip(
    http: aiohttp.ClientSession, mt: Sandbox
) -> None:
    odd = ['quote"d', "back\\slash", "tab\there", "ünï😀", 'a","b']
    status, _, _ = await post(http, mt, {"messages": [{"t": 1}], "to_uids": odd})
    assert status == 200
    status, _, _ = await post(http, mt, {"messages": [{"t": 1}], "to_ids": ["x"], "campaign": ""})
    assert status == 200
    entries = mt.ledger_entries()
    assert [e["value"] for e in entries] == [*odd, "x"]
    assert {e["campaign"] for e in entries} == {"default"}
    assert [e["request"] for e in entries] == [1] * 5 + [2]


# ---------------------------------------------------------------------------- 422s


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"to_ids": ["a"]}, "messages: required"),
        ({"messages": [], "to_ids": ["a"]}, "messages: must be a non-empty array of objects"),
        ({"messages": [{}], "to_ids": ["a"]}, "messages[0]: must be a non-empty object"),
        ({"messages": [{"a": 1}, {"a": 1}], "to_ids": ["a"]}, "messages[1]: duplicate message"),
        ({"messages": [{"a": 1}]}, "to_ids or to_uids: at least one is required"),
        ({"messages": [{"a": 1}], "to_ids": []}, "to_ids: must not be empty"),
        ({"messages": [{"a": 1}], "to_ids": "abc"}, "to_ids: must be an array of strings"),
        ({"messages": [{"a": 1}], "to_ids": ["abc", "abc"]}, "to_ids: duplicate value 'abc'"),
        ({"messages": [{"a": 1}], "to_uids": ["a", 7]}, "to_uids[1]: must be a string"),
        ({"messages": [{"a": 1}], "to_uids": ["a", ""]}, "to_uids[1]: must not be empty"),
        ({"messages": [{"a": 1}], "to_ids": ["a"], "to_uids": []}, "to_uids: must not be empty"),
        ({"messages": [{"a": 1}], "to_ids": ["a"], "icon": 5}, "icon: must be a string"),
        ({"messages": [{"a": 1}], "to_ids": ["a"], "campaign": []}, "campaign: must be a string"),
        ([1, 2], "request body must be a JSON object"),
    ],
)
async def test_schema_errors_are_422_and_name_the_problem(
    http: aiohttp.ClientSession, mt: Sandbox, body: Any, message: str
) -> None:
    status, data, h = await post(http, mt, body)
    assert (status, data) == (422, {"message": message})
    assert h["X-RateLimit-Remaining"] == "599"  # a 422 consumes quota
    assert mt.ledger_entries() == []
    assert mt.stats.accepted == 0


async def test_body_and_content_type_errors(http: aiohttp.ClientSession, mt: Sandbox) -> None:
    status, data, _ = await post(http, mt, b"{not json")
    assert status == 422
    assert data["message"].startswith("request body is not valid JSON")
    status, data, _ = await post(http, mt, b"")
    assert (status, data) == (422, {"message": "request body is empty"})
    body = orjson.dumps({**MESSAGE, "to_ids": ["a"]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        headers = {**AUTH, "Content-Type": content_type}
        status, data, _ = await post(http, mt, body, headers)
        assert (status, data) == (422, {"message": "Content-Type must be application/json"})
    status, _, _ = await post(http, mt, body, {**AUTH, "Content-Type": "application/json; c=1"})
    assert status == 200


async def test_max_batch_and_strict_arrays(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxtraffic", tmp_path=tmp_path, max_batch=3, strict_arrays=True) as sb:
        ok = {**MESSAGE, "to_ids": ["a", "b", "c"], "to_uids": ["u"]}
        assert (await post(http, sb, ok))[0] == 200
        status, data, _ = await post(http, sb, {**ok, "to_ids": ["a", "b", "c", "d"]})
        assert (status, data) == (422, {"message": "to_ids: at most 3 entries allowed (got 4)"})
        status, data, _ = await post(http, sb, {**MESSAGE, "to_ids": ["a"]})
        assert (status, data) == (422, {"message": "to_uids: required"})
        status, data, _ = await post(http, sb, {**MESSAGE, "to_uids": ["a"]})
        assert (status, data) == (422, {"message": "to_ids: required"})
        assert len(sb.ledger_entries()) == 4


async def test_unknown_path_and_method(http: aiohttp.ClientSession, mt: Sandbox) -> None:
    status, data, h = await get(http, mt, "/v1/nothing")
    assert (status, data) == (404, {"message": "Not Found"})
    assert "X-RateLimit-Remaining" in h
    async with http.get(mt.base_url + "/v1/notifications", headers=AUTH) as r:
        assert r.status == 405
        assert "POST" in r.headers["Allow"]
        assert (await r.json())["message"] == "method not allowed"


# ---------------------------------------------------------------------------- rate limit


async def test_fixed_window_headers_429_and_reset(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clock = FakeClock()
    async with sandbox("maxtraffic", tmp_path=tmp_path, limit=3, window=10, clock=clock) as sb:
        body = {**MESSAGE, "to_ids": ["a"]}
        remaining = [(await post(http, sb, body))[2]["X-RateLimit-Remaining"] for _ in range(3)]
        assert remaining == ["2", "1", "0"]
        clock.advance(3.2)
        for _ in range(2):  # 429s do not consume quota, so the answer stays the same
            status, data, h = await post(http, sb, body)
            assert (status, data) == (429, {"message": "Too Many Requests"})
            assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("3", "0")
            assert h["Retry-After"] == "7"  # ceil(10 - 3.2)
        status, _, h = await get(http, sb, "/v1/visitors/abc")  # the window is shared
        assert status == 429
        clock.advance(6.8)  # exactly the next window
        status, _, h = await post(http, sb, body)
        assert (status, h["X-RateLimit-Remaining"]) == (200, "2")
        assert sb.stats.rate_limited == 3
        assert sb.stats.by_status[429] == 3
        assert len(sb.ledger_entries()) == 4


async def test_headers_and_retry_after_can_be_switched_off(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, limit=1, ratelimit_headers=False, retry_after=False
    ) as sb:
        body = {**MESSAGE, "to_ids": ["a"]}
        status, _, h = await post(http, sb, body)
        assert status == 200
        assert "X-RateLimit-Limit" not in h
        status, _, h = await post(http, sb, body)
        assert status == 429
        assert not {"X-RateLimit-Limit", "X-RateLimit-Remaining", "Retry-After"} & set(h)
        status, _, h = await post(http, sb, body, {"Content-Type": "application/json"})
        assert status == 401
        assert "X-RateLimit-Remaining" not in h


def test_fixed_window_is_pure() -> None:
    window = FixedWindow(2, 60.0, origin=100.0)
    assert window.hit(100.0).remaining == 1
    assert window.hit(159.0).remaining == 0
    denied = window.hit(159.5)
    assert (denied.allowed, denied.reset_after) == (False, 0.5)
    assert window.peek(160.0).remaining == 2
    assert window.hit(219.9).remaining == 1


# ---------------------------------------------------------------------------- visitors and leads


async def test_synthetic_visitors(http: aiohttp.ClientSession, mt: Sandbox) -> None:
    status, data, _ = await get(http, mt, "/v1/visitors/ed6ada8d")
    assert status == 200
    assert data["id"] == "ed6ada8d"
    assert data["web_push_subscriber"] is True
    assert len(data["user_id"]) == 36
    again = await get(http, mt, "/v1/visitors/ed6ada8d")
    assert again[1] == data  # deterministic
    assert (await get(http, mt, "/v1/visitors/x-unsubscribed"))[1]["web_push_subscriber"] is False
    status, data, _ = await get(http, mt, "/v1/visitors/an-unknown-id")
    assert (status, data) == (404, {"message": "Visitor 'an-unknown-id' not found"})
    assert mt.ledger_entries() == []


async def test_unknown_visitor_rate(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxtraffic", tmp_path=tmp_path, unknown_visitor_rate=0.5, seed=3) as sb:
        statuses = [(await get(http, sb, f"/v1/visitors/v{i}"))[0] for i in range(40)]
    assert set(statuses) == {200, 404}
    assert 8 <= statuses.count(404) <= 32


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
async def test_visitors_file(http: aiohttp.ClientSession, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"visitors.{suffix}"
    if suffix == "csv":
        path.write_text("id,user_id,web_push_subscriber\nv1,u1,true\nv2,u2,false\n")
    else:
        rows = [
            {"id": "v1", "user_id": "u1", "web_push_subscriber": True},
            {"id": "v2", "user_id": "u2", "web_push_subscriber": False},
        ]
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    async with sandbox("maxtraffic", tmp_path=tmp_path, visitors=path) as sb:
        status, data, _ = await get(http, sb, "/v1/visitors/v1")
        assert (status, data) == (200, {"id": "v1", "user_id": "u1", "web_push_subscriber": True})
        assert (await get(http, sb, "/v1/visitors/v2"))[1]["web_push_subscriber"] is False
        assert (await get(http, sb, "/v1/visitors/v3"))[0] == 404  # only the file's ids exist


async def test_leads_and_filters(http: aiohttp.ClientSession, mt: Sandbox) -> None:
    status, leads, _ = await get(http, mt, "/v1/leads")
    assert status == 200
    assert len(leads) == 100
    assert set(leads[0]) == {"email", "timestamp", "campaign"}
    stamps = [lead["timestamp"] for lead in leads]
    assert stamps == sorted(stamps)
    assert all(s.endswith(".000Z") for s in stamps)
    middle = stamps[50]
    _, after, _ = await get(http, mt, f"/v1/leads?from={middle}")
    _, before, _ = await get(http, mt, f"/v1/leads?to={middle}")
    assert len(after) + len(before) == 100
    assert all(lead["timestamp"] >= middle for lead in after)
    _, campaign, _ = await get(http, mt, "/v1/campaigns/2/leads")
    assert campaign
    assert {lead["campaign"] for lead in campaign} == {"Cart abandonment"}
    assert campaign == [lead for lead in leads if lead["campaign"] == "Cart abandonment"]
    status, data, _ = await get(http, mt, "/v1/leads?from=yesterday")
    assert (status, data) == (422, {"message": "from: not an ISO 8601 date-time: 'yesterday'"})
    status, data, _ = await get(http, mt, "/v1/leads?from=2024-02-01&to=2024-01-01")
    assert (status, data) == (422, {"message": "from: must not be after to"})
    status, _, _ = await get(http, mt, "/v1/campaigns/99/leads")
    assert status == 404


async def test_leads_are_deterministic_from_the_seed(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    results = []
    for seed in (1, 1, 2):
        wall = FakeClock(1_700_000_000.0)
        async with sandbox("maxtraffic", seed=seed, leads=10, wall=wall) as sb:
            results.append((await get(http, sb, "/v1/leads"))[1])
    assert results[0] == results[1] != results[2]
    assert len(results[0]) == 10


# ---------------------------------------------------------------------------- faults


async def test_fail_rate_answers_500_and_503(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxtraffic", tmp_path=tmp_path, faults={"fail_rate": 1.0}) as sb:
        seen = {}
        for _ in range(20):
            status, data, h = await post(http, sb, {**MESSAGE, "to_ids": ["a"]})
            seen[status] = h
            assert data == {"message": "injected server error"}
        assert set(seen) == {500, 503}
        assert seen[503]["Retry-After"] == "1"
        assert "Retry-After" not in seen[500]
        # faults only hit the send endpoint
        assert (await get(http, sb, "/v1/visitors/a"))[0] == 200
        assert sb.ledger_entries() == []
        assert sb.stats.faults["500"] + sb.stats.faults["503"] == 20


async def test_faults_are_deterministic_for_a_seed(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    runs = []
    for seed in (7, 7, 8):
        async with sandbox("maxtraffic", seed=seed, faults={"fail_rate": 0.5}) as sb:
            runs.append(
                [(await post(http, sb, {**MESSAGE, "to_ids": ["a"]}))[0] for _ in range(30)]
            )
    assert runs[0] == runs[1] != runs[2]
    assert {200, 500, 503} <= set(runs[0])


async def test_reset_closes_without_answer_or_record(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with sandbox("maxtraffic", tmp_path=tmp_path, faults={"reset_rate": 1.0}) as sb:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(http, sb, {**MESSAGE, "to_ids": ["a"]})
        assert sb.ledger_entries() == []
        assert sb.stats.faults["reset"] == 1


async def test_drop_after_accept_records_then_closes(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    faults = {"drop_after_accept_rate": 1.0}
    async with sandbox("maxtraffic", tmp_path=tmp_path, faults=faults) as sb:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(http, sb, {**MESSAGE, "to_ids": ["a", "b"]})
        assert [e["value"] for e in sb.ledger_entries()] == ["a", "b"]
        # an invalid request is answered normally: nothing was accepted
        status, _, _ = await post(http, sb, {"to_ids": ["a"]})
        assert status == 422
        assert sb.stats.faults["drop_after_accept"] == 1


async def test_slow_answers_after_recording(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    faults = {"slow_rate": 1.0, "slow_ms": 400.0}
    async with sandbox("maxtraffic", tmp_path=tmp_path, faults=faults) as sb:
        timeout = aiohttp.ClientTimeout(total=0.1)
        url = sb.base_url + "/v1/notifications"
        data = orjson.dumps({**MESSAGE, "to_ids": ["a"]})
        with pytest.raises(asyncio.TimeoutError):
            async with http.post(url, data=data, headers=JSON, timeout=timeout) as r:
                await r.read()
        assert [e["value"] for e in sb.ledger_entries()] == ["a"]
        started = time.monotonic()
        status, _, _ = await post(http, sb, {**MESSAGE, "to_ids": ["b"]})
        assert status == 200
        assert time.monotonic() - started >= 0.39


async def test_storms_answer_429_with_retry_after(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clock = FakeClock()
    faults = {"storm_every": 10.0, "storm_for": 2.0}
    async with sandbox("maxtraffic", tmp_path=tmp_path, faults=faults, clock=clock) as sb:
        body = {**MESSAGE, "to_ids": ["a"]}
        assert (await post(http, sb, body))[0] == 200
        clock.advance(8.5)
        status, data, h = await post(http, sb, body)
        assert (status, data, h["Retry-After"]) == (429, {"message": "Too Many Requests"}, "2")
        assert h["X-RateLimit-Remaining"] == "599"  # a storm is not the window
        assert (await get(http, sb, "/v1/visitors/a"))[0] == 200  # only send endpoints
        clock.advance(1.5)
        assert (await post(http, sb, body))[0] == 200
        assert sb.stats.storm_limited == 1
        assert sb.stats.rate_limited == 0


async def test_latency(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxtraffic", latency_ms=60) as sb:
        started = time.monotonic()
        assert (await get(http, sb, "/v1/visitors/a"))[0] == 200
        assert time.monotonic() - started >= 0.059


def test_fault_plan_and_storm_are_pure() -> None:
    plan = FaultPlan(FaultConfig(fail_rate=0.2, reset_rate=0.2, slow_rate=0.5), seed=1)
    again = FaultPlan(FaultConfig(fail_rate=0.2, reset_rate=0.2, slow_rate=0.5), seed=1)
    draws = [plan.draw() for _ in range(200)]
    assert draws == [again.draw() for _ in range(200)]
    kinds = {d.fault.value for d in draws}
    assert kinds == {"none", "500", "503", "reset"}
    assert 60 < sum(d.slow for d in draws) < 140
    assert storm_left(7.9, 10, 2) is None
    assert storm_left(8.0, 10, 2) == 2.0
    assert storm_left(19.5, 10, 2) == 0.5
    assert storm_left(5, 0, 0) is None


def test_ledger_blob_fast_path_matches_orjson() -> None:
    fields = {"ts": 1.5, "request": 3, "campaign": "C\u00e9", "kind": "id"}
    values = ["a", "b", "ünï😀", "x y"]
    fast = ledger_blob(fields, values, plain=True)
    slow = ledger_blob(fields, values)
    assert fast == slow
    assert [orjson.loads(line)["value"] for line in fast.splitlines()] == values
    assert ledger_blob(fields, []) == b""


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "config",
    [
        SandboxConfig(faults=FaultConfig(fail_rate=0.7, reset_rate=0.7)),
        SandboxConfig(faults=FaultConfig(storm_every=5, storm_for=5)),
        SandboxConfig(limit=0),
        SandboxConfig(provider="nope"),
        SandboxConfig(group_limits={"nope": 3}),
        SandboxConfig(window=0),
    ],
)
async def test_bad_settings_are_refused(config: SandboxConfig) -> None:
    with pytest.raises(SandboxConfigError):
        async with running(config):
            pass


def test_registry() -> None:
    assert "maxtraffic" in PROVIDERS
    assert PROVIDERS["maxtraffic"].groups == {"api": 600}


# ---------------------------------------------------------------------------- CLI process


async def test_cli_process_serves_and_exits_cleanly(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    stats = tmp_path / "stats.json"
    process = SandboxProcess(
        "maxtraffic", "--ledger", str(ledger), "--stats", str(stats), "--limit", "5"
    )
    url = process.start()
    try:
        assert process.first_line == f"bulksend sandbox maxtraffic listening on {url}"
        assert parse_listening_line(process.first_line) == url
        body = orjson.dumps({**MESSAGE, "to_ids": ["p1", "p2"]})
        async with http.post(url + "/v1/notifications", data=body, headers=JSON) as r:
            assert r.status == 200
            assert r.headers["X-RateLimit-Limit"] == "5"
    finally:
        code = process.stop()
    assert code == 0, process.stderr_text()
    assert process.stdout_rest == ""  # exactly one line on stdout
    lines = [orjson.loads(line) for line in ledger.read_bytes().splitlines()]
    assert [e["value"] for e in lines] == ["p1", "p2"]
    assert orjson.loads(stats.read_bytes())["accepted"] == 1


def test_cli_refuses_bad_settings() -> None:
    process = SandboxProcess("maxtraffic", "--fail-rate", "0.6", "--reset-rate", "0.6")
    with pytest.raises(RuntimeError, match="exit 2"):
        process.start()
    assert "fail_rate + reset_rate" in process.stderr_text()


async def test_requests_ledger_format(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxtraffic", tmp_path=tmp_path, ledger_format="requests") as sb:
        await post(http, sb, {**MESSAGE, "to_ids": ["a", "b"], "to_uids": ["u"]})
        assert len(sb.ledger_path.read_bytes().splitlines()) == 2  # type: ignore[union-attr]
        assert [(e["kind"], e["value"], e["request"]) for e in sb.ledger_entries()] == [
            ("id", "a", 1),
            ("id", "b", 1),
            ("uid", "u", 1),
        ]


async def test_client_gone_mid_body_is_counted_quietly(
    http: aiohttp.ClientSession, mt: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    _, writer = await asyncio.open_connection(mt.host, mt.port)
    writer.write(
        b"POST /v1/notifications HTTP/1.1\r\nHost: x\r\nAuthorization: key=sandbox-key\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"messages"'
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        if mt.stats.by_status[499]:
            break
        await asyncio.sleep(0.01)
    assert mt.stats.by_status[499] == 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert (await post(http, mt, {**MESSAGE, "to_ids": ["a"]}))[0] == 200
    assert [e["value"] for e in mt.ledger_entries()] == ["a"]
