"""``bulksend report merge``: summaries and per-recipient reports of several shards -> one."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.output.report import COLUMNS, Summary
from tests.conftest import run_cli


def summary(path: Path, **counts: Any) -> Path:
    s = Summary(provider="maxtraffic", campaign="Sale")
    for name, value in counts.items():
        setattr(s, name, value)
    path.write_bytes(s.to_json())
    return path


def csv_report(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for line, vid, status in rows:
            w.writerow([line, vid, "", status, "", 200 if status == "delivered" else "", 1, 1])
    return path


def jsonl_report(path: Path, rows: list[tuple[int, str, str]]) -> Path:
    path.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "line": line,
                    "id": vid,
                    "uid": None,
                    "status": status,
                    "reason": "",
                    "http_status": 200,
                    "attempts": 1,
                    "batch": 3,
                }
            )
            + b"\n"
            for line, vid, status in rows
        )
    )
    return path


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    a = summary(
        tmp_path / "s0.json", read=5, delivered=3, duplicates=1, invalid=1, requests=4,
        throttled=1, retries=1, batches=3, elapsed=2.0, warnings=["deprecated field"],
    )  # fmt: skip
    b = summary(
        tmp_path / "s1.json", read=4, delivered=4, requests=2, batches=2, elapsed=4.0,
        warnings=["deprecated field", "other"],
    )  # fmt: skip
    r0 = csv_report(
        tmp_path / "r0.csv",
        [(1, "a", "delivered"), (2, "b", "delivered"), (3, "c", "delivered"),
         (4, "a", "duplicate"), (5, "", "invalid")],
    )  # fmt: skip
    r1 = jsonl_report(
        tmp_path / "r1.jsonl",
        [(6, "d", "delivered"), (7, "e", "delivered"), (8, "f", "delivered"),
         (9, "g", "delivered")],
    )  # fmt: skip
    return [a, b, r0, r1]


def test_merge_sums_counters_takes_the_longest_elapsed_and_recomputes_rates(
    shards: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "total.json"
    result = run_cli("report", "merge", *map(str, shards[:2]), "--summary-json", str(out))
    assert result.status == 0, result.stderr
    data = orjson.loads(out.read_bytes())
    assert data["read"] == 9
    assert data["delivered"] == 7
    assert data["duplicates"] == 1
    assert data["invalid"] == 1
    assert data["requests"] == 6
    assert data["throttled"] == 1
    assert data["batches"] == 5
    assert data["elapsed"] == 4.0
    assert data["recipients_per_second"] == 1.8  # 7 delivered in 4 s
    assert data["warnings"] == ["deprecated field", "other"]
    assert data["provider"] == "maxtraffic"
    assert data["merged_from"] == [str(p) for p in shards[:2]]
    assert "merged 2 summaries" in result.stdout
    assert "delivered" in result.stdout


def test_merge_concatenates_reports_and_checks_them_against_the_summaries(
    shards: list[Path], tmp_path: Path
) -> None:
    for name in ("all.csv", "all.jsonl"):
        out = tmp_path / name
        result = run_cli("report", "merge", *map(str, shards), "--report", str(out))
        assert result.status == 0, result.stderr
        assert "9 rows" in result.stdout
        if name.endswith(".csv"):
            with out.open() as f:
                rows = list(csv.DictReader(f))
            assert [r["id"] for r in rows] == ["a", "b", "c", "a", "", "d", "e", "f", "g"]
            assert rows[5]["batch"] == "3"
        else:
            rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
            assert rows[0] == {
                "line": 1,
                "id": "a",
                "uid": None,
                "status": "delivered",
                "reason": "",
                "http_status": 200,
                "attempts": 1,
                "batch": 1,
            }
            assert rows[4]["id"] is None
            assert rows[4]["http_status"] is None
            assert len(rows) == 9


def test_reports_that_disagree_with_the_summaries_fail(shards: list[Path], tmp_path: Path) -> None:
    short = csv_report(tmp_path / "short.csv", [(1, "a", "delivered")])
    result = run_cli("report", "merge", *map(str, shards[:2]), str(short), str(shards[3]))
    assert result.status == 1
    assert "delivered: 7 in the summaries, 5 in the reports" in result.stderr


def test_reports_alone_give_a_recipient_summary(shards: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "total.json"
    result = run_cli("report", "merge", *map(str, shards[2:]), "--summary-json", str(out))
    assert result.status == 0, result.stderr
    data = orjson.loads(out.read_bytes())
    assert (data["read"], data["delivered"], data["duplicates"], data["invalid"]) == (9, 7, 1, 1)
    assert data["requests"] == 0
    assert "merged 2 reports" in result.stdout


def test_failures_and_stops_set_the_exit_status(tmp_path: Path) -> None:
    ok = summary(tmp_path / "ok.json", read=10, delivered=10, elapsed=1.0)
    bad = summary(tmp_path / "bad.json", read=10, delivered=9, failed=1, elapsed=1.0)
    assert run_cli("report", "merge", str(ok), str(bad)).status == 1
    assert run_cli("report", "merge", str(ok), str(bad), "--max-failure-rate", "0.1").status == 0
    stopped = summary(tmp_path / "st.json", read=1, skipped=1, stopped="SIGINT")
    result = run_cli("report", "merge", str(ok), str(stopped))
    assert result.status == 1
    assert "stopped: SIGINT" in result.stdout


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.json", "no such file"),
        (b'{"read": -1, "delivered": 0}', "neg.json", "is not a count"),
        (b"a,b\n1,2\n", "x.csv", "no status column"),
        (b'{"status": "delivered"}\nnot json\n', "x.jsonl", "x.jsonl:2: not a JSON object"),
        (b"\x00\x01", "x.bin", "neither a summary"),
    ],
)
def test_unreadable_inputs_exit_2(
    tmp_path: Path, content: bytes | None, name: str, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run_cli("report", "merge", str(path))
    assert result.status == 2
    assert message in result.stderr


def test_report_flag_needs_reports_and_a_subcommand_is_required(
    shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli("report", "merge", str(shards[0]), "--report", "x.csv")
    assert result.status == 2
    assert "no per-recipient reports" in result.stderr
    assert run_cli("report").status == 2
    help_ = run_cli("report", "merge", "--help")
    assert help_.status == 0
    assert "--summary-json" in help_.stdout + capsys.readouterr().out


def test_possible_duplicates_are_counted_from_the_reasons_and_checked(tmp_path: Path) -> None:
    twice = "may have arrived twice: resent after run 1 was interrupted with the request in flight"
    report = tmp_path / "r.jsonl"
    rows = [(1, "a", "delivered", twice), (2, "b", "delivered", twice), (3, "c", "delivered", "")]
    report.write_bytes(
        b"".join(
            orjson.dumps({"line": n, "id": i, "status": st, "reason": why}) + b"\n"
            for n, i, st, why in rows
        )
    )
    out = tmp_path / "total.json"
    alone = run_cli("report", "merge", str(report), "--summary-json", str(out))
    assert alone.status == 0, alone.stderr
    data = orjson.loads(out.read_bytes())
    assert (data["read"], data["delivered"], data["possible_duplicates"]) == (3, 3, 2)
    one = summary(tmp_path / "s.json", read=3, delivered=3, possible_duplicates=1)
    disagree = run_cli("report", "merge", str(one), str(report))
    assert disagree.status == 1
    assert "possible duplicates: 1 in the summaries, 2 in the reports" in disagree.stderr
    agree = summary(tmp_path / "s.json", read=3, delivered=3, possible_duplicates=2)
    assert run_cli("report", "merge", str(agree), str(report)).status == 0
