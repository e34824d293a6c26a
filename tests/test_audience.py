"""The MaxTraffic audience check: pure reading of lookups, and lookups against the sandbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from bulksend.campaign import build_provider, build_scheduler
from bulksend.config import load_settings
from bulksend.dedup.deduper import Deduper
from bulksend.dispatch.engine import Engine, EngineOptions
from bulksend.errors import AuthError, NoResponse, UnavailableError
from bulksend.models import HttpRequest, HttpResponse, Recipient, Rejected
from bulksend.net.transport import Transport
from bulksend.output.report import ReportWriter
from bulksend.providers import maxtraffic
from bulksend.providers.base import Limit
from bulksend.providers.maxtraffic_audience import (
    Audience,
    AudienceCheck,
    LookupVerdict,
    check_audience,
    default_scheduler,
    read_lookup,
    visitor_request,
)
from bulksend.ratelimit.scheduler import GroupPolicy, Scheduler
from bulksend.sandbox import Sandbox, SandboxConfig, running
from bulksend.sources.spec import Chunk
from tests.conftest import KEY, write_campaign, write_recipients

HEADERS = {"Authorization": f"key={KEY}", "Accept": "application/json"}


def resp(status: int, body: Any, **headers: str) -> HttpResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HttpResponse(status, CIMultiDict(headers), raw)


def fast_scheduler(limit: Limit | None = None) -> Scheduler:
    policy = GroupPolicy(limit or Limit(10_000, 1.0))
    return Scheduler({"api": policy}, backoff_base=0.001, backoff_cap=0.01)


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with running(SandboxConfig(api_key=KEY, limit=100_000)) as server:
        yield server


# ---------------------------------------------------------------------------- pure


def test_read_lookup() -> None:
    ok = read_lookup(resp(200, {"id": "v", "user_id": "u", "web_push_subscriber": True}))
    assert ok.answer is not None
    assert ok.answer.audience is Audience.OK
    off = read_lookup(resp(200, {"id": "v", "web_push_subscriber": False}))
    assert off.answer is not None
    assert (off.answer.audience, off.answer.reason) == (
        Audience.UNSUBSCRIBED,
        "audience check: not a web push subscriber",
    )
    gone = read_lookup(resp(404, {"message": "Visitor 'x' not found"}))
    assert gone.answer is not None
    assert (gone.answer.audience, gone.answer.reason) == (
        Audience.UNKNOWN,
        "audience check: unknown visitor",
    )
    bad = read_lookup(resp(422, {"message": "id: invalid"}))
    assert bad.answer is not None
    assert (bad.answer.audience, bad.answer.reason) == (
        Audience.REFUSED,
        "audience check: id: invalid",
    )
    assert read_lookup(resp(404, b"<html>404</html>")).verdict is LookupVerdict.FATAL
    assert read_lookup(resp(200, {"id": "v"})).verdict is LookupVerdict.FATAL
    assert read_lookup(resp(200, b"not json")).verdict is LookupVerdict.FATAL
    assert read_lookup(resp(401, {"message": "no"})).verdict is LookupVerdict.AUTH
    assert read_lookup(resp(429, {"message": "slow"})).verdict is LookupVerdict.THROTTLED
    assert read_lookup(resp(503, b"")).verdict is LookupVerdict.RETRY
    assert read_lookup(resp(405, {"message": "x"})).verdict is LookupVerdict.FATAL


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (204, b"", "answered 204 no content type, not MaxTraffic's visitor "
         '({"web_push_subscriber": true or false}); body: (empty): is --base-url right?'),
        (200, {"status": "ok", "data": []}, "answered 200 no content type, not MaxTraffic's "
         'visitor ({"web_push_subscriber": true or false}); body: {"status":"ok","data":[]}: '
         "is --base-url right?"),
        (404, b"", "answered 404 no content type, empty body: is --base-url right?"),
        (405, b"", "answered 405 no content type, empty body: is --base-url right?"),
        (410, b"gone", "answered 410 no content type; body: gone: is --base-url right?"),
    ],
)  # fmt: skip
def test_a_lookup_that_stops_the_check_names_the_url_and_the_answer(
    status: int, body: Any, said: str
) -> None:
    url = "https://api.example.com/v1/visitors/v%2F1"
    result = read_lookup(resp(status, body), url)
    assert result.verdict is LookupVerdict.FATAL
    assert result.message == f"visitor lookup: {url} {said}"


async def test_the_check_names_the_transports_url_without_credentials() -> None:
    class Based(Scripted):
        base_url = "https://user:secret@api.example.com/base"

    check = AudienceCheck(Based(lambda n, r: resp(204, b"")), fast_scheduler(), headers=HEADERS)
    with pytest.raises(UnavailableError) as caught:
        await check.lookup("v1")
    assert str(caught.value).startswith(
        "visitor lookup: https://api.example.com/base/v1/visitors/v1 answered 204 "
    )
    assert "secret" not in str(caught.value)


def test_visitor_request_encodes_the_id_as_one_segment() -> None:
    r = visitor_request("a/b c?", {**HEADERS, "Content-Type": "application/json"})
    assert (r.method, r.path, r.body) == ("GET", "/v1/visitors/a%2Fb%20c%3F", None)
    assert "Content-Type" not in r.headers
    assert r.headers["Authorization"] == f"key={KEY}"
    assert visitor_request("x", HEADERS, "/api/v/{id}/info").path == "/api/v/x/info"


# ---------------------------------------------------------------------------- sandbox


def recipients(*ids: str | None) -> list[Recipient]:
    return [Recipient(n, vid, None if vid else f"uid{n}") for n, vid in enumerate(ids, 2)]


async def test_results_in_order_with_each_id_looked_up_once(sb: Sandbox) -> None:
    rows = recipients("v1", "v2-unknown", "v3-unsubscribed", None, "v1", "a/b", "v2-unknown", "v4")
    async with Transport(sb.base_url) as transport:
        check = AudienceCheck(transport, fast_scheduler(), headers=HEADERS, concurrency=4)
        out = [r async for r in check.results(rows)]
    assert [r.recipient for r in out] == rows
    assert [r.audience for r in out] == [
        Audience.OK,
        Audience.UNKNOWN,
        Audience.UNSUBSCRIBED,
        Audience.UNCHECKED,
        Audience.OK,
        Audience.OK,
        Audience.UNKNOWN,
        Audience.OK,
    ]
    assert [r.reason for r in out][1:3] == [
        "audience check: unknown visitor",
        "audience check: not a web push subscriber",
    ]
    assert sb.stats.requests == 5  # v1, v2-unknown, v3-unsubscribed, a/b, v4
    assert check.stats.looked_up == 5
    assert check.stats.cached == 2
    assert check.stats.counts == {"ok": 4, "unknown": 2, "unsubscribed": 1, "unchecked": 1}


async def test_filter_moves_failed_checks_to_rejected(sb: Sandbox) -> None:
    earlier = Rejected(9, "missing id and uid")
    chunks = [
        Chunk(recipients("v1", "x-unknown", "y-unsubscribed"), [earlier]),
        Chunk(recipients(None, "v5"), []),
    ]
    async with Transport(sb.base_url) as transport:
        check = AudienceCheck(transport, fast_scheduler(), headers=HEADERS)
        out = [c async for c in check.filter(chunks)]
    assert [[r.id for r in c.recipients] for c in out] == [["v1"], [None, "v5"]]
    assert out[0].rejected == [
        earlier,
        Rejected(3, "audience check: unknown visitor", "x-unknown"),
        Rejected(4, "audience check: not a web push subscriber", "y-unsubscribed"),
    ]
    assert out[1].rejected == []


async def test_a_wrong_key_raises_auth_error_after_one_lookup(sb: Sandbox) -> None:
    rows = recipients(*(f"v{i}" for i in range(50)))
    async with Transport(sb.base_url) as transport:
        headers = {"Authorization": "key=wrong-key-123"}
        check = AudienceCheck(transport, fast_scheduler(), headers=headers, concurrency=16)
        with pytest.raises(AuthError, match="401") as exc:
            async for _ in check.results(rows):
                pass
    assert "wrong-key-123" not in str(exc.value)
    assert sb.stats.unauthorized == 1
    assert sb.stats.requests == 1


async def test_lookups_are_paced_by_the_quota_headers() -> None:
    config = SandboxConfig(api_key=KEY, limit=20, window=0.5)
    rows = recipients(*(f"v{i}" for i in range(60)))
    async with running(config) as server, Transport(server.base_url) as transport:
        # the scheduler starts far too high; X-RateLimit-* bring it down at once
        check = AudienceCheck(
            transport, fast_scheduler(Limit(1000, 0.5)), headers=HEADERS, concurrency=8
        )
        start = time.monotonic()
        out = [r async for r in check.results(rows)]
        elapsed = time.monotonic() - start
    assert [r.audience for r in out] == [Audience.OK] * 60
    assert server.stats.rate_limited <= 2
    assert check.stats.looked_up == 60 + server.stats.rate_limited
    assert elapsed >= 0.9  # 60 lookups at 20 per 0.5 s need at least two more windows


async def test_check_audience_standalone_and_on_a_shared_transport(sb: Sandbox) -> None:
    rows = recipients("v1", "v2-unknown")
    mine = [r.audience async for r in check_audience(sb.base_url, KEY, rows)]
    assert mine == [Audience.OK, Audience.UNKNOWN]
    async with Transport(sb.base_url) as transport:
        shared = check_audience(
            sb.base_url, KEY, rows, transport=transport, scheduler=default_scheduler()
        )
        assert [r.audience async for r in shared] == mine


async def test_the_proposed_send_wiring_reports_dropped_recipients_invalid(
    tmp_path: Path, sb: Sandbox
) -> None:
    """Engine + a filtered chunk stream: the dropped are reported and never sent."""
    rows = [("v1", "u1"), ("v2-unknown", "u2"), ("v3-unsubscribed", "u3"), ("v4", "u4")]
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows))
    report = tmp_path / "out.jsonl"
    settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
    provider = build_provider(settings, {"api_key": KEY})
    assert isinstance(provider, maxtraffic.MaxTraffic)
    scheduler = build_scheduler(settings, provider)
    chunks = [Chunk([Recipient(i, v, u) for i, (v, u) in enumerate(rows, 2)], [])]
    async with Transport(settings.base_url) as transport:
        check = AudienceCheck.for_provider(provider, transport, scheduler)
        filtered = [c async for c in check.filter(chunks)]  # a pre-pass, for today's engine
        with Deduper(keys=provider.dedup_keys) as dedup, ReportWriter(report) as writer:
            engine = Engine(
                provider,
                transport,
                scheduler,
                dedup,
                EngineOptions(batch_size=100, workers=2),
                report=writer,
            )
            summary = await engine.run(filtered)
    assert (summary.read, summary.delivered, summary.invalid) == (4, 2, 2)
    by_line = {x["line"]: x for x in map(orjson.loads, report.read_bytes().splitlines())}
    assert by_line[3]["reason"] == "audience check: unknown visitor"
    assert by_line[4]["reason"] == "audience check: not a web push subscriber"
    assert sb.stats.accepted == 1  # one notification batch, after four lookups
    assert sb.stats.recipients == 4  # v1, u1, v4, u4


# ---------------------------------------------------------------------------- retries


class Scripted:
    """A transport that answers from a script (a test double for the network seam)."""

    def __init__(self, answer: Callable[[int, HttpRequest], HttpResponse]) -> None:
        self.answer = answer
        self.calls = 0

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.calls += 1
        await asyncio.sleep(0)
        return self.answer(self.calls, request)


async def test_5xx_and_lost_connections_are_retried() -> None:
    def answer(n: int, request: HttpRequest) -> HttpResponse:
        if n == 1:
            raise NoResponse("reset", sent=True)
        if n == 2:
            return resp(500, {"message": "boom"})
        return resp(200, {"web_push_subscriber": True})

    transport = Scripted(answer)
    check = AudienceCheck(transport, fast_scheduler(), headers=HEADERS)
    assert (await check.lookup("v1")).audience is Audience.OK
    assert transport.calls == 3


async def test_a_provider_that_stays_down_stops_the_check() -> None:
    transport = Scripted(lambda n, r: resp(503, {"message": "down"}))
    check = AudienceCheck(transport, fast_scheduler(), headers=HEADERS, max_attempts=3)
    with pytest.raises(UnavailableError, match="after 3 attempts: down"):
        await check.lookup("v1")
    assert transport.calls == 3
    html = AudienceCheck(
        Scripted(lambda n, r: resp(404, b"<h1>nginx</h1>")), fast_scheduler(), headers=HEADERS
    )
    with pytest.raises(UnavailableError, match=r"answered 404 no content type.*base-url right"):
        await html.lookup("v1")


async def test_concurrent_lookups_of_one_id_share_a_request() -> None:
    transport = Scripted(lambda n, r: resp(200, {"web_push_subscriber": False}))
    check = AudienceCheck(transport, fast_scheduler(), headers=HEADERS, cache_size=0)
    answers = await asyncio.gather(*(check.lookup("same") for _ in range(5)))
    assert {a.audience for a in answers} == {Audience.UNSUBSCRIBED}
    assert transport.calls == 1
    await check.lookup("same")  # no cache: a later lookup asks again
    assert transport.calls == 2
