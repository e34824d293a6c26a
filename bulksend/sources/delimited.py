"""CSV and TSV: dialect sniffing, the header, and rows in chunks.

Most blocks of a real file are either plain (no quote character) or quoted everywhere, as
exports with ``QUOTE_ALL`` write them; with LF or CRLF line ends (no bare carriage return).
Those are split with ``str.split`` column by column, which gives exactly what ``csv.reader``
gives for them and is several times faster: a plain block on the delimiter, a quoted block on
``","`` once each line is checked to be ``"f1","f2",...`` with no quote or line end inside a
field (a delimiter may be). Any other block (or any block of a dialect with
``skipinitialspace``, or with a field longer than ``csv.field_size_limit()``, for which
``csv.reader`` raises) goes through ``csv.reader`` until it ends on a record boundary, so quoted
fields with delimiters, quotes and newlines inside, even across blocks, are read correctly, and
a field over the limit rejects its row.

Before those, the optional C extension :mod:`bulksend.sources._split` (built by ``pip install``
where a C compiler is there) reads a block in one pass, straight into the columns wanted: any
block of whole records as ``csv.reader`` reads them (plain fields, quoted ones with doubled
quotes, delimiters and line ends inside, LF, CRLF or CR line ends), and declines the rest (a
stray quote, a quote not closed in the block, a line of the wrong width, an empty line), which
then goes the ways above. ``SPLIT`` is its ``split``, or None when it was not built or the
environment variable ``BULKSEND_NO_EXTENSIONS`` is set (not empty, not ``0``) on import.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence

from bulksend.errors import InputError
from bulksend.models import Rejected
from bulksend.recipients import Recipients
from bulksend.sources.rows import Layout
from bulksend.sources.spec import DEFAULT_NAMES, Chunk, SourceSpec
from bulksend.sources.stream import Feed, TextSource, split_lines

CANDIDATES = (",", "\t", ";", "|")
SNIFF_LINES = 100
SLOW_CHUNK = 8192
QUOTE = '"'
UNCLOSED_HINT = 'close the quote, or write a quote inside a quoted field as ""'
_SPANNING = "spanning"  # DelimitedReader._stray: a multi-line record that is not one
#: set (not empty, not "0") to read without the C extensions (bulksend.dedup.deduper too)
NO_EXTENSIONS_VAR = "BULKSEND_NO_EXTENSIONS"


#: ``_split.split(block, delimiter, width, wanted, limit)``: (columns, records, lines, starts)
Splitter = Callable[
    [str, str, int, Sequence[int], int],
    tuple[list[list[str]], int, int, list[int] | None] | None,
]


def _load_split() -> Splitter | None:
    if os.environ.get(NO_EXTENSIONS_VAR, "") not in ("", "0"):
        return None
    try:
        from bulksend.sources import _split
    except ImportError:  # not built (no C compiler at install time)
        return None
    return _split.split


#: the C block splitter, or None (see the module)
SPLIT = _load_split()


def _over_limit(body: str, flat: list[str], stops: str) -> bool:
    """Whether a field in ``flat`` is longer than ``csv.field_size_limit()`` (read now: it may
    be raised), for which ``csv.reader`` raises. ``flat`` is split from ``body``, where each
    field lies in a run of characters none of which is in ``stops``.

    Such a field holds a whole window of ``limit // 2 + 1`` characters starting at a multiple
    of that, none of them in ``stops``. A block has few such windows (4 in 256 KiB at the
    default limit): when they are fewer than an eighth of its fields, a ``find`` or two in each
    tells, and only a window without a stop makes the fields be measured.
    """
    limit = csv.field_size_limit()
    size = len(body)
    if size <= limit:
        return False  # no field is longer than its block
    window = max(limit // 2 + 1, 1)
    if size // window <= len(flat) // 8 and all(
        any(body.find(stop, at, at + window) >= 0 for stop in stops)
        for at in range(0, size - window + 1, window)
    ):
        return False
    return max(map(len, flat)) > limit


class Dialect(csv.Dialect):
    delimiter = ","
    quotechar = QUOTE
    doublequote = True
    skipinitialspace = False
    lineterminator = "\n"
    quoting = csv.QUOTE_MINIMAL
    strict = False


def make_dialect(delimiter: str, skipinitialspace: bool = False) -> type[csv.Dialect]:
    return type(
        "Sniffed", (Dialect,), {"delimiter": delimiter, "skipinitialspace": skipinitialspace}
    )


def sniff(sample: str) -> tuple[str, bool, int]:
    """``(delimiter, skipinitialspace, fields in the first record)`` for a sample of whole lines.

    The delimiter is the candidate that splits the first record into the most fields while at
    least 90 % of the sampled records have that many; with none like that, the one that splits
    the first record most; a single column reads as ``,``.
    """
    lines = split_lines(sample)[:SNIFF_LINES]
    best: tuple[bool, int, str] | None = None
    for delimiter in CANDIDATES:
        try:
            records = _records(lines, delimiter)
        except csv.Error:
            continue
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        steady = sum(len(r) == width for r in records) >= 0.9 * len(records)
        score = (steady, width, delimiter)
        if best is None or score[:2] > best[:2]:
            best = score
    if best is None:
        first = next(iter(_records(lines, ",")), [])
        return ",", False, max(len(first), 1)
    delimiter = best[2]
    first = _records(lines, delimiter)[0]
    spaced = len(first) > 1 and all(field.startswith(" ") for field in first[1:])
    return delimiter, spaced, len(first)


def _records(lines: list[str], delimiter: str) -> list[list[str]]:
    """The records of ``lines`` split on ``delimiter``, but for the empty ones and any with a
    field over ``csv.field_size_limit()`` (for which ``csv.reader`` raises: reading goes on
    after it, so that such a field does not hide the file's delimiter; the row is rejected
    when it is read)."""
    dialect = make_dialect(delimiter)
    out: list[list[str]] = []
    start = 0
    while start < len(lines):
        reader = csv.reader(lines[start:], dialect)
        try:
            for record in reader:
                if record:
                    out.append(record)
        except csv.Error as error:
            if not str(error).startswith("field larger than field limit"):
                raise
            start += max(reader.line_num, 1)
        else:
            break
    return out


def layout_for(spec: SourceSpec, header: Sequence[str]) -> Layout:
    """Map the header to the spec's columns (case-insensitively) or say what is missing."""
    name = spec.name
    labels = [h.strip().lstrip("\ufeff").strip() for h in header]
    lowered = [label.lower() for label in labels]
    keys: list[tuple[str, int, str]] = []
    absent: list[tuple[str, str]] = []
    for key, wanted in spec.columns.mapped():
        found = [i for i, label in enumerate(lowered) if label == wanted.lower()]
        if len(found) > 1:
            raise InputError(f"{name}: column {wanted!r} appears {len(found)} times in the header")
        if found:
            keys.append((key, found[0], labels[found[0]]))
        else:
            absent.append((key, wanted))
    for key, wanted in absent:
        if keys and (wanted == DEFAULT_NAMES[key] or key in spec.optional):
            continue  # a default (or optional) column that this file simply does not have
        shown = ", ".join(repr(label) for label in labels[:20])
        more = f", … ({len(labels)} in all)" if len(labels) > 20 else ""
        raise InputError(
            f"{name}: column {wanted!r} not found in the header (columns: {shown}{more})"
        )
    if not keys:
        raise InputError(f"{name}: no column to read (columns mapped to None)")
    used = {index for _, index, _ in keys}
    attrs = []
    if spec.keep_attrs:
        attrs = [(i, label) for i, label in enumerate(labels) if i not in used and label]
    return Layout(
        width=len(labels),
        keys=keys,
        attrs=attrs,
        max_len=spec.max_value_len,
        encoding=spec.encoding,
    )


class DelimitedReader:
    """Rows of a CSV/TSV file after its header, in chunks."""

    def __init__(self, spec: SourceSpec, source: TextSource, delimiter: str | None) -> None:
        self._spec = spec
        self._name = spec.name
        self._source = source
        first = source.block()
        if delimiter is None:
            delimiter, spaced, _ = sniff(first)
        else:
            spaced = False
        self.delimiter = delimiter
        self._dialect = make_dialect(delimiter, spaced)
        self._strict = type("Strict", (self._dialect,), {"strict": True})  # see _well_formed
        self._fast_ok = not spaced
        self._feed = Feed(source)
        self._feed.load(first)
        self._line = 1
        header = self._header()
        self.header = [h.strip().lstrip("\ufeff").strip() for h in header]
        self.layout = layout_for(spec, header)
        self._needed = sorted(
            {i for _, i, _ in self.layout.keys} | {i for i, _ in self.layout.attrs}
        )
        self._split = SPLIT

    def _header(self) -> list[str]:
        reader = csv.reader(self._feed, self._dialect)
        while True:
            before = reader.line_num
            try:
                record = next(reader)
            except StopIteration:
                raise InputError(f"{self._name}: file has only blank lines") from None
            except csv.Error as error:
                raise InputError(f"{self._name}:{self._line + before}: {error}") from None
            if "".join(record).strip():
                self._line += reader.line_num
                return record

    def chunks(self) -> Iterator[Chunk]:
        rest = self._feed.take_rest()  # of the block that held the header
        chunk = self._fast(rest) if rest else None
        if chunk is not None:
            yield chunk
        elif rest:
            self._feed.load(rest)
            yield from self._slow()
        while True:
            self._source.line = self._line
            block = self._source.block()
            if not block:
                return
            chunk = self._fast(block)
            if chunk is not None:
                yield chunk
            else:
                self._feed.load(block)
                yield from self._slow()

    def _fast(self, block: str) -> Chunk | None:
        """A block of whole records, in C, or else plain or all-quoted ones split on the
        delimiter (see the module); None for ``csv.reader``."""
        if not self._fast_ok:
            return None
        if self._split is not None:
            chunk = self._compiled(self._split, block)
            if chunk is not None:
                return chunk
        if block.endswith("\n"):
            body = block[:-2] if block.endswith("\r\n") else block[:-1]
        else:
            body = block
        count = body.count("\n") + 1
        # CRLF throughout, or else (a bare CR, LF and CRLF mixed) csv.reader's business: the
        # splits below tell, by the number of lines between CRLFs and a CR left over
        end = "\r\n" if "\r" in body else "\n"
        quoted = QUOTE in body
        split = self._split_quoted if quoted else self._split_plain
        flat = split(body, count, end)
        if flat is None or _over_limit(body, flat, QUOTE if quoted else self.delimiter + "\n"):
            return None
        first = self._line
        numbers = range(first, first + count)
        width = self.layout.width
        step = width + 1
        columns = [flat[i::step] if i in self._needed else [] for i in range(width)]
        chunk = self.layout.columns(numbers, columns, count)
        if chunk is None:
            rows = [flat[i : i + width] for i in range(0, len(flat), step)]
            if not quoted:  # an empty line is no row ([], as csv.reader gives it), not [""]
                rows = [row if row != [""] else [] for row in rows]
            chunk = self.layout.rows(numbers, rows)
        self._line = first + count
        return chunk

    def _compiled(self, split: Splitter, block: str) -> Chunk | None:
        """The block through the C splitter (``SPLIT``), or None when it declines."""
        width = self.layout.width
        limit = csv.field_size_limit()
        got = split(block, self.delimiter, width, self._needed, limit)
        if got is None:
            return None
        values, count, lines, starts = got
        first = self._line
        numbers = range(first, first + count) if starts is None else [first + s for s in starts]
        columns: list[list[str]] = [[] for _ in range(width)]
        for index, column in zip(self._needed, values, strict=True):
            columns[index] = column
        chunk = self.layout.columns(numbers, columns, count)
        if chunk is None:  # some row needs the per-row rules, which look at every field
            every = split(block, self.delimiter, width, range(width), limit)
            assert every is not None  # the same block
            chunk = self.layout.rows(numbers, list(zip(*every[0], strict=True)))
        self._line = first + lines
        return chunk

    def _split_plain(self, body: str, count: int, end: str) -> list[str] | None:
        """Every field of ``count`` lines without quotes, each line's followed by a "\\n" field
        (the last line's not), or None when some line has not ``width`` fields. Every line but
        the last ends with ``end`` (LF, or CRLF and no other CR in ``body``), or None."""
        delimiter = self.delimiter
        as_field = delimiter + "\n" + delimiter
        if end == "\n":
            spread = body.replace("\n", as_field)
        else:  # (a split and a join cost less than a replace of two characters)
            lines = body.split(end)
            if len(lines) != count:
                return None  # a line end that is not CRLF: a bare LF among them
            spread = as_field.join(lines)
            if "\r" in spread:
                return None  # a bare CR
        # each line end is now a field of its own, "\n", which must come every width + 1
        flat = spread.split(delimiter)
        width = self.layout.width
        step = width + 1
        if len(flat) != step * count - 1 or flat[width::step].count("\n") != count - 1:
            return None
        return flat

    def _split_quoted(self, body: str, count: int, end: str) -> list[str] | None:
        """As ``_split_plain`` for lines whose every field is quoted (``QUOTE_ALL``), or None.

        Each line must be exactly ``"f1","f2",...,"fn"`` (``,`` being the delimiter). Every
        ``"<end>"`` becomes ``","\\n","`` (every line end must be between two quotes: the
        number of lines tells), then the text is split on ``","``: a "\\n" field must come
        every width + 1 fields, and no field may hold a quote (the quotes must be as many as
        the separators and line ends hold).
        ``csv.reader`` reads such a line as exactly those fields (a delimiter inside one
        included), so a block that passes gives what the reader gives; anything else goes to
        the reader.
        """
        if len(body) < 2 or body[0] != QUOTE or body[-1] != QUOTE:
            return None
        separator = QUOTE + self.delimiter + QUOTE
        line_end = QUOTE + end + QUOTE
        as_field = separator + "\n" + separator
        lines = body[1:-1].split(line_end)
        if len(lines) != count:
            return None  # a line end not between two quotes
        spread = as_field.join(lines)
        if end != "\n" and "\r" in spread:
            return None  # a bare CR
        flat = spread.split(separator)
        width = self.layout.width
        step = width + 1
        if len(flat) != step * count - 1 or flat[width::step].count("\n") != count - 1:
            return None
        if body.count(QUOTE) != 2 * width * count:
            return None  # a quote inside a field: not all are the separators' and line ends'
        return flat

    def _slow(self) -> Iterator[Chunk]:
        """Rows through ``csv.reader`` until the loaded lines are used up on a record boundary.

        A stray quote makes ``csv.reader`` (not strict) read on across line ends until the next
        quote, or to the end of the file, as one field: every row in between would vanish into
        one bad record. So a record that runs into the end of the file (or past the field size
        limit) inside quotes is rejected on its first line, and reading starts again on the
        line after it; a record that spans lines, does not fit the header and is not how a CSV
        writer quotes has every one of its lines rejected, each with the reason.
        """
        feed = self._feed
        reader = csv.reader(feed, self._dialect)
        base = self._line
        numbers: list[int] = []
        rows: list[list[str]] = []
        while not feed.drained:
            before = reader.line_num
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                if not str(error).startswith("field larger than field limit"):
                    raise InputError(f"{self._name}:{base + before}: {error}") from None
                lines = reader.line_num - before
                opening = feed.last(lines)[0] if lines else ""
                record, stray = [], _too_long(lines, opening, self.delimiter)
            else:
                lines = reader.line_num - before
                stray = "" if lines == 1 and not feed.ended else self._stray(record, lines)
            if not stray:
                numbers.append(base + before)
                rows.append(record)
                if len(rows) >= SLOW_CHUNK:
                    self._line = base + reader.line_num
                    yield self._chunk(numbers, rows)
                    numbers, rows = [], []
                continue
            if rows:
                yield self._chunk(numbers, rows)
                numbers, rows = [], []
            first, lines = base + before, reader.line_num - before
            if stray == _SPANNING:  # which lines were meant as rows is a guess: each is reported
                yield self._spanning(first, first + lines - 1, len(record))
                continue
            yield Chunk(Recipients.of([]), [Rejected(first, stray)])
            feed.put_back(feed.last(lines)[1:])  # the record's lines after its first
            reader = csv.reader(feed, self._dialect)
            base = self._line = first + 1
        self._line = base + reader.line_num
        if rows:
            yield self._chunk(numbers, rows)

    def _stray(self, record: list[str], lines: int) -> str:
        """For a record that took ``lines`` lines (or ran into the end of the file): "" when
        it is fine, ``_SPANNING`` when it spans lines but is not a record, else the reason
        its first row is rejected (and the lines after it read again)."""
        if self._feed.ended:  # csv.reader asks for more mid-record only inside quotes
            return _skipped("a quoted field starts on this row and is never closed")
        if len(record) == self.layout.width or self._well_formed(self._feed.last(lines)):
            return ""  # a quoted field with line ends in it, as CSV allows
        return _SPANNING

    def _well_formed(self, lines: list[str]) -> bool:
        """Whether a record's lines are one record to a strict reader: its quotes open at a
        field's start and close before a delimiter or a line end, as a CSV writer puts them
        (a stray quote seldom does)."""
        try:
            return len(list(csv.reader(lines, self._strict))) == 1
        except csv.Error:
            return False

    def _spanning(self, first: int, last: int, fields: int) -> Chunk:
        """Lines ``first``..``last``, read as one record that does not fit the header: each
        is rejected (a stray quote, most likely), none is lost or sent."""
        where = f"a quoted field starts on line {first} and closes only on line {last}"
        got = f"{fields} field" + ("" if fields == 1 else "s")
        fit = f"the record does not fit the header ({got}, expected {self.layout.width})"
        rejected = [Rejected(first, f"{where}, and {fit} ({UNCLOSED_HINT})")]
        rejected += [
            Rejected(line, f"inside the quoted field that starts on line {first}: {fit}")
            for line in range(first + 1, last + 1)
        ]
        return Chunk(Recipients.of([]), rejected)

    def _chunk(self, numbers: list[int], rows: list[list[str]]) -> Chunk:
        """Rows from ``csv.reader``: column by column when they all have the right width."""
        width = self.layout.width
        if all(len(row) == width for row in rows):
            columns = [list(column) for column in zip(*rows, strict=True)]
            chunk = self.layout.columns(numbers, columns, len(rows))
            if chunk is not None:
                return chunk
        return self.layout.rows(numbers, rows)


def _skipped(what: str) -> str:
    """The reason a row is rejected for a quote that would swallow the lines after it."""
    return f"{what}: skipped, and the next lines read as rows ({UNCLOSED_HINT})"


def _too_long(lines: int, first: str, delimiter: str) -> str:
    """The reason a row is rejected when ``csv.reader`` found a field over its limit in the
    record's ``lines``-th line (``first``: the record's first line): a long field on the row,
    or a quote still open there (across lines, or on a line that opens a quoted field and has
    an odd number of quotes)."""
    limit = f"{csv.field_size_limit():,}"
    opens = first.startswith(QUOTE) or delimiter + QUOTE in first
    if lines > 1 or (opens and first.count(QUOTE) % 2):
        return _skipped(
            f"a quoted field starts on this row and runs past {limit} characters without closing"
        )
    return (
        f"a field on this row is longer than {limit} characters, the CSV reader's limit: "
        "skipped (shorten the field)"
    )


def check_delimiter(spec: SourceSpec) -> str | None:
    if spec.format == "tsv":
        return spec.delimiter or "\t"
    delimiter = spec.delimiter
    if delimiter is not None and (len(delimiter) != 1 or delimiter in '"\r\n'):
        raise InputError(f"{spec.name}: bad delimiter {delimiter!r} (one character, not a quote)")
    return delimiter
