"""Every output path is checked before the first request: one line, exit 2, nothing sent."""

from __future__ import annotations

import errno
from pathlib import Path

import orjson
import pytest

from bulksend.output.outputs import Output, first_problem, problem
from tests.conftest import run_cli, write_campaign, write_recipients

ROWS = [(f"v{i}", f"u{i}") for i in range(120)]
DENIED = OSError(errno.EACCES, "Permission denied")


def denied(path: Path) -> OSError:
    return DENIED


# ---------------------------------------------------------------------------- the checks


def test_nothing_given_and_a_plain_new_file_are_fine(tmp_path: Path) -> None:
    assert problem(Output("--report", None)) is None
    assert problem(Output("--report", tmp_path / "r.csv")) is None
    assert problem(Output("--report", str(tmp_path / "new" / "deeper" / "r.csv"))) is None
    assert problem(Output("--report", "/dev/null")) is None  # a device is written as it is


def test_a_directory_names_itself_with_a_slash_and_suggests_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    expected = "--report out/: is a directory; give a file path such as out/report.csv"
    assert problem(Output("--report", "out", "report.csv")) == expected
    assert problem(Output("--report", "out/", "report.csv")) == expected
    assert problem(Output("--report", Path("out"), "report.csv")) == expected
    new = "--json later/: is a directory; give a file path such as later/plan.json"
    assert problem(Output("--json", "later/", "plan.json")) == new  # even before it exists


def test_standard_output_only_where_the_flag_allows_it() -> None:
    assert problem(Output("--report", "-", stdout=True)) is None
    assert problem(Output("--dead-letter", "-", "dead.jsonl")) == (
        "--dead-letter -: cannot be standard output; give a file path such as dead.jsonl"
    )
    assert problem(Output("--json", "  ", "plan.json")) == (
        "--json: empty path; give a file path such as plan.json"
    )


def test_a_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    target = tmp_path / "notes.txt" / "sub" / "r.csv"
    assert problem(Output("--report", target)) == (
        f"--report {target}: {tmp_path / 'notes.txt'} is not a directory"
    )


def test_unwritable_files_and_directories_with_the_hint(tmp_path: Path) -> None:
    existing = tmp_path / "r.csv"
    existing.write_text("old")
    assert problem(Output("--report", existing), append=denied) == (
        f"--report {existing}: cannot write (Permission denied)"
    )
    assert existing.read_text() == "old"  # looking does not truncate
    new = tmp_path / "a" / "b.journal"
    assert problem(Output("journal", new, hint="or --no-journal"), create_in=denied) == (
        f"journal {new}: cannot create files in {tmp_path}/ (Permission denied); or --no-journal"
    )
    # a file replaced through a temporary file beside it needs its directory too
    assert problem(Output("--out", existing, beside=True), create_in=denied) is not None
    assert problem(Output("--out", existing), create_in=denied) is None


def test_the_real_probes_leave_nothing_behind(tmp_path: Path) -> None:
    existing = tmp_path / "r.csv"
    existing.write_text("old")
    assert problem(Output("--out", existing, beside=True)) is None
    assert problem(Output("--out", tmp_path / "new.csv")) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
    assert existing.read_text() == "old"


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys, where nobody creates files")
def test_a_real_directory_nobody_may_create_files_in() -> None:
    assert problem(Output("--report", "/sys/bulksend/r.csv")) == (
        "--report /sys/bulksend/r.csv: cannot create files in /sys/ (Permission denied)"
    )


def test_outputs_never_overwrite_inputs_or_each_other(tmp_path: Path) -> None:
    rec = tmp_path / "r.csv"
    rec.write_text("vid\nv1\n")
    inputs: dict[str, Path | str] = {"the recipient file": rec, "stdin": "-"}
    same = tmp_path / "." / "r.csv"
    assert first_problem([Output("--report", same, stdout=True)], inputs) == (
        f"--report {same}: is also the recipient file; give it a path of its own"
    )
    a, b = Output("--report", tmp_path / "x.json"), Output("--summary-json", tmp_path / "x.json")
    assert first_problem([a, b]) == (
        f"--summary-json {tmp_path / 'x.json'}: is also --report; give it a path of its own"
    )
    out1, out2 = Output("--report", "-", stdout=True), Output("--summary-json", "-", stdout=True)
    assert first_problem([out1, out2]) == (
        "--report and --summary-json: only one output can be standard output ('-')"
    )
    devnull = [Output("--report", "/dev/null"), Output("--summary-json", "/dev/null")]
    assert first_problem(devnull) is None  # a device can take several outputs


# ---------------------------------------------------------------------------- every command


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    rows = write_recipients(tmp_path / "r.csv", ROWS)
    return write_campaign(tmp_path, rows, batch_size=50)


def assert_usage_error(r: object, expected: str) -> None:
    status, stdout, stderr = r.status, r.stdout, r.stderr  # type: ignore[attr-defined]
    assert (status, stdout) == (2, ""), stderr
    assert stderr == f"bulksend: error: {expected}\n"


@pytest.mark.parametrize(
    ("flag", "example"),
    [
        ("--summary-json", "summary.json"),
        ("--report", "report.csv"),
        ("--dead-letter", "dead-letter.jsonl"),
        ("--journal", "campaign.journal"),
    ],
)
def test_send_refuses_a_directory_before_anything_is_sent(
    campaign: Path, tmp_path: Path, flag: str, example: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    journal = tmp_path / "j.journal"
    extra = [] if flag == "--journal" else ["--journal", str(journal)]
    r = run_cli("send", str(campaign), "--sandbox", *extra, flag, str(out))
    assert_usage_error(
        r, f"{flag} {out}/: is a directory; give a file path such as {out}/{example}"
    )
    assert not journal.exists()  # nothing that would block the corrected command
    assert list(out.iterdir()) == []
    fixed = run_cli("send", str(campaign), "--sandbox", *extra, flag, str(out / example))
    assert fixed.status == 0, fixed.stderr


def test_a_report_in_the_campaign_file_and_github_step_summary_are_checked(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rows = write_recipients(tmp_path / "r.csv", ROWS)
    campaign = write_campaign(tmp_path, rows, extra='report = "out"')
    r = run_cli("send", str(campaign), "--sandbox")
    assert_usage_error(
        r, f"[send] report {out}/: is a directory; give a file path such as {out}/report.csv"
    )
    r = run_cli("send", str(campaign), "--sandbox", env={"BULKSEND_REPORT": str(out)})
    assert r.stderr.startswith(f"bulksend: error: $BULKSEND_REPORT {out}/: is a directory")
    r = run_cli(
        "send", str(campaign), "--sandbox", "--report", str(tmp_path / "ok.csv"),
        env={"GITHUB_STEP_SUMMARY": str(out)},
    )  # fmt: skip
    assert r.stderr.startswith(f"bulksend: error: $GITHUB_STEP_SUMMARY {out}/: is a directory")
    assert not (tmp_path / "ok.csv").exists()


def test_send_never_writes_over_its_recipient_file(campaign: Path, tmp_path: Path) -> None:
    rec = tmp_path / "r.csv"
    before = rec.read_bytes()
    r = run_cli("send", str(campaign), "--sandbox", "--report", str(rec))
    assert_usage_error(r, f"--report {rec}: is also the recipient file; give it a path of its own")
    assert rec.read_bytes() == before


def test_the_default_journal_in_a_place_that_cannot_take_it(campaign: Path, tmp_path: Path) -> None:
    (tmp_path / ".bulksend").write_text("a file where the journal directory would go")
    r = run_cli("send", str(campaign), env={"MAXTRAFFIC_API_KEY": "k" * 20})
    journal = tmp_path / ".bulksend" / "campaign.journal"
    assert_usage_error(
        r,
        f"journal {journal}: {tmp_path / '.bulksend'} is not a directory; "
        "give another with --journal PATH, or --no-journal",
    )


def test_retry_checks_its_outputs_and_leaves_the_journal_as_it_was(
    campaign: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "j.journal"
    first = run_cli("send", str(campaign), "--sandbox", "--journal", str(journal))
    assert first.status == 0, first.stderr
    before = journal.read_bytes()
    (tmp_path / "out").mkdir()
    r = run_cli("retry", str(journal), "--summary-json", str(tmp_path / "out"))
    assert_usage_error(
        r,
        f"--summary-json {tmp_path / 'out'}/: is a directory; give a file path such as "
        f"{tmp_path / 'out'}/summary.json",
    )
    assert journal.read_bytes() == before


def test_dry_run_validate_and_report_merge_check_theirs(campaign: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("send", str(campaign), "--dry-run", "--requests-out", str(out))
    assert_usage_error(
        r, f"--requests-out {out}/: is a directory; give a file path such as {out}/requests.jsonl"
    )
    r = run_cli("validate", str(campaign), "--json", str(out))
    assert_usage_error(
        r, f"--json {out}/: is a directory; give a file path such as {out}/plan.json"
    )
    summary = tmp_path / "s.json"
    assert run_cli("send", str(campaign), "--sandbox", "--summary-json", str(summary)).status == 0
    r = run_cli("report", "merge", str(summary), "--summary-json", str(out))
    assert_usage_error(
        r, f"--summary-json {out}/: is a directory; give a file path such as {out}/total.json"
    )
    r = run_cli("report", "merge", str(summary), "--summary-json", str(summary))
    assert_usage_error(
        r, f"--summary-json {summary}: is also the input {summary}; give it a path of its own"
    )


def test_missing_parent_directories_are_created_for_every_output(
    campaign: Path, tmp_path: Path
) -> None:
    deep = tmp_path / "new" / "deeper"
    r = run_cli("send", str(campaign), "--dry-run", "--requests-out", str(deep / "b.jsonl"))
    assert r.status == 0, r.stderr
    r = run_cli("validate", str(campaign), "--json", str(deep / "plan.json"))
    assert r.status == 0, r.stderr
    r = run_cli(
        "send", str(campaign), "--sandbox", "--report", str(deep / "r.csv"),
        "--summary-json", str(deep / "s.json"),
    )  # fmt: skip
    assert r.status == 0, r.stderr
    assert sorted(p.name for p in deep.iterdir()) == ["b.jsonl", "plan.json", "r.csv", "s.json"]


def test_summary_json_on_standard_output_moves_the_table_to_stderr(campaign: Path) -> None:
    r = run_cli("send", str(campaign), "--sandbox", "--summary-json", "-", "--log-format", "json")
    assert r.status == 0, r.stderr
    assert orjson.loads(r.stdout)["delivered"] == len(ROWS)
    assert "bulksend: maxtraffic campaign 'E2E'" in r.stderr


def test_the_report_on_standard_output(campaign: Path, tmp_path: Path) -> None:
    r = run_cli("send", str(campaign), "--sandbox", "--report", "-", "-q")
    assert r.status == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "line,id,uid,status,reason,http_status,attempts,batch"
    assert len(lines) == 1 + len(ROWS)
    assert all(",delivered," in line for line in lines[1:])
    report = tmp_path / "shard.csv"
    assert run_cli("send", str(campaign), "--sandbox", "--report", str(report)).status == 0
    merged = run_cli("report", "merge", str(report), "--report", "-")
    assert merged.status == 0, merged.stderr
    assert merged.stdout.replace("\r\n", "\n") == report.read_text().replace("\r\n", "\n")
    assert "merged 1 reports" in merged.stderr
    summary = tmp_path / "s.json"
    assert run_cli("send", str(campaign), "--sandbox", "--summary-json", str(summary)).status == 0
    total = run_cli("report", "merge", str(summary), "--summary-json", "-")
    assert total.status == 0, total.stderr
    assert orjson.loads(total.stdout)["merged_from"] == [str(summary)]


def test_leads_checks_out_before_asking_and_stdout_stays_allowed(tmp_path: Path) -> None:
    r = run_cli(
        "leads", "--sandbox", "--from", "2020-01-01", "--to", "2100-01-01", "--out", str(tmp_path)
    )
    assert_usage_error(
        r, f"--out {tmp_path}/: is a directory; give a file path such as {tmp_path}/leads.csv"
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_summary_that_cannot_be_written_after_the_send_keeps_its_status(
    campaign: Path, tmp_path: Path
) -> None:
    """/dev/full passes the check (it opens) and fails the write (disk full)."""
    r = run_cli("send", str(campaign), "--sandbox", "--summary-json", "/dev/full", "-q")
    assert r.status == 0, r.stderr
    assert r.stderr == (
        "bulksend: could not write --summary-json /dev/full: No space left on device\n"
    )


@pytest.mark.skipif(not Path("/proc/version").exists(), reason="needs Linux's /proc")
def test_a_report_that_fails_while_the_send_writes_it_is_one_line(
    campaign: Path, tmp_path: Path
) -> None:
    """/proc/version opens for writing and fails the write (EIO): no traceback, the journal
    keeps the send, which the same command resumes into a report that works."""
    journal = tmp_path / "j.journal"
    args = ["send", str(campaign), "--sandbox", "--journal", str(journal), "-q"]
    r = run_cli(*args, "--report", "/proc/version")
    assert r.status == 1
    (line,) = r.stderr.splitlines()
    assert line.startswith("bulksend: error: /proc/version: ")
    again = run_cli(*args, "--report", str(tmp_path / "report.csv"))
    assert again.status == 0, again.stderr
