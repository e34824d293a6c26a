"""``open_source``: one streaming reader for every format, plus the ``--strict`` helpers."""

from __future__ import annotations

import codecs
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from operator import attrgetter
from typing import BinaryIO, Protocol

from bulksend.errors import InputError
from bulksend.models import Recipient, Rejected
from bulksend.sources.delimited import DelimitedReader, check_delimiter, sniff
from bulksend.sources.jsonl import JsonLinesReader
from bulksend.sources.lines import LinesReader
from bulksend.sources.spec import FORMATS, STDIN, Chunk, Format, SourceSpec, describe
from bulksend.sources.stream import TextSource, open_text, wide

_EXTENSIONS: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


class _Reader(Protocol):
    def chunks(self) -> Iterator[Chunk]: ...


class Rows:
    """The rows of an open source. Iterate once: items, or ``chunks()`` for speed.

    ``format``, ``delimiter``, ``header`` and ``encoding`` (the codec, after any byte-order
    mark) say what was found; ``estimated_rows`` is a guess
    from the file size and the first block (0 when unknown: gzip, stdin), good for sizing the
    deduplicator; ``recipients``/``rejected`` count what has been read so far.
    """

    def __init__(
        self,
        spec: SourceSpec,
        reader: _Reader,
        *,
        format: Format,
        delimiter: str | None,
        header: list[str],
        source: TextSource,
        size: int | None,
    ) -> None:
        self.name = spec.name
        self.format = format
        self.encoding = spec.encoding
        self.delimiter = delimiter
        self.header = header
        self.recipients = 0
        self.rejected = 0
        self._strict = spec.strict
        self._chunks = reader.chunks()
        self._started = False
        self._ahead: list[Chunk] = []
        self._prefetch()
        self.estimated_rows = 0
        if size and source.consumed:
            rows = sum(len(c.recipients) + len(c.rejected) for c in self._ahead)
            self.estimated_rows = int(size * rows / source.consumed)

    def _prefetch(self) -> None:
        """Read until the first row, so that an empty file fails at open."""
        for chunk in self._chunks:
            self._ahead.append(chunk)
            if chunk.recipients or chunk.rejected:
                return
        if self.format in ("csv", "tsv"):
            raise InputError(f"{self.name}: no data rows (only a header)")
        raise InputError(f"{self.name}: file has only blank lines")

    def chunks(self) -> Iterator[Chunk]:
        """Chunks of consecutive rows (a few thousand each), in file order."""
        if self._started:
            raise RuntimeError("the rows of a source can be read only once")
        self._started = True
        ahead, self._ahead = self._ahead, []
        for chunk in ahead:
            yield self._count(chunk)
        for chunk in self._chunks:
            yield self._count(chunk)

    def _count(self, chunk: Chunk) -> Chunk:
        self.recipients += len(chunk.recipients)
        self.rejected += len(chunk.rejected)
        if self._strict and chunk.rejected:
            raise InputError(describe(self.name, chunk.rejected[0]))
        return chunk

    def __iter__(self) -> Iterator[Recipient | Rejected]:
        """Every row in file order: a ``Recipient`` or a ``Rejected``."""
        for recipients, rejected in self.chunks():
            if not rejected:
                yield from recipients
            elif not recipients:
                yield from rejected
            else:
                merged: list[Recipient | Rejected] = [*recipients, *rejected]
                yield from sorted(merged, key=attrgetter("line"))


def _detect(spec: SourceSpec, source: TextSource) -> Format:
    if spec.format != "auto":
        return spec.format
    if spec.delimiter is not None:
        return "csv"
    if spec.path != STDIN:
        base = spec.path.lower()
        base = base.removesuffix(".gz")
        ext = os.path.splitext(base)[1]
        if ext in _EXTENSIONS:
            return _EXTENSIONS[ext]
    first = source.block()
    source.unread(first)
    if first.lstrip("\ufeff \t\r\n").startswith("{"):
        return "jsonl"
    _, _, width = sniff(first)
    if width >= 2:
        return "csv"
    head = first.lstrip("\ufeff \t\r\n").split("\n", 1)[0].strip().strip('"').strip().lower()
    names = {name.lower() for _, name in spec.columns.mapped()}
    return "csv" if head in names else "lines"


def _check(spec: SourceSpec) -> None:
    if spec.format not in FORMATS:
        raise InputError(f"{spec.name}: unknown format {spec.format!r} (one of {FORMATS})")
    if spec.max_value_len < 1:
        raise InputError(f"{spec.name}: max_value_len must be positive")
    if not spec.columns.mapped():
        raise InputError(f"{spec.name}: no column to read (id and uid both None)")


@contextmanager
def open_source(spec: SourceSpec, *, stdin: BinaryIO | None = None) -> Iterator[Rows]:
    """Open a recipient file for streaming. Problems with the whole file raise ``InputError``
    here (or, for damage further on such as truncated gzip data, while iterating)."""
    _check(spec)
    delimiter = check_delimiter(spec)
    with open_text(spec, stdin) as (text, size, encoding):
        if encoding != codecs.lookup(spec.encoding).name:  # a byte-order mark said otherwise
            spec = replace(spec, encoding=encoding)
        if size and wide(encoding):  # the estimate counts characters, the size bytes
            size //= 4 if encoding.startswith("utf-32") else 2
        source = TextSource(text, spec.name)
        fmt = _detect(spec, source)
        reader: _Reader
        header: list[str] = []
        if fmt in ("csv", "tsv"):
            delimited = DelimitedReader(spec, source, "\t" if fmt == "tsv" else delimiter)
            reader, header, delimiter = delimited, delimited.header, delimited.delimiter
        elif fmt == "jsonl":
            reader, delimiter = JsonLinesReader(spec, source), None
        else:
            reader, delimiter = LinesReader(spec, source), None
        yield Rows(
            spec,
            reader,
            format=fmt,
            delimiter=delimiter,
            header=header,
            source=source,
            size=size,
        )


def collect_problems(
    spec: SourceSpec, limit: int = 20, *, stdin: BinaryIO | None = None
) -> list[Rejected]:
    """The first ``limit`` rejected rows (reads the whole file when there are fewer), for
    ``--strict``. Whole-file problems raise ``InputError`` as ``open_source`` does."""
    problems: list[Rejected] = []
    with open_source(replace(spec, strict=False), stdin=stdin) as rows:
        for chunk in rows.chunks():
            problems.extend(chunk.rejected[: limit - len(problems)])
            if len(problems) >= limit:
                break
    return problems


@contextmanager
def spooled(spec: SourceSpec, *, stdin: BinaryIO | None = None) -> Iterator[SourceSpec]:
    """For ``-``: copy stdin to a temporary file so it can be read twice (validate, then send).

    Other specs are yielded unchanged. The file is removed on exit.
    """
    if spec.path != STDIN:
        yield spec
        return
    source = stdin if stdin is not None else sys.stdin.buffer
    fd, path = tempfile.mkstemp(prefix="bulksend-stdin-")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        yield replace(spec, path=path)
    finally:
        os.unlink(path)
