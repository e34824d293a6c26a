"""Recipients held column by column: what flows from a source through dedup to a request.

A send of millions of rows must not build an object per row when the request only needs the
identifiers: a :class:`Recipients` keeps the rows as columns (``lines``, ``ids``, ``uids``,
``attrs``) and makes :class:`~bulksend.models.Recipient` objects only when something asks for
them by iterating or indexing (a report, a 422 bisection, a provider that encodes one record at
a time). Slicing, selecting and joining work on the columns and never make them.

It is a ``Sequence[Recipient]``: code that takes any sequence of recipients takes it, and code
that knows it (dedup, the batchers, MaxTraffic's request body, the journal digest) reads the
columns directly. A column that is None everywhere is stored as None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import fields as dataclass_fields
from itertools import compress, pairwise, repeat
from typing import TYPE_CHECKING, Any, overload

from bulksend.models import Recipient

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    BoolArray = npt.NDArray[np.bool_]

__all__ = ["EMPTY", "AttrColumns", "Recipients", "make_recipient", "make_recipients"]


class _NoAttrs(dict[str, str]):
    """The one shared, empty and unchangeable ``attrs`` (a dict, so orjson and ``==`` work)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("recipient attrs are read-only")

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]


EMPTY: Mapping[str, str] = _NoAttrs()

Column = list[str | None]


MakeRecipient = Callable[[int, str | None, str | None, Mapping[str, str]], Recipient]
MakeRecipients = Callable[
    [Iterable[int], Iterable[str | None], Iterable[str | None], Iterable[Mapping[str, str]], int],
    list[Recipient],
]


def _slots_constructor() -> tuple[MakeRecipient, MakeRecipients]:
    """``Recipient(line, id, uid, attrs)`` without the dataclass ``__init__`` (2-3x faster),
    and the same for whole columns, a field at a time in C (``map``), without a Python call
    per row. Only while ``Recipient`` has exactly these slots; otherwise the plain constructor.
    """
    names = [f.name for f in dataclass_fields(Recipient)]
    if names != ["line", "id", "uid", "attrs"] or not hasattr(Recipient, "__slots__"):

        def plain(
            lines: Iterable[int],
            ids: Iterable[str | None],
            uids: Iterable[str | None],
            attrs: Iterable[Mapping[str, str]],
            count: int,
        ) -> list[Recipient]:
            return list(map(Recipient, lines, ids, uids, attrs))

        return Recipient, plain
    slots: dict[str, Any] = dict(vars(Recipient))
    new = object.__new__
    setters = [slots[name].__set__ for name in names]
    set_line, set_id, set_uid, set_attrs = setters

    def one(line: int, id: str | None, uid: str | None, attrs: Mapping[str, str]) -> Recipient:
        r: Recipient = new(Recipient)
        set_line(r, line)
        set_id(r, id)
        set_uid(r, uid)
        set_attrs(r, attrs)
        return r

    def many(
        lines: Iterable[int],
        ids: Iterable[str | None],
        uids: Iterable[str | None],
        attrs: Iterable[Mapping[str, str]],
        count: int,
    ) -> list[Recipient]:
        made: list[Recipient] = list(map(new, repeat(Recipient, count)))
        # each setter returns None: any() runs the map to its end in C
        for setter, values in zip(setters, (lines, ids, uids, attrs), strict=True):
            any(map(setter, made, values))
        return made

    return one, many


make_recipient, make_recipients = _slots_constructor()


class AttrColumns(Sequence[Mapping[str, str]]):
    """Per-row attribute dicts kept as one column per name; a dict is made when asked for."""

    __slots__ = ("columns", "names")

    def __init__(self, names: Sequence[str], columns: Sequence[list[str]]) -> None:
        self.names = tuple(names)
        self.columns = list(columns)

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    @overload
    def __getitem__(self, index: int) -> Mapping[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> AttrColumns: ...
    def __getitem__(self, index: int | slice) -> Mapping[str, str] | AttrColumns:
        if isinstance(index, slice):
            return AttrColumns(self.names, [c[index] for c in self.columns])
        return dict(zip(self.names, [c[index] for c in self.columns], strict=True))

    def __iter__(self) -> Iterator[Mapping[str, str]]:
        return map(dict, map(zip, repeat(self.names), zip(*self.columns, strict=True)))

    def select(self, keep: Sequence[int]) -> AttrColumns:
        return AttrColumns(self.names, [list(compress(c, keep)) for c in self.columns])


def _join_lines(parts: Sequence[Sequence[int]]) -> Sequence[int]:
    """Line numbers of consecutive parts: one range when they follow on, else a list."""
    if all(type(p) is range and p.step == 1 for p in parts):
        ranges: list[range] = parts  # type: ignore[assignment]
        if all(a.stop == b.start for a, b in pairwise(ranges)):
            return range(ranges[0].start, ranges[-1].stop)
    out: list[int] = []
    for p in parts:
        out.extend(p)
    return out


class Recipients(Sequence[Recipient]):
    """Rows as columns; see the module docstring.

    ``lines`` is a ``range`` or a list; ``ids``/``uids`` are lists with None for an absent
    value, or None when absent in every row; ``attrs`` is a sequence of mappings (a list of
    dicts, an :class:`AttrColumns`), or None when every row has none. The columns are not
    copied: treat them as read-only once handed over.
    """

    __slots__ = ("_made", "attrs", "ids", "lines", "uids")

    def __init__(
        self,
        lines: Sequence[int],
        ids: Column | None = None,
        uids: Column | None = None,
        attrs: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        count = len(lines)
        for column in (ids, uids, attrs):
            if column is not None and len(column) != count:
                raise ValueError(f"columns of unequal length ({len(column)} != {count})")
        self.lines = lines
        self.ids = ids
        self.uids = uids
        self.attrs = attrs
        self._made: list[Recipient] | None = None

    @classmethod
    def of(cls, rows: Iterable[Recipient]) -> Recipients:
        """``rows`` as columns (the objects are kept too, so nothing is made twice)."""
        if isinstance(rows, Recipients):
            return rows
        made = list(rows)
        ids = present_or_none([r.id for r in made])
        uids = present_or_none([r.uid for r in made])
        attrs = attrs_or_none([r.attrs for r in made])
        out = cls([r.line for r in made], ids, uids, attrs)
        out._made = made
        return out

    @classmethod
    def join(cls, parts: Sequence[Recipients]) -> Recipients:
        """The rows of ``parts``, one after the other."""
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls(range(0))
        lines = _join_lines([p.lines for p in parts])
        return cls(
            lines,
            _join_column([p.ids for p in parts], [len(p) for p in parts]),
            _join_column([p.uids for p in parts], [len(p) for p in parts]),
            _join_attrs([p.attrs for p in parts], [len(p) for p in parts]),
        )

    def column(self, key: str) -> Column:
        """The ``id`` or ``uid`` column as a list (of None when the column is None)."""
        values = self.ids if key == "id" else self.uids if key == "uid" else _no_key(key)
        return [None] * len(self.lines) if values is None else values

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> Recipient: ...
    @overload
    def __getitem__(self, index: slice) -> Recipients: ...
    def __getitem__(self, index: int | slice) -> Recipient | Recipients:
        if not isinstance(index, slice):
            return self.made()[index]
        out = Recipients(
            self.lines[index],
            None if self.ids is None else self.ids[index],
            None if self.uids is None else self.uids[index],
            None if self.attrs is None else self.attrs[index],
        )
        if self._made is not None:
            out._made = self._made[index]
        return out

    def __iter__(self) -> Iterator[Recipient]:
        return iter(self.made())

    def made(self) -> list[Recipient]:
        """The rows as ``Recipient`` objects (made once, on the first call)."""
        made = self._made
        if made is None:
            count = len(self.lines)
            made = self._made = make_recipients(
                self.lines,
                repeat(None, count) if self.ids is None else self.ids,
                repeat(None, count) if self.uids is None else self.uids,
                repeat(EMPTY, count) if self.attrs is None else self.attrs,
                count,
            )
        return made

    def select(self, keep: Sequence[int] | BoolArray) -> Recipients:
        """The rows where ``keep`` (a sequence of bools or ints, such as ``bytes`` of 0 and 1,
        or a numpy bool array) is true."""
        lines = self.lines
        mask: Sequence[int] = keep if isinstance(keep, Sequence) else keep.tolist()
        if type(lines) is range and not isinstance(keep, Sequence):
            import numpy as np  # loaded by whoever made the array (kept out of start-up)

            # numpy: the kept line numbers made in C, an int object per kept row only
            picked: Sequence[int] = (np.flatnonzero(keep) * lines.step + lines.start).tolist()
        else:
            picked = list(compress(lines, mask))
        out = Recipients(
            picked,
            None if self.ids is None else list(compress(self.ids, mask)),
            None if self.uids is None else list(compress(self.uids, mask)),
            None if self.attrs is None else _select_attrs(self.attrs, mask),
        )
        if self._made is not None:
            out._made = list(compress(self._made, mask))
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and self.made() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Recipients({self.made()!r})"


def present_or_none(values: Column) -> Column | None:
    """A column as ``Recipients`` keeps it: None when no row has a value."""
    return None if values.count(None) == len(values) else values


def attrs_or_none(rows: list[Mapping[str, str]]) -> list[Mapping[str, str]] | None:
    """Per-row attributes as ``Recipients`` keeps them: None when no row has any."""
    return rows if any(rows) else None


def _no_key(key: str) -> Column:
    raise KeyError(f"no recipient column {key!r} (id or uid)")


def _join_column(columns: Sequence[Column | None], sizes: Sequence[int]) -> Column | None:
    if all(c is None for c in columns):
        return None
    out: Column = []
    for column, size in zip(columns, sizes, strict=True):
        out.extend(repeat(None, size) if column is None else column)
    return out


def _join_attrs(
    columns: Sequence[Sequence[Mapping[str, str]] | None], sizes: Sequence[int]
) -> Sequence[Mapping[str, str]] | None:
    if all(c is None for c in columns):
        return None
    first = columns[0]
    if isinstance(first, AttrColumns) and all(
        isinstance(c, AttrColumns) and c.names == first.names for c in columns
    ):
        parts: list[AttrColumns] = columns  # type: ignore[assignment]
        joined: list[list[str]] = [[] for _ in first.names]
        for part in parts:
            for out, values in zip(joined, part.columns, strict=True):
                out.extend(values)
        return AttrColumns(first.names, joined)
    rows: list[Mapping[str, str]] = []
    for column, size in zip(columns, sizes, strict=True):
        rows.extend(repeat(EMPTY, size) if column is None else column)
    return rows


def _select_attrs(
    attrs: Sequence[Mapping[str, str]], keep: Sequence[int]
) -> Sequence[Mapping[str, str]]:
    if isinstance(attrs, AttrColumns):
        return attrs.select(keep)
    return list(compress(attrs, keep))
