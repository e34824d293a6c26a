"""Recipient files in UTF-16 and UTF-32 with a byte-order mark (issue 14)."""

from __future__ import annotations

import codecs
import gzip
from collections import Counter
from pathlib import Path

import pytest

from bulksend.errors import InputError
from bulksend.models import Recipient, Rejected
from bulksend.sources import Columns, SourceSpec, open_source
from bulksend.sources.stream import choose_encoding
from tests.conftest import minimal_campaign, run_cli, send_to_sandbox

BOMS = {
    "utf-8": codecs.BOM_UTF8,
    "utf-16-le": codecs.BOM_UTF16_LE,
    "utf-16-be": codecs.BOM_UTF16_BE,
    "utf-32-le": codecs.BOM_UTF32_LE,
    "utf-32-be": codecs.BOM_UTF32_BE,
}
COLUMNS = Columns(id="vid", uid="uid")
WIDE = ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"]

CSV = (
    'vid,uid,name\r\nv1,u1,"Ann, the first"\r\n,,\r\n\r\nv2,u2,"two\r\nlines"\r\n'
    "v3,u3,Zoë 🎉\r\nv4,u4,too,many\r\n"
)
CSV_EXPECTED = [
    (2, "v1", "u1", "Ann, the first"),
    (3, "empty row: no id and no uid"),
    (5, "v2", "u2", "two\r\nlines"),  # a quoted field over two lines: the next row is line 7
    (7, "v3", "u3", "Zoë 🎉"),
    (8, "wrong number of fields (expected 3, got 4)"),
]
JSONL = '{"vid": "v1", "uid": "u1", "name": "Ann"}\r\n\r\n{}\r\n{"vid": "v2"}\r\n[1]\r\n'
JSONL_EXPECTED = [
    (1, "v1", "u1", "Ann"),
    (3, "empty row: no id and no uid"),
    (4, "v2", None, None),
    (5, "malformed JSON: expected an object, got array"),
]


def encode(text: str, encoding: str, *, bom: bool = True, gz: bool = False) -> bytes:
    data = (BOMS[encoding] if bom else b"") + text.encode(encoding)
    return gzip.compress(data) if gz else data


def items(path: Path, **options: object) -> tuple[str, list[tuple[object, ...]]]:
    spec = SourceSpec(path=str(path), columns=COLUMNS, **options)  # type: ignore[arg-type]
    out: list[tuple[object, ...]] = []
    with open_source(spec) as rows:
        for item in rows:
            if isinstance(item, Rejected):
                out.append((item.line, item.reason))
            else:
                assert isinstance(item, Recipient)
                out.append((item.line, item.id, item.uid, item.attrs.get("name")))
        return rows.encoding, out


@pytest.mark.parametrize(
    ("asked", "head", "expected"),
    [
        ("utf-8", codecs.BOM_UTF32_LE + b"a\0\0\0", ("utf-32-le", 4)),  # not UTF-16 LE + NULs
        ("utf-8", codecs.BOM_UTF16_LE + b"a\0", ("utf-16-le", 2)),
        ("utf-8", codecs.BOM_UTF32_BE + b"\0\0\0a", ("utf-32-be", 4)),
        ("utf-8", codecs.BOM_UTF16_BE + b"\0a", ("utf-16-be", 2)),
        ("utf-8", codecs.BOM_UTF8 + b"a", ("utf-8", 3)),
        ("utf-8", b"id,uid\n", ("utf-8", 0)),
        ("utf-8-sig", codecs.BOM_UTF16_LE + b"a\0", ("utf-16-le", 2)),
        ("utf-16", codecs.BOM_UTF16_BE + b"\0a", ("utf-16-be", 2)),  # the mark gives the order
        ("utf-32", codecs.BOM_UTF32_LE + b"a\0\0\0", ("utf-32-le", 4)),
        ("utf-16-le", codecs.BOM_UTF16_LE + b"a\0", ("utf-16-le", 2)),  # its own mark: skipped
        ("utf-16-be", codecs.BOM_UTF16_LE + b"a\0", ("utf-16-be", 0)),  # explicit wins
        ("iso8859-1", codecs.BOM_UTF8 + b"a", ("iso8859-1", 0)),
        ("iso8859-1", codecs.BOM_UTF16_LE + b"a", ("iso8859-1", 0)),
    ],
)
def test_the_byte_order_mark_decides_unless_another_encoding_is_asked_for(
    asked: str, head: bytes, expected: tuple[str, int]
) -> None:
    assert choose_encoding(asked, head) == expected


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("encoding", list(BOMS))
def test_csv_and_jsonl_with_a_mark_read_as_utf8_would(
    tmp_path: Path, encoding: str, gz: bool
) -> None:
    suffix = ".gz" if gz else ""
    csv_path = tmp_path / f"r.csv{suffix}"
    csv_path.write_bytes(encode(CSV, encoding, gz=gz))
    assert items(csv_path) == (encoding, CSV_EXPECTED)
    jsonl_path = tmp_path / f"r.jsonl{suffix}"
    jsonl_path.write_bytes(encode(JSONL, encoding, gz=gz))
    assert items(jsonl_path) == (encoding, JSONL_EXPECTED)


def test_a_big_utf16_file_streams_across_blocks_with_the_right_line_numbers(
    tmp_path: Path,
) -> None:
    lines = ["vid,uid"] + [f"v{i},u{i}" if i % 997 else "v,u,x" for i in range(1, 60_001)]
    path, plain = tmp_path / "big.csv", tmp_path / "plain.csv"
    path.write_bytes(encode("\n".join(lines) + "\n", "utf-16-be"))
    plain.write_text("\n".join(lines) + "\n")
    with open_source(SourceSpec(path=str(plain), columns=COLUMNS)) as rows:
        estimate = rows.estimated_rows
    with open_source(SourceSpec(path=str(path), columns=COLUMNS)) as rows:
        assert abs(rows.estimated_rows - estimate) <= 1  # two bytes a character: as UTF-8
        got = list(rows)
    assert len(got) == 60_000
    bad = [r.line for r in got if isinstance(r, Rejected)]
    assert bad == [i + 1 for i in range(1, 60_001) if i % 997 == 0]
    assert got[-1] == Recipient(60_001, "v60000", "u60000")


def test_an_explicit_encoding_wins_and_skips_its_own_mark(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(encode(CSV, "utf-16-le"))
    for asked in ("utf-16-le", "UTF-16", "utf_16"):
        assert items(path, encoding=asked) == ("utf-16-le", CSV_EXPECTED)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(codecs.BOM_UTF8 + "vid,uid\nv1,ü\n".encode())
    with pytest.raises(InputError, match="column 'vid' not found"):  # the mark read as 'ï»¿'
        items(latin, encoding="latin-1")


def test_bad_utf16_data_rejects_its_row_and_reading_goes_on(tmp_path: Path) -> None:
    lone = (
        "vid,uid\nv1,u1\nv2,".encode("utf-16-le")
        + b"\x00\xd8"
        + "\nv3,u3\nv4,u".encode("utf-16-le")
    )
    path = tmp_path / "r.csv"
    path.write_bytes(codecs.BOM_UTF16_LE + lone + b"4")  # a lone surrogate, then an odd byte
    assert items(path) == (
        "utf-16-le",
        [
            (2, "v1", "u1", None),
            (3, "undecodable bytes (not utf-16-le)"),
            (4, "v3", "u3", None),
            (5, "undecodable bytes (not utf-16-le)"),
        ],
    )


@pytest.mark.parametrize(("encoding", "hint"), [("utf-16-le", "utf-16-le"), ("utf-16-be", "be")])
def test_utf16_without_a_mark_is_refused_with_the_encoding_to_try(
    tmp_path: Path, encoding: str, hint: str
) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(encode("vid,uid\nv1,u1\n", encoding, bom=False))
    with pytest.raises(InputError) as raised:
        items(path)
    assert str(raised.value) == (
        f"{path}: looks like a binary file (NUL bytes), not a recipient list; if it is UTF-16 "
        f"text without a byte-order mark, try --encoding utf-16-{hint[-2:]}"
    )
    assert items(path, encoding=encoding)[1] == [(2, "v1", "u1", None)]


def test_a_file_of_only_a_mark_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(codecs.BOM_UTF16_LE)
    with pytest.raises(InputError, match=r"r.csv: file is empty \(only a byte-order mark\)$"):
        items(path)


@pytest.mark.parametrize("encoding", WIDE)
@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_validate_and_a_sandbox_send_read_utf16_and_utf32(
    tmp_path: Path, encoding: str, kind: str
) -> None:
    text, expected = (CSV, CSV_EXPECTED) if kind == "csv" else (JSONL, JSONL_EXPECTED)
    name = f"r.{kind}"
    (tmp_path / name).write_bytes(encode(text, encoding))
    campaign = minimal_campaign(tmp_path, name)
    valid = [e for e in expected if len(e) == 4]
    invalid = [e for e in expected if len(e) == 2]

    checked = run_cli("validate", str(campaign), "--max-invalid-rate", "1", env={})
    assert checked.status == 0, checked.stderr
    assert f"valid        {len(valid)}" in checked.stdout
    for line, reason in invalid:
        assert f"{tmp_path / name}:{line}: {reason}" in checked.stdout

    rows, s = send_to_sandbox(campaign, tmp_path)
    assert (s["read"], s["delivered"], s["invalid"]) == (len(expected), len(valid), len(invalid))
    assert Counter(r["status"] for r in rows) == {"delivered": len(valid), "invalid": len(invalid)}
    delivered = sorted((r["line"], r["id"], r["uid"]) for r in rows if r["status"] == "delivered")
    assert delivered == [e[:3] for e in valid]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_utf16_or_32_asked_for_a_file_without_a_mark_is_a_one_line_error(
    tmp_path: Path, encoding: str
) -> None:
    """Python's codec needs the mark to know the byte order: say which encoding to give."""
    (tmp_path / "r.csv").write_bytes("id\n1\n".encode(f"{encoding}-le"))
    campaign = minimal_campaign(tmp_path, "r.csv")
    for command in (["validate"], ["send", "--sandbox"]):
        result = run_cli(*command, str(campaign), "--encoding", encoding, env={})
        assert result.status == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.endswith(f"has none; give {encoding}-le or {encoding}-be"), line
