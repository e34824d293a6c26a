"""Prometheus metrics of a send: ``--metrics-port`` (scraped during a real send to the sandbox),
``--metrics-push`` (a loopback stand-in for a Pushgateway), and what happens without
prometheus_client.

The send runs in a thread (``bulksend.cli.run`` has its own event loop there); the sandbox, the
gate in front of it and the Pushgateway stand-in run in the test's loop. The gate lets the first
requests through and holds the others until the test has scraped, so what the scrape sees is
known, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bulksend import cli
from bulksend.ratelimit.bucket import Bucket, FeedbackKind
from bulksend.sandbox import FaultConfig, SandboxConfig
from bulksend.sandbox.server import make_app
from tests.conftest import KEY, ROOT, CliResult, run_cli, write_campaign, write_recipients

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: the recipient states and the summary's counters of them
STATES = {
    "delivered": "delivered",
    "duplicate": "duplicates",
    "suppressed": "suppressed",
    "invalid": "invalid",
    "failed": "failed",
    "unknown": "unknown",
    "skipped": "skipped",
}


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (read by prometheus_client's parser)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that have ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


@dataclass
class Gate:
    """A middleware in front of the sandbox: lets ``passes`` requests through, then holds every
    other one until ``opened`` is set; it answers request number ``refuse`` itself, with a 429."""

    passes: int
    refuse: int = 0
    seen: int = 0
    held: int = 0
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.seen += 1
        if self.seen > self.passes and not self.opened.is_set():
            self.held += 1
            self.holding.set()
            await self.opened.wait()
        if self.seen == self.refuse:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "0"}
            )
        return await handler(request)


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def gated_sandbox(gate: Gate, **settings: Any) -> AsyncIterator[str]:
    """The MaxTraffic sandbox with ``gate`` in front of it."""
    app, core = make_app(SandboxConfig(api_key=KEY, **settings))
    app.middlewares.insert(0, gate.middleware)
    try:
        async with serve(app) as url:
            yield url
    finally:
        gate.opened.set()  # (a test that failed early must not leave the send waiting)
        core.close()


@dataclass
class Push:
    method: str
    path: str
    content_type: str
    body: str


@asynccontextmanager
async def pushgateway(status: int = 200) -> AsyncIterator[tuple[str, list[Push]]]:
    """A stand-in for a Pushgateway: records every push and answers ``status``."""
    pushes: list[Push] = []

    async def take(request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        pushes.append(Push(request.method, request.raw_path, request.content_type, body))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", take)
    async with serve(app) as url:
        yield url, pushes


class Running:
    """``bulksend ARGS`` in a thread: its stderr can be read while it runs."""

    def __init__(self, *args: str) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        env = {"MAXTRAFFIC_API_KEY": KEY}
        self.task = asyncio.create_task(
            asyncio.to_thread(cli.run, list(args), env=env, stdout=self.out, stderr=self.err)
        )

    async def metrics_url(self) -> str:
        """The URL the send announced (``bulksend: metrics at URL``)."""
        async with asyncio.timeout(30):
            while not (
                found := re.search(r"^bulksend: metrics at (\S+)$", self.err.getvalue(), re.M)
            ):
                assert not self.task.done(), self.err.getvalue()
                await asyncio.sleep(0.01)
        return found.group(1)

    async def result(self) -> CliResult:
        async with asyncio.timeout(120):
            status = await self.task
        return CliResult(int(status), self.out.getvalue(), self.err.getvalue())


async def scrape(url: str, accept: str = "") -> tuple[str, str]:
    """A real HTTP GET of the metrics: (content type, body)."""
    headers = {"Accept": accept} if accept else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200
        return resp.headers["Content-Type"], await resp.text()


async def bulksend(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bulksend ARGS`` in a child process, without blocking the event loop."""
    command = [sys.executable, "-m", "bulksend", *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, cwd=ROOT, check=False
    )


async def scrape_until(url: str, enough: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``enough`` says what was scraped is (the caller bounds the wait)."""
    while True:
        found = samples((await scrape(url))[1])
        if enough(found):
            return found
        await asyncio.sleep(0.01)


def recipients(tmp_path: Path, unique: int) -> Path:
    """``unique`` recipients, two rows repeating earlier ones and one without identifiers."""
    rows = [(f"v{i:03d}", f"u{i:03d}") for i in range(unique)]
    rows += [rows[0], rows[1], ("", "")]
    return write_recipients(tmp_path / "r.csv", rows)


async def test_scraped_during_a_send_and_pushed_at_its_end_as_the_summary_counts(
    tmp_path: Path,
) -> None:
    campaign = write_campaign(tmp_path, recipients(tmp_path, 40), batch_size=2, in_flight=2)
    summary_path, journal = tmp_path / "summary.json", tmp_path / "c.journal"
    gate = Gate(passes=4, refuse=2)  # the first request goes alone, the second gets a 429
    faults = FaultConfig(fail_rate=0.25, retry_after_503=False)  # 5xx: retries, a 5xx class
    async with gated_sandbox(gate, faults=faults, seed=3) as base, pushgateway() as (gw, pushes):
        send = Running(
            "send", str(campaign), "--base-url", base, "--journal", str(journal),
            "--metrics-port", "0", "--metrics-push", gw,
            "--summary-json", str(summary_path), "-q", "--progress", "never",
        )  # fmt: skip
        url = await send.metrics_url()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url), url
        async with asyncio.timeout(30):
            await gate.holding.wait()
            # the 4 answers the gate let through are counted once the send has taken them
            found = await scrape_until(url, lambda f: total(f, "bulksend_requests_total") >= 4)
        assert total(found, "bulksend_requests_total") == 4  # the gate holds the rest
        assert total(found, "bulksend_throttled_responses_total", group="api") == 1
        assert total(found, "http_client_request_duration_seconds_count") == 4
        ok = total(found, "bulksend_requests_total", group="api", status_class="2xx")
        assert total(found, "bulksend_recipients_total", state="delivered") == 2 * ok
        assert total(found, "bulksend_in_flight_requests", group="api") >= 1  # held
        assert total(found, "bulksend_paused") == 0
        assert total(found, "bulksend_quota_limit", group="api") > 0
        content_type, text = await scrape(url, accept="application/openmetrics-text")
        assert content_type.startswith("application/openmetrics-text")
        assert text.endswith("# EOF\n")
        async with asyncio.timeout(30):  # `bulksend pause`: the send looks every 0.5 s
            assert (await bulksend("pause", str(journal))).returncode == 0
            await scrape_until(url, lambda f: total(f, "bulksend_paused") == 1)
            assert (await bulksend("resume", str(journal))).returncode == 0
            await scrape_until(url, lambda f: total(f, "bulksend_paused") == 0)
        gate.opened.set()
        result = await send.result()
    assert result.status in (0, 1), result.stderr  # 1: a batch that failed 6 times in a row
    summary = orjson.loads(summary_path.read_bytes())
    assert [(p.method, p.path) for p in pushes] == [("PUT", "/metrics/job/bulksend/campaign/E2E")]
    final = samples(pushes[0].body)
    for state, key in STATES.items():
        assert total(final, "bulksend_recipients_total", state=state) == summary[key], state
    assert (summary["duplicates"], summary["invalid"]) == (2, 1)
    assert total(final, "bulksend_rows_read_total") == summary["read"] == 43
    assert total(final, "bulksend_requests_total") == summary["requests"]
    assert total(final, "http_client_request_duration_seconds_count") == summary["requests"]
    assert total(final, "bulksend_retries_total") == summary["retries"] > 0
    assert total(final, "bulksend_requests_total", status_class="5xx") > 0
    assert total(final, "bulksend_throttled_responses_total") == summary["throttled"] >= 1
    assert total(final, "bulksend_possible_duplicates_total") == summary["possible_duplicates"]
    assert total(final, "bulksend_in_flight_requests") == 0
    assert total(final, "bulksend_queued_batches") == total(final, "bulksend_parked_batches") == 0
    durations = [
        dict(labels)
        for (name, labels), _ in final.items()
        if name == "http_client_request_duration_seconds_count"
    ]
    assert {(d["http_request_method"], d["server_address"], d["group"]) for d in durations} == {
        ("POST", "127.0.0.1", "api")
    }
    assert {d["http_response_status_code"] for d in durations} >= {"200", "429", "500"}
    assert all(
        d["error_type"] == d["http_response_status_code"]
        for d in durations
        if d["http_response_status_code"] >= "400"
    )
    lines = result.stderr.splitlines()
    assert lines[0] == f"bulksend: metrics at {url}"
    assert not [line for line in lines if "push" in line]


async def test_push_names_the_campaign_and_a_shard(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\n" + "".join(f"v{i},u{i}\n" for i in range(10)))
    campaign = write_campaign(tmp_path, tmp_path / "r.csv", batch_size=2)
    campaign.write_text(campaign.read_text().replace('name = "E2E"', 'name = "Spring sale"'))
    async with pushgateway() as (gw, pushes):
        for sharding in ([], ["--shard", "1/2"]):
            args = ["send", str(campaign), "--sandbox", "--metrics-push", gw, *sharding, "-q"]
            result = await asyncio.to_thread(run_cli, *args, "--progress", "never")
            assert (result.status, result.stderr) == (0, "")
    # (a value with a space or a slash goes base64-encoded, as the Pushgateway reads it)
    name = "campaign@base64/" + base64.urlsafe_b64encode(b"Spring sale").decode()
    assert [p.path for p in pushes] == [
        f"/metrics/job/bulksend/{name}",
        f"/metrics/job/bulksend/{name}/shard/1-of-2",
    ]
    assert pushes[0].content_type.startswith("text/plain")
    whole, shard = (samples(p.body) for p in pushes)
    assert total(whole, "bulksend_recipients_total", state="delivered") == 10
    assert total(shard, "bulksend_recipients_total", state="delivered") == 5
    assert total(whole, "bulksend_send_info", campaign="Spring sale", provider="maxtraffic") == 1


async def test_a_failed_push_is_a_warning_and_the_send_stands(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\nv1,u1\n")
    campaign = write_campaign(tmp_path, tmp_path / "r.csv")
    async with pushgateway(status=503) as (gw, pushes):
        args = ["send", str(campaign), "--sandbox", "--metrics-push", gw + "/?token=s3cret", "-q"]
        result = await asyncio.to_thread(run_cli, *args, "--progress", "never")
    assert len(pushes) == 1
    assert result.status == 0
    assert result.stderr == (
        f"bulksend: warning: could not push the metrics to {gw}/: HTTPError: Service "
        "Unavailable (the send's outcome stands)\n"
    )


def test_without_prometheus_client_one_line_and_nothing_sent(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\nv1,u1\n")
    campaign = write_campaign(tmp_path, tmp_path / "r.csv")
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from bulksend import cli\n"
        "sys.exit(cli.run(sys.argv[1:]))"
    )
    # nothing listens at port 9: a send that had started would exit 4
    argv = ["send", str(campaign), "--base-url", "http://127.0.0.1:9", "--no-journal"]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv, "--metrics-port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"MAXTRAFFIC_API_KEY": KEY, "PATH": ""},
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "bulksend: error: Prometheus metrics need the prometheus-client library: "
        "pip install 'bulksend[metrics]'\n"
    )


def test_a_send_without_metrics_does_not_import_prometheus_client(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\nv1,u1\n")
    campaign = write_campaign(tmp_path, tmp_path / "r.csv")
    code = (
        "import sys\nfrom bulksend import cli\n"
        "status = cli.run(sys.argv[1:])\n"
        "print(status, 'prometheus_client' in sys.modules)"
    )
    argv = [str(campaign), "--sandbox", "-q", "--progress", "never"]
    done = subprocess.run(
        [sys.executable, "-c", code, "send", *argv], capture_output=True, text=True, check=False
    )
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr


def test_a_port_that_is_taken_is_one_line_before_sending(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\nv1,u1\n")
    campaign = write_campaign(tmp_path, tmp_path / "r.csv")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("send", str(campaign), "--sandbox", "--metrics-port", str(port), "-q")
    assert result.status == 2
    assert result.stderr == (
        f"bulksend: error: metrics: cannot listen on 127.0.0.1:{port} (address already in "
        "use); choose another --metrics-port or --metrics-host\n"
    )


@pytest.mark.parametrize(
    ("where", "value", "said"),
    [
        ("file", "70000", "[send] metrics_port must be a port number up to 65535, got 70000"),
        ("file", '"9"', "[send] metrics_port must be a port number (a whole number), got '9'"),
        ("env", "abc", "BULKSEND_METRICS_PORT must be a whole number, got 'abc'"),
        ("flag", "-1", "--metrics-port must be at least 0, got -1"),
    ],
)  # fmt: skip
def test_a_bad_port_is_one_line_naming_where_it_came_from(
    tmp_path: Path, where: str, value: str, said: str
) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\nv1,u1\n")
    extra = f"metrics_port = {value}" if where == "file" else ""
    campaign = write_campaign(tmp_path, tmp_path / "r.csv", extra=extra)
    env = {"BULKSEND_METRICS_PORT": value} if where == "env" else {}
    if where == "file":
        said = f"{campaign}: {said}"
    flags = ["--metrics-port", value] if where == "flag" else []
    result = run_cli("send", str(campaign), "--sandbox", *flags, env=env)
    assert result.status == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr == f"bulksend: error: {said}\n"


def test_a_push_url_that_is_not_one_is_refused_before_sending(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("vid,uid\nv1,u1\n")
    campaign = write_campaign(tmp_path, tmp_path / "r.csv")
    result = run_cli("send", str(campaign), "--sandbox", "--metrics-push", "ftp://x", "-q")
    assert result.status == 2
    assert result.stderr.startswith("bulksend: error: --metrics-push: 'ftp://x' is not an http(s)")


def test_remaining_follows_the_servers_count_then_the_own_log() -> None:
    bucket = Bucket(10, 1.0)
    assert bucket.remaining(0.0, 10, 1.0) == 10
    for _ in range(3):
        bucket.send(0.0)
    assert bucket.remaining(0.0, 10, 1.0) == 7  # no answer yet: our own sends of the window
    headers = {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "4"}
    bucket.feedback(0.01, seq=1, sent_at=0.0, kind=FeedbackKind.OK, headers=headers)
    assert bucket.remaining(0.01, 10, 1.0) == 2  # the server's 4, less the two it had not seen
    assert bucket.remaining(5.0, 10, 1.0) == 10  # long after: that window is over
