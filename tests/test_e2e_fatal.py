"""End to end: an answer that ends a command says where it came from and what to check.

A plain loopback server (not a sandbox) answers every request with one fixed answer: a 404, 405
or 410 without a body (a wrong base URL behind a bare router), an empty 204, JSON that is not
the provider's (for Traitly: an answer without the record sent), or a redirect to a page.
``bulksend send`` (all four providers), ``bulksend leads`` and ``send --audience-check`` must
each exit 4 with ONE line naming the URL (without credentials or query), the status, the
content type, the start of the body and the likely fix — never ``404: `` with nothing after it —
and count nobody delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests import loopback
from tests.conftest import KEY, ROOT, CliResult, run_cli
from tests.loopback import in_background
from tests.test_e2e_unexpected import (
    CASES,
    IDS,
    Case,
    messages,
    report,
    sandbox,
    send,
)

MAXTRAFFIC = CASES[0]
TRAITLY = next(c for c in CASES if c.provider == "traitly")
MOVED = b"<html><body>moved to the login page</body></html>"


@dataclass
class Answering:
    """Answers every request with ``status``, ``body`` and ``headers``; ``/landing`` (where its
    redirects point) with a 200 page, as a portal would."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def answer(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path))
        await request.read()
        if request.path == "/landing":
            return web.Response(body=MOVED, headers={"Content-Type": "text/html"})
        return web.Response(status=self.status, body=self.body, headers=self.headers)

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Answering]:
        async with loopback.serving(self.answer) as self.url:
            yield self


@contextmanager
def answering(status: int, body: bytes = b"", **headers: str) -> Iterator[Answering]:
    with in_background(lambda: Answering(status, body, headers).serving()) as server:
        yield server


def stop_line(result: CliResult) -> str:
    (line,) = messages(result)  # one line, whatever the log says
    return line


def resume_hint(tmp_path: Path, *, url: bool = True) -> str:
    journal = tmp_path / "send.journal"
    if not url:
        return f"; resume it with: bulksend retry {journal}"
    return f"; resume it at the right URL with: bulksend retry {journal} --base-url URL"


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("status", [404, 405, 410])
def test_a_missing_endpoint_stops_the_send_naming_the_url_the_answer_and_the_fix(
    case: Case, status: int, tmp_path: Path
) -> None:
    with answering(status) as server:
        result, summary = send(case, tmp_path, server.url, "first")
    assert result.status == 4, result.stderr
    assert stop_line(result) == (
        f"bulksend: {server.url}{case.path} answered {status} no content type, empty body: "
        f"is --base-url right? the send stopped{resume_hint(tmp_path)}"
    )
    assert len(server.seen) == 1  # the first request goes alone
    assert summary["delivered"] == 0
    rows = report(tmp_path, "first")
    failed = [r["reason"] for r in rows if r["status"] == "failed"]
    assert failed
    assert set(failed) == {f"{status} no content type, empty body"}
    skipped = [r["reason"] for r in rows if r["status"] == "skipped"]
    assert all("is --base-url right?" in reason for reason in skipped)


def leads(base_url: str, out: Path) -> CliResult:
    args = [
        "leads", str(ROOT / MAXTRAFFIC.campaign), "--base-url", base_url,
        "--from", "2024-01-01", "--to", "2024-02-01", "--out", str(out),
    ]  # fmt: skip
    return run_cli(*args, env=MAXTRAFFIC.env)


LEADS_SHAPE = (
    'not MaxTraffic\'s leads (a JSON array of leads: [{"email", "timestamp", "campaign"}, ...])'
)


@pytest.mark.parametrize(
    ("status", "body", "headers", "said"),
    [
        (204, b"", {}, f"204 no content type, {LEADS_SHAPE}; body: (empty)"),
        (404, b"", {}, "404 no content type, empty body"),
        (405, b"", {}, "405 no content type, empty body"),
        (
            200,
            b'{"status":"ok","data":[]}',
            {"Content-Type": "application/json"},
            f'200 application/json, {LEADS_SHAPE}; body: {{"status":"ok","data":[]}}',
        ),
    ],
)
def test_leads_stops_on_an_answer_that_is_not_leads_naming_the_url(
    status: int, body: bytes, headers: dict[str, str], said: str, tmp_path: Path
) -> None:
    out = tmp_path / "leads.csv"
    with answering(status, body, **headers) as server:
        result = leads(server.url, out)
    assert result.status == 4, result.stderr
    line = stop_line(result)  # the URL without its query (?from=...&to=...)
    assert line == f"bulksend: leads: {server.url}/v1/leads answered {said}: is --base-url right?"
    assert KEY not in line
    assert not out.exists()  # no file of wrong rows
    assert server.seen == [("GET", "/v1/leads")]


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (
            204,
            b"",
            "204 no content type, not MaxTraffic's visitor "
            '({"web_push_subscriber": true or false}); body: (empty)',
        ),
        (404, b"", "404 no content type, empty body"),
    ],
)
def test_the_audience_check_stops_on_an_empty_answer_naming_the_url(
    status: int, body: bytes, said: str, tmp_path: Path
) -> None:
    with answering(status, body) as server:
        result, summary = send(MAXTRAFFIC, tmp_path, server.url, "first", "--audience-check")
    assert result.status == 4, result.stderr
    line = stop_line(result)
    assert line.startswith(f"bulksend: visitor lookup: {server.url}/v1/visitors/")
    assert line.endswith(f" answered {said}: is --base-url right?")
    assert summary["delivered"] == 0
    assert all(method == "GET" for method, _ in server.seen)  # nothing was sent


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "ok", "data": []},  # the operator's report
        {"data": [], "metadata": {}, "created": "1", "object": "customer"},
        {"data": [{"customer_id": "someone-else"}], "object": "customer"},
        {"data": [{"customer_id": "1001"}], "object": "event"},
    ],
)
def test_traitly_never_counts_an_answer_without_the_record_sent_as_delivered(
    answer: dict[str, object], tmp_path: Path
) -> None:
    body = orjson.dumps(answer)
    with answering(200, body, **{"Content-Type": "application/json"}) as server:
        result, summary = send(TRAITLY, tmp_path, server.url, "first")
    assert result.status == 4, result.stderr
    assert stop_line(result) == (
        f"bulksend: {server.url}{TRAITLY.path} answered 200 application/json, not Traitly's "
        f"JSON answer, 5 times in a row: is --base-url right? the send stopped"
        f"{resume_hint(tmp_path)}"
    )
    assert summary["delivered"] == 0
    assert summary["unknown"] >= 5  # JSON: Traitly may have acted, it cannot be told
    rows = [r for r in report(tmp_path, "first") if r["status"] == "unknown"]
    assert all(r["reason"].startswith("unexpected answer: 200 application/json") for r in rows)
    assert all('{"data": [{"customer_id": "' in r["reason"] for r in rows)

    with sandbox(TRAITLY, tmp_path) as real:  # the sandbox answers as the document says
        again, resumed = send(TRAITLY, tmp_path, real.base_url, "again", "--resume")
    assert again.status == 0, again.stderr
    assert resumed["delivered"] + resumed["invalid"] + resumed["duplicates"] == summary["read"]
    assert (resumed["failed"], resumed["unknown"], resumed["skipped"]) == (0, 0, 0)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_stops_the_send_naming_where_it_points(
    status: int, tmp_path: Path
) -> None:
    headers = {"Location": "/landing?from=api", "Content-Type": "text/html"}
    with answering(status, MOVED, **headers) as server:
        result, summary = send(MAXTRAFFIC, tmp_path, server.url, "first")
    assert result.status == 4, result.stderr
    assert stop_line(result) == (
        f"bulksend: {server.url}{MAXTRAFFIC.path} answered {status} text/html, a redirect to "
        f"/landing; body: {MOVED.decode()}: is --base-url right? the send stopped"
        f"{resume_hint(tmp_path)}"
    )
    assert server.seen == [("POST", MAXTRAFFIC.path)]  # the page it points to is never asked
    assert summary["delivered"] == 0
    failed = {r["reason"] for r in report(tmp_path, "first") if r["status"] == "failed"}
    assert failed == {f"{status} text/html, a redirect to /landing; body: {MOVED.decode()}"}


def test_leads_does_not_follow_a_redirect_either(tmp_path: Path) -> None:
    out = tmp_path / "leads.csv"
    headers = {"Location": "https://portal.example/login", "Content-Type": "text/html"}
    with answering(302, MOVED, **headers) as server:
        result = leads(server.url, out)
    assert result.status == 4, result.stderr
    assert stop_line(result) == (
        f"bulksend: leads: {server.url}/v1/leads answered 302 text/html, a redirect to "
        f"https://portal.example/login; body: {MOVED.decode()}: is --base-url right?"
    )
    assert server.seen == [("GET", "/v1/leads")]
    assert not out.exists()
