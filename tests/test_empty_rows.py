"""Every row read ends in one state with a reason, rows without a value included (issue 14).

The rule, in every format: a line with nothing but its line ending is not a row (skipped,
counted nowhere); a line with anything else on it is a row, and one without a value (only
delimiters and/or whitespace, ``{}``) is rejected as ``empty row``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bulksend.models import Recipient, Rejected
from bulksend.sources import Columns, SourceSpec, open_source
from tests.conftest import minimal_campaign, run_cli, send_to_sandbox

EMPTY = "empty row: no id and no uid"


def read(path: Path, **options: object) -> list[Recipient | Rejected]:
    with open_source(SourceSpec(path=str(path), **options)) as rows:  # type: ignore[arg-type]
        return list(rows)


def outcome(items: list[Recipient | Rejected]) -> list[tuple[int, str]]:
    return [(i.line, i.reason if isinstance(i, Rejected) else f"ok {i.id}/{i.uid}") for i in items]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "comma.csv",
            b'id,uid,name\na,1,x\n,,\n\n,\r\n  \n\r\n"","",""\n\t,  ,\nb,2,y\n',
            [
                (2, "ok a/1"),
                (3, EMPTY),  # only delimiters
                # line 4 is empty: not a row
                (5, EMPTY),  # fewer delimiters than the header, still no value
                (6, EMPTY),  # whitespace
                # line 7 (CRLF only) is empty
                (8, EMPTY),  # quoted empty fields
                (9, EMPTY),  # whitespace between delimiters
                (10, "ok b/2"),
            ],
        ),
        (
            "tabs.tsv",
            b"id\tuid\na\t1\n\t\n\n \t \nb\t2\n",
            [(2, "ok a/1"), (3, EMPTY), (5, EMPTY), (6, "ok b/2")],
        ),
        (
            "one.csv",  # one column: an empty line is no row, a blank one is
            b"id\na\n\n  \nb\n",
            [(2, "ok a/None"), (4, "empty row: no id"), (5, "ok b/None")],
        ),
        (
            "r.jsonl",
            b'{"id": "a"}\n\n{}\n  \n{"id": null, "uid": " "}\r\n\r\n{"name": "x"}\n{"uid": "u"}\n',
            [
                (1, "ok a/None"),
                (3, EMPTY),
                (4, EMPTY),
                (5, EMPTY),  # only null and blank values
                (7, "missing id and uid"),  # a value, but not an identifier
                (8, "ok None/u"),
            ],
        ),
        (
            "ids.txt",
            b"a\n\n   \nb\r\n\r\n\t\r\nc",
            [
                (1, "ok a/None"),
                (3, "empty row: no id"),
                (4, "ok b/None"),
                (6, "empty row: no id"),
                (7, "ok c/None"),
            ],
        ),
    ],
)
def test_rows_without_a_value_are_rejected_and_empty_lines_are_not_rows(
    tmp_path: Path, name: str, data: bytes, expected: list[tuple[int, str]]
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    columns = Columns(id="id", uid=None) if name == "one.csv" else Columns()
    if name == "ids.txt":
        assert outcome(read(path, format="lines")) == expected
    else:
        assert outcome(read(path, columns=columns)) == expected


def test_the_fast_path_rejects_rows_of_delimiters_too(tmp_path: Path) -> None:
    """Blocks without quotes go column by column; a row of delimiters in one is still a row."""
    lines = ["id,uid"]
    empty, blank = set(), set()
    for i in range(30_000):
        line_number = len(lines) + 1
        if i % 1000 == 7:
            lines.append(",")
            empty.add(line_number)
        elif i % 1000 == 500:
            lines.append("")
            blank.add(line_number)
        else:
            lines.append(f"v{i},u{i}")
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    items = read(path)
    rejected = {i.line for i in items if isinstance(i, Rejected)}
    assert rejected == empty
    assert all(i.reason == EMPTY for i in items if isinstance(i, Rejected))
    assert len(items) == len(lines) - 1 - len(blank)
    assert not {i.line for i in items} & blank


@pytest.mark.parametrize(
    ("name", "data", "rejected", "delivered"),
    [
        ("r.csv", b'vid,uid\nv1,u1\n,\n\n,,\n  \nv2,u2\r\n\r\n"",""\n', [3, 5, 6, 9], 2),
        ("r.tsv", b"vid\tuid\nv1\tu1\n\t\n\nv2\tu2\n", [3], 2),
        ("r.jsonl", b'{"vid": "v1"}\n{}\n\n   \n{"uid": "u2"}\n', [2, 4], 2),
    ],
)
def test_send_and_validate_count_and_report_every_row(
    tmp_path: Path, name: str, data: bytes, rejected: list[int], delivered: int
) -> None:
    recipients = tmp_path / name
    recipients.write_bytes(data)
    campaign = minimal_campaign(tmp_path, name)
    checked = run_cli("validate", str(campaign), "--max-invalid-rate", "1", env={})
    assert checked.status == 0, checked.stderr
    assert f"invalid      {len(rejected)}" in checked.stdout
    for line in rejected:
        assert f"{recipients}:{line}: {EMPTY}" in checked.stdout

    rows, s = send_to_sandbox(campaign, tmp_path)
    parts = ("delivered", "duplicates", "invalid", "failed", "unknown", "skipped")
    assert s["read"] == sum(s[k] for k in parts) == len(rejected) + delivered
    assert (s["invalid"], s["delivered"]) == (len(rejected), delivered)
    assert len(rows) == s["read"]
    assert Counter(r["status"] for r in rows) == {"invalid": len(rejected), "delivered": delivered}
    assert sorted(r["line"] for r in rows if r["status"] == "invalid") == rejected
    assert {r["reason"] for r in rows if r["status"] == "invalid"} == {
        f"{recipients}:{line}: {EMPTY}" for line in rejected
    }
