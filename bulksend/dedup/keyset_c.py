"""The compiled key set: the same exact, bounded-memory set as the numpy one, 2-4x faster.

:mod:`bulksend.dedup.deduper` uses this :class:`KeySet` when the C extension
:mod:`bulksend.dedup._keyset` was built (``pip install`` builds it when a C compiler is there)
and ``BULKSEND_NO_EXTENSIONS`` is not set; otherwise :mod:`bulksend.dedup.keyset_numpy`. Both
have the same API and give the same answers. Importing this module raises ImportError when the
extension is missing.

The structure
    * A key's *record* is its kind byte (1-255), its length in UTF-8 bytes as LEB128, then those
      bytes (``str`` encoded with ``surrogatepass``, so every ``str`` has exactly one encoding,
      lone surrogates included; NUL is a byte like any other). Records are appended to the
      *spill*, an unlinked temporary file in ``spill_dir``; ``o`` is a record's byte offset,
      below 2**40 (1 TiB). The file starts with 8 zero bytes, so no record is at ``o = 0``.
    * ``h``, a 64-bit hash of (kind, length, bytes): the state starts from a per-process key
      and the kind and length, then takes the bytes 8 at a time (the last word zero-padded): xor
      the word in, multiply by an odd key, fold the high half down (``h ^= h >> 32``); then
      splitmix64's finaliser. The two keys come from ``seed``, or from ``os.urandom`` when it is
      None. A ``hash_fn`` (tests use it to force collisions) replaces it.
    * The table: ``n`` slots of 64 bits in RAM, linear probing. A slot is 0 (empty) or
      ``fp << 40 | o`` with ``fp`` the low 24 bits of ``h``. A key's *home* is
      ``((h >> 32) * n) >> 32`` (any ``n``, up to 2**32); it is stored in the first empty slot
      from its home, wrapping round. Slots are never emptied.

Why this is exact (a hash collision can never drop a key)
    A key is reported as *already seen* only when a stored record was compared byte for byte
    with its own record and found equal: the same kind byte, the same length (the header is
    self-delimiting, so equal header bytes mean equal lengths) and the same bytes. Hashes,
    fingerprints and homes only choose *which* records to compare; they never decide on their
    own. A key whose scan meets no equal record reaches an empty slot and is stored there, so
    it is reported new and is in the set from then on. Keys of one call are settled in order
    (rows in order, the parts of a row in order), so a key repeated within a call is new only
    at its first position: that one is stored before the later one is looked up.

Why a stored key is always found again
    Lookup scans from the key's home to the first empty slot and compares every slot whose
    fingerprint is the key's. When the key was stored, every slot from its home to where it
    went was in use; slots are never emptied, so that run is still unbroken and the scan reaches
    the key's slot, whose fingerprint is the key's (the same hash). The load is kept at or below
    3/4, so an empty slot always exists and the scan ends. Growth builds a new table from the
    spill, which holds every stored key exactly once, inserting each the same way: the same
    invariant holds in the new table. So the answer is exactly that of a ``set`` of the real
    keys (tests check this against one, with hash functions that collide on purpose).

Reading records back
    Every true repeat costs one comparison with its stored record; a different key costs one
    only when a slot it passes holds its fingerprint: a new key passes about 7.5 used slots at
    the 3/4 load (fewer below it), so well under one lookup in a million.
    Records written by the current batch and those still in the write buffer (1 MiB) are
    compared in RAM. Older ones are read with ``pread`` (a page-cache hit: the file was written
    in this run), not through a map of the file, whose pages would count in the RSS. A batch
    first stores all keys that match no older record, then reads the records the others need,
    one ``pread`` for records that lie close together one after the other: a row's id and uid
    are written side by side and looked up one after the other, so a repeated row costs one
    read, not two.

Looking keys up
    ``find_kinds`` probes exactly as ``add_kinds`` does but stores nothing: a key is *found*
    only when a stored record was compared equal (the same argument), and its ``where`` is
    that record's offset, which no other key has. A suppression list (``bulksend.suppress``)
    is a key set that recipients' ids and uids are looked up in.

Memory
    8 bytes per slot: at most 3/4 used, so 10.7-21 bytes per key (13.4 at 20 million keys).
    With ``expected`` the table is sized once for that many keys plus an eighth (12 bytes a
    key). Without it the table starts at 4096 slots and doubles, and is filled again from the
    spill (read back in 1 MiB steps); two tables are never held at once: a table of 4 MiB or
    more is a mapping that grows in place (``mremap``: its pages are zeroed and reused), a
    smaller one is freed before the next is allocated. Mapped tables ask for transparent huge
    pages where the system offers them. A table of 8 MiB or more sized from ``expected`` is
    mapped at once and faulted in by a thread of the extension while a 2 MiB table takes the
    first keys; they move to the big one (read back from the spill, as on growth) at the first
    call after it is ready, or, waiting for it, once the small one is full (196,608 keys). So
    the first keys of a large file do not wait for the kernel to hand over ~100 MB of zeroed
    pages (10-20 ms here, up to 200 ms on a VM whose host backs them lazily), which random
    homes would touch nearly all at once. Besides the table: the write buffer (1-2 MiB) and
    per-batch scratch (under 1 MiB). The spill is on disk (34 bytes per 32-character key, 14
    per 12-character one), reserved in 64 MiB steps with ``fallocate``.

Speed
    Per batch of up to 16384 keys: hash them all (ASCII strings are read in place; other
    strings are encoded into a scratch area, no Python object per key), then probe in order,
    prefetching the home slot 16 keys ahead, so the table's cache misses overlap. Without a
    ``hash_fn`` the hashing, probing and spill I/O run without the GIL (the keys were copied
    into tuples the call owns; the set refuses other callers while busy), so a helper thread
    can deduplicate while the reader reads on (:mod:`bulksend.dedup.ahead`). Measured
    (benchmarks/keyset.py, 5 % repeated rows): an id and uid per row, as ``Deduper`` adds
    them, 56 ns a key at 1 million keys and 63 at 20 million (numpy: 203 and 252); ids alone
    66 and 108 (numpy 189 and 211), where one ``pread`` per repeated key (0.7-1.2 µs on the
    test machine) is about half the time. Without a size hint, growth adds 20-60 ns a key.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from bulksend.dedup import _keyset
from bulksend.dedup.keyset_base import DEFAULT_KIND, KeySetBase, Masks

if TYPE_CHECKING:
    from bulksend.dedup.keyset_base import BoolArray, U64Array

__all__ = ["KeySet"]

if not hasattr(_keyset.KeySet, "find_kinds"):  # built from an older _keyset.c
    raise ImportError("bulksend.dedup._keyset is out of date: rebuild it (pip install -e .)")

_MASK64: Final = (1 << 64) - 1


class KeySet(KeySetBase):
    """The set of keys seen so far; see the module docstring.

    Keys are of a *kind* (1-255: ``Deduper`` uses one per identifier): equal texts of different
    kinds are different keys. ``hash_fn`` replaces the built-in hash (tests use it to force
    collisions; it must give equal keys equal values); ``seed`` fixes the built-in hash's keys.
    ``expected`` is the number of keys expected (the table is sized for it once).
    """

    def __init__(
        self,
        *,
        hash_fn: Callable[[str], int] | None = None,
        seed: int | None = None,
        expected: int = 0,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        key = int.from_bytes(os.urandom(8), "little") if seed is None else seed & _MASK64
        fd, path = tempfile.mkstemp(prefix="bulksend-dedup-", dir=spill_dir)
        try:
            os.unlink(path)
            self._table = _keyset.KeySet(fd, key, max(0, int(expected)), hash_fn)
        except BaseException:
            os.close(fd)  # not taken over by the table
            raise

    def __len__(self) -> int:
        return len(self._table)

    def __enter__(self) -> KeySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the spill file (it vanishes) and frees the table; idempotent."""
        self._table.close()

    def unique(self, kind: int = DEFAULT_KIND) -> int:
        """How many distinct keys of ``kind`` were added."""
        return self._table.unique(kind) if 1 <= kind <= 255 else 0

    @property
    def buckets(self) -> int:
        """Slots in the table (linear probing: each slot is a bucket of one)."""
        return self._table.slots

    @property
    def table_bytes(self) -> int:
        """RAM held by the table."""
        return self._table.table_bytes

    @property
    def spill_bytes(self) -> int:
        return self._table.spill_bytes

    def add(self, key: str, kind: int = DEFAULT_KIND) -> bool:
        """Record ``key``; True when it was not seen before."""
        return self._table.add(key, kind)

    def add_kinds(
        self, parts: Sequence[tuple[Sequence[str | None], int]]
    ) -> list[tuple[BoolArray, BoolArray | None]]:
        """``add_many`` for several kinds at once (one pass through the table), in order.

        ``None`` stands for "no key here". For each part: ``(new, present)``, where ``present``
        is None when no key was None. Keys must be ``str`` (TypeError) and kinds 1-255
        (ValueError); both are checked before any key is added.
        """
        import numpy as np  # here: the engine asks for bytes (add_kinds_masks), without numpy

        news = [np.empty(len(keys), dtype=np.bool_) for keys, _ in parts]
        presents = [np.empty(len(keys), dtype=np.bool_) for keys, _ in parts]
        missing = self._table.add_kinds(parts, news, presents)
        return [
            (new, present if none else None)
            for new, present, none in zip(news, presents, missing, strict=True)
        ]

    def find_kinds(
        self, parts: Sequence[tuple[Sequence[str | None], int]]
    ) -> list[tuple[BoolArray, U64Array]]:
        """Look keys up without adding any (see ``KeySetBase.find_kinds``); ``where`` is the
        byte offset of the key's record in the spill. Checked as ``add_kinds`` checks."""
        import numpy as np  # (suppression lists only)

        founds = [np.empty(len(keys), dtype=np.bool_) for keys, _ in parts]
        presents = [np.empty(len(keys), dtype=np.bool_) for keys, _ in parts]
        wheres = [np.empty(len(keys), dtype=np.uint64) for keys, _ in parts]
        self._table.find_kinds(parts, founds, presents, wheres)
        return list(zip(founds, wheres, strict=True))

    def add_kinds_masks(self, parts: Sequence[tuple[Sequence[str | None], int]]) -> Masks:
        """``add_kinds`` with the answers in bytearrays (1: true), numpy not needed."""
        news = [bytearray(len(keys)) for keys, _ in parts]
        presents = [bytearray(len(keys)) for keys, _ in parts]
        missing = self._table.add_kinds(parts, news, presents)
        return [
            (new, present if none else None)
            for new, present, none in zip(news, presents, missing, strict=True)
        ]
