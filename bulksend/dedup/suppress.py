"""Suppression lists (``--exclude``): the recipients they hold are dropped before anything is sent.

::

    with SuppressionList.load(lists) as suppression:        # InputError: a bad list, one line
        for chunk in suppression.screen(rows.chunks()):     # suppressed rows moved to rejected
            ...

The rule
    A row is *suppressed* when its id is among the lists' ids, or its uid among their uids; the
    whole row is dropped, whichever matched (a row's id and uid are one recipient: MaxTraffic's
    visitor id and user id reach the same person). It ends ``suppressed`` with the reason
    ``uid listed in FILE:LINE`` (the id when both are listed; the first line that lists it).
    Matching is exact, after the trimming every reader does (as deduplication compares).
    Suppression comes before deduplication: a suppressed row adds nothing to what the
    deduplicator has seen, and every row that repeats a listed key is suppressed too.

Reading the lists
    With the recipient readers (``bulksend.sources``): CSV/TSV/JSON Lines/a plain list, gzip,
    byte-order marks, in the recipient file's encoding. The columns are the campaign's id and
    uid columns unless given for the lists; a list may hold either or both, but a column given
    for the lists must be there. A plain list (no header) holds ids, or uids when the lists
    read no id column. Every row must name an id or a uid: a row the reader rejects (malformed
    JSON, undecodable bytes, no id nor uid, ...) stops the send before anything is sent, as an
    unsubscribe that cannot be read must not be ignored; a blank row is skipped, and an empty
    list (no rows, or only a header) suppresses nothing.

Memory (exact, bounded)
    The listed keys go into one :class:`~bulksend.dedup.deduper.KeySet` (ids and uids as two
    kinds), the deduplicator's exact set: about 12-13 bytes of RAM per key, the key text in an
    unlinked spill file on disk. Recipients' keys are looked up with ``find_kinds``, which adds
    nothing, so the set holds only the lists' keys however long the campaign. To name the line,
    each distinct key also keeps the number ``find_kinds`` names its record by (4 bytes; 8 past
    4 GiB of key text), its line (4) and its list (1): about 22 bytes a key in all, 10 million
    listed keys in about 220 MB (benchmarks/README.md has the figures).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from bulksend.dedup import keyset_numpy
from bulksend.dedup.deduper import KeySet
from bulksend.errors import InputError
from bulksend.models import Recipient, Rejected, Suppressed
from bulksend.recipients import Recipients
from bulksend.sources import Chunk, Columns, Rows, SourceSpec, open_source

if TYPE_CHECKING:
    from bulksend.dedup import keyset_c

__all__ = ["ListSpec", "SuppressionList"]

KIND_ID, KIND_UID = 1, 2
_KEYS = {KIND_ID: "id", KIND_UID: "uid"}
#: a list holding no row at all is empty, not wrong (what the readers say of it)
_EMPTY = (
    "file is empty",
    "file is empty (only a byte-order mark)",
    "file has only blank lines",
    "no data rows (only a header)",
)
#: lists a send may name (a list's number is kept in one byte per key)
MAX_LISTS = 255
_U32 = 1 << 32
_T = TypeVar("_T", bound=np.generic)


@dataclass(frozen=True, slots=True)
class ListSpec:
    """The suppression lists of a campaign and how to read them.

    ``id_column``/``uid_column``: the lists' columns (None: not read); ``required``: those of
    ``id``/``uid`` that were named for the lists and must be in a header (the others, the
    campaign's own, may be missing from a list that has the other).
    """

    paths: tuple[str, ...]
    id_column: str | None = "id"
    uid_column: str | None = "uid"
    required: frozenset[str] = frozenset()
    encoding: str = "utf-8"

    def source(self, path: str) -> SourceSpec:
        return SourceSpec(
            path=path,
            encoding=self.encoding,
            columns=Columns(id=self.id_column, uid=self.uid_column),
            keep_attrs=False,
            optional=frozenset({"id", "uid"}) - self.required,
        )


@dataclass(slots=True)
class ListFile:
    """One list as read: its name, its rows, and the keys it added (not listed before it)."""

    name: str
    rows: int = 0
    keys: int = 0


@dataclass(slots=True)
class _Index:
    """Per distinct listed key, sorted by the number naming its record: its line and list."""

    where: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    lines: list[npt.NDArray[np.uint32]] = field(default_factory=list)
    lists: list[npt.NDArray[np.uint8]] = field(default_factory=list)


class SuppressionList:
    """The keys of a campaign's suppression lists; see the module docstring."""

    def __init__(self, spec: ListSpec, *, spill_dir: str | os.PathLike[str] | None = None) -> None:
        if len(spec.paths) > MAX_LISTS:
            raise InputError(f"{len(spec.paths)} suppression lists: at most {MAX_LISTS}")
        self.spec = spec
        self.files = [ListFile(path) for path in spec.paths]
        self._kinds: set[int] = set()  # the kinds some list holds (the others are not looked up)
        self._set: keyset_c.KeySet | keyset_numpy.KeySet | None = None
        self._spill_dir = spill_dir
        self._where: npt.NDArray[np.uint32] | npt.NDArray[np.uint64] = np.zeros(0, np.uint32)
        self._lines: npt.NDArray[np.uint32] = np.zeros(0, np.uint32)
        self._lists: npt.NDArray[np.uint8] = np.zeros(0, np.uint8)

    @classmethod
    def load(
        cls, spec: ListSpec, *, spill_dir: str | os.PathLike[str] | None = None
    ) -> SuppressionList:
        """Read every list (InputError, one line, for a list that is missing or wrong)."""
        lists = cls(spec, spill_dir=spill_dir)
        try:
            lists._load()
        except BaseException:
            lists.close()
            raise
        return lists

    def __enter__(self) -> SuppressionList:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._set is not None:
            self._set.close()

    # -- what was read ----------------------------------------------------------------------
    @property
    def keys(self) -> int:
        """Distinct keys listed (an id and a uid with the same text are two)."""
        return len(self._lines)

    @property
    def memory_bytes(self) -> int:
        """RAM held: the key set's table and the per-key line index."""
        table = self._set.table_bytes if self._set is not None else 0
        return table + sum(a.nbytes for a in (self._where, self._lines, self._lists))

    def describe(self) -> str:
        """``2 lists, 1,234 keys`` (for people)."""
        count = len(self.files)
        return f"{count} list{'' if count == 1 else 's'}, {self.keys:,} keys"

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        with contextlib.ExitStack() as stack:
            opened = [self._open(stack, f.name) for f in self.files]
            expected = sum(_expected_keys(rows, self.spec) for rows in opened if rows is not None)
            self._set = KeySet(expected=expected, spill_dir=self._spill_dir)
            index = _Index()
            for number, rows in enumerate(opened):
                if rows is not None:
                    self._read(number, rows, index)
        self._where = _joined(index.where, np.uint64)
        self._lines = _joined(index.lines, np.uint32)
        self._lists = _joined(index.lists, np.uint8)
        if self._where.size and not bool(np.all(self._where[1:] > self._where[:-1])):
            order = np.argsort(self._where, kind="stable")  # (only keys holding NUL do this)
            self._where, self._lines = self._where[order], self._lines[order]
            self._lists = self._lists[order]
        if self._where.size and int(self._where[-1]) < _U32:
            self._where = self._where.astype(np.uint32)

    def _open(self, stack: contextlib.ExitStack, path: str) -> Rows | None:
        """The list's rows, or None when it holds none."""
        if path == "-":
            raise InputError("a suppression list cannot be read from stdin ('-'); give a file")
        try:
            return stack.enter_context(open_source(self.spec.source(path)))
        except InputError as exc:
            if str(exc) in {f"{path}: {empty}" for empty in _EMPTY}:
                return None
            raise InputError(f"suppression list {exc}") from None

    def _read(self, number: int, rows: Rows, index: _Index) -> None:
        assert self._set is not None
        listed = self.files[number]
        try:
            for recipients, rejected in rows.chunks():
                _check(listed.name, rejected, self.spec)
                listed.rows += len(recipients)
                added = self._add(Recipients.of(recipients), number, index)
                listed.keys += added
        except InputError as exc:  # damage further on (truncated gzip data, ...)
            text = str(exc)
            prefixed = text if text.startswith("suppression list") else f"suppression list {text}"
            raise InputError(prefixed) from None

    def _add(self, rows: Recipients, number: int, index: _Index) -> int:
        """Add a chunk's keys; index the new ones. Returns how many were new."""
        assert self._set is not None
        if not len(rows):
            return 0
        if rows.lines[-1] >= _U32:
            raise InputError(f"{self.files[number].name}: more than {_U32 - 1:,} lines")
        parts = [(v, k) for v, k in ((rows.ids, KIND_ID), (rows.uids, KIND_UID)) if v is not None]
        lines = np.asarray(rows.lines, dtype=np.uint32)
        fresh: list[tuple[list[str | None], int]] = []
        fresh_lines = []
        for (values, kind), (new, _) in zip(parts, self._set.add_kinds(parts), strict=True):
            at = np.flatnonzero(new)
            if at.size:
                self._kinds.add(kind)
                fresh.append(([values[i] for i in at.tolist()], kind))
                fresh_lines.append(lines[at])
        if not fresh:
            return 0
        found = self._set.find_kinds(fresh)
        where = np.concatenate([w for _, w in found])
        assert all(f.all() for f, _ in found), "a key just added was not found"
        order = np.argsort(where, kind="stable")  # a later chunk's records all come later
        index.where.append(where[order])
        index.lines.append(np.concatenate(fresh_lines)[order])
        index.lists.append(np.full(len(where), number, dtype=np.uint8))
        return len(where)

    # -- looking up -------------------------------------------------------------------------
    def screen(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """The chunks with their suppressed rows moved to ``rejected`` (as ``Suppressed``)."""
        for recipients, rejected in chunks:
            kept, suppressed = self.split(recipients)
            if suppressed:
                yield Chunk(kept, [*rejected, *suppressed])
            else:
                yield Chunk(recipients, rejected)

    def split(self, recipients: Sequence[Recipient]) -> tuple[Sequence[Recipient], list[Rejected]]:
        """``(kept, suppressed)``: the rows no list holds, in order, and the others."""
        if self._set is None or not self._kinds or not len(recipients):
            return recipients, []
        rows = Recipients.of(recipients)
        columns = {KIND_ID: rows.ids, KIND_UID: rows.uids}
        parts = [(v, k) for k, v in columns.items() if v is not None and k in self._kinds]
        if not parts:
            return recipients, []
        results = self._set.find_kinds(parts)
        hit = np.zeros(len(rows), dtype=np.bool_)
        for found, _ in results:
            hit |= found
        if not hit.any():
            return recipients, []
        at = np.flatnonzero(hit)
        # the first part that lists a row names it (the id when both are listed)
        kinds = np.zeros(len(at), dtype=np.uint8)
        where = np.zeros(len(at), dtype=np.uint64)
        for (_, kind), (found, numbers) in reversed(list(zip(parts, results, strict=True))):
            mine = found[at]
            kinds[mine], where[mine] = kind, numbers[at][mine]
        return rows.select(~hit), self._suppressed(rows, at, kinds, where)

    def _suppressed(
        self,
        rows: Recipients,
        at: npt.NDArray[np.intp],
        kinds: npt.NDArray[np.uint8],
        where: npt.NDArray[np.uint64],
    ) -> list[Rejected]:
        position = np.searchsorted(self._where, where)
        if not np.array_equal(self._where[np.minimum(position, len(self._where) - 1)], where):
            raise RuntimeError("a listed key has no line in the suppression index")
        lines, lists = self._lines[position].tolist(), self._lists[position].tolist()
        names = [f.name for f in self.files]
        ids, uids = rows.column("id"), rows.column("uid")
        out: list[Rejected] = []
        for i, kind, line, number in zip(at.tolist(), kinds.tolist(), lines, lists, strict=True):
            name = names[number]
            reason = f"{_KEYS[kind]} listed in {name}:{line}"
            out.append(Suppressed(rows.lines[i], reason, ids[i], uids[i], name))
        return out


def _expected_keys(rows: Rows, spec: ListSpec) -> int:
    """Keys a list will add, from its estimated rows: one per row for a plain list, one per
    column found for CSV/TSV, each column read for JSON Lines."""
    if rows.format == "lines":
        per_row = 1
    elif rows.format in ("csv", "tsv"):
        header = {h.lower() for h in rows.header}
        per_row = sum(1 for c in (spec.id_column, spec.uid_column) if c and c.lower() in header)
    else:
        per_row = sum(1 for c in (spec.id_column, spec.uid_column) if c)
    return rows.estimated_rows * max(1, per_row)


def _check(name: str, rejected: Sequence[Rejected], spec: ListSpec) -> None:
    """A rejected row stops the send (a blank one is skipped)."""
    for row in rejected:
        if row.reason.startswith("empty row"):
            continue
        where = f"suppression list {name}:{row.line}: {row.reason}"
        if row.reason.startswith("missing"):
            flags = "--exclude-id-column, --exclude-uid-column"
            where += f" (the lists' columns: {_columns(spec)}; name others with {flags})"
        raise InputError(where)


def _columns(spec: ListSpec) -> str:
    named = [f"{key} {c!r}" for key, c in (("id", spec.id_column), ("uid", spec.uid_column)) if c]
    return ", ".join(named) or "none"


def _joined(parts: list[npt.NDArray[_T]], dtype: type[_T]) -> npt.NDArray[_T]:
    """The parts in one array; the list is emptied (each byte is held at most twice)."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    out: npt.NDArray[_T] = np.concatenate(parts)
    parts.clear()
    return out
