"""Exact deduplication of recipients across a whole campaign, in bounded memory.

:class:`Deduper` drops the identifiers (``id``, ``uid``) already seen in a campaign. It keeps
them in one :class:`KeySet` (ids and uids are told apart by a *kind* byte): an exact set of
string keys whose table is in RAM (about 12 bytes a key) and whose key text goes to an
unlinked spill file on disk. A key is reported as seen only after its bytes were compared with
a stored copy, so a hash collision can never drop a recipient.

Two implementations, the same API and the same answers (the tests run against both):

* :mod:`bulksend.dedup.keyset_c`, on the C extension :mod:`bulksend.dedup._keyset`, built by
  ``pip install`` when a C compiler is there: about 55-65 ns a key for a row's id and uid at
  1-20 million keys (benchmarks/README.md);
* :mod:`bulksend.dedup.keyset_numpy`, pure Python and numpy: 150-350 ns a key.

``BACKEND`` says which one :class:`KeySet` is: ``"c"`` when the extension imports and the
environment variable ``BULKSEND_NO_EXTENSIONS`` is unset (or empty or ``0``) when this module
is first imported; ``"numpy"`` otherwise. Each module's docstring describes its structure and
why it is exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any

from bulksend.dedup.keyset_base import DEFAULT_KIND
from bulksend.models import Recipient
from bulksend.recipients import Recipients

if TYPE_CHECKING:
    from bulksend.dedup import keyset_c, keyset_numpy

__all__ = ["BACKEND", "Deduper", "KeySet"]  # (and SpillStore, on demand: __getattr__)

#: set (not empty, not "0") to use the numpy key set even when the C extension is there
NO_EXTENSIONS_VAR = "BULKSEND_NO_EXTENSIONS"


def _choose_backend() -> tuple[str, type[keyset_c.KeySet] | type[keyset_numpy.KeySet]]:
    if os.environ.get(NO_EXTENSIONS_VAR, "") in ("", "0"):
        try:
            from bulksend.dedup import keyset_c
        except ImportError:  # not built (no C compiler at install time): the numpy one
            pass
        else:
            return "c", keyset_c.KeySet  # numpy is not imported (see keyset_base)
    from bulksend.dedup import keyset_numpy

    return "numpy", keyset_numpy.KeySet


BACKEND: str
BACKEND, KeySet = _choose_backend()


class Deduper:
    """Drops identifiers already seen in this campaign, separately per key (``id``, ``uid``).

    ``filter(r)`` returns ``r`` unchanged when all its identifiers are new, a copy with the
    already-seen ones set to ``None`` when some are new (counted in ``partial``), or ``None``
    when none is new (counted in ``duplicates``). Identifiers not in ``keys`` pass through
    untouched, and a recipient with none of the ``keys`` set passes through as it is.
    ``filter_many`` does the same for a list, in order, much faster.

    ``expected`` is the number of rows expected (``Rows.estimated_rows``): the table is sized
    for that many keys of each kind.
    """

    def __init__(
        self,
        keys: Iterable[str] = ("id", "uid"),
        *,
        hash_fn: Callable[[str], int] | None = None,
        seed: int | None = None,
        expected: int = 0,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.keys = tuple(keys)
        unknown = set(self.keys) - {"id", "uid"}
        if unknown or not self.keys or len(set(self.keys)) != len(self.keys):
            raise ValueError(f"dedup keys must be 'id' and/or 'uid', not {self.keys!r}")
        self.duplicates = 0
        self.partial = 0
        self._kind = {key: number for number, key in enumerate(self.keys, DEFAULT_KIND)}
        self._set = KeySet(
            hash_fn=hash_fn, seed=seed, expected=expected * len(self.keys), spill_dir=spill_dir
        )

    def __enter__(self) -> Deduper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._set.close()

    def unique(self, key: str) -> int:
        """How many distinct values of ``key`` were seen."""
        return self._set.unique(self._kind[key])

    @property
    def memory_bytes(self) -> int:
        """RAM held by the table (the spill is on disk)."""
        return self._set.table_bytes

    def filter(self, recipient: Recipient) -> Recipient | None:
        kept, _ = self.filter_many([recipient])
        return kept[0] if len(kept) else None

    def filter_many(self, recipients: Sequence[Recipient]) -> tuple[Recipients, Recipients]:
        """Returns ``(kept, duplicates)``; ``kept`` in order, with seen identifiers cleared.

        Works on the columns of a :class:`~bulksend.recipients.Recipients` (what the readers
        hand over); no recipient object is made here.
        """
        rows = Recipients.of(recipients)
        count = len(rows)
        read = [(key, kind, values) for key, kind, values in self._columns(rows) if values]
        if not count or not read:
            return rows, Recipients(range(0))
        results = self._set.add_kinds_masks([(values, kind) for _, kind, values in read])
        # masks as ints, a byte (0 or 1) per row: bitwise operations over a whole chunk in C
        ones = int.from_bytes(b"\x01" * count, "little")
        drop = 0  # a present key that was seen before
        keep = 0  # a present key that is new
        seen_masks: dict[str, int] = {}
        for (key, _, _), (new, present) in zip(read, results, strict=True):
            fresh = int.from_bytes(new, "little")
            seen = (ones if present is None else int.from_bytes(present, "little")) & ~fresh
            seen_masks[key] = seen
            drop |= seen
            keep |= fresh
        if not drop:
            return rows, Recipients(range(0))
        duplicate = drop & ~keep  # every present key seen before
        partial = drop & keep
        dups = rows.select(duplicate.to_bytes(count, "little"))
        self.duplicates += len(dups)
        if partial:
            self.partial += partial.bit_count()
            rows = _cleared(rows, {key: seen & partial for key, seen in seen_masks.items()})
        return rows.select((ones ^ duplicate).to_bytes(count, "little")), dups

    def _columns(self, rows: Recipients) -> Iterator[tuple[str, int, list[str | None] | None]]:
        for key in self.keys:
            yield key, self._kind[key], rows.ids if key == "id" else rows.uids


def _cleared(rows: Recipients, masks: dict[str, int]) -> Recipients:
    """``rows`` with the ``id``/``uid`` values where ``masks[key]`` (a byte per row, as
    ``filter_many`` makes them) is set replaced by None."""
    count = len(rows)
    columns: dict[str, list[str | None] | None] = {"id": rows.ids, "uid": rows.uids}
    for key, mask in masks.items():
        values = columns[key]
        if values is None or not mask:
            continue
        values = list(values)
        for i in compress(range(count), mask.to_bytes(count, "little")):
            values[i] = None
        columns[key] = values
    return Recipients(rows.lines, columns["id"], columns["uid"], rows.attrs)


def __getattr__(name: str) -> Any:
    if name == "SpillStore":  # (the numpy key set's, imported only when asked for)
        from bulksend.dedup.keyset_numpy import SpillStore

        return SpillStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
