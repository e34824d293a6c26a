"""Shared fixtures: campaign files on disk, an in-loop sandbox, and a CLI runner."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from bulksend import cli
from tests import hypothesis_profiles  # noqa: F401 - loads the Hypothesis profile

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-1234567890"

MAXTRAFFIC_CAMPAIGN = """
provider = "maxtraffic"
name = "E2E"
[message]
campaign = "E2E"
messages = [{{ title = "Hello", body = "World" }}]
[recipients]
path = "{recipients}"
id = "vid"
uid = "uid"
[send]
batch_size = {batch_size}
in_flight = {in_flight}
{extra}
"""


def write_recipients(path: Path, rows: list[tuple[str, str]], header: str = "vid,uid") -> Path:
    path.write_text(header + "\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def write_campaign(
    tmp_path: Path,
    recipients: Path,
    *,
    batch_size: int = 100,
    in_flight: int = 8,
    extra: str = "",
) -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(
        MAXTRAFFIC_CAMPAIGN.format(
            recipients=recipients, batch_size=batch_size, in_flight=in_flight, extra=extra
        )
    )
    return path


def minimal_campaign(tmp_path: Path, recipients: str) -> Path:
    """The smallest MaxTraffic campaign, ``tmp_path/c.toml``: one message title, ``recipients``
    (a name relative to the campaign file) read by its ``vid`` column."""
    path = tmp_path / "c.toml"
    path.write_text(
        'provider = "maxtraffic"\n[message]\nmessages = [{ title = "t" }]\n'
        f'[recipients]\npath = "{recipients}"\nid = "vid"\n'
    )
    return path


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> CliResult:
    """Run the CLI in this process (no event loop may be running)."""
    out, err = io.StringIO(), io.StringIO()
    status = cli.run(list(args), env=dict(env or {}), stdout=out, stderr=err)
    return CliResult(int(status), out.getvalue(), err.getvalue())


def send_to_sandbox(campaign: Path, tmp_path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``bulksend send CAMPAIGN --sandbox`` with a JSON Lines report and a summary (exit 0
    asserted): the report's rows and the summary."""
    report, summary = tmp_path / "o.jsonl", tmp_path / "s.json"
    sent = run_cli(
        "send", str(campaign), "--sandbox", "--report", str(report),
        "--summary-json", str(summary), "-q", "--progress", "never",
    )  # fmt: skip
    assert sent.status == 0, sent.stderr
    rows = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    return rows, orjson.loads(summary.read_bytes())


def run_bulksend(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bulksend`` as a real process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "bulksend", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture
def key() -> str:
    return KEY


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A CLI run in a test configures structlog for the whole process (``-q`` filters info
    events out); each test starts from structlog's defaults, so ``capture_logs`` sees them."""
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _fresh_redactor() -> None:
    """Each test starts with no registered secrets (the redactor is process-wide)."""
    from bulksend.output.logs import redactor

    redactor.clear()


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A private redis-server for one test (``bulksend.distributed.testing.RedisServer``);
    skipped loudly where none is installed (.ci/run installs it)."""
    from bulksend.distributed.testing import RedisServer

    if not RedisServer.available():
        pytest.skip(
            "REDIS UNAVAILABLE -- this test did NOT run: install redis-server "
            "(apt-get install redis-server; .ci/run does it)"
        )
    with RedisServer() as server:
        yield server
