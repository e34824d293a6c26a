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
    kinds), the deduplicator's exact set, sized once from the lists' lines: 12 bytes of RAM a
    key, the key text in an unlinked spill file on disk. Recipients' keys are looked up with
    ``find_kinds``, which adds nothing, so the set holds only the lists' keys however long the
    campaign. To name the line, each distinct key also keeps the number ``find_kinds`` names
    its record by (4 bytes; 8 past 4 GiB of key text) and its line, kept as runs when the
    lines follow the keys (a list of one key a row: next to nothing), else 4 bytes: 16-20
    bytes a key in all. 10 million listed keys hold 160 MB (benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from types import TracebackType
from typing import TYPE_CHECKING, Any

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


class _Growing:
    """A numpy array appended to in place. Sized for what is expected (pages never written
    cost no RAM), grown by half when that was too little; ``uint32`` numbers become
    ``uint64`` should one not fit."""

    def __init__(self, dtype: type[np.unsignedinteger[Any]], expected: int) -> None:
        self.array: npt.NDArray[Any] = np.empty(max(expected, 1024), dtype=dtype)
        self.size = 0

    def extend(self, values: npt.NDArray[Any]) -> None:
        need = self.size + len(values)
        if values.size and self.array.dtype == np.uint32 and int(values.max()) >= _U32:
            self.array = self.array.astype(np.uint64)
        if need > len(self.array):
            grown = np.empty(max(need, len(self.array) * 3 // 2), dtype=self.array.dtype)
            grown[: self.size] = self.array[: self.size]
            self.array = grown
        self.array[self.size : need] = values
        self.size = need

    @property
    def values(self) -> npt.NDArray[Any]:
        return self.array[: self.size]


class _LineIndex:
    """The list and line that first listed each distinct key, by the number ``find_kinds``
    names the key's record with (``where``).

    Keys come in the order the key set stored them: ``where`` grows from one call to the
    next, and ``add`` takes a call's keys sorted by it, so ``where`` is sorted and a key's
    position in it (found by binary search) is its place in that order. The keys of one list
    are then consecutive (``_starts``: where each list's begin), and a list whose rows each add
    one key has ``line - position`` constant over long runs: the lines are kept as those runs
    when there are few (an eighth of the keys or fewer), else as they are. About 4 bytes a
    key in all, 8 with lines that do not run.
    """

    def __init__(self, expected: int) -> None:
        self._where = _Growing(np.uint32, expected)
        self._lines = _Growing(np.uint32, expected)
        self._starts: list[int] = []
        self._last = -1  # the largest ``where`` so far
        self._sorted = True
        self.where: npt.NDArray[Any] = np.zeros(0, dtype=np.uint32)
        self.lines: npt.NDArray[np.uint32] | None = None  # or as runs:
        self._run_starts: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._run_shift: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._lists: npt.NDArray[np.uint8] | None = None  # (only if not sorted)

    def __len__(self) -> int:
        return max(self._where.size, len(self.where))

    @property
    def nbytes(self) -> int:
        held = [self.where, self._run_starts, self._run_shift, self.lines, self._lists]
        return sum(a.nbytes for a in held if a is not None)

    def start_list(self) -> None:
        self._starts.append(self._where.size)

    def add(self, where: npt.NDArray[np.uint64], lines: npt.NDArray[np.uint32]) -> None:
        """Index a call's new keys (``where`` ascending) with their lines."""
        if not where.size:
            return
        if int(where[0]) <= self._last:  # (never from the readers: see finish)
            self._sorted = False
        self._last = max(self._last, int(where[-1]))
        self._where.extend(where)
        self._lines.extend(lines)

    def finish(self) -> None:
        where, lines = self._where.values, self._lines.values
        self._where = self._lines = _Growing(np.uint32, 0)  # (what is kept is referenced below)
        if not self._sorted:  # keys holding NUL (the numpy key set keeps them apart): sort
            counts = np.diff([*self._starts, len(where)])
            lists = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)
            order = np.argsort(where, kind="stable")
            self.where, self.lines, self._lists = where[order], lines[order], lists[order]
            return
        self.where = where
        runs = _runs(lines)
        if runs is None:
            self.lines = lines
        else:
            self._run_starts, self._run_shift = runs

    def find(self, where: npt.NDArray[np.uint64]) -> tuple[list[int], list[int]]:
        """The list numbers and lines of the keys named by ``where`` (each indexed)."""
        wanted = where.astype(self.where.dtype)  # (a search across dtypes copies the index)
        position = np.searchsorted(self.where, wanted)
        if not np.array_equal(self.where[np.minimum(position, len(self.where) - 1)], wanted):
            raise RuntimeError("a listed key has no line in the suppression index")
        if self._lists is not None:
            lists: list[int] = self._lists[position].tolist()
        else:
            starts = np.asarray(self._starts, dtype=np.intp)
            lists = (np.searchsorted(starts, position, side="right") - 1).tolist()
        if self.lines is not None:
            return lists, self.lines[position].tolist()
        run = np.searchsorted(self._run_starts, position, side="right") - 1
        return lists, (position + self._run_shift[run]).tolist()


def _runs(
    lines: npt.NDArray[np.uint32], block: int = 1 << 20
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64]] | None:
    """Where ``lines[i] - i`` changes and its values from there; None when that is more than
    an eighth of the lines (a block at a time: no int64 copy of the whole)."""
    starts: list[npt.NDArray[np.intp]] = []
    shifts: list[npt.NDArray[np.int64]] = []
    count, previous = 0, None
    for begin in range(0, len(lines), block):
        end = min(len(lines), begin + block)
        shift = lines[begin:end].astype(np.int64) - np.arange(begin, end, dtype=np.int64)
        change = np.flatnonzero(shift[1:] != shift[:-1]) + 1
        if previous is None or int(shift[0]) != previous:
            change = np.concatenate([[0], change])
        starts.append(change + begin)
        shifts.append(shift[change])
        count += len(change)
        previous = int(shift[-1])
        if count > len(lines) // 8:
            return None
    if not starts:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
    return np.concatenate(starts).astype(np.intp), np.concatenate(shifts)


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
        self._index = _LineIndex(0)

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
        return len(self._index)

    @property
    def memory_bytes(self) -> int:
        """RAM held: the key set's table and the per-key line index."""
        table = self._set.table_bytes if self._set is not None else 0
        return table + self._index.nbytes

    def describe(self) -> str:
        """``2 lists, 1,234 keys`` (for people)."""
        count = len(self.files)
        return f"{count} list{'' if count == 1 else 's'}, {self.keys:,} keys"

    # -- loading ----------------------------------------------------------------------------
    def _load(self) -> None:
        with contextlib.ExitStack() as stack:
            opened = [self._open(stack, f.name) for f in self.files]
            expected = sum(
                _expected_keys(rows, self.spec, f.name)
                for rows, f in zip(opened, self.files, strict=True)
                if rows is not None
            )
            self._set = KeySet(expected=expected, spill_dir=self._spill_dir)
            self._index = _LineIndex(expected)
            for number, rows in enumerate(opened):
                self._index.start_list()
                if rows is not None:
                    self._read(number, rows)
        self._index.finish()

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

    def _read(self, number: int, rows: Rows) -> None:
        assert self._set is not None
        listed = self.files[number]
        try:
            for recipients, rejected in rows.chunks():
                _check(listed.name, rejected, self.spec)
                listed.rows += len(recipients)
                added = self._add(Recipients.of(recipients), number)
                listed.keys += added
        except InputError as exc:  # damage further on (truncated gzip data, ...)
            text = str(exc)
            prefixed = text if text.startswith("suppression list") else f"suppression list {text}"
            raise InputError(prefixed) from None

    def _add(self, rows: Recipients, number: int) -> int:
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
        if not all(f.all() for f, _ in found):
            raise RuntimeError("a key just added to a suppression list's key set is not in it")
        where = np.concatenate([w for _, w in found])
        order = np.argsort(where, kind="stable")  # a later chunk's records all come later
        self._index.add(where[order], np.concatenate(fresh_lines)[order])
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
        return rows.select(~hit), self._suppressed(rows.select(hit), kinds, where)

    def _suppressed(
        self, picked: Recipients, kinds: npt.NDArray[np.uint8], where: npt.NDArray[np.uint64]
    ) -> list[Rejected]:
        """A ``Suppressed`` for each row of ``picked``, whose key of ``kinds`` (the first
        listed) is the lists' key named by ``where``; built a column at a time."""
        lists, lines = self._index.find(where)
        names = [f.name for f in self.files]
        prefix = {(k, n): f"{_KEYS[k]} listed in {names[n]}:" for k in _KEYS for n in set(lists)}
        heads = list(map(prefix.__getitem__, zip(kinds.tolist(), lists, strict=True)))
        reasons = list(map(str.__add__, heads, map(str, lines)))
        return _make_suppressed(
            picked.lines,
            reasons,
            picked.column("id"),
            picked.column("uid"),
            [names[n] for n in lists],
        )


def _suppressed_constructor() -> Callable[..., list[Rejected]]:
    """``Suppressed`` objects made a field at a time in C, without the frozen dataclass's
    ``__init__`` (a few µs a row); the plain constructor should its fields change."""
    names = ["line", "reason", "id", "uid", "source"]
    if [f.name for f in dataclasses.fields(Suppressed)] != names:
        return lambda *columns: list(map(Suppressed, *columns))
    setters = [getattr(Suppressed, name).__set__ for name in names]
    new = object.__new__

    def many(*columns: Sequence[Any]) -> list[Rejected]:
        made: list[Rejected] = list(map(new, repeat(Suppressed, len(columns[0]))))
        for setter, values in zip(setters, columns, strict=True):
            any(map(setter, made, values))  # each setter returns None: runs to the end
        return made

    return many


_make_suppressed = _suppressed_constructor()


def _expected_keys(rows: Rows, spec: ListSpec, path: str) -> int:
    """Keys a list will add, to size the key set once: its rows (its lines, counted, unless it
    is compressed; else the reader's estimate) times one per row for a plain list, one per
    column found for CSV/TSV, each column read for JSON Lines."""
    if rows.format == "lines":
        per_row = 1
    elif rows.format in ("csv", "tsv"):
        header = {h.lower() for h in rows.header}
        per_row = sum(1 for c in (spec.id_column, spec.uid_column) if c and c.lower() in header)
    else:
        per_row = sum(1 for c in (spec.id_column, spec.uid_column) if c)
    return max(rows.estimated_rows, _lines_in(path)) * max(1, per_row)


def _lines_in(path: str, limit: int = 4 << 30) -> int:
    """Newlines in a file that is not compressed (0 for one that is, or is too big to count:
    the reader's estimate sizes those). About 0.1 s for 100 MB: far less than reading it."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
            if head[:2] == b"\x1f\x8b" or os.fstat(f.fileno()).st_size > limit:
                return 0
            count = head.count(b"\n")
            while block := f.read(1 << 20):
                count += block.count(b"\n")
    except OSError:
        return 0
    return count


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
