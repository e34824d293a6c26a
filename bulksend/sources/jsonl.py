"""JSON Lines: one object per line; ``id``/``uid`` may be strings or integers.

An empty line (nothing but its ending) is skipped and is not a row. A line of only whitespace,
and an object without a value (``{}``, or only nulls and blank strings), is a row rejected as
``empty row``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import repeat
from typing import Any

import orjson

from bulksend.models import Rejected
from bulksend.recipients import EMPTY, Recipients, attrs_or_none, present_or_none
from bulksend.sources import spec as specs
from bulksend.sources.rows import _ATTR_BAD, _KEY_BAD, _SURROGATE, Layout
from bulksend.sources.spec import Chunk, SourceSpec
from bulksend.sources.stream import TextSource, lines_of

_STR_OR_NONE = frozenset({str, type(None)})
_KINDS = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}


def _blank(record: dict[str, Any]) -> bool:
    """No value in the object: every one is null or a blank string (``{}`` too)."""
    return all(v is None or (type(v) is str and not v.strip()) for v in record.values())


def _kind(value: object) -> str:
    return "object" if isinstance(value, dict) else _KINDS.get(type(value), type(value).__name__)


class JsonLinesReader:
    """Rows of a JSON Lines file, in chunks (one per block)."""

    def __init__(self, spec: SourceSpec, source: TextSource) -> None:
        self._source = source
        self._wanted = {name.lower(): key for key, name in spec.columns.mapped()}
        self._keep = spec.keep_attrs
        self._limit = spec.max_value_len
        self._undecodable = specs.undecodable(spec.encoding)
        self._missing = specs.missing([key for key, _ in spec.columns.mapped()])
        self._empty = specs.empty([key for key, _ in spec.columns.mapped()])
        self._line = 1
        # the fast path's column checks, as for a CSV file with just these columns
        mapped = spec.columns.mapped()
        self._exact_order = [name for _, name in mapped]
        self._exact = frozenset(self._exact_order)
        keys = [(key, index, name) for index, (key, name) in enumerate(mapped)]
        self._layout = Layout(
            width=len(mapped), keys=keys, attrs=[], max_len=self._limit, encoding=spec.encoding
        )

    def chunks(self) -> Iterator[Chunk]:
        while True:
            self._source.line = self._line
            block = self._source.block()
            if not block:
                return
            lines = lines_of(block)  # a lone \r ends a line too (files from old Macs)
            yield self._fast(lines) or self._slow(lines)
            self._line += len(lines)

    def _fast(self, lines: list[str]) -> Chunk | None:
        """The chunk of a block of plain records, column by column, or None (then ``_slow``).

        Plain: every line one JSON object, no blank line; no key but the mapped ones in their
        exact spelling (any other is ignored only without ``keep_attrs`` and when it does not
        map case-insensitively); every id and uid a string or null, each passing the checks
        of ``Layout.columns`` as a CSV column does. Those rows come out as ``_row`` makes
        them: ``_row``'s rules for anything else.
        """
        count = len(lines)
        if not count or "" in lines or "\r" in lines:
            return None
        try:
            records = list(map(orjson.loads, lines))
        except orjson.JSONDecodeError:
            return None
        if set(map(type, records)) != {dict}:
            return None
        other = set().union(*records) - self._exact
        if other and (self._keep or any(k.lower() in self._wanted for k in other)):
            return None
        columns: list[list[str]] = []
        for name in self._exact_order:
            values: list[Any] = list(map(dict.get, records, repeat(name)))
            kinds = set(map(type, values))
            if not kinds <= _STR_OR_NONE:
                return None
            columns.append([v or "" for v in values] if type(None) in kinds else values)
        numbers = range(self._line, self._line + count)
        return self._layout.columns(numbers, columns, count)

    def _slow(self, lines: list[str]) -> Chunk:
        """The chunk of a block, record by record (``_row``)."""
        numbers: list[int] = []
        ids: list[str | None] = []
        uids: list[str | None] = []
        attrs: list[Mapping[str, str]] = []
        rejected: list[Rejected] = []
        for number, text in enumerate(lines, self._line):
            if not text or text == "\r":
                continue
            item = self._row(number, text) if text.strip() else Rejected(number, self._empty)
            if type(item) is Rejected:
                rejected.append(item)
            else:
                numbers.append(number)
                ids.append(item[0])  # type: ignore[index]
                uids.append(item[1])  # type: ignore[index]
                attrs.append(item[2])  # type: ignore[index]
        return Chunk(
            Recipients(
                numbers,
                present_or_none(ids),
                present_or_none(uids),
                attrs_or_none(attrs),
            ),
            rejected,
        )

    def _row(
        self, line: int, text: str
    ) -> tuple[str | None, str | None, Mapping[str, str]] | Rejected:
        """``(id, uid, attrs)`` of the record on ``line``, or why it is rejected."""
        try:
            record = orjson.loads(text)
        except orjson.JSONDecodeError as error:
            if _SURROGATE.search(text):
                return Rejected(line, self._undecodable)
            return Rejected(line, f"malformed JSON: {error.msg} at column {error.colno}")
        if not isinstance(record, dict):
            return Rejected(line, f"malformed JSON: expected an object, got {_kind(record)}")
        values: dict[str, str | None] = {}
        attrs: dict[str, str] = {}
        for name, value in record.items():
            key = self._wanted.get(name.lower())
            if key is not None:
                problem, values[key] = self._key(name, value)
            elif self._keep and value is not None:
                problem, attrs[name] = self._attr(name, value)
            else:
                continue
            if problem:
                return Rejected(line, problem)
        id, uid = values.get("id"), values.get("uid")
        if id is None and uid is None:
            return Rejected(line, self._empty if _blank(record) else self._missing)
        return id, uid, attrs or EMPTY

    def _key(self, name: str, value: Any) -> tuple[str | None, str | None]:
        if value is None:
            return None, None
        if type(value) is int:
            return None, str(value)
        if type(value) is not str:
            return specs.bad_type(name, _kind(value)), None
        value = value.strip()
        if len(value) > self._limit:
            return specs.too_long(name, len(value), self._limit), None
        if _KEY_BAD.search(value):
            return specs.control(name), None
        return None, value or None

    def _attr(self, name: str, value: Any) -> tuple[str | None, str]:
        if type(value) is str:
            text = value
        elif value is True or value is False:
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        else:
            text = orjson.dumps(value).decode()
        if len(text) > self._limit:
            return specs.too_long(name, len(text), self._limit), ""
        if _ATTR_BAD.search(text):
            return specs.control(name), ""
        return None, text
