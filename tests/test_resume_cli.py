"""Resume, start over, retry and their hints, end to end through the CLI against a sandbox.

Running the same send again resumes it (one line on stderr says so); a change of what is sent is
refused, named, one of how it is sent resumes, named; ``--fresh`` starts over; a start the
provider kept nothing of does not block the corrected command; every command the tool prints
runs as printed and sends where the send did; possible duplicates are marked per row and counted
for the whole campaign, checked against the sandbox's ledger.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.sandbox.ledger import ledger_counts
from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import KEY, ROOT, run_bulksend, run_cli, write_campaign, write_recipients

N = 300  # recipients
BATCH = 10
ENV = {"MAXTRAFFIC_API_KEY": KEY}
#: any request to the real API would go through this proxy, which refuses: loopback (the
#: sandbox) is never proxied, so a test that passes sent nothing outside this machine
NO_INTERNET = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def ledger_ids(path: Path) -> Counter[str]:
    return ledger_counts(path, "id")


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


def test_a_change_of_what_is_sent_is_refused_naming_it_one_of_how_resumes(
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
    assert sum(ledger_ids(ledger).values()) == arrived  # nothing was sent by the refusals

    # how it is sent may change: the resume goes on and names it; what is sent may not
    text = campaign.read_text()
    campaign.write_text(text.replace("[send]\n", '[send]\nrate = "6000/min"\n'))
    paced = run_cli(*send, "--summary-json", str(tmp_path / "paced.json"), env=ENV)
    assert paced.status in (0, 1), paced.stderr
    assert one_line(paced.stderr, "resuming").startswith(
        "bulksend: resuming with [send].rate changed (was none, now 6000/60s): "
        f"{arrived // BATCH} of {N // BATCH} batches settled by an earlier run"
    )
    assert summary_of(tmp_path / "paced.json")["requests"] == (N - arrived) // BATCH
    assert max(ledger_ids(ledger).values()) == 1
    arrived = sum(ledger_ids(ledger).values())
    campaign.write_text(campaign.read_text().replace('"World"', '"Moon"'))
    edited = run_cli(*send, env=ENV)
    assert edited.status == 2
    assert edited.stderr.strip() == (
        f"bulksend: error: {journal}: cannot resume: the message changed and the campaign "
        "file changed ([message].messages) since this journal was written; restore them, or "
        "add --fresh to start over (sending everything again)"
    )
    assert sum(ledger_ids(ledger).values()) == arrived

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


# -- possible duplicates: kill -9, resume, a second Ctrl-C, retry -------------------------------

BIG = 6_000
BIG_BATCH = 100


def start(campaign: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bulksend", "send", str(campaign), "--base-url", url]
    return subprocess.Popen(
        [*argv, "--quiet", "--progress", "never", *extra],
        env={**os.environ, **ENV},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_arrivals(ledger: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while sum(ledger_ids(ledger).values()) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the send made no progress"
        time.sleep(0.02)


def test_possible_duplicates_are_marked_and_counted_across_runs(tmp_path: Path) -> None:
    """Run 1 is killed (-9); the same command resumes and is stopped at once by a second
    SIGINT with requests in flight; ``retry`` finishes. Every recipient the sandbox received
    twice is reported "may have arrived twice", and the summary counts them all."""
    ledger = tmp_path / "ledger.jsonl"
    rows = [(f"v{i:05d}", f"u{i:05d}") for i in range(BIG)]
    campaign = write_campaign(
        tmp_path, write_recipients(tmp_path / "big.csv", rows), batch_size=BIG_BATCH, in_flight=4
    )
    faults = ("--latency-ms", "100", "--drop-after-accept-rate", "0.05", "--seed", "3")
    with sandbox(ledger, *faults) as sb:
        first = start(campaign, sb.base_url)
        wait_for_arrivals(ledger, BIG // 4, first)
        first.kill()  # SIGKILL: no clean-up of any kind
        first.communicate()
        time.sleep(0.3)  # what the sandbox was still answering lands in the ledger
        before = sum(ledger_ids(ledger).values())

        second = start(campaign, sb.base_url)
        wait_for_arrivals(ledger, before + 8 * BIG_BATCH, second)
        second.send_signal(signal.SIGINT)
        time.sleep(0.03)  # the drain waits for answers 100 ms away: these are cut off
        second.send_signal(signal.SIGINT)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 130, err
        assert "stopped at once" in err
        assert one_line(err, "resuming").startswith("bulksend: resuming: ")

        report, summary = tmp_path / "report.jsonl", tmp_path / "summary.json"
        retry = run_bulksend(
            "retry", str(journal_of(campaign)), "--report", str(report),
            "--summary-json", str(summary), "-q", "--progress", "never", env=ENV,
        )  # fmt: skip
        assert retry.returncode == 0, retry.stderr

    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in rows}
    arrived_twice = {i for i, n in ids.items() if n > 1}
    lines = [orjson.loads(x) for x in report.read_bytes().splitlines()]
    marked = {x["id"]: x["reason"] for x in lines if x["reason"].startswith("may have arrived")}
    assert arrived_twice  # (the sandbox dropped answers after accepting)
    assert arrived_twice <= set(marked)  # every real double arrival is named
    s = summary_of(summary)
    assert s["delivered"] == BIG
    assert s["possible_duplicates"] == len(marked)  # the whole campaign's, all three runs
    assert 0 < s["possible_duplicates_earlier"] < s["possible_duplicates"]
    reasons = {r.split(":", 1)[1].strip() for r in marked.values()}
    assert "resent after run 2 left its outcome unknown (interrupted while in flight)" in reasons
    assert {x["status"] for x in lines if x["id"] in marked} == {"delivered"}

    merged = run_cli("report", "merge", str(summary), str(report), "--summary-json",
                     str(tmp_path / "m.json"))  # fmt: skip
    assert merged.status == 0, merged.stderr
    only = run_cli("report", "merge", str(report), "--summary-json", str(tmp_path / "r.json"))
    assert only.status == 0, only.stderr
    assert summary_of(tmp_path / "r.json")["possible_duplicates"] == len(marked)


def test_the_recipient_file_is_hashed_first_only_when_the_send_needs_it_first(
    tmp_path: Path,
) -> None:
    """Before its first request a send needs the hash only to name a Redis state or to compare
    it with a journal of the campaign (issue 16); else the new journal takes it later."""
    import argparse

    from bulksend.commands.send import _hash_first
    from bulksend.config import load_settings

    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", [("a", "b")]))
    settings = load_settings(campaign, env={"MAXTRAFFIC_API_KEY": KEY})

    def first(**given: Any) -> bool:
        args = {"state": None, "workers": None, "journal": None} | given
        return _hash_first(argparse.Namespace(**args), settings)

    assert not first()
    assert first(state="redis://localhost/0")
    assert first(workers="redis://localhost/0")
    assert not first(journal=tmp_path / "elsewhere.journal")
    (tmp_path / "elsewhere.journal").write_bytes(b"")
    assert first(journal=tmp_path / "elsewhere.journal")
    (tmp_path / ".bulksend").mkdir()
    (tmp_path / ".bulksend" / "campaign.shard-1-of-2.journal").write_bytes(b"")
    assert first()
