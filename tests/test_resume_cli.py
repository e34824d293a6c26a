"""Resume, start over, retry and their hints, end to end through the CLI against a sandbox.

Running the same send again resumes it (one line on stderr says so); a changed campaign, file or
setting is refused, named; ``--fresh`` starts over; a start the provider kept nothing of does not
block the corrected command; every command the tool prints runs as printed and sends where the
send did.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import KEY, run_bulksend, run_cli, write_campaign, write_recipients

N = 300  # recipients
BATCH = 10
ENV = {"MAXTRAFFIC_API_KEY": KEY}
#: any request to the real API would go through this proxy, which refuses: loopback (the
#: sandbox) is never proxied, so a test that passes sent nothing outside this machine
NO_INTERNET = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def ledger_ids(path: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    if path.exists():
        for line in path.read_bytes().splitlines():
            entry = orjson.loads(line)
            if entry["kind"] == "id":
                out[entry["value"]] += 1
    return out


def sandbox(ledger: Path, *args: str) -> SandboxProcess:
    return SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(ledger), "--limit", "100000", *args
    )


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A sandbox answering 30 % of the sends 500/503 (seeded): with --max-attempts 1, each run
    leaves some recipients failed."""
    ledger = tmp_path / "ledger.jsonl"
    with sandbox(ledger, "--fail-rate", "0.3", "--seed", "5") as sb:
        yield sb.base_url, ledger


@pytest.fixture
def steady(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ledger = tmp_path / "ledger.jsonl"
    with sandbox(ledger) as sb:
        yield sb.base_url, ledger


ROWS = [(f"v{i:04d}", f"u{i:04d}") for i in range(N)]


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    recipients = write_recipients(tmp_path / "r.csv", ROWS)
    return write_campaign(tmp_path, recipients, batch_size=BATCH, in_flight=4)


def journal_of(campaign: Path) -> Path:
    return campaign.parent / ".bulksend" / "campaign.journal"


def summary_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(path.read_bytes())
    return data


def one_line(stderr: str, marker: str) -> str:
    """The one stderr line holding ``marker`` (the JSON log lines aside)."""
    lines = [x for x in stderr.splitlines() if marker in x and not x.startswith("{")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_the_same_command_again_resumes_and_says_so_on_one_line(
    campaign: Path, flaky: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger = flaky
    send = ["send", str(campaign), "--base-url", url, "--max-attempts", "1", "--summary-json"]
    first = run_cli(*send, str(tmp_path / "s1.json"), env=ENV)
    assert first.status == 1, first.stderr
    s1 = summary_of(tmp_path / "s1.json")
    assert 0 < s1["delivered"] < N
    assert "resuming" not in first.stderr
    second = run_cli(*send, str(tmp_path / "s2.json"), env=ENV)
    assert second.status in (0, 1), second.stderr
    settled = s1["delivered"] // BATCH
    assert one_line(second.stderr, "resuming") == (
        f"bulksend: resuming: {settled} of {N // BATCH} batches settled by an earlier run "
        f"({journal_of(campaign)}; --fresh starts over)"
    )
    s2 = summary_of(tmp_path / "s2.json")
    assert s2["delivered_earlier"] == s1["delivered"]
    assert s2["requests"] == N // BATCH - settled  # only what was not delivered went again
    assert max(ledger_ids(ledger).values()) == 1


def test_a_changed_file_campaign_or_setting_is_refused_naming_it(
    campaign: Path, flaky: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger = flaky
    send = ["send", str(campaign), "--base-url", url, "--max-attempts", "1"]
    assert run_cli(*send, env=ENV).status == 1
    arrived = sum(ledger_ids(ledger).values())
    journal = journal_of(campaign)
    recipients = tmp_path / "r.csv"
    original = recipients.read_bytes()
    tail = "; restore it, or add --fresh to start over (sending everything again)"

    recipients.write_bytes(original + b"vNEW,uNEW\n")
    changed = run_cli(*send, env=ENV)
    assert changed.status == 2
    assert changed.stderr.strip() == (
        f"bulksend: error: {journal}: cannot resume: the recipient file changed "
        f"({recipients}) since this journal was written{tail}"
    )
    recipients.write_bytes(original)

    bigger = run_cli(*send, "--batch-size", "20", env=ENV)
    assert bigger.status == 2
    assert bigger.stderr.strip() == (
        f"bulksend: error: {journal}: cannot resume: the batch size changed (was 10, now 20) "
        f"since this journal was written{tail}"
    )
    text = campaign.read_text()
    campaign.write_text(text.replace("[send]\n", '[send]\nrate = "6000/min"\n'))
    edited = run_cli(*send, env=ENV)
    assert edited.status == 2
    assert edited.stderr.strip() == (
        f"bulksend: error: {journal}: cannot resume: the campaign file changed ([send].rate) "
        f"since this journal was written{tail}"
    )
    assert sum(ledger_ids(ledger).values()) == arrived  # nothing was sent by the refusals

    fresh = run_cli(*send, "--fresh", "--summary-json", str(tmp_path / "s.json"), env=ENV)
    assert fresh.status in (0, 1), fresh.stderr
    assert "resuming" not in fresh.stderr
    s = summary_of(tmp_path / "s.json")
    assert (s["delivered_earlier"], s["requests"]) == (0, N // BATCH)  # everything, again


def test_a_start_the_provider_kept_nothing_of_does_not_block_the_corrected_command(
    campaign: Path, steady: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger = steady
    send = ["send", str(campaign), "--base-url", url, "--progress", "never"]
    # a wrong key: stopped after the first request, exit 3 ("fix the key and run it again")
    wrong = run_cli(*send, env={"MAXTRAFFIC_API_KEY": "wrong"})
    assert wrong.status == 3, wrong.stderr
    # a report that cannot be written (another error before anything is sent)
    (tmp_path / "file").write_text("")
    unwritable = run_bulksend(*send, "--report", str(tmp_path / "file" / "r.csv"), env=ENV)
    assert unwritable.returncode != 0
    # a file with no valid row: exit 2; then the file is fixed
    recipients = tmp_path / "r.csv"
    good = recipients.read_bytes()
    recipients.write_text("vid,uid\n" + "".join(f"v{i},u{i},extra\n" for i in range(5)))
    bad = run_cli(*send, env=ENV)
    assert bad.status == 2, bad.stderr
    assert "no valid recipient" in bad.stderr
    assert ledger_ids(ledger) == Counter()
    recipients.write_bytes(good)
    fixed = run_cli(*send, "--summary-json", str(tmp_path / "s.json"), env=ENV)
    assert fixed.status == 0, fixed.stderr
    assert one_line(fixed.stderr, "starting over") == (
        f"bulksend: starting over: the recipient file changed ({recipients}), and the provider "
        f"kept nothing the earlier run sent ({journal_of(campaign)})"
    )
    ids = ledger_ids(ledger)
    assert len(ids) == N
    assert max(ids.values()) == 1
    assert summary_of(tmp_path / "s.json")["delivered"] == N


def hint(stdout: str) -> list[str]:
    """The command of the ``to send them again:`` line, as argv."""
    lines = [x for x in stdout.splitlines() if x.strip().startswith("to send them again:")]
    assert len(lines) == 1, stdout
    argv = shlex.split(lines[0].split(":", 1)[1])
    assert argv[:2] == ["bulksend", "retry"]
    return argv


def test_the_printed_hint_runs_as_printed_and_sends_where_the_send_did(
    campaign: Path, flaky: tuple[str, Path]
) -> None:
    url, ledger = flaky
    # the base URL from the environment, limits from flags: the hint must keep them all
    env = {**ENV, "BULKSEND_BASE_URL": url}
    first = run_cli(
        "send", str(campaign), "--max-attempts", "1", "--in-flight", "2", "--progress", "never",
        env=env,
    )  # fmt: skip
    assert first.status == 1, first.stderr
    failed = N - len(ledger_ids(ledger))
    assert f"  not delivered: {failed} failed (listed in " in first.stdout
    argv = hint(first.stdout)
    assert argv == ["bulksend", "retry", str(journal_of(campaign))]
    for _ in range(10):  # each run leaves fewer failed (30 % of the rest): run the hint again
        run = run_bulksend(*argv[1:], env={**ENV, **NO_INTERNET})  # no BULKSEND_BASE_URL
        assert run.returncode in (0, 1), run.stderr
        assert "  retries       0\n" in run.stdout  # --max-attempts 1 kept
        if run.returncode == 0:
            assert "to send them again" not in run.stdout
            break
        argv = hint(run.stdout)
    else:
        pytest.fail("the printed hint never delivered the rest")
    ids = ledger_ids(ledger)
    assert len(ids) == N  # delivered by the sandbox: where the first send sent
    assert max(ids.values()) == 1


def test_without_a_journal_the_hint_names_no_command(
    campaign: Path, flaky: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = flaky
    dead = tmp_path / "dead.jsonl"
    r = run_cli(
        "send", str(campaign), "--base-url", url, "--max-attempts", "1", "--no-journal",
        "--dead-letter", str(dead), env=ENV,
    )  # fmt: skip
    assert r.status == 1
    lines = r.stdout.splitlines()
    failed = len(dead.read_bytes().splitlines())
    assert f"  not delivered: {failed} failed (listed in {dead})" in lines
    assert (
        "  no journal was kept (--no-journal, --sandbox or stdin), so no command can send them "
        "again as this send ran"
    ) in lines
    assert not any("bulksend " in line for line in lines[1:])


def test_retry_of_a_sandbox_send_sends_to_a_sandbox_again(campaign: Path, tmp_path: Path) -> None:
    journal = tmp_path / "sandbox.journal"
    r = run_cli("send", str(campaign), "--sandbox", "--journal", str(journal), env={})
    assert r.status == 0, r.stderr
    again = run_bulksend("retry", str(journal), "--summary-json", str(tmp_path / "s.json"),
                         env={"MAXTRAFFIC_API_KEY": "", **NO_INTERNET})  # fmt: skip
    assert again.returncode == 0, again.stderr  # no key needed: a sandbox, not the real API
    s = summary_of(tmp_path / "s.json")
    assert (s["delivered"], s["delivered_earlier"], s["requests"]) == (N, N, 0)
