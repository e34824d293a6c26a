"""Turning fields into recipients: the per-row rules and their column-at-a-time fast path.

Both paths give the same answer for the same rows (a hypothesis test checks it): the fast path
only handles chunks where every check passes in bulk and hands anything else to the per-row
rules.

Rules, for the columns that are read (``id``, ``uid`` and, with ``keep_attrs``, the others):

* surrounding whitespace is stripped from ``id`` and ``uid``; an empty one counts as absent;
* a line with no character at all (only its line ending) is not a row: it is skipped, and
  counted nowhere; a row that has characters but no value (only delimiters and/or whitespace,
  such as ``,,`` at the end of a spreadsheet export) is a row, rejected as ``empty row``;
* undecodable bytes, a value over ``max_value_len`` characters, or a control character
  (any C0/C1 character in ``id``/``uid``; C0 other than tab, CR and LF in attributes) reject
  the row, as does a row without ``id`` and ``uid``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bulksend.models import Recipient, Rejected
from bulksend.recipients import EMPTY, AttrColumns, Recipients, make_recipient
from bulksend.sources import spec

_KEY_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ATTR_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
#: the ASCII control characters, for ``bytes.translate`` to count
_CONTROL = bytes(range(32)) + b"\x7f"


def _none_if_empty(value: str) -> str | None:
    return value or None


def _both_none(a: str | None, b: str | None) -> bool:
    return a is None and b is None


class Layout:
    """Where the read columns sit in a row of ``width`` fields, and the rules to apply."""

    def __init__(
        self,
        *,
        width: int,
        keys: Sequence[tuple[str, int, str]],
        attrs: Sequence[tuple[int, str]],
        max_len: int,
        encoding: str,
    ) -> None:
        self.width = width
        #: (recipient field, index, column label) for id and uid
        self.keys = list(keys)
        self.id_index = next((i for key, i, _ in keys if key == "id"), None)
        self.uid_index = next((i for key, i, _ in keys if key == "uid"), None)
        self.attrs = list(attrs)
        self.attr_names = [name for _, name in attrs]
        self.max_len = max_len
        self.undecodable = spec.undecodable(encoding)
        self.missing = spec.missing([key for key, _, _ in keys])
        self.empty = spec.empty([key for key, _, _ in keys])

    # -- one row -----------------------------------------------------------------------------

    def row(self, line: int, fields: Sequence[str]) -> Recipient | Rejected | None:
        """The recipient for one row, its rejection, or None for an empty line (no fields:
        what ``csv.reader`` gives for a line with nothing but its ending)."""
        if not fields:
            return None
        if len(fields) != self.width:
            if self._blank(fields):
                return Rejected(line, self.empty)
            return Rejected(line, spec.wrong_fields(self.width, len(fields)))
        values = {}
        for key, index, label in self.keys:
            value = fields[index].strip()
            problem = self._problem(value, label, _KEY_BAD)
            if problem:
                return Rejected(line, problem)
            values[key] = value or None
        attrs: Mapping[str, str] = EMPTY
        if self.attrs:
            kept = {}
            for index, name in self.attrs:
                value = fields[index]
                problem = self._problem(value, name, _ATTR_BAD)
                if problem:
                    return Rejected(line, problem, values.get("id"), values.get("uid"))
                kept[name] = value
            attrs = kept
        id, uid = values.get("id"), values.get("uid")
        if id is None and uid is None:
            return Rejected(line, self.empty if self._blank(fields) else self.missing)
        return make_recipient(line, id, uid, attrs)

    def _problem(self, value: str, label: str, bad: re.Pattern[str]) -> str | None:
        if _SURROGATE.search(value):
            return self.undecodable
        if len(value) > self.max_len:
            return spec.too_long(label, len(value), self.max_len)
        if bad.search(value):
            return spec.control(label)
        return None

    def _plain(self, values: list[str]) -> bool:
        """No control character or undecodable byte, none too long: fine for any column."""
        joined = "".join(values)
        if joined.isascii():
            encoded = joined.encode("ascii")
            if len(encoded.translate(None, _CONTROL)) != len(encoded):  # below 32, or 127
                return False
        elif not joined.isprintable():
            return False
        return max(map(len, values)) <= self.max_len

    @staticmethod
    def _blank(fields: Sequence[str]) -> bool:
        return not "".join(fields).strip()

    def rows(self, lines: Sequence[int], rows: Sequence[Sequence[str]]) -> spec.Chunk:
        recipients: list[Recipient] = []
        rejected: list[Rejected] = []
        for line, fields in zip(lines, rows, strict=True):
            item = self.row(line, fields)
            if item is None:
                continue
            if type(item) is Rejected:
                rejected.append(item)
            else:
                recipients.append(item)  # type: ignore[arg-type]
        return spec.Chunk(Recipients.of(recipients), rejected)

    # -- a chunk of columns ------------------------------------------------------------------

    def columns(
        self,
        lines: Sequence[int],
        columns: Sequence[list[str]],
        count: int,
    ) -> spec.Chunk | None:
        """The chunk for ``count`` rows given column by column, when every check passes in bulk.

        Only the read columns need to be filled in ``columns`` (by index). None means "use the
        per-row rules": the rows may still be fine, or some be rejected.
        """
        if not count:
            return spec.Chunk([], [])
        ids: list[Any] | None = None
        uids: list[Any] | None = None
        gaps = 0  # columns with an empty value
        for key, index, _ in self.keys:
            checked = self._key_column(columns[index], count)
            if checked is None:
                return None
            values, empty = checked
            gaps += empty
            if key == "id":
                ids = values
            else:
                uids = values
        # rows without id and uid: only possible where every read column has an empty value
        if gaps == len(self.keys) and (
            ids is None or uids is None or any(map(_both_none, ids, uids))
        ):
            return None
        attrs: AttrColumns | None = None
        if self.attrs:
            picked = [columns[index] for index, _ in self.attrs]
            if not all(map(self._plain, picked)):
                return None
            attrs = AttrColumns(self.attr_names, picked)
        return spec.Chunk(Recipients(lines, ids, uids, attrs), [])

    def _key_column(self, values: list[str], count: int) -> tuple[list[Any], bool] | None:
        """An ``id`` or ``uid`` column checked in bulk: stripped, with None for an empty value,
        and whether there is such a None; or None when some value needs the per-row rules (a
        control character, undecodable bytes, a value too long, or one that is not printable).
        """
        joined = "\0".join(values)  # NUL: a control character, never in a valid value
        empty = False
        if joined.isascii():
            encoded = joined.encode("ascii")
            # the separators must be the only control characters (below 32, or 127)
            if len(encoded) - len(encoded.translate(None, _CONTROL)) != count - 1:
                return None
            size = len(values[0])
            if count > 1 and size and len(encoded) == count * (size + 1) - 1:
                # all as long as the first exactly when the separators fall every size + 1
                fixed = encoded[size :: size + 1].count(0) == count - 1
            else:
                fixed = count == 1
            if fixed:
                longest, empty = size, not size
            else:
                longest, empty = max(map(len, values)), "" in values
            if longest > self.max_len:
                return None
        elif not "".join(values).isprintable() or max(map(len, values)) > self.max_len:
            return None
        else:
            empty = "" in values
        # printable: the only whitespace left is the space
        if " " in joined and (
            joined[0] == " " or joined[-1] == " " or " \0" in joined or "\0 " in joined
        ):
            values = list(map(str.strip, values))
            empty = "" in values
        if empty:
            return list(map(_none_if_empty, values)), True
        return values, False
