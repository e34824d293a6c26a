"""A field longer than ``csv.field_size_limit()``: every way of splitting a CSV block reads it
as ``csv.reader`` does -- the row is rejected with the reason, the others are read.

``csv.reader`` raises "field larger than field limit" for such a field, and the reader turns it
into a one-line rejection of that row. The C splitter declines a block holding one; the
``str``-method paths (``_split_plain``, ``_split_quoted``: the only fast paths without the C
extension, and the next ones when it declines) must decline it too, or the row is read as if
there were no limit.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from itertools import product
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.models import Recipient, Rejected
from bulksend.sources import SourceSpec, open_source
from bulksend.sources import stream as stream_module
from bulksend.sources.delimited import DelimitedReader, _over_limit, layout_for
from bulksend.sources.spec import Chunk
from tests.conftest import run_bulksend, write_campaign
from tests.hypothesis_profiles import examples
from tests.splitters import SPLIT, use_splitter

#: "c" (when built), the str methods without it, and csv.reader alone
WAYS = ["c", "python", "reader"] if SPLIT is not None else ["python", "reader"]
HEADER = ["id", "uid", "a"]


@pytest.fixture
def field_limit() -> Iterator[Callable[[int], object]]:
    """``csv.field_size_limit``, to lower; the limit is put back as it was after the test."""
    before = csv.field_size_limit()
    try:
        yield csv.field_size_limit
    finally:
        csv.field_size_limit(before)


def too_long(line: int, limit: int) -> Rejected:
    """How the reader (through csv.reader) rejects a row with a field over ``limit``."""
    return Rejected(
        line,
        f"a field on this row is longer than {limit:,} characters, the CSV reader's limit: "
        "skipped (shorten the field)",
    )


def write(path: Path, rows: list[list[str]], quoting: Literal[0, 1], end: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=quoting, lineterminator=end)
        writer.writerow(HEADER)
        writer.writerows(rows)


def read_way(path: Path, way: str) -> tuple[list[Recipient | Rejected], list[int]]:
    """The file's rows read the ``way`` given, and the first line of each block that went to
    ``csv.reader`` (``DelimitedReader._slow``)."""
    slow: list[int] = []
    original = DelimitedReader._slow

    def counted(self: DelimitedReader) -> Iterator[Chunk]:
        slow.append(self._line)
        return original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DelimitedReader, "_slow", counted)
        if way == "reader":
            patch.setattr(DelimitedReader, "_fast", lambda self, block: None)
        else:
            use_splitter(patch, way)
        with open_source(SourceSpec(path=str(path), format="csv", delimiter=",")) as rows:
            return list(rows), slow


def expected(rows: list[list[str]], limit: int) -> list[Recipient | Rejected]:
    """Each row as the per-row rules take it, or rejected for a field over ``limit``."""
    layout = layout_for(SourceSpec(path="h.csv"), HEADER)
    out: list[Recipient | Rejected] = []
    for line, fields in enumerate(rows, start=2):
        item = too_long(line, limit) if max(map(len, fields)) > limit else layout.row(line, fields)
        if item is not None:
            out.append(item)
    return out


@st.composite
def limited_rows(draw: st.DrawFn) -> tuple[int, list[list[str]]]:
    """A field size limit and rows of 3 fields: short ones, and ones around the limit (and
    around half of it, where a field may or may not hold one of ``_over_limit``'s windows)."""
    limit = draw(st.sampled_from([4, 9, 100]))
    lengths = [limit // 2, limit // 2 + 1, limit - 1, limit, limit + 1, limit + 2, 2 * limit + 3]
    short = st.text(alphabet=st.sampled_from(list("ab é")), max_size=3)
    long = st.builds(lambda n, c: c * n, st.sampled_from(lengths), st.sampled_from(["x", "é"]))
    field = st.one_of(short, short, short, long)
    rows = draw(st.lists(st.lists(field, min_size=3, max_size=3), min_size=1, max_size=60))
    return limit, rows


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    case=limited_rows(),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),  # plain, or all quoted
    end=st.sampled_from(["\n", "\r\n"]),
    block=st.sampled_from([64, 512, 4096]),
)
def test_every_way_rejects_a_row_with_a_field_over_the_limit_as_csv_reader_does(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    field_limit: Callable[[int], object],
    case: tuple[int, list[list[str]]],
    quoting: Literal[0, 1],  # csv.QUOTE_MINIMAL or QUOTE_ALL
    end: str,
    block: int,
) -> None:
    limit, rows = case
    monkeypatch.setattr(stream_module, "BLOCK", block)
    path = tmp_path / "r.csv"
    write(path, rows, quoting, end)
    field_limit(limit)
    want = expected(rows, limit)
    for way in WAYS:
        got, _ = read_way(path, way)
        assert got == want, way


@pytest.mark.parametrize("end", ["\n", "\r\n"])
@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
@pytest.mark.parametrize("way", WAYS)
def test_only_the_block_with_the_long_field_goes_to_csv_reader(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    field_limit: Callable[[int], object],
    way: str,
    quoting: Literal[0, 1],
    end: str,
) -> None:
    monkeypatch.setattr(stream_module, "BLOCK", 4096)
    # windows of 501 characters: 8 in a block of 4 KiB, a find or two each, where the block
    # has some 450 fields; a field of 900 may hold one (then the fields are measured)
    field_limit(1000)
    rows = [[f"v{i}", f"u{i}", "x" * 900 if i % 50 == 0 else "a"] for i in range(3000)]
    rows[2000][2] = "y" * 1001
    path = tmp_path / "r.csv"
    write(path, rows, quoting, end)
    got, slow = read_way(path, way)
    assert got == expected(rows, 1000)
    assert got[2000] == too_long(2002, 1000)
    if way == "reader":
        return
    assert len(slow) == 1  # one block, the long field's; every other block split fast
    assert 2002 - 4096 // 10 < slow[0] <= 2002  # (lines of 10 characters at least)


@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
@pytest.mark.parametrize("way", WAYS)
def test_the_limit_is_read_when_the_block_is(
    tmp_path: Path, field_limit: Callable[[int], object], way: str, quoting: Literal[0, 1]
) -> None:
    """A program that raises the limit reads the field (the per-row rules then apply)."""
    rows = [["v1", "u1", "a"], ["v2", "u2", "x" * 600], ["v3", "u3", "b"]]
    path = tmp_path / "r.csv"
    write(path, rows, quoting, "\r\n")
    field_limit(500)
    assert read_way(path, way)[0][1] == too_long(3, 500)
    field_limit(600)
    got, slow = read_way(path, way)
    assert got == [Recipient(i + 2, row[0], row[1], {"a": row[2]}) for i, row in enumerate(rows)]
    assert (slow == []) == (way != "reader")  # split fast, in C or not


def _flat(rows: list[list[str]]) -> list[str]:
    """The fields as ``_split_plain`` / ``_split_quoted`` give them: a "\\n" after each line's
    (the last line's not)."""
    return [field for row in rows for field in (*row, "\n")][:-1]


@st.composite
def lengths_and_limit(draw: st.DrawFn) -> tuple[list[list[str]], int]:
    """Rows of 3 fields, mostly of 0-2 characters (so that a block has fewer of
    ``_over_limit``'s windows than an eighth of its fields, and they are looked at), some
    around the limit or half of it; and the limit."""
    limit = draw(st.integers(1, 300))  # (at 0, the "\n" of a line end counts as too long)
    around = [limit // 2 - 1, limit // 2, limit // 2 + 1, limit - 1, limit, limit + 1, 2 * limit]
    long = st.sampled_from([n for n in around if n >= 0])
    length = st.one_of(*[st.integers(0, 2)] * 12, long)
    row = st.lists(length, min_size=3, max_size=3).map(lambda ns: ["a" * n for n in ns])
    return draw(st.lists(row, min_size=1, max_size=300)), limit


@settings(max_examples=examples(400), deadline=None)
@given(case=lengths_and_limit(), quoted=st.booleans(), end=st.sampled_from(["\n", "\r\n"]))
def test_over_limit_is_whether_a_field_is_longer_than_the_limit(
    case: tuple[list[list[str]], int], quoted: bool, end: str
) -> None:
    rows, limit = case
    if quoted:
        body = '"' + f'"{end}"'.join('","'.join(row) for row in rows) + '"'
    else:
        body = end.join(",".join(row) for row in rows)
    flat = _flat(rows)
    before = csv.field_size_limit(limit)
    try:
        got = _over_limit(body, flat, '"' if quoted else ",\n")
    finally:
        csv.field_size_limit(before)
    assert got == (max(map(len, flat)) > limit)


@pytest.mark.parametrize("quoted", [False, True])
@pytest.mark.parametrize("limit", [60, 61, 200, 201])
def test_over_limit_finds_a_field_one_over_the_limit_wherever_it_starts(
    field_limit: Callable[[int], object], limit: int, quoted: bool
) -> None:
    """A field of ``limit + 1`` at every offset from a window's start, the block's last field
    or not, after enough empty fields for the windows to be looked at (or none): found; one
    of ``limit``: not."""
    field_limit(limit)
    window = limit // 2 + 1
    stops = '"' if quoted else ",\n"
    for pad, at, after, n in product((0, 8 * limit), range(2 * window + 1), (0, 1, 5), (0, 1)):
        fields = [""] * (pad + at) + ["x" * (limit + n)] + [""] * after
        body = '"' + '","'.join(fields) + '"' if quoted else ",".join(fields)
        assert not pad or len(body) // window <= len(fields) // 8  # the windows looked at
        assert _over_limit(body, fields, stops) == bool(n), (pad, at, after, n)


# -- through the CLI ------------------------------------------------------------------------


def test_validate_without_the_extension_rejects_the_row_with_a_field_over_the_limit(
    tmp_path: Path,
) -> None:
    """At csv's own limit (128 KiB), in a real process without the C extension (and with it,
    when built: the same output)."""
    limit = csv.field_size_limit()
    recipients = tmp_path / "r.csv"
    rows = [f"v{i},u{i}\r\n" for i in range(300)]
    rows[150] = f"v150,{'x' * (limit + 1)}\r\n"
    recipients.write_text("vid,uid\r\n" + "".join(rows), newline="")
    campaign = write_campaign(tmp_path, recipients)
    args = ("validate", str(campaign), "--max-invalid-rate", "1")
    r = run_bulksend(*args, env={"BULKSEND_NO_EXTENSIONS": "1"})
    assert r.returncode == 0, r.stderr
    reason = too_long(152, limit).reason
    assert [line.strip() for line in r.stdout.splitlines() if "r.csv:" in line] == [
        f"{recipients}:152: {reason}"
    ]
    assert "  rows         300\n" in r.stdout
    assert "  valid        299\n" in r.stdout
    assert "  invalid      1\n" in r.stdout
    if SPLIT is not None:
        with_c = run_bulksend(*args, env={"BULKSEND_NO_EXTENSIONS": "0"})
        assert with_c.returncode == 0, with_c.stderr
        assert with_c.stdout == r.stdout


def read_lines(path: Path, lines: list[str], way: str) -> list[Recipient | Rejected]:
    """``lines`` written to ``path`` and read the ``way`` given, the delimiter guessed."""
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        if way == "reader":
            patch.setattr(DelimitedReader, "_fast", lambda self, block: None)
        else:
            use_splitter(patch, way)
        with open_source(SourceSpec(path=str(path))) as rows:
            return list(rows)


@pytest.mark.parametrize("way", WAYS)
def test_a_field_over_the_limit_does_not_hide_the_delimiter(
    tmp_path: Path, field_limit: Callable[[int], object], way: str
) -> None:
    """The delimiter is guessed from the first lines: a field over the limit there rejects its
    row when it is read, and the others are read with the delimiter the file has."""
    field_limit(50)
    lines = ["id;uid;a", "i1;u1;x", f"i2;u2;{'y' * 80}", "i3;u3;z"]
    got = read_lines(tmp_path / "r.csv", lines, way)
    assert [(r.line, r.id) for r in got if isinstance(r, Recipient)] == [(2, "i1"), (4, "i3")]
    assert [r for r in got if isinstance(r, Rejected)] == [too_long(3, 50)]
    assert csv.field_size_limit() == 50  # (put back after the guess)


@pytest.mark.parametrize("way", WAYS)
def test_a_quote_opened_on_a_row_and_over_the_limit_there_says_so(
    tmp_path: Path, field_limit: Callable[[int], object], way: str
) -> None:
    """A quoted field that passes the limit on the line that opens it is a quote left open
    (the lines after it are read as rows), not a long field to shorten."""
    field_limit(50)
    lines = ["id,uid,a", "i1,u1,x", f'i2,u2,"{"y" * 80}', 'still in the quote",tail', "i5,u5,z"]
    got = read_lines(tmp_path / "r.csv", lines, way)
    assert [(r.line, r.id) for r in got if isinstance(r, Recipient)] == [(2, "i1"), (5, "i5")]
    rejected = {r.line: r.reason for r in got if isinstance(r, Rejected)}
    assert sorted(rejected) == [3, 4]
    assert rejected[3].startswith(
        "a quoted field starts on this row and runs past 50 characters without closing: "
        "skipped, and the next lines read as rows"
    ), rejected[3]
