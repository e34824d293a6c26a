"""What CI jobs and people rely on: summaries, thresholds, precedence, dry runs, progress."""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.cli import COMMANDS, build_parser
from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import KEY, ROOT, run_cli, write_campaign, write_recipients

ROWS = [(f"v{i}", f"u{i}") for i in range(200)]


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    rows = [*ROWS, ROWS[0], ("v999", "u999,extra")]  # a duplicate and a row with 3 fields
    return write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=50)


def test_summary_json_and_github_step_summary_match_the_send(
    campaign: Path, tmp_path: Path
) -> None:
    step = tmp_path / "step.md"
    step.write_text("# earlier step\n")
    summary = tmp_path / "s.json"
    r = run_cli(
        "send", str(campaign), "--sandbox", "--summary-json", str(summary),
        env={"GITHUB_STEP_SUMMARY": str(step)},
    )  # fmt: skip
    data = orjson.loads(summary.read_bytes())
    assert r.status == 0, r.stderr
    assert (data["read"], data["delivered"], data["duplicates"], data["invalid"]) == (
        202,
        200,
        1,
        1,
    )
    md = step.read_text()
    assert md.startswith("# earlier step\n")  # appended, not overwritten
    assert "| delivered | 200 |" in md
    assert "| duplicates | 1 |" in md
    assert "— complete" in md


def test_invalid_rows_do_not_fail_the_send_but_are_reported(campaign: Path, tmp_path: Path) -> None:
    report = tmp_path / "o.jsonl"
    r = run_cli("send", str(campaign), "--sandbox", "--report", str(report))
    assert r.status == 0
    rows = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    (bad,) = [x for x in rows if x["status"] == "invalid"]
    assert bad["reason"] == (
        f"{campaign.parent / 'r.csv'}:203: wrong number of fields (expected 2, got 3)"
    )
    assert bad["line"] == 203


def test_dry_run_writes_every_request_without_sending(campaign: Path, tmp_path: Path) -> None:
    bodies = tmp_path / "bodies.jsonl"
    r = run_cli("send", str(campaign), "--dry-run", "--requests-out", str(bodies), env={})
    assert r.status == 0, r.stderr  # no key needed
    lines = [orjson.loads(x) for x in bodies.read_bytes().splitlines()]
    assert len(lines) == 4
    assert lines[0]["headers"]["Authorization"] == "[redacted]"
    sent = [i for x in lines for i in orjson.loads(x["body"])["to_ids"]]
    assert sorted(sent) == sorted(v for v, _ in ROWS)
    assert "dry run: nothing was sent" in r.stdout
    assert "estimated" in r.stdout


def test_validate_counts_without_sending(campaign: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = run_cli("validate", str(campaign), "--json", str(out), "--max-invalid-rate", "0.01", env={})
    assert r.status == 0, r.stderr
    plan = orjson.loads(out.read_bytes())
    assert plan["rows"] == 202
    assert plan["valid"] == 200
    assert plan["duplicates"] == 1
    assert plan["invalid_by_reason"] == {"wrong number of fields (expected 2, got 3)": 1}
    assert plan["requests_per_endpoint"] == {"api": 4}
    assert "MAXTRAFFIC_API_KEY is not set" in r.stdout
    # where to look: the bad row by file and line, in the table and the JSON
    recipients = tmp_path / "r.csv"
    assert "— valid campaign file\n" in r.stdout
    shown = f"  first invalid rows (1 of 1):\n    {recipients}:203: wrong number of fields"
    assert shown in r.stdout
    assert plan["invalid_examples"] == [
        {"line": 203, "reason": "wrong number of fields (expected 2, got 3)"}
    ]


def test_validate_fails_on_more_invalid_rows_than_max_invalid_rate(campaign: Path) -> None:
    r = run_cli("validate", str(campaign), env={})  # one invalid row of 202; the default is 0
    assert r.status == 1
    assert r.stderr == (
        "bulksend: 1 of 202 rows are invalid (0.50%), more than --max-invalid-rate 0 allows\n"
    )
    assert "— valid campaign file\n" in r.stdout
    assert run_cli("validate", str(campaign), "--max-invalid-rate", "0.005", "-q").status == 0
    assert run_cli("validate", str(campaign), "--max-invalid-rate", "0.004", "-q").status == 1
    bad = run_cli("validate", str(campaign), "--max-invalid-rate", "2")
    assert bad.status == 2
    assert "--max-invalid-rate: expected a number between 0 and 1, got '2'" in bad.stderr


def test_a_send_of_a_file_without_one_valid_row_is_an_input_error(tmp_path: Path) -> None:
    rows = [(f"v{i}", f"u{i},x") for i in range(5)]  # three fields each
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows))
    summary = tmp_path / "s.json"
    sent = run_cli("send", str(campaign), "--sandbox", "--summary-json", str(summary), "-q")
    assert sent.status == 2  # as validate: the file is wrong, not the provider
    assert sent.stderr.endswith(
        "bulksend: error: no valid recipient in the file (every row is invalid or a duplicate; "
        "the report and `bulksend validate` say why): nothing was sent\n"
    )
    data = orjson.loads(summary.read_bytes())
    assert (data["read"], data["invalid"], data["requests"]) == (5, 5, 0)  # still written
    assert run_cli("send", str(campaign), "--dry-run", "-q").status == 2


def test_validate_with_no_valid_row_says_nothing_would_be_sent(tmp_path: Path) -> None:
    rows = [(f"v{i}", f"u{i},x") for i in range(12)]  # three fields each
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows))
    r = run_cli("validate", str(campaign), env={})
    assert r.status == 2
    assert "— no valid recipient: nothing would be sent\n" in r.stdout
    assert "  first invalid rows (10 of 12):\n" in r.stdout
    assert f"    {tmp_path / 'r.csv'}:11: wrong number of fields" in r.stdout


def test_strict_lists_the_problems_and_sends_nothing(campaign: Path) -> None:
    r = run_cli("send", str(campaign), "--strict", "--sandbox")
    assert r.status == 2
    assert "r.csv:203: wrong number of fields (expected 2, got 3)" in r.stderr
    assert "nothing sent" in r.stderr


def test_flags_win_over_environment_win_over_the_file(campaign: Path, tmp_path: Path) -> None:
    env = {"BULKSEND_BATCH_SIZE": "20"}
    via_env = tmp_path / "env.json"
    run_cli("send", str(campaign), "--sandbox", "--summary-json", str(via_env), env=env)
    via_flag = tmp_path / "flag.json"
    run_cli(
        "send", str(campaign), "--sandbox", "--batch-size", "100",
        "--summary-json", str(via_flag), env=env,
    )  # fmt: skip
    assert orjson.loads(via_env.read_bytes())["requests"] == 10  # 200 / 20, file says 50
    assert orjson.loads(via_flag.read_bytes())["requests"] == 2


def test_max_failure_rate_threshold(campaign: Path, tmp_path: Path) -> None:
    # a provider that answers every request 500 -> every recipient failed
    with SandboxProcess("maxtraffic", "--api-key", KEY, "--fail-rate", "1") as sandbox:
        base = ["send", str(campaign), "--base-url", sandbox.base_url, "--no-journal"]
        base += ["--max-attempts", "1"]
        env = {"MAXTRAFFIC_API_KEY": KEY}
        assert run_cli(*base, env=env).status == 4  # nothing delivered: provider unavailable
        assert run_cli(*base, "--max-failure-rate", "1", env=env).status == 0
    bad = run_cli(*base, "--max-failure-rate", "2", env=env)
    assert bad.status == 2
    assert "--max-failure-rate" in bad.stderr


def test_an_endpoint_that_never_answered_exits_4_whatever_the_threshold(campaign: Path) -> None:
    # a dead endpoint: no request got an answer -> unavailable, not a failure rate
    base = ["send", str(campaign), "--base-url", "http://127.0.0.1:9", "--no-journal"]
    base += ["--max-attempts", "1", "--max-failure-rate", "1", "-q"]
    r = run_cli(*base, env={"MAXTRAFFIC_API_KEY": KEY})
    assert r.status == 4
    assert (
        "bulksend: http://127.0.0.1:9 never answered (connection refused: 127.0.0.1:9): "
        "is --base-url right? nothing was delivered\n"
    ) in r.stderr


def test_help_has_examples_for_every_command() -> None:
    for command in COMMANDS:
        r = subprocess.run(
            [sys.executable, "-m", "bulksend", command, "--help"],
            capture_output=True, text=True, cwd=ROOT, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert f"usage: bulksend {command}" in r.stdout
        assert "examples:\n  bulksend " in r.stdout, command


def test_every_flag_and_argument_of_every_command_says_what_it_is_for() -> None:
    def undocumented(parser: argparse.ArgumentParser) -> list[str]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += [f"{name} {flag}" for flag in undocumented(sub)]
            elif not action.help:
                out.append("/".join(action.option_strings) or action.dest)
        return out

    assert undocumented(build_parser(full=True)) == []


@pytest.mark.parametrize(
    ("argv", "flag", "expected"),
    [
        (["send", "c.toml", "--max-failure-rate", "1.5"], "--max-failure-rate", "between 0 and 1"),
        (["retry", "j", "--max-failure-rate", "x"], "--max-failure-rate", "between 0 and 1"),
        (["report", "merge", "a.json", "--max-failure-rate", "-1"], "--max-failure-rate", "0 and"),
        (["bench", "--fail-rate", "2"], "--fail-rate", "between 0 and 1"),
        (["bench", "--seconds", "0"], "--seconds", "a number > 0"),
        (["bench", "--latency-ms", "-3"], "--latency-ms", "a number >= 0"),
        (["bench", "--recipients", "0"], "--recipients", "a whole number >= 1"),
        (["bench", "--limit", "1.5"], "--limit", "N/UNIT such as '50/s'"),
        (["sandbox", "maxtraffic", "--fail-rate", "nan"], "--fail-rate", "between 0 and 1"),
    ],
)
def test_bad_flag_values_are_usage_errors_naming_the_flag(
    argv: list[str], flag: str, expected: str
) -> None:
    r = run_cli(*argv)
    assert r.status == 2
    assert f"argument {flag}: expected " in r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_says_why_when_the_sandbox_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real child that exits at once (its argv gains a bad flag): one line, exit 2."""
    real_init = SandboxProcess.__init__

    def broken(self: SandboxProcess, provider: str, *args: str, **kwargs: Any) -> None:
        real_init(self, provider, *args, "--window", "-1", **kwargs)

    monkeypatch.setattr(SandboxProcess, "__init__", broken)
    r = run_cli("bench", "--recipients", "10")
    assert r.status == 2
    assert r.stderr == (
        "bulksend: error: bench: sandbox did not start (exit 2): "
        "bulksend sandbox: error: window must be > 0\n"
    )


def on_a_terminal(*args: str, columns: int = 120) -> tuple[int, str, bytes]:
    """``python -m bulksend ARGS`` with stderr on a pseudo-terminal (a fresh one reports no
    size, so $COLUMNS gives the width): (exit status, what the terminal got, stdout)."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulksend", *args],
        stdout=subprocess.PIPE, stderr=secondary, cwd=ROOT, env=env,
    )  # fmt: skip
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, seen.decode("utf-8", "replace"), out


def test_progress_view_on_a_terminal(campaign: Path) -> None:
    """Run with stderr on a pseudo-terminal: the live line is drawn and redrawn."""
    status, text, out = on_a_terminal(
        "send", str(campaign), "--sandbox", "--rate", "40/s", "--in-flight", "1",
        "--batch-size", "10",
    )  # fmt: skip
    assert status == 0
    assert text.count("\r\x1b[2K") >= 2  # redrawn in place
    assert "202/202 100.0%  delivered 200  " in text  # every row settled, 200 of them delivered
    assert "429s 0" in text
    assert "limit 600/min" in text  # MaxTraffic's assumed limit: below the --rate ceiling
    assert "send_finished" not in text  # info events: the line and the table say it all
    assert b"delivered" in out  # the final summary still goes to stdout


def test_the_line_fits_the_terminal_and_log_lines_scroll_above_it(tmp_path: Path) -> None:
    """Maxemail's deprecation warning is logged mid-send: it gets a line of its own."""
    rows = "email\n" + "".join(f"user{i:03d}@example.com\n" for i in range(30))
    (tmp_path / "r.csv").write_text(rows)
    campaign = tmp_path / "c.toml"
    campaign.write_text(
        (ROOT / "samples" / "maxemail" / "deprecated.toml")
        .read_text()
        .replace('"recipients.csv"', '"r.csv"')
    )
    status, text, _ = on_a_terminal(
        "send", str(campaign), "--sandbox", "--rate", "20/s", "-v", columns=60
    )  # fmt: skip
    assert status == 0, text  # every call 404s in a fresh sandbox: 30 invalid rows
    lines = text.replace("\r\n", "\n").split("\n")
    drawn = [d for line in lines for d in line.split("\r\x1b[2K") if "/30 " in d]
    assert drawn
    assert all(len(d) <= 59 for d in drawn), max(drawn, key=len)
    # no room left for retries; Maxemail sends no rate headers: the rate is being discovered,
    # under the --rate ceiling (20/s: 1,188/min with its 1 % margin)
    assert any(
        re.fullmatch(r"30/30 100\.0%  delivered 0  0/s  limit \d+/min  429s 0", d) for d in drawn
    )
    assert all(int(re.findall(r"limit (\d+)/min", d)[0]) <= 1200 for d in drawn if "limit" in d)
    logged = [line for line in lines if "provider_warning" in line or "send_finished" in line]
    assert len(logged) == 2  # -v: info events too
    for line in logged:  # each on a line of its own: the status line is cleared first ...
        event = line.rpartition("\r\x1b[2K")[2]
        assert "provider_warning" in event or "send_finished" in event
        assert "/30 " not in event
    # ... and drawn again after it
    assert any(line.startswith("0/30 ") or line.startswith(("1", "2", "3")) for line in lines)
