"""``ReportWriter.write_rows`` (from the columns) writes exactly what ``write`` (an outcome per
row) writes, in CSV and JSON Lines, and makes no object per row for plain values."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend import recipients as recipients_module
from bulksend.models import Outcome, Status
from bulksend.output.report import ReportWriter
from bulksend.recipients import Recipients
from tests.hypothesis_profiles import examples

VALUE = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from(list("ab1 ,;\"\\'\r\n\t\x01\x7fé\u2028{}")), max_size=5),
    st.sampled_from(["0123456789abcdef0123456789abcdef", "u00000000001"]),
)


@st.composite
def columns(draw: st.DrawFn) -> Recipients:
    count = draw(st.integers(0, 12))
    lines = draw(st.one_of(st.just(range(2, 2 + count)), st.just(list(range(5, 5 + 3 * count, 3)))))
    ids = draw(st.one_of(st.none(), st.lists(VALUE, min_size=count, max_size=count)))
    uids = draw(st.one_of(st.none(), st.lists(VALUE, min_size=count, max_size=count)))
    return Recipients(lines, ids, uids)


def written(suffix: str, write: object) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"r{suffix}"
        with ReportWriter(path) as report:
            write(report)  # type: ignore[operator]
        return path.read_bytes()


@settings(max_examples=examples(300), deadline=None)
@given(
    rows=columns(),
    status=st.sampled_from(list(Status)),
    reason=st.sampled_from(["", "already in this campaign", 'a "quoted", reason {x}']),
    http_status=st.sampled_from([None, 200, 422]),
    attempts=st.integers(0, 3),
    batch=st.sampled_from([None, 0, 17]),
    suffix=st.sampled_from([".csv", ".jsonl"]),
)
def test_rows_from_columns_are_written_as_outcomes_are(
    rows: Recipients,
    status: Status,
    reason: str,
    http_status: int | None,
    attempts: int,
    batch: int | None,
    suffix: str,
) -> None:
    outcomes = [Outcome(r, status, reason, http_status, attempts, batch) for r in rows.made()]
    expected = written(suffix, lambda report: report.write(outcomes))
    fresh = Recipients(rows.lines, rows.ids, rows.uids)  # no object made yet
    got = written(
        suffix,
        lambda report: report.write_rows(fresh, status, reason, http_status, attempts, batch),
    )
    assert got == expected


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_plain_rows_are_written_without_a_recipient_object(
    monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a Recipient object was made")

    monkeypatch.setattr(recipients_module, "make_recipients", refuse)
    rows = Recipients(range(2, 1002), [f"{i:032x}" for i in range(1000)], None)
    text = written(suffix, lambda r: r.write_rows(rows, Status.DELIVERED, "", 200, 1, 3))
    assert len(text.splitlines()) == 1000 + (suffix == ".csv")
