"""Pause and resume a send from outside, and send windows driving it (issue 18).

The gate on its own (``PauseControl`` with an injected clock), a windowed send to the in-loop
sandbox driven by an injected clock, and real processes: a send paused by SIGUSR1 and resumed
by SIGUSR2, one paused and resumed by ``bulksend pause|resume JOURNAL`` from a second process,
and (with a redis-server) one paused through Redis before it starts. While paused, the sandbox's
ledger shows that no request arrives; afterwards every recipient arrived exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from bulksend.campaign import send_campaign
from bulksend.config import load_settings
from bulksend.control.pause import (
    JournalSwitch,
    MemorySwitch,
    Pause,
    PauseControl,
    PauseSetup,
    PauseSignals,
    RedisSwitch,
)
from bulksend.control.windows import parse_windows, parse_zone
from bulksend.distributed.testing import RedisServer
from bulksend.output.progress import line_parts
from bulksend.output.report import Summary
from bulksend.sandbox import SandboxConfig, running
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess, wait_until
from tests.conftest import KEY, ROOT, run_cli, write_campaign, write_recipients

BERLIN = parse_zone("Europe/Berlin")


class WallClock:
    """An injected clock (aware, UTC) the test sets by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now.astimezone(dt.UTC)


def berlin(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=BERLIN)


# -- the gate --------------------------------------------------------------------------------


async def test_a_pause_shuts_the_gate_until_it_is_lifted() -> None:
    told: list[str] = []
    own = MemorySwitch()
    control = PauseControl([own], on_change=told.append, interval=0.01)
    await control.poll()
    assert (control.paused, control.status()) == (False, "")
    stopping = asyncio.Event()
    await asyncio.wait_for(control.wait_open(stopping), 1)  # open: returns at once
    with capture_logs() as events:
        control.request(True, "SIGUSR1")
        await asyncio.sleep(0.01)
        assert control.paused
        assert control.status() == "paused by SIGUSR1"
        waiting = asyncio.create_task(control.wait_open(stopping))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        control.request(False, "SIGUSR2")
        await asyncio.wait_for(waiting, 1)
    assert not control.paused
    assert [e["event"] for e in events] == ["send_paused", "send_resumed"]
    assert events[0]["reason"] == "paused by SIGUSR1"
    assert told == [
        "paused by SIGUSR1: no new batch starts, the requests in flight finish; to go on: SIGUSR2",
        "resumed after 0 s paused",
    ]
    await control.aclose()


async def test_a_stop_ends_the_wait_of_a_paused_worker() -> None:
    control = PauseControl([MemorySwitch()])
    control.request(True, "SIGUSR1")
    await asyncio.sleep(0.01)
    stopping = asyncio.Event()
    waiting = asyncio.create_task(control.wait_open(stopping))
    await asyncio.sleep(0.02)
    stopping.set()
    await asyncio.wait_for(waiting, 1)
    assert control.paused  # still paused: the engine sees the stop and skips what is queued


async def test_signals_reach_the_gate() -> None:
    control = PauseControl([MemorySwitch()])
    signals = PauseSignals()
    signals.attach(control)
    with signals.installed():
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await wait_for(lambda: control.paused)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert await wait_for(lambda: not control.paused)


async def test_sigusr2_does_not_lift_a_pause_another_switch_holds() -> None:
    told: list[str] = []
    shared = MemorySwitch()
    shared.name, shared.undo = "redis://r/0 (campaign 'C')", "`bulksend resume redis://r/0`"
    await shared.write(Pause("bulksend pause", 0.0))
    control = PauseControl([MemorySwitch(), shared], on_change=told.append)
    await control.poll()
    assert control.status() == "paused by bulksend pause"
    control.request(False, "SIGUSR2")
    await asyncio.sleep(0.01)
    assert control.paused
    assert told[-1] == (
        "SIGUSR2: still paused by bulksend pause; to go on: `bulksend resume redis://r/0`"
    )
    await shared.write(None)
    await control.poll()
    assert not control.paused


async def test_an_unreadable_switch_keeps_its_last_state_with_one_warning() -> None:
    class Flaky(MemorySwitch):
        fail = False

        async def read(self) -> Pause | None:
            if self.fail:
                raise ConnectionError("gone")
            return await super().read()

    flaky = Flaky()
    await flaky.write(Pause("bulksend pause", 0.0))
    control = PauseControl([MemorySwitch(), flaky])
    await control.poll()
    flaky.fail = True
    with capture_logs() as events:
        for _ in range(3):
            await control.poll()
    assert control.paused
    assert [e["event"] for e in events] == ["pause_unreadable"]


async def test_send_windows_shut_and_open_the_gate_with_the_clock() -> None:
    told: list[str] = []
    clock = WallClock(berlin(2026, 3, 27, 19, 59))  # Friday, the last winter weekday (CET)
    windows = parse_windows("Mon-Fri 09:00-20:00", BERLIN)
    control = PauseControl([MemorySwitch()], windows, clock=clock, on_change=told.append)
    await control.poll()
    assert not control.paused
    clock.now = berlin(2026, 3, 27, 20, 0)
    await control.poll()
    assert control.status() == "paused until Mon 09:00 Europe/Berlin"
    clock.now = berlin(2026, 3, 30, 8, 59, 59)  # Monday, summer time (CEST): still closed
    await control.poll()
    assert control.status() == "paused until 09:00 Europe/Berlin"
    clock.now = berlin(2026, 3, 30, 9, 0)
    await control.poll()
    assert not control.paused
    assert told == [
        "paused until Mon 09:00 Europe/Berlin: no new batch starts, the requests in flight "
        "finish (send window Mon-Fri 09:00-20:00 Europe/Berlin)",
        "resumed after 60 h 0 min paused",  # Friday 19:00 UTC to Monday 07:00 UTC
    ]
    control.request(True, "SIGUSR1")  # a pause and a closed window at once
    clock.now = berlin(2026, 3, 30, 21, 0)
    await asyncio.sleep(0.01)
    assert control.status() == "paused by SIGUSR1; the window opens Tue 09:00 Europe/Berlin"


def test_the_progress_line_says_paused_and_drops_the_eta() -> None:
    s = Summary(provider="maxtraffic")
    s.read, s.delivered = 100, 40
    running_parts = line_parts(s, 200, 10.0, "600/min")
    paused = line_parts(s, 200, 10.0, "600/min", "paused until 09:00 Europe/Berlin")
    assert any(p.startswith("ETA") for p in running_parts)
    assert paused[1] == "paused until 09:00 Europe/Berlin"
    assert not any(p.startswith("ETA") for p in paused)


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


# -- a windowed send, driven by an injected clock ---------------------------------------------


def requests_in(entries: list[dict[str, Any]]) -> int:
    return len({e["request"] for e in entries})


async def test_a_windowed_send_waits_for_the_opening_pauses_at_the_closing_and_finishes(
    tmp_path: Path,
) -> None:
    n = 60
    rows = [(f"v{i:03d}", f"u{i:03d}") for i in range(n)]
    extra = 'limit = "30/1s"\nwindow = "Mon-Fri 09:00-20:00"\ntimezone = "Europe/Berlin"'
    campaign = write_campaign(
        tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=1, in_flight=2,
        extra=extra,
    )  # fmt: skip
    clock = WallClock(berlin(2026, 3, 30, 8, 59, 50))  # Monday, just after the spring change
    told: list[str] = []
    setup = PauseSetup(clock=clock, interval=0.02, on_change=told.append)
    engines: list[Any] = []
    config = SandboxConfig(api_key=KEY, ledger=tmp_path / "ledger.jsonl", limit=100_000)
    async with running(config) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        with capture_logs() as events:
            task = asyncio.create_task(
                send_campaign(
                    settings,
                    {"api_key": KEY},
                    pause=setup,
                    on_start=engines.append,
                    progress_every=0.05,
                )
            )
            await asyncio.sleep(0.3)
            control = engines[0].pause
            assert control.status() == "paused until 09:00 Europe/Berlin"
            assert sb.ledger_entries() == []  # nothing before the window opens
            clock.now = berlin(2026, 3, 30, 9, 0)
            assert await wait_for(lambda: requests_in(sb.ledger_entries()) >= 10)
            clock.now = berlin(2026, 3, 30, 20, 0)
            assert await wait_for(lambda: control.paused)
            await asyncio.sleep(0.3)  # the requests in flight finish
            sent = requests_in(sb.ledger_entries())
            assert sent < n
            await asyncio.sleep(0.5)
            assert requests_in(sb.ledger_entries()) == sent  # none while closed
            assert control.status() == "paused until Tue 09:00 Europe/Berlin"
            clock.now = berlin(2026, 3, 31, 9, 0)
            result = await asyncio.wait_for(task, 30)
        entries = sb.ledger_entries()
    assert result.summary.delivered == n
    assert result.stopped is None
    ids = Counter(e["value"] for e in entries if e["kind"] == "id")
    assert set(ids) == {v for v, _ in rows}
    assert max(ids.values()) == 1
    paused_progress = [e for e in events if e["event"] == "progress" and "paused" in e]
    assert "paused until 09:00 Europe/Berlin" in {e["paused"] for e in paused_progress}
    assert "paused until Tue 09:00 Europe/Berlin" in {e["paused"] for e in paused_progress}
    changes = [e for e in events if e["event"] in ("send_paused", "send_resumed")]
    assert [e["event"] for e in changes] == ["send_paused", "send_resumed"] * 2
    assert changes[0]["until"] == "2026-03-30T07:00:00+00:00"
    assert told[0].startswith("paused until 09:00 Europe/Berlin: no new batch starts")


# -- real processes --------------------------------------------------------------------------

N = 150


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    args = ["--api-key", KEY, "--ledger", str(tmp_path / "ledger.jsonl"), "--limit", "100000"]
    with SandboxProcess("maxtraffic", *args, "--stats", str(tmp_path / "stats.json")) as p:
        yield p


def paced_campaign(tmp_path: Path) -> Path:
    """N recipients, one a request, at 50 requests a second: a send of about 3 s."""
    rows = [(f"v{i:04d}", f"u{i:04d}") for i in range(N)]
    return write_campaign(
        tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=1, in_flight=4,
        extra='limit = "50/1s"',
    )  # fmt: skip


class Send:
    """``python -m bulksend send`` in a child process, its stderr in a file."""

    def __init__(self, tmp_path: Path, campaign: Path, *args: str) -> None:
        self.err_path = tmp_path / "send.err"
        self.summary = tmp_path / "summary.json"
        self._err = self.err_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bulksend", "send", str(campaign), *args,
             "--summary-json", str(self.summary), "-q", "--progress", "never"],
            env={**os.environ, "MAXTRAFFIC_API_KEY": KEY},
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._err,
        )  # fmt: skip

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._err.close()


def ledger_requests(path: Path) -> int:
    return len({e["request"] for e in read_ledger(path)}) if path.exists() else 0


def assert_nothing_arrives_while_paused(ledger: Path, send: Send) -> int:
    """Once the send says it paused: the requests in flight land, then nothing for a second."""
    assert wait_until(lambda: "bulksend: paused by" in send.stderr(), timeout=10), send.stderr()
    time.sleep(0.5)  # the requests in flight finish (4 at most, a few ms each)
    sent = ledger_requests(ledger)
    time.sleep(1.0)
    assert ledger_requests(ledger) == sent, "a request arrived while the send was paused"
    assert 0 < sent < N
    assert send.process.poll() is None  # the process keeps running
    return sent


def assert_every_recipient_arrived_once(tmp_path: Path, send: Send) -> None:
    assert send.wait() == 0, send.stderr()
    summary = orjson.loads(send.summary.read_bytes())
    assert (summary["delivered"], summary["failed"], summary["skipped"]) == (N, 0, 0)
    entries = read_ledger(tmp_path / "ledger.jsonl")
    ids = Counter(e["value"] for e in entries if e["kind"] == "id")
    assert set(ids) == {f"v{i:04d}" for i in range(N)}
    assert max(ids.values()) == 1
    assert summary["requests"] == N  # no request was lost or repeated by the pause


def test_sigusr1_pauses_a_running_send_and_sigusr2_resumes_it(
    tmp_path: Path, sandbox: SandboxProcess
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    journal = tmp_path / "c.journal"
    send = Send(tmp_path, paced_campaign(tmp_path), "--base-url", sandbox.base_url,
                "--journal", str(journal))  # fmt: skip
    try:
        assert wait_until(lambda: ledger_requests(ledger) >= 20, timeout=20), send.stderr()
        send.process.send_signal(signal.SIGUSR1)
        assert_nothing_arrives_while_paused(ledger, send)
        assert (
            "bulksend: paused by SIGUSR1: no new batch starts, the requests in flight finish; "
            f"to go on: SIGUSR2 or `bulksend resume {journal}`\n"
        ) in send.stderr()
        send.process.send_signal(signal.SIGUSR2)
        assert_every_recipient_arrived_once(tmp_path, send)
    finally:
        send.wait()
    assert re.search(r"^bulksend: resumed after \d s paused$", send.stderr(), re.M)
    sandbox.stop()
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())
    assert stats["requests"] == N


def test_bulksend_pause_and_resume_from_a_second_process(
    tmp_path: Path, sandbox: SandboxProcess
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    journal = tmp_path / "c.journal"
    send = Send(tmp_path, paced_campaign(tmp_path), "--base-url", sandbox.base_url,
                "--journal", str(journal))  # fmt: skip
    try:
        assert wait_until(lambda: ledger_requests(ledger) >= 20, timeout=20), send.stderr()
        paused = run_bulksend_cli("pause", str(journal))
        assert paused.returncode == 0, paused.stderr
        assert paused.stderr == (
            f"bulksend: paused {journal}: a send on it starts no new batch (within a second) "
            "and one started later waits too, until `bulksend resume`\n"
        )
        assert_nothing_arrives_while_paused(ledger, send)
        assert "bulksend: paused by bulksend pause: no new batch starts" in send.stderr()
        resumed = run_bulksend_cli("resume", str(journal))
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stderr.startswith(f"bulksend: resumed {journal}: ")
        assert_every_recipient_arrived_once(tmp_path, send)
    finally:
        send.wait()
    assert JournalSwitch(journal).read_now() is None


def run_bulksend_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bulksend", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip


def test_pause_and_resume_say_what_they_did_and_refuse_what_they_cannot(tmp_path: Path) -> None:
    journal = tmp_path / "c.journal"
    missing = run_cli("pause", str(journal))
    assert (missing.status, missing.stderr.count("\n")) == (2, 1)
    assert missing.stderr.startswith(f"bulksend: error: {journal}: no such journal")
    journal.write_text("not sqlite at all, but long enough to be read as a file header......")
    bad = run_cli("pause", str(journal))
    assert (bad.status, bad.stderr.count("\n")) == (2, 1)
    assert bad.stderr.startswith(f"bulksend: error: {journal}: not a bulksend journal")
    journal.unlink()
    import sqlite3

    with sqlite3.connect(journal) as db:  # a journal: it has the campaign table
        db.execute("CREATE TABLE campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.close()
    assert run_cli("resume", str(journal)).stderr == (
        f"bulksend: {journal} was not paused (a send outside its send window waits for it)\n"
    )
    assert run_cli("pause", str(journal)).status == 0
    assert run_cli("pause", str(journal)).stderr == f"bulksend: {journal} was paused already\n"
    assert JournalSwitch(journal).read_now() is not None
    assert run_cli("resume", str(journal)).status == 0
    assert JournalSwitch(journal).read_now() is None
    both = run_cli("pause", str(journal), "--campaign", "X")
    assert (both.status, both.stderr) == (
        2, "bulksend: error: --campaign goes with a redis:// URL, not with a journal\n"
    )  # fmt: skip
    nameless = run_cli("resume", "redis://127.0.0.1:1/0")
    assert (nameless.status, nameless.stderr) == (
        2, "bulksend: error: resume with a Redis URL needs --campaign NAME (the campaign's name)\n"
    )  # fmt: skip
    unreachable = run_cli("pause", "redis://127.0.0.1:1/0", "--campaign", "X")
    assert (unreachable.status, unreachable.stderr.count("\n")) == (4, 1)
    assert unreachable.stderr.startswith(
        "bulksend: redis://127.0.0.1:1/0 (campaign 'X'): cannot pause: "
    )


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not RedisServer.available():
        pytest.skip("REDIS UNAVAILABLE: install redis-server; the Redis pause did NOT run")
    with RedisServer() as server:
        yield server.url


def test_a_campaign_paused_in_redis_waits_from_its_start_until_resumed(
    tmp_path: Path, sandbox: SandboxProcess, redis_url: str
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    campaign = paced_campaign(tmp_path)  # name = "E2E"
    paused = run_cli("pause", redis_url, "--campaign", "E2E")
    assert paused.status == 0, paused.stderr
    send = Send(tmp_path, campaign, "--base-url", sandbox.base_url, "--limiter", redis_url,
                "--no-journal")  # fmt: skip
    try:
        assert wait_until(lambda: "bulksend: paused by" in send.stderr(), timeout=20), send.stderr()
        time.sleep(1.0)
        assert ledger_requests(ledger) == 0
        assert (
            "bulksend: paused by bulksend pause: no new batch starts, the requests in flight "
            f"finish; to go on: `bulksend resume {redis_url} --campaign E2E`\n"
        ) in send.stderr()
        send.process.send_signal(signal.SIGUSR2)  # not this process's pause: still paused
        assert wait_until(lambda: "SIGUSR2: still paused" in send.stderr(), timeout=10)
        assert ledger_requests(ledger) == 0
        resumed = run_cli("resume", redis_url, "--campaign", "E2E")
        assert resumed.status == 0, resumed.stderr
        assert_every_recipient_arrived_once(tmp_path, send)
    finally:
        send.wait()


async def read_redis_pause(url: str, campaign: str) -> Pause | None:
    switch = RedisSwitch(url, campaign)
    try:
        return await switch.read()
    finally:
        await switch.aclose()


def test_a_send_with_its_state_in_redis_is_paused_through_the_campaigns_key(
    tmp_path: Path, sandbox: SandboxProcess, redis_url: str
) -> None:
    """With ``--state redis://`` the send's own pause is the campaign's key in that Redis (no
    journal file to hold it): ``bulksend pause URL --campaign NAME`` pauses it, SIGUSR1 writes
    the same key, and no warning about a journal file that does not exist."""
    ledger = tmp_path / "ledger.jsonl"
    send = Send(tmp_path, paced_campaign(tmp_path), "--base-url", sandbox.base_url,
                "--state", redis_url)  # fmt: skip
    try:
        assert wait_until(lambda: ledger_requests(ledger) >= 20, timeout=20), send.stderr()
        paused = run_cli("pause", redis_url, "--campaign", "E2E")
        assert paused.status == 0, paused.stderr
        assert_nothing_arrives_while_paused(ledger, send)
        resumed = run_cli("resume", redis_url, "--campaign", "E2E")
        assert resumed.status == 0, resumed.stderr
        assert wait_until(lambda: "bulksend: resumed after" in send.stderr(), timeout=10)
        send.process.send_signal(signal.SIGUSR1)
        assert wait_until(lambda: "paused by SIGUSR1" in send.stderr(), timeout=10)
        assert asyncio.run(read_redis_pause(redis_url, "E2E")) is not None
        resumed = run_cli("resume", redis_url, "--campaign", "E2E")
        assert resumed.status == 0, resumed.stderr
        assert_every_recipient_arrived_once(tmp_path, send)
    finally:
        send.wait()
    assert "pause_unreadable" not in send.stderr()
    assert "journal" not in send.stderr()


async def test_the_redis_switch_reads_what_it_wrote(redis_url: str) -> None:
    switch, again, other = (RedisSwitch(redis_url, name) for name in ("Sale", "Sale", "Other"))
    try:
        assert await switch.read() is None
        await switch.write(Pause("bulksend pause", 12.5))
        assert await again.read() == Pause("bulksend pause", 12.5)
        assert await other.read() is None
        await switch.write(None)
        assert await again.read() is None
    finally:
        for s in (switch, again, other):
            await s.aclose()


async def test_a_send_started_on_a_paused_journal_waits_until_it_is_resumed(
    tmp_path: Path,
) -> None:
    from bulksend.campaign import JournalOptions

    rows = [(f"v{i:03d}", f"u{i:03d}") for i in range(20)]
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=5)
    journal = JournalOptions(tmp_path / "c.journal")
    told: list[str] = []
    config = SandboxConfig(api_key=KEY, ledger=tmp_path / "ledger.jsonl", limit=100_000)
    async with running(config) as sb:
        settings = load_settings(campaign, env={}, overrides={"base_url": sb.base_url})
        refused = await send_campaign(settings, {"api_key": "wrong-key-123"}, journal=journal)
        assert refused.summary.delivered == 0  # a 401: the journal exists, nothing was kept
        JournalSwitch(journal.path).write_now(Pause("bulksend pause", time.time()))
        setup = PauseSetup(interval=0.02, on_change=told.append)
        task = asyncio.create_task(
            send_campaign(settings, {"api_key": KEY}, journal=journal, pause=setup)
        )
        await asyncio.sleep(0.3)
        assert sb.ledger_entries() == []
        assert not task.done()
        JournalSwitch(journal.path).write_now(None)  # what `bulksend resume` does
        result = await asyncio.wait_for(task, 30)
    assert result.summary.delivered == 20
    assert told[0] == (
        "paused by bulksend pause: no new batch starts, the requests in flight finish; to go "
        f"on: SIGUSR2 or `bulksend resume {journal.path}`"
    )
    assert told[1].startswith("resumed after ")


def test_a_changed_window_resumes_and_is_named(tmp_path: Path) -> None:
    rows = [(f"v{i:03d}", f"u{i:03d}") for i in range(10)]
    recipients = write_recipients(tmp_path / "r.csv", rows)
    journal = str(tmp_path / "c.journal")
    always = 'window = "00:00-24:00"\ntimezone = "UTC"'
    campaign = write_campaign(tmp_path, recipients, extra=always)
    first = run_cli("send", str(campaign), "--sandbox", "--journal", journal, "-q")
    assert first.status == 0, first.stderr
    write_campaign(tmp_path, recipients, extra=always.replace("UTC", "Europe/Berlin"))
    again = run_cli("send", str(campaign), "--sandbox", "--journal", journal, "-q")
    assert again.status == 0, again.stderr
    assert again.stderr.startswith("bulksend: resuming with ")  # (the sandbox's URL changes too)
    assert (
        ", [send].window changed (was 00:00-24:00 UTC, now 00:00-24:00 Europe/Berlin): "
    ) in again.stderr
