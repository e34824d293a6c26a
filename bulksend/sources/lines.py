"""A plain list: one identifier per line, no header.

An empty line (nothing but its ending) is skipped and is not a row; a line of only whitespace
is a row, rejected as ``empty row``.
"""

from __future__ import annotations

from collections.abc import Iterator

from bulksend.sources.rows import Layout
from bulksend.sources.spec import Chunk, SourceSpec
from bulksend.sources.stream import TextSource, split_lines


def layout_for_lines(spec: SourceSpec) -> Layout:
    """Each line is an ``id`` (or a ``uid`` when only the uid column is mapped)."""
    key = "uid" if spec.columns.id is None and spec.columns.uid is not None else "id"
    return Layout(
        width=1,
        keys=[(key, 0, key)],
        attrs=[],
        max_len=spec.max_value_len,
        encoding=spec.encoding,
    )


class LinesReader:
    def __init__(self, spec: SourceSpec, source: TextSource) -> None:
        self._source = source
        self.layout = layout_for_lines(spec)
        self._line = 1

    def chunks(self) -> Iterator[Chunk]:
        layout = self.layout
        while True:
            self._source.line = self._line
            block = self._source.block()
            if not block:
                return
            body = block[:-1] if block.endswith("\n") else block
            if "\r" in body:
                body = body.replace("\r\n", "\n")
            if "\r" in body:
                lines = [line.rstrip("\r\n") for line in split_lines(block)]
            else:
                lines = body.split("\n")
            first = self._line
            self._line += len(lines)
            numbers = range(first, first + len(lines))
            if "" in lines:
                kept = [(n, v) for n, v in zip(numbers, lines, strict=True) if v]
                if not kept:
                    yield Chunk([], [])
                    continue
                numbers_list = [n for n, _ in kept]
                values = [v for _, v in kept]
                chunk = layout.columns(numbers_list, [values], len(values))
                yield chunk or layout.rows(numbers_list, [[v] for v in values])
            else:
                chunk = layout.columns(numbers, [lines], len(lines))
                yield chunk or layout.rows(numbers, [[v] for v in lines])
