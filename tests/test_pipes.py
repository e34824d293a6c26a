"""A reader that goes away (``| head``) never hangs a send, never prints a traceback and never
changes its exit status; the report and the journal are complete all the same.

Real processes and real pipes: a hang fails the test at its timeout instead of hanging CI.
"""

from __future__ import annotations

import io
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from bulksend.output.streams import SafeStream
from tests.conftest import ROOT, write_campaign, write_recipients

ROWS = [(f"v{i}", f"u{i}") for i in range(200)]
BATCHES = 20  # batch_size 10: about 2 s at the sandbox's 600/min, logging all along with -vv
TIMEOUT = 90
BULKSEND = f"{shlex.quote(sys.executable)} -m bulksend"


class Closed(io.StringIO):
    """A stream whose reader has gone."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")


def test_a_safe_stream_passes_writes_through_until_the_reader_goes() -> None:
    kept = io.StringIO()
    safe = SafeStream(kept)
    print("hello", file=safe, flush=True)
    assert (kept.getvalue(), safe.gone) == ("hello\n", False)
    closed = Closed()
    safe = SafeStream(closed)
    assert safe.write("one") == 3  # as if written
    assert safe.write("two") == 3
    safe.flush()
    assert (safe.gone, closed.writes) == (True, 1)  # later writes are not even tried
    assert SafeStream.wrap(safe) is safe


def test_a_real_closed_pipe_is_pointed_at_devnull() -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w")
    os.close(r)
    safe = SafeStream(stream)
    safe.buffer.write(b"a log line\n")  # the byte side: JSON log lines
    safe.buffer.flush()
    assert safe.gone
    safe.write("x" * 100_000)  # dropped
    assert os.write(w, b"now /dev/null") == 13  # what Python still holds is flushed there
    stream.close()


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    rows = write_recipients(tmp_path / "r.csv", ROWS)
    return write_campaign(tmp_path, rows, batch_size=10, in_flight=4)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of a test's process group (a hang, or a shell's children)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop(proc)


def popen(
    started: list[subprocess.Popen[bytes]],
    args: list[str],
    *,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=stdout, stderr=stderr)
    started.append(proc)
    return proc


def assert_complete(report: Path, journal: Path) -> None:
    lines = report.read_text().splitlines()
    assert len(lines) == 1 + len(ROWS)
    assert sum(",delivered," in line for line in lines) == len(ROWS)
    with sqlite3.connect(journal) as db:
        states = db.execute("SELECT state, count(*) FROM batches GROUP BY state").fetchall()
        (outcome,) = db.execute("SELECT outcome FROM runs ORDER BY started DESC LIMIT 1").fetchone()
    assert states == [("delivered", BATCHES)]
    assert outcome == "finished"


def test_stderr_closed_after_three_lines_of_debug_logs(
    campaign: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    report, journal, out = tmp_path / "report.csv", tmp_path / "j.journal", tmp_path / "out.txt"
    with out.open("wb") as stdout:
        proc = popen(
            processes,
            [sys.executable, "-m", "bulksend", "send", str(campaign), "--sandbox", "-vv",
             "--journal", str(journal), "--report", str(report)],
            stdout=stdout, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        for _ in range(3):
            assert proc.stderr.readline()
        proc.stderr.close()  # the reader goes away while the send logs on
        assert proc.wait(timeout=TIMEOUT) == 0
    assert "delivered" in out.read_text()  # the summary, on the stdout that stayed open
    assert_complete(report, journal)


def test_stdout_closed_before_the_report_on_it_is_written(
    campaign: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    journal, err, summary = tmp_path / "j.journal", tmp_path / "err.txt", tmp_path / "s.json"
    with err.open("wb") as stderr:
        proc = popen(
            processes,
            [sys.executable, "-m", "bulksend", "send", str(campaign), "--sandbox", "-v",
             "--journal", str(journal), "--report", "-", "--summary-json", str(summary)],
            stdout=subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=TIMEOUT) == 0
    text = err.read_text()
    assert "Traceback" not in text
    assert "Exception ignored" not in text
    assert '"event":"send_finished"' in text
    assert summary.read_bytes()  # the other outputs are written as ever
    with sqlite3.connect(journal) as db:
        assert db.execute("SELECT state, count(*) FROM batches GROUP BY state").fetchall() == [
            ("delivered", BATCHES)
        ]


@pytest.mark.parametrize(
    ("pipeline", "head"),
    [
        ("{send} -vv 2>&1 >/dev/null", 3),  # debug logs into a pipe that closes at once
        ("{send} 2>&1", 2),  # default verbosity: logs and the summary share the pipe
        ("{send} -vv 2>&1", 1),
    ],
)
def test_shell_pipelines_into_head(
    campaign: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
    pipeline: str,
    head: int,
) -> None:
    report, journal = tmp_path / "report.csv", tmp_path / "j.journal"
    send = (
        f"{BULKSEND} send {shlex.quote(str(campaign))} --sandbox "
        f"--journal {shlex.quote(str(journal))} --report {shlex.quote(str(report))}"
    )
    script = f"{pipeline.format(send=send)} | head -{head} >/dev/null; exit ${{PIPESTATUS[0]}}"
    proc = popen(processes, ["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err + out
    assert_complete(report, journal)


LEADS = ["leads", "--sandbox", "--from", "2020-01-01", "--to", "2100-01-01", "--out", "-"]


def test_leads_on_stdout_into_head(processes: list[subprocess.Popen[bytes]]) -> None:
    leads = f"{BULKSEND} {shlex.join(LEADS)}"
    script = f"{leads} 2>&1 | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}"
    proc = popen(processes, ["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()


def test_leads_into_a_closed_stdout_say_nothing_of_it(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    err = tmp_path / "err.txt"
    with err.open("wb") as stderr:
        args = [sys.executable, "-m", "bulksend", *LEADS]
        proc = popen(processes, args, stdout=subprocess.PIPE, stderr=stderr)
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=TIMEOUT) == 0
    text = err.read_text()
    assert "bulksend: wrote 100 leads" in text
    assert "Traceback" not in text
    assert "Exception ignored" not in text


@pytest.mark.parametrize("closed", ["<&-", ">&-", "2>&-", "<&- >&- 2>&-"])
def test_a_send_started_with_standard_streams_closed(
    campaign: Path, tmp_path: Path, processes: list[subprocess.Popen[bytes]], closed: str
) -> None:
    """A cron job or a daemon can start it with 0, 1 or 2 closed: the next file opened must not
    take their place (uvloop aborted on that, exit 134), and ``sys.stderr`` may be None."""
    report, journal = tmp_path / "report.csv", tmp_path / "j.journal"
    send = (
        f"{BULKSEND} send {shlex.quote(str(campaign))} --sandbox -v "
        f"--journal {shlex.quote(str(journal))} --report {shlex.quote(str(report))}"
    )
    proc = popen(processes, ["bash", "-c", f"{send} {closed}"], stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert_complete(report, journal)
