"""The CLI as users and CI jobs run it: exit statuses, one-line errors, secrets never shown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import KEY, run_bulksend, run_cli, write_campaign, write_recipients

ROWS = [(f"v{i}", f"u{i}") for i in range(300)]


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    return write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", ROWS), batch_size=50)


@pytest.fixture
def sandbox_url() -> Iterator[str]:
    """A MaxTraffic sandbox in its own process, as a user would run it."""
    with SandboxProcess("maxtraffic", "--api-key", KEY) as sandbox:
        yield sandbox.base_url


def test_missing_api_key_is_a_usage_error(campaign: Path) -> None:
    r = run_cli("send", str(campaign), env={})
    assert r.status == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "bulksend: error: api_key: environment variable MAXTRAFFIC_API_KEY is not set "
        "(export MAXTRAFFIC_API_KEY=... before sending)"
    )


def test_missing_recipient_file(campaign: Path, tmp_path: Path) -> None:
    r = run_cli(
        "send",
        str(campaign),
        "--recipients",
        str(tmp_path / "nope.csv"),
        env={"MAXTRAFFIC_API_KEY": KEY},
    )
    assert r.status == 2
    assert "nope.csv" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_column(tmp_path: Path) -> None:
    recipients = write_recipients(tmp_path / "r.csv", ROWS, header="visitor,uid")
    campaign = write_campaign(tmp_path, recipients)
    r = run_cli("send", str(campaign), env={"MAXTRAFFIC_API_KEY": KEY})
    assert r.status == 2
    assert "vid" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_campaign_file(tmp_path: Path) -> None:
    r = run_cli("send", str(tmp_path / "none.toml"), env={})
    assert r.status == 2
    assert "campaign file not found" in r.stderr


def test_bad_flag_value_is_a_usage_error(campaign: Path) -> None:
    r = run_cli("send", str(campaign), "--rate", "lots", env={"MAXTRAFFIC_API_KEY": KEY})
    assert r.status == 2
    assert "rate" in r.stderr


def test_unknown_flag(campaign: Path) -> None:
    r = run_cli("send", str(campaign), "--frobnicate")
    assert r.status == 2


def test_send_to_the_embedded_sandbox(campaign: Path, tmp_path: Path) -> None:
    summary = tmp_path / "s.json"
    r = run_cli("send", str(campaign), "--sandbox", "--summary-json", str(summary), env={})
    assert r.status == 0, r.stderr
    data = orjson.loads(summary.read_bytes())
    assert data["delivered"] == 300
    assert "delivered" in r.stdout


def test_real_processes_real_key_never_shown(
    campaign: Path, tmp_path: Path, sandbox_url: str
) -> None:
    report, summary = tmp_path / "report.csv", tmp_path / "summary.json"
    env = {"MAXTRAFFIC_API_KEY": KEY}
    args = ["send", str(campaign), "--base-url", sandbox_url, "-vv", "--log-format", "json"]
    ok = run_bulksend(*args, "--report", str(report), "--summary-json", str(summary), env=env)
    assert ok.returncode == 0, ok.stderr
    assert orjson.loads(summary.read_bytes())["delivered"] == 300
    events = [orjson.loads(line) for line in ok.stderr.splitlines()]
    assert any(e["event"] == "batch_response" for e in events)
    assert any(e["event"] == "send_finished" for e in events)
    bad = run_bulksend(*args, "--no-journal", env={"MAXTRAFFIC_API_KEY": "not-" + KEY})
    assert bad.returncode == 3
    assert "401" in bad.stderr
    for text in (
        ok.stdout,
        ok.stderr,
        report.read_text(),
        summary.read_text(),
        bad.stdout,
        bad.stderr,
    ):
        assert KEY not in text
