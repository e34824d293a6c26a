"""End to end: a GitHub-style 403 that says "quota spent" pauses the send instead of stopping it.

A tiny MaxTraffic stand-in on loopback (not the sandbox) answers ``POST /v1/notifications`` with
``403`` + ``x-ratelimit-remaining: 0`` + ``retry-after: 1`` for the first two requests and
``200 {"success": true}`` afterwards; ``bulksend send`` must deliver everyone and exit 0. A bare
403 still stops the send (exit 3).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.conftest import KEY, run_cli, write_campaign, write_recipients

THROTTLED = {"x-ratelimit-remaining": "0", "retry-after": "1"}


@dataclass
class Server:
    """The stand-in: ``refusals`` 403s first (with ``headers``), then 200s."""

    refusals: int
    headers: dict[str, str]
    url: str = ""
    requests: int = 0
    statuses: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    async def notifications(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        if request.headers.get("Authorization") != f"key={KEY}":
            return self._answer(401, {"message": "Wrong or empty Authorization header"}, {})
        if self.requests <= self.refusals:
            return self._answer(403, {"message": "API rate limit exceeded"}, self.headers)
        self.ids.extend(body.get("to_ids", []))
        return self._answer(200, {"success": True}, {})

    def _answer(self, status: int, data: object, headers: dict[str, str]) -> web.Response:
        self.statuses.append(status)
        return web.Response(
            status=status, body=orjson.dumps(data), headers=headers, content_type="application/json"
        )


def serve(server: Server) -> Iterator[Server]:
    """Run ``server`` on 127.0.0.1 (a free port) in a thread of its own until the test ends."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/notifications", server.notifications)
    runner = web.AppRunner(app, access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        server.url = f"http://{host}:{port}"

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def throttling() -> Iterator[Server]:
    yield from serve(Server(refusals=2, headers=THROTTLED))


@pytest.fixture
def forbidding() -> Iterator[Server]:
    yield from serve(Server(refusals=10**6, headers={}))


def send(tmp_path: Path, url: str) -> tuple[int, str, dict[str, object]]:
    rows = [(f"v{i:03d}", f"u{i:03d}") for i in range(40)]
    recipients = write_recipients(tmp_path / "r.csv", rows)
    campaign = write_campaign(tmp_path, recipients, batch_size=10, in_flight=4)
    summary = tmp_path / "summary.json"
    args = ["send", str(campaign), "--base-url", url, "--summary-json", str(summary), "-q"]
    r = run_cli(*args, "--no-journal", env={"MAXTRAFFIC_API_KEY": KEY})
    data = orjson.loads(summary.read_bytes()) if summary.exists() else {}
    return r.status, r.stderr, data


def test_a_throttling_403_pauses_and_everyone_is_delivered(
    tmp_path: Path, throttling: Server
) -> None:
    status, stderr, summary = send(tmp_path, throttling.url)
    assert status == 0, stderr
    assert summary["delivered"] == 40
    assert summary["failed"] == 0
    assert summary["throttled"] == 2
    assert throttling.statuses[:2] == [403, 403]
    assert throttling.statuses[2:] == [200] * 4
    assert sorted(throttling.ids) == [f"v{i:03d}" for i in range(40)]


def test_a_bare_403_still_stops_the_send(tmp_path: Path, forbidding: Server) -> None:
    status, stderr, summary = send(tmp_path, forbidding.url)
    assert status == 3
    assert "provider rejected the credentials (403)" in stderr
    assert forbidding.requests == 1  # the first request goes alone: a wrong key costs one
    assert summary.get("delivered", 0) == 0
