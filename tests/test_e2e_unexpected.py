"""End to end: a 2xx that is not the provider's answer is never counted delivered.

A plain loopback server (not a sandbox) answers every request ``200 text/html`` (a load
balancer's default page) or ``200 application/json`` of the wrong shape. For each of the four
providers, ``bulksend send`` (and ``bulksend retry``) must exit 4 with one line naming the URL,
deliver nobody, give every recipient a reason, keep the journal resumable — and a resume against
the real sandbox then delivers everyone.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web

from bulksend.sandbox import SandboxConfig, running
from bulksend.sandbox.server import Sandbox
from tests import loopback
from tests.conftest import KEY, ROOT, CliResult, run_cli
from tests.loopback import in_background

T = TypeVar("T")

PAGE = (
    b"<!DOCTYPE html>\n<html>\n<head><title>Welcome to nginx!</title></head>\n"
    b"<body>\x1b[31mIf you see this page, the web server is working.</body>\n</html>\n"
)


@dataclass(frozen=True)
class Case:
    """A sample campaign, the environment its secrets come from, and what the messages say."""

    provider: str
    campaign: str
    env: dict[str, str]
    path: str  # the request path the stop line names
    answer: str  # "MaxTraffic's JSON answer"
    flags: tuple[str, ...] = ()
    #: JSON, but not what the provider documents as its success answer
    wrong_json: bytes = b'{"status": "ok", "queued": true}'


CASES = [
    Case(
        "maxtraffic",
        "samples/maxtraffic/campaign.toml",
        {"MAXTRAFFIC_API_KEY": KEY},
        "/v1/notifications",
        "MaxTraffic's JSON answer",
    ),
    Case(
        "notifyvisitors",
        "samples/notifyvisitors/campaign.toml",
        {"NOTIFYVISITORS_API_KEY": KEY, "NOTIFYVISITORS_BRAND_ID": "sandbox-brand"},
        "/api/v1/campaign/send",
        "NotifyVisitors' JSON envelope",
        ("--batch-size", "2"),  # 11 users: six requests, so the stop comes after five
    ),
    Case(
        "maxemail",
        "samples/maxemail/trigger.toml",
        {"MAXEMAIL_USERNAME": "sandbox@example.com", "MAXEMAIL_PASSWORD": KEY},
        "/api/json/email_send",
        "Maxemail's JSON answer",
        # any JSON is a method's result (the Maxemail JSON API): only its error object is not
        wrong_json=b'{"success": false, "msg": "Service unavailable", "code": 503}',
    ),
    Case(
        "traitly",
        "samples/traitly/customers.toml",
        {"TRAITLY_TOKEN": KEY},
        "/api/v1/customer",
        "Traitly's JSON answer",
    ),
]
IDS = [c.provider for c in CASES]


@dataclass
class Stub:
    """Answers every request, whatever its method and path, with one fixed 200."""

    content_type: str
    body: bytes
    url: str = ""
    requests: int = 0

    async def answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        return web.Response(body=self.body, headers={"Content-Type": self.content_type})

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Stub]:
        async with loopback.serving(self.answer) as self.url:
            yield self


HTML = ("text/html", PAGE)
JSON = "application/json; charset=utf-8"


@contextmanager
def stub(answer: tuple[str, bytes]) -> Iterator[Stub]:
    with in_background(lambda: Stub(*answer).serving()) as server:
        yield server


@contextmanager
def sandbox(case: Case, tmp_path: Path) -> Iterator[Sandbox]:
    config = SandboxConfig(provider=case.provider, api_key=KEY, ledger=tmp_path / "ledger.jsonl")
    with in_background(lambda: running(config)) as server:
        yield server


def send(
    case: Case, tmp_path: Path, base_url: str, run: str, *flags: str
) -> tuple[CliResult, dict[str, Any]]:
    """``bulksend send`` of the case's sample with a journal, a report and a summary."""
    summary = tmp_path / f"{run}.json"
    args = [
        "send", str(ROOT / case.campaign), *case.flags, *flags,
        "--base-url", base_url,
        "--journal", str(tmp_path / "send.journal"),
        "--report", str(tmp_path / f"{run}.csv"),
        "--summary-json", str(summary),
        "-q", "--progress", "never", "--log-format", "json",
    ]  # fmt: skip
    return finished(run_cli(*args, env=case.env), summary)


def finished(result: CliResult, summary: Path) -> tuple[CliResult, dict[str, Any]]:
    assert summary.exists(), result.stderr
    return result, orjson.loads(summary.read_bytes())


def retry(case: Case, tmp_path: Path, base_url: str, run: str) -> tuple[CliResult, dict[str, Any]]:
    summary = tmp_path / f"{run}.json"
    args = [
        "retry", str(tmp_path / "send.journal"),
        "--base-url", base_url,
        "--report", str(tmp_path / f"{run}.csv"),
        "--summary-json", str(summary),
        "-q", "--progress", "never", "--log-format", "json",
    ]  # fmt: skip
    return finished(run_cli(*args, env=case.env), summary)


def messages(result: CliResult) -> list[str]:
    """stderr without the JSON log lines: what a person reads."""
    return [line for line in result.stderr.splitlines() if not line.startswith("{")]


def report(tmp_path: Path, run: str) -> list[dict[str, str]]:
    with (tmp_path / f"{run}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def unsettled(case: Case, kind: str) -> str:
    """A page is not the provider: ``failed``. JSON of another shape may be its answer in a
    changed form: ``unknown`` (Maxemail's wrong JSON here is its error object: ``failed``)."""
    if kind == "text/html" or case.provider == "maxemail":
        return "failed"
    return "unknown"


def assert_stopped_unexpected(
    case: Case,
    tmp_path: Path,
    result: CliResult,
    summary: dict[str, Any],
    server: Stub,
    kind: str,
) -> None:
    assert result.status == 4, result.stderr
    (line,) = messages(result)
    assert line.startswith(f"bulksend: {server.url}{case.path} answered 200 {kind}, ")
    journal = tmp_path / "send.journal"
    assert line.endswith(
        f"not {case.answer}, 5 times in a row: is --base-url right? the send stopped; "
        f"resume it at the right URL with: bulksend retry {journal} --base-url URL"
    )
    assert summary["delivered"] == 0
    assert summary[unsettled(case, kind)] >= 5
    assert (
        summary["failed"]
        + summary["unknown"]
        + summary["skipped"]
        + summary["invalid"]
        + summary["duplicates"]
        == summary["read"]
    )
    # the sample files are small: no more went out than the stop allows (5, and those in flight)
    assert server.requests <= 5 + 16


def assert_reasons(tmp_path: Path, run: str, kind: str, start: str, status: str) -> None:
    rows = report(tmp_path, run)
    assert rows
    assert not [r for r in rows if r["status"] == "delivered"]
    unsettled = [r for r in rows if r["status"] == status]
    assert len(unsettled) >= 5
    assert not [r for r in rows if r["status"] in {"failed", "unknown"} - {status}]
    for row in unsettled:
        reason = row["reason"]
        assert reason.startswith(f"unexpected answer: 200 {kind}, not "), reason
        assert f"body: {start}" in reason
        assert "\x1b" not in reason  # control characters escaped
        assert "\n" not in reason
        assert len(reason) < 300
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert all("is --base-url right?" in r["reason"] for r in skipped)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("kind", ["text/html", "application/json"])
def test_an_answer_that_is_not_the_providers_stops_the_send_and_a_resume_delivers(
    case: Case, kind: str, tmp_path: Path
) -> None:
    if kind == "text/html":
        answer, start = HTML, "<!DOCTYPE html>\\n<html>\\n<head><title>Welcome to nginx!"
    else:  # the right type, the wrong shape
        answer, start = (JSON, case.wrong_json), case.wrong_json.decode()
    with stub(answer) as server:
        first, summary = send(case, tmp_path, server.url, "first")
    assert_stopped_unexpected(case, tmp_path, first, summary, server, kind)
    assert_reasons(tmp_path, "first", kind, start, unsettled(case, kind))

    with sandbox(case, tmp_path) as real:
        again, resumed = send(case, tmp_path, real.base_url, "again", "--resume")
    assert again.status == 0, again.stderr
    (said,) = messages(again)  # the journal resumed, at the base URL given now
    assert said.startswith(
        f"bulksend: resuming with [send].base_url changed (was {server.url}, now "
        f"{real.base_url}): 0 batches settled by an earlier run"
    )
    if unsettled(case, kind) == "unknown":  # they may have reached the provider
        assert " with an unknown outcome (" in said
    settled = resumed["delivered"] + resumed["invalid"] + resumed["duplicates"]
    assert settled == summary["read"]
    assert resumed["delivered"] >= summary["read"] - summary["duplicates"] - 1
    assert resumed["delivered_earlier"] == 0
    assert (resumed["failed"], resumed["unknown"], resumed["skipped"]) == (0, 0, 0)
    assert real.stats.accepted > 0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bulksend_retry_stops_the_same_way_and_then_delivers(case: Case, tmp_path: Path) -> None:
    with stub(HTML) as server:
        first, summary = send(case, tmp_path, server.url, "first")
        assert_stopped_unexpected(case, tmp_path, first, summary, server, "text/html")
        server.requests = 0
        second, again = retry(case, tmp_path, server.url, "second")
    assert_stopped_unexpected(case, tmp_path, second, again, server, "text/html")
    assert_reasons(tmp_path, "second", "text/html", "<!DOCTYPE html>", "failed")

    with sandbox(case, tmp_path) as real:
        last, final = retry(case, tmp_path, real.base_url, "last")
    assert last.status == 0, last.stderr
    assert final["delivered"] + final["invalid"] + final["duplicates"] == summary["read"]
    assert final["delivered"] >= summary["read"] - summary["duplicates"] - 1
    assert (final["failed"], final["unknown"], final["skipped"]) == (0, 0, 0)


def test_one_unexpected_answer_among_good_ones_fails_its_batch_and_the_send_goes_on(
    tmp_path: Path,
) -> None:
    """Below ``--max-unexpected`` in a row, the odd page costs only its own batch."""
    rows = [f"v{i:03d},u{i:03d}" for i in range(60)]
    recipients = tmp_path / "r.csv"
    recipients.write_text("visitor_id,user_id\n" + "\n".join(rows) + "\n")
    case = CASES[0]
    with sandbox(case, tmp_path) as real:
        flaky = Flaky(real.base_url)
        with in_background(flaky.serving) as proxy:
            args = [
                "send", str(ROOT / case.campaign), "--recipients", str(recipients),
                "--batch-size", "10", "--in-flight", "1", "--base-url", proxy,
                "--no-journal", "--report", str(tmp_path / "r.jsonl"), "-q",
                "--log-format", "json",
            ]  # fmt: skip
            result = run_cli(*args, env=case.env)
    assert result.status == 1, result.stderr  # some recipients failed: not a stop
    assert messages(result) == []
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    failed = [x for x in lines if x["status"] == "failed"]
    assert len(failed) == 10  # the second batch, answered by the page
    assert failed[0]["reason"].startswith("unexpected answer: 200 text/html, not MaxTraffic")
    assert sum(x["status"] == "delivered" for x in lines) == 50


@dataclass
class Flaky:
    """Passes requests on to ``target``, but answers the second one with a page itself."""

    target: str
    seen: int = 0

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        import aiohttp

        async with aiohttp.ClientSession() as session:

            async def relay(request: web.Request) -> web.Response:
                self.seen += 1
                body = await request.read()
                if self.seen == 2:
                    return web.Response(body=PAGE, headers={"Content-Type": "text/html"})
                async with session.request(
                    request.method, self.target + request.path_qs, data=body,
                    headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                ) as answer:  # fmt: skip
                    data = await answer.read()
                    kept = {"Content-Type": answer.headers.get("Content-Type", "")}
                    return web.Response(status=answer.status, body=data, headers=kept)

            async with loopback.serving(relay) as url:
                yield url
