"""Suppression lists (``--exclude``, ``[recipients] exclude``) end to end through the CLI.

Against a sandbox process keeping a ledger of what it received: rows listed by id, by uid, in
a CSV list, a gzip JSON Lines list and a plain list are reported ``suppressed`` (naming the list
and its line) and never reach the provider; they are counted in every summary (text, JSON,
GitHub step summary, ``report merge``), by ``validate`` and ``--dry-run``; a resume counts them
again and a changed list refuses it; shards suppress as one send does; a bad list is one line
and nothing is sent.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.sandbox.ledger import ledger_counts
from bulksend.sandbox.testing import SandboxProcess
from tests.conftest import KEY, run_cli, write_campaign, write_recipients

N = 200
BATCH = 10
ENV = {"MAXTRAFFIC_API_KEY": KEY}
ROWS = [(f"v{i:03d}", f"u{i:03d}") for i in range(N)]
#: appended to the recipient file: a copy of a listed row (suppressed again) and of another
#: row (a duplicate)
REPEATS = [("v005", "u005"), ("v006", "u006")]


def line_of(index: int) -> int:
    return index + 2  # the header is line 1


#: recipient line -> the reason it is suppressed with (the id when both are listed)
EXPECTED = {
    line_of(1): "id listed in {unsub}:2",
    line_of(2): "uid listed in {unsub}:3",
    line_of(3): "id listed in {unsub}:4",
    line_of(5): "id listed in {plain}:4",
    line_of(10): "uid listed in {bounces}:1",
    line_of(11): "id listed in {bounces}:2",
    line_of(12): "uid listed in {bounces}:3",
    line_of(20): "id listed in {plain}:1",
    line_of(21): "id listed in {plain}:2",
    N + 2: "id listed in {plain}:4",  # the copy of row 5
}
LISTED_IDS = {"v001", "v003", "v005", "v011", "v020", "v021"}
LISTED_UIDS = {"u002", "u003", "u010", "u012"}
SUPPRESSED_ROWS = {1, 2, 3, 5, 10, 11, 12, 20, 21}


def ledger(path: Path) -> dict[str, Counter[str]]:
    return {kind: ledger_counts(path, kind) for kind in ("id", "uid")}


@pytest.fixture
def lists(tmp_path: Path) -> dict[str, Path]:
    """The three lists: a CSV in the campaign's columns (named in the campaign file), a gzip
    JSON Lines list and a plain list of ids (given with --exclude)."""
    unsub = tmp_path / "unsub.csv"
    unsub.write_text("vid,uid\nv001,\n,u002\nv003,u003\nvNOT-A-RECIPIENT,\n")
    bounces = tmp_path / "bounces.jsonl.gz"
    bounces.write_bytes(gzip.compress(b'{"uid": "u010"}\n{"vid": "v011"}\n{"uid": "u012"}\n'))
    plain = tmp_path / "plain.txt"
    plain.write_text("v020\nv021\n\nv005\n")
    return {"unsub": unsub, "bounces": bounces, "plain": plain}


@pytest.fixture
def campaign(tmp_path: Path, lists: dict[str, Path]) -> Path:
    recipients = write_recipients(tmp_path / "r.csv", ROWS + REPEATS)
    path = write_campaign(tmp_path, recipients, batch_size=BATCH, in_flight=4)
    text = path.read_text().replace('uid = "uid"\n', 'uid = "uid"\nexclude = ["unsub.csv"]\n')
    path.write_text(text)
    return path


def flags(lists: dict[str, Path]) -> list[str]:
    return ["--exclude", str(lists["bounces"]), "--exclude", str(lists["plain"])]


def sandbox(path: Path, *args: str) -> SandboxProcess:
    return SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(path), "--limit", "100000", *args
    )


@pytest.fixture
def steady(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "ledger.jsonl"
    with sandbox(path) as sb:
        yield sb.base_url, path


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "ledger.jsonl"
    with sandbox(path, "--fail-rate", "0.3", "--seed", "5") as sb:
        yield sb.base_url, path


def reasons(lists: dict[str, Path]) -> dict[int, str]:
    names = {"unsub": lists["unsub"], "bounces": lists["bounces"], "plain": lists["plain"]}
    return {line: text.format(**names) for line, text in EXPECTED.items()}


def report_rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def assert_nothing_listed_arrived(path: Path) -> None:
    got = ledger(path)
    assert not LISTED_IDS & set(got["id"])
    assert not LISTED_UIDS & set(got["uid"])
    suppressed = {ROWS[i] for i in SUPPRESSED_ROWS}
    assert not {v for v, _ in suppressed} & set(got["id"])  # nor the other key of their rows
    assert not {u for _, u in suppressed} & set(got["uid"])


def test_listed_rows_are_suppressed_never_sent_and_counted_everywhere(
    campaign: Path, lists: dict[str, Path], steady: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger_path = steady
    step = tmp_path / "step.md"
    report, summary = tmp_path / "o.jsonl", tmp_path / "s.json"
    sent = run_cli(
        "send", str(campaign), "--base-url", url, *flags(lists), "--report", str(report),
        "--summary-json", str(summary), "--progress", "never",
        env={**ENV, "GITHUB_STEP_SUMMARY": str(step)},
    )  # fmt: skip
    assert sent.status == 0, sent.stderr
    assert re.search(r"^  suppressed +10$", sent.stdout, re.M), sent.stdout
    assert_nothing_listed_arrived(ledger_path)
    got = ledger(ledger_path)
    assert len(got["id"]) == N - len(SUPPRESSED_ROWS)
    assert max(got["id"].values()) == max(got["uid"].values()) == 1

    s = orjson.loads(summary.read_bytes())
    assert s["read"] == N + 2
    assert (s["suppressed"], s["duplicates"], s["delivered"]) == (10, 1, N - 9)
    assert s["read"] == sum(s[k] for k in ("delivered", "duplicates", "invalid", "suppressed"))
    rows = report_rows(report)
    assert len(rows) == N + 2
    assert Counter(r["status"] for r in rows) == {
        "delivered": N - 9,
        "suppressed": 10,
        "duplicate": 1,
    }
    suppressed = {r["line"]: r["reason"] for r in rows if r["status"] == "suppressed"}
    assert suppressed == reasons(lists)
    assert "| suppressed | 10 |" in step.read_text()


def test_validate_and_dry_run_count_what_each_list_suppresses(
    campaign: Path, lists: dict[str, Path], tmp_path: Path
) -> None:
    plan = tmp_path / "plan.json"
    checked = run_cli("validate", str(campaign), *flags(lists), "--json", str(plan), env={})
    assert checked.status == 0, checked.stderr
    assert "  suppressed   10 (3 lists, 11 keys)\n" in checked.stdout
    assert f"             3  {lists['unsub']}\n" in checked.stdout
    data = orjson.loads(plan.read_bytes())
    assert (data["rows"], data["valid"], data["suppressed"]) == (N + 2, N - 9, 10)
    assert data["suppressed_by_list"] == {
        str(lists["unsub"]): 3,
        str(lists["bounces"]): 3,
        str(lists["plain"]): 4,
    }
    assert [x["keys"] for x in data["suppression_lists"]] == [5, 3, 3]
    dry = run_cli("send", str(campaign), *flags(lists), "--dry-run", env={})
    assert dry.status == 0, dry.stderr
    assert "  suppressed   10 (3 lists, 11 keys)\n" in dry.stdout
    assert f"  valid        {N - 9}\n" in dry.stdout


def test_a_plain_list_of_uids_and_lists_in_other_columns(
    campaign: Path, steady: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger_path = steady
    campaign.write_text(campaign.read_text().replace('exclude = ["unsub.csv"]\n', ""))
    uids = tmp_path / "uids.txt"
    uids.write_text("u007\nu008\n")
    emails = tmp_path / "people.csv"  # another system's export: its own column names
    emails.write_text("Email,user\nx@example.com,u009\n")
    summary = tmp_path / "s.json"
    send = ["send", str(campaign), "--base-url", url, "--progress", "never", "-q"]
    sent = run_cli(
        *send, "--exclude", str(uids), "--exclude-id-column", "", "--no-journal",
        "--summary-json", str(summary), env=ENV,
    )  # fmt: skip
    assert sent.status == 0, sent.stderr
    assert orjson.loads(summary.read_bytes())["suppressed"] == 2
    assert not {"u007", "u008", "v007", "v008"} & {
        *ledger(ledger_path)["uid"],
        *ledger(ledger_path)["id"],
    }
    other = run_cli(
        "validate", str(campaign), "--exclude", str(emails), "--exclude-uid-column", "user",
        "--exclude-id-column", "", env={},
    )  # fmt: skip
    assert other.status == 0, other.stderr
    assert "  suppressed   1 (1 list, 1 keys)\n" in other.stdout


def test_a_resume_suppresses_again_and_a_changed_list_refuses_it(
    campaign: Path, lists: dict[str, Path], flaky: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger_path = flaky
    send = ["send", str(campaign), "--base-url", url, *flags(lists), "--max-attempts", "1"]
    first = run_cli(*send, "--summary-json", str(tmp_path / "s1.json"), env=ENV)
    assert first.status == 1, first.stderr  # some batches failed (30 % of the answers)
    s1 = orjson.loads((tmp_path / "s1.json").read_bytes())
    assert s1["suppressed"] == 10
    assert s1["read"] == s1["delivered"] + s1["failed"] + s1["duplicates"] + 10
    journal = campaign.parent / ".bulksend" / "campaign.journal"

    plain = lists["plain"]
    original = plain.read_bytes()
    plain.write_bytes(original + b"v030\n")
    changed = run_cli(*send, env=ENV)
    assert changed.status == 2
    assert changed.stderr.strip() == (
        f"bulksend: error: {journal}: cannot resume: the suppression lists changed since this "
        "journal was written; restore it, or add --fresh to start over (sending everything "
        "again)"
    )
    plain.write_bytes(original)
    forgotten = run_cli(*send[:4], "--max-attempts", "1", env=ENV)  # the same, without --exclude
    assert forgotten.status == 2
    assert "cannot resume: the suppression lists changed since" in forgotten.stderr
    arrived = ledger(ledger_path)

    retried = run_cli("retry", str(journal), "--summary-json", str(tmp_path / "s2.json"), env=ENV)
    assert retried.status in (0, 1), retried.stderr
    assert "resuming" in retried.stderr
    s2 = orjson.loads((tmp_path / "s2.json").read_bytes())
    assert s2["suppressed"] == 10  # the lists given with --exclude are recorded in the journal
    assert s2["delivered_earlier"] == s1["delivered"]
    assert s2["read"] == s2["delivered"] + s2["failed"] + s2["duplicates"] + s2["suppressed"]
    assert_nothing_listed_arrived(ledger_path)
    assert sum(ledger(ledger_path)["id"].values()) > sum(arrived["id"].values())
    assert max(ledger(ledger_path)["id"].values()) == 1


def test_shards_suppress_as_one_send_and_merge(
    campaign: Path, lists: dict[str, Path], steady: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger_path = steady
    out = tmp_path / "out"
    for i in range(2):
        sent = run_cli(
            "send", str(campaign), "--base-url", url, *flags(lists), "--shard", f"{i}/2",
            "--journal", str(out / f"{i}.journal"), "--report", str(out / f"{i}.csv"),
            "--summary-json", str(out / f"{i}.json"), "-q", "--progress", "never", env=ENV,
        )  # fmt: skip
        assert sent.status == 0, sent.stderr
    merged = run_cli(
        "report", "merge", str(out / "0.json"), str(out / "1.json"), str(out / "0.csv"),
        str(out / "1.csv"), "--summary-json", str(out / "all.json"), env={},
    )  # fmt: skip
    assert merged.status == 0, merged.stderr
    total = orjson.loads((out / "all.json").read_bytes())
    assert (total["suppressed"], total["delivered"], total["duplicates"]) == (10, N - 9, 1)
    assert_nothing_listed_arrived(ledger_path)
    assert max(ledger(ledger_path)["id"].values()) == 1


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--exclude", "{tmp}/nope.csv"], "suppression list {tmp}/nope.csv: no such file"),
        (
            ["--exclude", "{tmp}/emails.csv"],
            "suppression list {tmp}/emails.csv: column 'vid' not found in the header "
            "(columns: 'email')",
        ),
        (
            ["--exclude-uid-column", "user_id"],
            "suppression list {tmp}/unsub.csv: column 'user_id' not found in the header "
            "(columns: 'vid', 'uid')",
        ),
        (
            ["--exclude", "{tmp}/bad.csv"],
            "suppression list {tmp}/bad.csv:3: undecodable bytes (not utf-8; try --encoding)",
        ),
        (
            ["--exclude", "{tmp}/bad.jsonl"],
            "suppression list {tmp}/bad.jsonl:2: malformed JSON: unexpected character, "
            "expected a string key at column 2",
        ),
        (
            ["--exclude", "{tmp}/nokeys.jsonl"],
            "suppression list {tmp}/nokeys.jsonl:1: missing id and uid (the lists' columns: "
            "id 'vid', uid 'uid'; name others with --exclude-id-column, --exclude-uid-column)",
        ),
        (
            ["--exclude", "-"],
            "--exclude: '-' is not a suppression list; give a file (stdin is the recipients' "
            "alone)",
        ),
    ],
)
def test_a_bad_list_is_one_line_and_nothing_is_sent(
    campaign: Path, steady: tuple[str, Path], tmp_path: Path, extra: list[str], expected: str
) -> None:
    url, ledger_path = steady
    (tmp_path / "emails.csv").write_text("email\nx@example.com\n")
    (tmp_path / "bad.csv").write_bytes(b"vid\nv001\n\xff\xfe\n")
    (tmp_path / "bad.jsonl").write_text('{"vid": "v001"}\n{oops\n')
    (tmp_path / "nokeys.jsonl").write_text('{"email": "x@example.com"}\n')
    args = [a.format(tmp=tmp_path) for a in extra]
    for command in (["send", "--base-url", url], ["validate"]):
        done = run_cli(*command[:1], str(campaign), *command[1:], *args, env=ENV)
        assert done.status == 2, done.stderr
        assert done.stderr == f"bulksend: error: {expected.format(tmp=tmp_path)}\n"
    assert ledger(ledger_path) == {"id": Counter(), "uid": Counter()}
    assert not (campaign.parent / ".bulksend").exists()  # no journal was started either


def test_an_empty_list_suppresses_nothing(
    campaign: Path, lists: dict[str, Path], tmp_path: Path
) -> None:
    lists["unsub"].write_text("vid,uid\n")  # only a header: nobody unsubscribed yet
    (tmp_path / "empty.txt").write_text("")
    checked = run_cli("validate", str(campaign), "--exclude", str(tmp_path / "empty.txt"), env={})
    assert checked.status == 0, checked.stderr
    assert "  suppressed   0 (2 lists, 0 keys)\n" in checked.stdout


def test_a_campaign_whose_every_row_is_suppressed_sends_nothing_and_succeeds(
    campaign: Path, steady: tuple[str, Path], tmp_path: Path
) -> None:
    url, ledger_path = steady
    everyone = tmp_path / "everyone.txt"
    everyone.write_text("".join(f"{v}\n" for v, _ in ROWS))
    summary = tmp_path / "s.json"
    sent = run_cli(
        "send", str(campaign), "--base-url", url, "--exclude", str(everyone), "--summary-json",
        str(summary), "-q", "--progress", "never", env=ENV,
    )  # fmt: skip
    assert sent.status == 0, sent.stderr
    s = orjson.loads(summary.read_bytes())
    assert (s["suppressed"], s["delivered"], s["requests"], s["read"]) == (N + 2, 0, 0, N + 2)
    assert ledger(ledger_path) == {"id": Counter(), "uid": Counter()}
    for command in (["validate"], ["send", "--dry-run"]):
        done = run_cli(*command[:1], str(campaign), *command[1:], "--exclude", str(everyone))
        assert done.status == 0, done.stderr  # (not one valid row would exit 2)
        assert f"  suppressed   {N + 2} (2 lists, {N + 3} keys)\n" in done.stdout
    checked = run_cli("validate", str(campaign), "--exclude", str(everyone))
    assert "every valid recipient is suppressed: nothing would be sent" in checked.stdout
