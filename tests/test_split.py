"""The C block splitter (bulksend/sources/_split.c): built, chosen, and exactly ``csv.reader``.

It either declines a block or gives what ``csv.reader`` gives for it; and it reads every block
a CSV writer writes. The readers' own tests run with it and without it (tests/test_sources.py,
the ``splitter`` fixture), and so do the one-line errors for bad rows, here through the CLI.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.sources import stream
from bulksend.sources.delimited import make_dialect
from bulksend.sources.stream import split_lines
from tests.conftest import run_cli, write_campaign
from tests.hypothesis_profiles import examples
from tests.keysets import c_compiler
from tests.splitters import C_MISSING, SPLIT, SPLITTERS, needs_split, use_splitter

LIMIT = csv.field_size_limit()

# -- built and chosen -----------------------------------------------------------------------


def test_the_splitter_was_built_where_a_compiler_exists() -> None:
    if SPLIT is not None:
        return
    missing = c_compiler()
    if missing is not None:
        pytest.skip(f"C EXTENSION NOT BUILT -- {missing}: CSV blocks are split in Python")
    pytest.fail(C_MISSING + " (a C compiler and Python's headers are here: the build failed)")


def splitter_in_subprocess(env: dict[str, str], *pre: str) -> str:
    code = "\n".join(
        [*pre, "from bulksend.sources import delimited", "print(delimited.SPLIT is not None)"]
    )
    full = {k: v for k, v in os.environ.items() if k != "BULKSEND_NO_EXTENSIONS"} | env
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full
    )
    return out.stdout.strip()


@needs_split
def test_the_splitter_is_used_unless_bulksend_no_extensions_is_set() -> None:
    assert splitter_in_subprocess({}) == "True"
    assert splitter_in_subprocess({"BULKSEND_NO_EXTENSIONS": "0"}) == "True"
    assert splitter_in_subprocess({"BULKSEND_NO_EXTENSIONS": "1"}) == "False"


def test_without_the_extension_files_are_read_all_the_same(tmp_path: Path) -> None:
    # as after an install without a C compiler: the module cannot be imported
    path = tmp_path / "r.csv"
    path.write_text('id,uid\r\n"v1","u1"\r\nv2,u2\r\n')
    block = [
        "import sys",
        "class Block:",
        "    def find_spec(self, name, path=None, target=None):",
        "        if name == 'bulksend.sources._split':",
        "            raise ImportError('not built')",
        "sys.meta_path.insert(0, Block())",
        "from bulksend.sources import SourceSpec, open_source",
        f"with open_source(SourceSpec(path={str(path)!r})) as rows:",
        "    print([(r.line, r.id, r.uid) for r in rows])",
    ]
    assert splitter_in_subprocess({}, *block).splitlines() == [
        "[(2, 'v1', 'u1'), (3, 'v2', 'u2')]",
        "False",
    ]


# -- exactly csv.reader ---------------------------------------------------------------------


@contextmanager
def field_size_limit(limit: int) -> Iterator[None]:
    before = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def reference(text: str, delimiter: str, limit: int) -> tuple[list[list[str]], list[int]] | None:
    """``csv.reader``'s records of a block, read from its lines as the readers feed them, and
    the line (from 0) each starts on; None when it raises."""
    reader = csv.reader(split_lines(text), make_dialect(delimiter))
    records: list[list[str]]
    starts: list[int]
    records, starts = [], []
    with field_size_limit(limit):
        while True:
            before = reader.line_num
            try:
                record = next(reader)
            except StopIteration:
                return records, starts
            except csv.Error:
                return None
            records.append(record)
            starts.append(before)


def check(text: str, delimiter: str, width: int, wanted: Sequence[int], limit: int) -> bool:
    """Assert that the splitter declines ``text`` or reads it as ``csv.reader``; whether it
    read it."""
    assert SPLIT is not None
    got = SPLIT(text, delimiter, width, wanted, limit)
    if got is None:
        return False
    expected = reference(text, delimiter, limit)
    assert expected is not None, "read what csv.reader refuses"
    records, starts = expected
    columns, count, lines, got_starts = got
    assert all(len(record) == width for record in records)
    assert columns == [[record[index] for record in records] for index in wanted]
    assert count == len(records)
    assert lines == len(split_lines(text))
    assert (got_starts if got_starts is not None else list(range(count))) == starts
    return True


#: what a block of CSV lines is made of: quotes in every place, delimiters, line ends of every
#: kind, blanks, other characters of each width (Latin-1, BMP, astral), NUL
PIECE = st.sampled_from(
    [
        *['"', '""', ",", '","', '"\r\n"', '"\n"', "\r\n", "\n", "\r", "a", "b1", " ", "\t"],
        *["\0", "é", "\u20ac", "\U0001f600", "\x01", "\udc80", ";"],
    ]
)
FIELD = st.text(alphabet=st.sampled_from(list('ab ,;"\t\r\n\0é\u20ac\U0001f600\udc80')), max_size=6)


@settings(max_examples=examples(1500), deadline=None)
@given(
    text=st.lists(PIECE, max_size=40).map("".join),
    delimiter=st.sampled_from([",", ";", "\t", "é"]),
    width=st.integers(1, 4),
    wanted=st.sets(st.integers(0, 3), min_size=1),
    limit=st.sampled_from([1, 3, LIMIT]),
)
@needs_split
def test_any_text_is_declined_or_read_as_csv_reader_reads_it(
    text: str, delimiter: str, width: int, wanted: set[int], limit: int
) -> None:
    text = text.replace(",", delimiter)
    check(text, delimiter, width, sorted(i for i in wanted if i < width) or [0], limit)


@settings(max_examples=examples(500), deadline=None)
@given(
    rows=st.lists(st.lists(FIELD, min_size=3, max_size=3), min_size=1, max_size=20),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    line_end=st.sampled_from(["\r\n", "\n"]),  # (with "\r", a writer leaves "\n" unquoted)
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    last_line_end=st.booleans(),
    wanted=st.sampled_from([[0], [2], [0, 1], [0, 1, 2], [2, 0]]),
)
@needs_split
def test_whatever_a_csv_writer_writes_is_read(
    rows: list[list[str]],
    quoting: Literal[0, 1, 2],  # csv.QUOTE_MINIMAL, QUOTE_ALL or QUOTE_NONNUMERIC
    line_end: str,
    delimiter: str,
    last_line_end: bool,
    wanted: list[int],
) -> None:
    """Fields with quotes, delimiters and line ends inside, any line end: read in C, not
    declined (the file's end may lack its line end)."""
    if line_end == "\n" and quoting != csv.QUOTE_ALL:  # Python 3.11's writer would not quote
        rows = [[field.replace("\r", "") for field in row] for row in rows]  # a lone CR
    out = _Text()
    csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=line_end).writerows(rows)
    text = out.text if last_line_end else out.text.removesuffix(line_end)
    assert check(text, delimiter, 3, wanted, LIMIT)


class _Text:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('a,"b\n', "a quote not closed in the block"),
        ('a,b"c\n', "a quote inside an unquoted field"),
        ('a,"b"c\n', "a character after a closing quote"),
        ("a,b\n\nc,d\n", "an empty line (csv.reader gives [] for it)"),
        ("a,b,c\n", "more fields than the header"),
        ("a\n", "fewer fields than the header"),
        ('a,"' + "x" * 10 + '"\n', "a field over the limit"),
        ("", "nothing"),
    ],
)
@needs_split
def test_what_it_declines(text: str, why: str) -> None:
    assert SPLIT is not None
    assert SPLIT(text, ",", 2, [0, 1], 9) is None, why


@needs_split
def test_bad_arguments_raise() -> None:
    assert SPLIT is not None
    with pytest.raises(ValueError, match="one character"):
        SPLIT("a\n", ",,", 1, [0], LIMIT)
    with pytest.raises(ValueError, match="each index below width once"):
        SPLIT("a\n", ",", 1, [1], LIMIT)
    with pytest.raises(ValueError, match="each index below width once"):
        SPLIT("a,b\n", ",", 2, [0, 0], LIMIT)
    with pytest.raises(TypeError):
        SPLIT(b"a\n", ",", 1, [0], LIMIT)  # type: ignore[arg-type]
    assert SPLIT("a\n", '"', 1, [0], LIMIT) is None  # a quote cannot be the delimiter


# -- bad rows: the same one-line errors through the C path --------------------------------


@pytest.fixture(params=SPLITTERS)
def splitter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    return use_splitter(monkeypatch, request.param)


def test_bad_rows_are_the_same_one_line_errors_either_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    splitter: list[bool],
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(stream, "BLOCK", 4096)
    recipients = tmp_path / "r.csv"
    good = [f'"v{i}","u{i}"\r\n' for i in range(3000)]  # whole blocks of good rows in C
    rows = [*good, '"v3000","u3000",extra\r\n', 'v3001,u"3001\r\n', *good[:5]]
    rows += ['v3007,"u\r\n3007"\r\n', '"v3009","u3009\r\n']  # lines 3009-3010; never closed
    recipients.write_text("vid,uid\r\n" + "".join(rows), newline="")
    campaign = write_campaign(tmp_path, recipients)
    r = run_cli("validate", str(campaign), "--max-invalid-rate", "1", env={})
    assert r.status == 0, r.stderr
    never = "a quoted field starts on this row and is never closed: skipped, and the next"
    assert [line.strip() for line in r.stdout.splitlines() if "r.csv:" in line] == [
        f"{recipients}:3002: wrong number of fields (expected 2, got 3)",
        f"{recipients}:3009: control character in column 'uid'",  # a CRLF inside its quotes
        f"{recipients}:3011: {never} lines read as rows (close the quote, or write a quote "
        'inside a quoted field as "")',
    ]
    assert "rows         3,009\n" in r.stdout  # 'v3001,u"3001': csv.reader keeps the quote
    if request.node.callspec.params["splitter"] == "c":
        assert True in splitter  # the blocks of good rows
        assert False in splitter  # declined: read on through csv.reader
