"""Recipient file readers against a corpus of tricky files (tests/data) and generated ones."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.errors import InputError
from bulksend.models import Recipient, Rejected
from bulksend.recipients import Recipients
from bulksend.sources import (
    Columns,
    SourceSpec,
    collect_problems,
    describe,
    open_source,
    spooled,
    synthetic,
    write_synthetic_csv,
)
from bulksend.sources import stream as stream_module
from bulksend.sources.delimited import layout_for
from bulksend.sources.spec import Chunk
from tests.hypothesis_profiles import examples
from tests.splitters import SPLITTERS, Splits, use_splitter

DATA = Path(__file__).parent / "data"


@pytest.fixture(params=SPLITTERS)
def splitter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """CSV blocks split in C (the list: whether it read each block it was given), or not."""
    return use_splitter(monkeypatch, request.param)


def read(path: str | Path, **options: object) -> list[Recipient | Rejected]:
    with open_source(SourceSpec(path=str(path), **options)) as rows:  # type: ignore[arg-type]
        return list(rows)


def R(line: int, id: str | None, uid: str | None = None, **attrs: str) -> Recipient:
    return Recipient(line, id, uid, attrs)


def X(line: int, reason: str, id: str | None = None, uid: str | None = None) -> Rejected:
    return Rejected(line, reason, id, uid)


# -- the corpus: every format -----------------------------------------------------------------


def test_comma_crlf_bom_quoted_fields(splitter: Splits) -> None:
    assert read(DATA / "comma_crlf_bom.csv") == [
        R(2, "v1", "u1", Name="Ann"),
        R(3, "v2,with comma", "u2", Name='She said "hi"'),
        R(4, "v3", None, Name="two\r\nlines"),  # the record starts on line 4, spans 4-5
        R(6, "v4", "u4", Name="Dan"),  # id and uid stripped, attrs kept as they are
    ]
    assert all(splitter)  # a CRLF inside quotes: in C too
    assert bool(splitter) == splitter.c


def test_semicolon_dialect_is_sniffed(splitter: Splits) -> None:
    with open_source(SourceSpec(path=str(DATA / "semicolon.csv"))) as rows:
        assert (rows.format, rows.delimiter, rows.header) == ("csv", ";", ["id", "uid", "city"])
        assert list(rows) == [
            R(2, "1", "a", city="Paris"),
            R(3, "2", "b", city="Saint-Denis; Réunion"),
            R(4, None, "c", city="Lyon"),
        ]


def test_pipe_dialect_in_an_unknown_extension_is_sniffed(splitter: Splits) -> None:
    assert read(DATA / "pipe.txt") == [R(2, "1", "a"), R(3, "2", "b")]


def test_tsv_with_columns_in_any_order(splitter: Splits) -> None:
    assert read(DATA / "tabs.tsv") == [
        R(2, "1", "u1", email="a@example.com"),
        R(3, "2", "u2", email=""),
    ]


def test_json_lines() -> None:
    assert read(DATA / "recipients.jsonl") == [
        R(1, "42", "u-42", Plan="gold", score="7.5", vip="true", tags='["a","b"]'),
        R(3, "x1"),  # keys match case-insensitively; line 2 is blank
        X(4, "malformed JSON: expected an object, got array"),
        X(5, "malformed JSON: unexpected character, expected a string key at column 14"),
        X(6, "missing id and uid"),
        X(7, "control character in column 'id'"),
        X(8, "value in column 'id' is not a string or integer (got number)"),
        R(9, None, "u-9"),
    ]


def test_plain_list_skips_blank_lines_and_strips() -> None:
    with open_source(SourceSpec(path=str(DATA / "ids.txt"))) as rows:
        assert rows.format == "lines"
        assert list(rows) == [R(1, "abc"), R(3, "def"), R(4, "ghi")]


def test_plain_list_of_uids() -> None:
    items = read(DATA / "ids.txt", format="lines", columns=Columns(id=None, uid="uid"))
    assert items == [R(1, None, "abc"), R(3, None, "def"), R(4, None, "ghi")]


def test_single_column_csv_with_only_the_id_column(splitter: Splits) -> None:
    assert read(DATA / "only_id.csv") == [R(2, "A"), R(3, "B")]


def test_gzip_by_extension_and_by_magic_bytes() -> None:
    assert read(DATA / "good.csv.gz") == [R(2, "1", "u1"), R(3, "2", "u2")]
    assert read(DATA / "gzipped_list") == [R(1, "a"), R(2, "b")]


def test_stdin_plain_and_gzipped() -> None:
    data = b"id,uid\n1,a\n"
    for payload in (data, gzip.compress(data)):
        with open_source(SourceSpec(path="-"), stdin=io.BytesIO(payload)) as rows:
            assert rows.name == "<stdin>"
            assert list(rows) == [R(2, "1", "a")]


def test_latin1_needs_encoding_and_a_bad_row_is_reported_not_fatal(splitter: Splits) -> None:
    assert read(DATA / "latin1.csv") == [
        X(2, "undecodable bytes (not utf-8; try --encoding)", id="1"),
        R(3, "2", name="Zoe"),
    ]
    assert read(DATA / "latin1.csv", encoding="latin-1") == [
        R(2, "1", name="André"),
        R(3, "2", name="Zoe"),
    ]


def test_bad_rows_are_rejected_with_line_and_reason_and_reading_goes_on(
    splitter: Splits,
) -> None:
    assert read(DATA / "bad_rows.csv") == [
        R(2, "1", "u1", name="ok"),
        X(3, "wrong number of fields (expected 3, got 4)"),
        X(4, "missing id and uid"),
        X(5, "value too long in column 'uid' (2000 > 1024 chars)"),
        X(6, "control character in column 'uid'"),
        # line 7 is empty: not a row; line 8 holds only delimiters: a row without a value
        X(8, "empty row: no id and no uid"),
        R(9, "5", "u5", name="last"),
    ]
    assert splitter == ([False] if splitter.c else [])  # the C splitter declines: an empty line


def test_describe_gives_file_and_line() -> None:
    assert describe("f.csv", X(7, "missing id and uid")) == "f.csv:7: missing id and uid"


# -- whole-file problems: one line, naming the file --------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("empty.csv", "empty.csv: file is empty"),
        ("blank.csv", "blank.csv: file has only blank lines"),
        ("header_only.csv", "header_only.csv: no data rows (only a header)"),
        (
            "missing_column.csv",
            "missing_column.csv: column 'id' not found in the header (columns: 'email', 'name')",
        ),
        ("duplicate_column.csv", "duplicate_column.csv: column 'id' appears 2 times in the header"),
        (
            "binary.csv",
            "binary.csv: looks like a binary file (NUL bytes), not a recipient list",
        ),
        ("not_gzip.csv.gz", "not_gzip.csv.gz: not a valid gzip file (Unknown compression method)"),
        ("truncated.csv.gz", "truncated.csv.gz: truncated gzip data"),
        ("no_such_file.csv", "no_such_file.csv: no such file"),
    ],
)
def test_whole_file_errors(name: str, message: str) -> None:
    with pytest.raises(InputError) as raised:
        read(DATA / name)
    assert str(raised.value) == f"{DATA / name}{message.removeprefix(name)}"
    assert "\n" not in str(raised.value)


def test_directory() -> None:
    with pytest.raises(InputError, match=r": is a directory$"):
        read(DATA)


def test_explicitly_mapped_column_must_exist() -> None:
    with pytest.raises(InputError, match=r"column 'visitor' not found in the header"):
        read(DATA / "semicolon.csv", columns=Columns(id="visitor"))


def test_unknown_encoding() -> None:
    with pytest.raises(InputError, match=r"unknown encoding 'klingon'"):
        read(DATA / "semicolon.csv", encoding="klingon")


def test_truncated_gzip_far_into_the_file_fails_while_reading(tmp_path: Path) -> None:
    data = ("id,uid\n" + "".join(f"{i:032x},u{i}\n" for i in range(100_000))).encode()
    packed = gzip.compress(data, compresslevel=1)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(packed[: len(packed) * 3 // 4])
    with open_source(SourceSpec(path=str(path))) as rows, pytest.raises(InputError) as raised:
        for _ in rows.chunks():
            pass
    assert str(raised.value).startswith(f"{path}:")
    assert str(raised.value).endswith(": truncated gzip data")


# -- options -----------------------------------------------------------------------------------


def test_custom_columns_without_attrs_and_a_shorter_limit(tmp_path: Path, splitter: Splits) -> None:
    path = tmp_path / "x.csv"
    path.write_text("Visitor,User,plan\nv1,u1,gold\nv2,uuuuuuuuuuu,silver\n")
    items = read(
        path, columns=Columns(id="visitor", uid="USER"), keep_attrs=False, max_value_len=10
    )
    assert items == [R(2, "v1", "u1"), X(3, "value too long in column 'User' (11 > 10 chars)")]


def test_explicit_format_and_delimiter(tmp_path: Path, splitter: Splits) -> None:
    path = tmp_path / "x.data"
    path.write_text("id:uid\n1:a\n")
    assert read(path, delimiter=":") == [R(2, "1", "a")]
    assert read(path, format="lines") == [R(1, "id:uid"), R(2, "1:a")]


def test_strict_stops_at_the_first_problem_and_collect_problems_lists_them() -> None:
    spec = SourceSpec(path=str(DATA / "bad_rows.csv"), strict=True)
    raises = pytest.raises(InputError, match=r"bad_rows.csv:3: wrong number of fields")
    with open_source(spec) as rows, raises:
        list(rows)
    problems = collect_problems(SourceSpec(path=str(DATA / "bad_rows.csv")), limit=2)
    assert [p.line for p in problems] == [3, 4]
    assert len(collect_problems(SourceSpec(path=str(DATA / "bad_rows.csv")))) == 5


def test_spooled_stdin_can_be_read_twice() -> None:
    stdin = io.BytesIO(b"id\n1\n\x01\n")
    with spooled(SourceSpec(path="-"), stdin=stdin) as spec:
        assert spec.path != "-"
        assert [p.line for p in collect_problems(spec)] == [3]
        assert read(spec.path)[0] == R(2, "1")
    assert not os.path.exists(spec.path)


def test_rows_can_be_read_once_and_count_what_they_read() -> None:
    with open_source(SourceSpec(path=str(DATA / "bad_rows.csv"))) as rows:
        chunks = list(rows.chunks())
        assert (rows.recipients, rows.rejected) == (2, 5)
        assert sum(len(c.recipients) for c in chunks) == 2
        with pytest.raises(RuntimeError):
            list(rows.chunks())


# -- the fast column path gives what csv.reader + the per-row rules give ----------------------

FIELD = st.text(
    alphabet=st.sampled_from(list("ab1 ,;\"'\t\n\r\x01\x7fé\u00a0\udc80x")),
    min_size=0,
    max_size=6,
)


def _reference(path: Path, spec: SourceSpec) -> list[Recipient | Rejected]:
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        records = list(csv.reader(f))
    layout = layout_for(spec, records[0])
    out: list[Recipient | Rejected] = []
    line = 2
    for record in records[1:]:
        item = layout.row(line, record)
        if item is not None:
            out.append(item)
        line += 1 + sum(f.count("\n") + f.count("\r") - f.count("\r\n") for f in record)
    return out


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(st.lists(FIELD, min_size=3, max_size=5), min_size=1, max_size=60),
    block=st.sampled_from([16, 64, 4096]),
    quote_all=st.booleans(),
    line_end=st.sampled_from(["\r\n", "\n"]),
)
def test_fast_path_matches_csv_reader_and_row_rules(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[list[str]],
    block: int,
    quote_all: bool,
    line_end: str,
    splitter: Splits,
) -> None:
    monkeypatch.setattr(stream_module, "BLOCK", block)
    path = tmp_path / "h.csv"
    with path.open("w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        quoting: Literal[0, 1] = csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
        writer = csv.writer(f, quoting=quoting, lineterminator=line_end)
        writer.writerow(["id", "uid", "a", "b"])
        writer.writerows(rows)
    spec = SourceSpec(path=str(path), format="csv", delimiter=",", max_value_len=4)
    expected = _reference(path, spec)
    if not expected:  # only blank rows: a file without data
        with pytest.raises(InputError, match="no data rows"):
            read(path, format="csv", delimiter=",", max_value_len=4)
    else:
        assert read(path, format="csv", delimiter=",", max_value_len=4) == expected


#: pieces of CSV text, quoted and not, that a block of lines is made of: what a writer puts
#: around and between quoted fields, and what breaks that (stray quotes, bare CRs, blanks)
PIECE = st.sampled_from(
    ['"', '""', ",", '","', '"\r\n"', '"\n"', "\r\n", "\n", "\r", "a", "b1", " ", "\t", "é", "\x01"]
)


def _quoted_lines(rows: list[list[str]], line_end: str) -> str:
    return "".join(",".join(f'"{field}"' for field in row) + line_end for row in rows)


PLAIN = st.text(alphabet=st.sampled_from(list("aab  \t\x01é,")), max_size=5)


def _lines(rows: list[list[str]], quoted: bool) -> str:
    ends = ["\r\n", "\n"]
    if quoted:
        return "".join(",".join(f'"{f}"' for f in row) + ends[i % 2] for i, row in enumerate(rows))
    return "".join(",".join(row) + ends[i % 2] for i, row in enumerate(rows))


def _quoted_with(rows: list[list[str]], piece: str, at: int) -> str:
    text = _quoted_lines(rows, "\r\n")
    at %= len(text) + 1
    return text[:at] + piece + text[at:]


@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.one_of(
        st.lists(PIECE, max_size=40).map("".join),
        st.builds(
            _quoted_lines,
            st.lists(st.lists(FIELD, min_size=3, max_size=3), min_size=1, max_size=8),
            st.sampled_from(["\r\n", "\n"]),
        ),
        st.builds(  # fields without quotes or line ends, quoted or not, mixed line ends
            _lines,
            st.lists(st.lists(PLAIN, min_size=3, max_size=3), min_size=1, max_size=8),
            st.booleans(),
        ),
        st.builds(  # a quoted block with one piece put in somewhere
            _quoted_with,
            st.lists(st.lists(st.sampled_from(["a", "", "b,c", " x "]), min_size=3, max_size=3)),
            PIECE,
            st.integers(0, 200),
        ),
    ),
    delimiter=st.sampled_from([",", ";"]),
)
def test_a_block_split_fast_reads_as_csv_reader_reads_it(
    text: str, delimiter: str, splitter: Splits
) -> None:
    """Whatever the text of a block, the fast path either declines it or gives exactly the
    rows ``csv.reader`` gives (with the per-row rules), line numbers included."""
    from bulksend.sources.delimited import DelimitedReader, make_dialect
    from bulksend.sources.stream import TextSource

    text = text.replace(",", delimiter)
    if not text.endswith("\n"):
        text += "\n"  # a block is whole lines
    header = delimiter.join(["id", "uid", "a"]) + "\n"
    spec = SourceSpec(path="h.csv", format="csv", max_value_len=4)
    reader = DelimitedReader(spec, TextSource(io.StringIO(header), "h.csv"), delimiter)
    list(reader.chunks())  # the header's block
    chunk = reader._fast(text)
    if chunk is None:
        return
    lines = csv.reader(io.StringIO(text, newline=""), make_dialect(delimiter))
    numbers, records = [], []
    while True:  # a record of several lines has the number of its first
        before = lines.line_num
        record = next(lines, None)
        if record is None:
            break
        numbers.append(2 + before)
        records.append(record)
    expected = reader.layout.rows(numbers, records)
    assert reader._line == 2 + lines.line_num  # the next block's first line
    assert list(chunk.recipients) == list(expected.recipients)
    assert chunk.rejected == expected.rejected


@pytest.mark.parametrize(
    ("quoting", "line_end"),
    [
        (csv.QUOTE_MINIMAL, "\n"),
        (csv.QUOTE_MINIMAL, "\r\n"),  # Python's csv module writes this by default
        (csv.QUOTE_ALL, "\r\n"),  # as many exports do
        (csv.QUOTE_ALL, "\n"),
    ],
)
def test_crlf_and_all_quoted_files_take_the_fast_path(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    quoting: Literal[0, 1],  # csv.QUOTE_MINIMAL or QUOTE_ALL
    line_end: str,
    splitter: Splits,
) -> None:
    from bulksend.sources.delimited import DelimitedReader

    monkeypatch.setattr(stream_module, "BLOCK", 4096)
    path = tmp_path / "q.csv"
    comma = "," if quoting == csv.QUOTE_ALL else ""  # a delimiter inside quotes is fine
    rows = [(f"{i:032x}", f"u{i:011d}", f"name{comma} {i}") for i in range(5000)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=quoting, lineterminator=line_end)
        writer.writerow(["id", "uid", "name"])
        writer.writerows(rows)
    slow = []
    original = DelimitedReader._slow

    def counted(self: DelimitedReader) -> Iterator[Chunk]:
        slow.append(self._line)
        return original(self)

    monkeypatch.setattr(DelimitedReader, "_slow", counted)
    got = read(path)
    assert got == [R(i + 2, id, uid, name=name) for i, (id, uid, name) in enumerate(rows)]
    assert slow == []  # none went through csv.reader, not even the rest of the header's block
    assert all(splitter)  # each block in C, when it is there
    assert bool(splitter) == splitter.c


JSON_VALUE = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.booleans(),
    st.lists(st.integers(0, 2), max_size=2),
    st.text(alphabet=st.sampled_from(list('ab1 ,"\\\t\n\x01\x7f\x85é\u2028{}')), max_size=5),
    st.sampled_from(["0123456789abcdef0123456789abcdef", "u00000000001", "x" * 5]),
)
JSON_KEY = st.sampled_from(["id", "uid", "ID", "Uid", "name", "city"])
PLAIN_JSON = st.one_of(st.none(), st.text(alphabet=st.sampled_from(list("ab1 é")), max_size=5))
JSON_LINE = st.one_of(
    st.fixed_dictionaries({"id": PLAIN_JSON, "uid": PLAIN_JSON}).map(json.dumps),
    st.fixed_dictionaries({"id": PLAIN_JSON, "uid": PLAIN_JSON}).map(json.dumps),
    st.dictionaries(JSON_KEY, JSON_VALUE, max_size=4).map(lambda d: orjson.dumps(d).decode()),
    st.fixed_dictionaries({"id": JSON_VALUE, "uid": JSON_VALUE}).map(
        lambda d: orjson.dumps(d).decode()
    ),
    st.sampled_from(["", "\r", "  ", "[1]", '"x"', "{", '{"id": "a"} x', '{"id":"a"},{"id":"b"}']),
)


@settings(
    max_examples=examples(300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    lines=st.lists(JSON_LINE, min_size=1, max_size=30),
    crlf=st.booleans(),
    keep_attrs=st.booleans(),
    block=st.sampled_from([64, 4096]),
)
def test_json_lines_read_in_bulk_as_line_by_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[str],
    crlf: bool,
    keep_attrs: bool,
    block: int,
) -> None:
    from bulksend.sources.jsonl import JsonLinesReader

    monkeypatch.setattr(stream_module, "BLOCK", block)
    path = tmp_path / "h.jsonl"
    path.write_text("".join(x + ("\r\n" if crlf else "\n") for x in lines), encoding="utf-8")
    options = {"format": "jsonl", "keep_attrs": keep_attrs, "max_value_len": 4}

    def outcome() -> list[Recipient | Rejected] | str:
        try:
            return read(path, **options)
        except InputError as error:
            return str(error)

    fast = outcome()
    with monkeypatch.context() as patched:  # (the fixture outlives each example)
        patched.setattr(JsonLinesReader, "_fast", lambda self, lines: None)
        assert fast == outcome()


def test_plain_json_lines_take_the_bulk_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulksend.sources.jsonl import JsonLinesReader

    monkeypatch.setattr(stream_module, "BLOCK", 4096)
    path = tmp_path / "p.jsonl"
    rows: list[dict[str, str | None]] = [
        {"id": f"{i:032x}", "uid": f"u{i:011d}"} for i in range(3000)
    ]
    rows[7] = {"id": None, "uid": " u7 "}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def refuse(self: JsonLinesReader, lines: list[str]) -> Chunk:
        raise AssertionError("a block went record by record")

    monkeypatch.setattr(JsonLinesReader, "_slow", refuse)
    got = read(path, format="jsonl")
    assert got[7] == R(8, None, "u7")  # no header: row i is on line i + 1
    assert got == [R(i + 1, r["id"], (r["uid"] or "").strip() or None) for i, r in enumerate(rows)]


# -- synthetic data ----------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_repeats_rows_as_asked() -> None:
    first = list(synthetic(2000, duplicate_rate=0.25, seed=3))
    assert first == list(synthetic(2000, duplicate_rate=0.25, seed=3))
    assert [r.line for r in first[:3]] == [2, 3, 4]
    unique = {(r.id, r.uid) for r in first}
    assert 1300 < len(unique) < 1700
    assert len({r.id for r in first}) == len(unique) == len({r.uid for r in first})


def test_write_synthetic_csv_reads_back(tmp_path: Path) -> None:
    path = write_synthetic_csv(tmp_path / "s.csv", 500, seed=5, extra_columns=["name"])
    items = read(path, keep_attrs=False)
    expected = list(synthetic(500, seed=5))
    assert items == expected
    with_attrs = read(path)
    assert with_attrs[0].attrs == {"name": "name 0"}  # type: ignore[union-attr]


def test_estimate_and_the_garbage_collector_left_as_found(tmp_path: Path) -> None:
    import gc

    path = write_synthetic_csv(tmp_path / "e.csv", 60_000, seed=2)
    with open_source(SourceSpec(path=str(path))) as rows:
        assert 50_000 < rows.estimated_rows < 70_000
        assert sum(len(c.recipients) for c in rows.chunks()) == 60_000
    assert gc.isenabled()
    with open_source(SourceSpec(path="-"), stdin=io.BytesIO(path.read_bytes())) as rows:
        assert rows.estimated_rows == 0  # unknown size


# -- what the fast path hands the deduplicator, and the garbage collector --------------------


def test_chunks_are_columns_and_make_recipients_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "k.csv"
    path.write_text("id,uid,name\na1,,x\n a2 ,u2,y\n,u3,z\n")
    with open_source(SourceSpec(path=str(path))) as rows:
        (chunk,) = list(rows.chunks())
    recipients = chunk.recipients
    assert isinstance(recipients, Recipients)
    assert (recipients.ids, recipients.uids) == (["a1", "a2", None], [None, "u2", "u3"])
    assert recipients._made is None
    part = recipients[1:]
    assert isinstance(part, Recipients)
    assert part.ids == ["a2", None]
    assert recipients._made is None  # slicing makes nothing either
    assert recipients == [
        R(2, "a1", None, name="x"),
        R(3, "a2", "u2", name="y"),
        R(4, None, "u3", name="z"),
    ]
    assert recipients[1] is recipients.made()[1]  # made once, then kept
    assert part == [R(3, "a2", "u2", name="y"), R(4, None, "u3", name="z")]


def test_a_chunk_without_uid_column_says_so(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text("id\na\nb\n")
    with open_source(SourceSpec(path=str(path), format="csv")) as rows:
        (chunk,) = list(rows.chunks())
    assert chunk.recipients == [R(2, "a"), R(3, "b")]
    assert chunk.recipients.uids is None  # type: ignore[attr-defined]


def test_reading_dedup_and_batching_make_no_recipient_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bulksend import recipients as recipients_module
    from bulksend.dedup.deduper import Deduper
    from bulksend.providers.maxtraffic import NotificationBatcher, notification_body

    def refuse(*args: object) -> None:
        raise AssertionError("a Recipient object was made")

    path = write_synthetic_csv(tmp_path / "g.csv", 20_000, duplicate_rate=0.1, seed=4)
    monkeypatch.setattr(recipients_module, "make_recipients", refuse)
    sent = 0
    with open_source(SourceSpec(path=str(path))) as rows, Deduper() as dedup:
        batcher = NotificationBatcher(1000)
        batches = []
        for chunk in rows.chunks():
            kept, _ = dedup.filter_many(chunk.recipients)
            batches += batcher.add_many(kept)
        batches += batcher.flush()
        for batch in batches:
            body = orjson.loads(notification_body({"messages": []}, batch.recipients))
            sent += len(body["to_ids"])
    assert sent == 20_000 - dedup.duplicates > 17_000


HINT = 'close the quote, or write a quote inside a quoted field as ""'


@pytest.mark.parametrize(
    ("at", "stray"),
    [
        (49_990, "a quoted field starts on this row and is never closed"),  # 10 rows from the end
        (  # 10,000 rows from the end: past csv's field size limit
            40_000,
            "a quoted field starts on this row and runs past 131,072 characters without closing",
        ),
    ],
)
def test_a_quote_that_never_closes_rejects_its_row_and_reading_goes_on(
    tmp_path: Path, at: int, stray: str, splitter: Splits
) -> None:
    """csv.reader (not strict) would read the rest of the file as one field of one row."""
    path = tmp_path / "r.csv"
    rows = [f"v{i},u{i}\n" for i in range(50_000)]  # fast-path blocks first
    rows[at] = f'"v{at},u{at}\n'  # an opening quote without its closing one
    path.write_text("id,uid\n" + "".join(rows))
    got = read(path)
    assert len(got) == 50_000  # every line accounted for
    assert got[at] == X(at + 2, f"{stray}: skipped, and the next lines read as rows ({HINT})")
    assert got[at + 1] == R(at + 3, f"v{at + 1}", f"u{at + 1}")
    assert [type(r) for r in got].count(Rejected) == 1
    assert got[-1] == R(50_001, "v49999", "u49999")
    if splitter.c:  # blocks of good rows in C; the one with the stray quote declined
        assert True in splitter
        assert False in splitter


@pytest.mark.parametrize("block", [16, 64, 1 << 18])  # the record across blocks, or not
def test_lines_inside_a_quote_that_closes_too_late_are_each_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, splitter: Splits
) -> None:
    """Two stray quotes pair up: which lines were rows is a guess, so none is sent or lost."""
    monkeypatch.setattr(stream_module, "BLOCK", block)
    path = tmp_path / "r.csv"
    path.write_text('id,uid\nv1,u1\n"v2,u2\nv3,u3\nv4,"u4\nv5,u5\n')
    fit = "the record does not fit the header (1 field, expected 2)"
    assert read(path) == [
        R(2, "v1", "u1"),
        X(3, f"a quoted field starts on line 3 and closes only on line 5, and {fit} ({HINT})"),
        X(4, f"inside the quoted field that starts on line 3: {fit}"),
        X(5, f"inside the quoted field that starts on line 3: {fit}"),
        R(6, "v5", "u5"),
    ]
    assert (False in splitter) == splitter.c  # the C splitter declines the stray quote's block


@pytest.mark.parametrize("end", ["\n", "", "\r\n"])
def test_a_closed_quote_at_the_end_of_the_file_is_fine(
    tmp_path: Path, end: str, splitter: Splits
) -> None:
    path = tmp_path / "r.csv"
    path.write_text(f'id,uid\nv1,"u1"\nv2,"u\n2"{end}', newline="")
    got = read(path)
    assert got[0] == R(2, "v1", "u1")
    assert [r.line for r in got] == [2, 3]
    assert len(got) == 2


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_json_lines_end_lines_as_csv_does(tmp_path: Path, ending: str) -> None:
    """A lone \\r ends a line too (found by tests/test_fuzz.py: the whole file was one row)."""
    path = tmp_path / "cr.jsonl"
    path.write_bytes(ending.join(['{"id": "a"}', "", '{"id": "b"}', " ", ""]).encode())
    assert read(path) == [R(1, "a"), R(3, "b"), X(4, "empty row: no id and no uid")]
