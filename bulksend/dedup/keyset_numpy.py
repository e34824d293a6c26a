"""The numpy key set: exact, in bounded memory (the fallback when the C extension is missing).

:mod:`bulksend.dedup.deduper` picks this one or :mod:`bulksend.dedup.keyset_c`; both answer
the same.

Why not a ``set``
    A Python ``set`` of 10 million 32-character strings costs well over 1 GB (about 80 bytes per
    string object plus the set's slots). Here each key costs **8 bytes of RAM** (plus the table's
    free slots) and its text goes to an append-only *spill file* on disk.

The structure (one :class:`KeySet` holds every deduplicated identifier; ids and uids are told
apart by a *kind* byte, so a chunk's ids and uids go through the table in one pass)
    * A key's *record* is its kind byte, its UTF-8 bytes, then at least one NUL byte, padded to a
      multiple of 8 bytes. It is appended to the spill file at byte ``8 * o``.
    * ``h``, a 64-bit hash of the record: each 8-byte word times its own random odd constant,
      summed mod 2^64, then the splitmix64 finaliser (all-zero padding words add nothing, so the
      padding width does not matter). Computed by numpy for a whole chunk; a test may inject a
      plain ``hash_fn``. ``f = (h >> 32) | 1`` is a 32-bit fingerprint, never 0.
    * A table of ``nb`` buckets of 8 slots, one 64-byte row per bucket in a ``uint32`` numpy
      array: 8 fingerprints then the 8 matching ``o``. A slot is empty when its fingerprint is 0.
    * A key's home bucket is ``(f * nb) >> 32``; the key is stored in the first bucket from home
      (wrapping round) that is not full. Slots fill left to right and are never emptied.

Why this is exact (a hash collision can never drop a recipient)
    A key is reported as *already seen* only when :meth:`SpillStore.same` has read the stored
    record back and found **the same kind byte and bytes, followed by NUL**. Hashes,
    fingerprints and buckets only choose *which* records to read; they never decide "duplicate"
    on their own. Keys containing NUL (never produced by :mod:`bulksend.sources`, which rejects
    control characters) are kept in a small exact ``set`` instead, so the NUL terminator is
    unambiguous for all others. Repeats inside one chunk are settled the same way: new keys
    that aim at the same bucket and have equal full hashes are compared as records, and only
    the first of equal ones is inserted.

    Conversely, a key that was stored is always found again: lookup scans from the home bucket to
    the first bucket that is not full, comparing every slot with the same fingerprint. Insertion
    put the key into the first non-full bucket from home; buckets between home and there were
    full then and stay full (nothing is ever removed), so the scan reaches the key's bucket. The
    load factor is kept at or below 0.75, so a non-full bucket always exists and the scan ends.

    So the answer is exactly that of a ``set`` of the real keys (tests check this against one,
    with hash functions that collide on purpose). Collisions only cost time: a record read for
    each fingerprint match. About ``8 * 0.6 * nb / 2**32`` of the lookups (0.2 % at 10 million
    keys) read a record that turns out to be different. Every true duplicate costs one read.

Looking keys up
    ``find_kinds`` runs the same lookup and the same comparisons and inserts nothing; a key is
    found only when its record was read back and is equal, and its ``where`` is that record's
    ``o`` (a key containing NUL, kept in memory, gets a number of its own above every ``o``).

Reading records back
    The records for a whole chunk's fingerprint matches are read and compared by numpy at once.
    While the spill file is small (up to ``_MAP_BUDGET``, 64 MB: about a million rows of ids
    and uids) it is mapped read-only (``mmap``) and gathered directly: the whole file may then
    sit in the RSS, which is why the map stops there. Past that each record costs one ``pread``
    (a page-cache hit: the file was written in this run), about 1-2 µs on the test machine;
    mapping a large file and dropping its pages to bound the RSS costs more than that, since
    almost every read then takes a page fault. The file grows in large steps (``ftruncate``,
    sparse) so the map rarely has to be made again.

Memory
    64 bytes per bucket (8 slots) plus 4 bytes of scratch, about 11 bytes per key at the
    0.75 load limit. With ``expected`` (the engine passes ``Rows.estimated_rows``; the table is
    sized for that many keys of each kind) the table is sized once with 12 % headroom: 10
    million rows with ids and uids take about 240 MB. Without it the table doubles from 1024
    buckets, and while doubling holds the old table too. The spill (about 40 bytes per
    32-character key) is on disk in ``spill_dir`` (default: the system temporary directory; a
    tmpfs lives in RAM, though not in the process's RSS). The file is unlinked at once and
    vanishes when the key set is closed. Measured with benchmarks/ingest.py for 10 million
    rows (32-character ids and uids), in a process that also imports the engine: table 254 MB,
    369 MB peak RSS.

Speed
    Work is done a chunk at a time (:meth:`Deduper.filter_many`): numpy does the hashing and the
    table arithmetic, one random 64-byte read of the table per key; the table is filled before
    the chunk's records are written, while the rows just read are still in the CPU cache. A
    list from :mod:`bulksend.sources` carries the id and uid values its recipients were made
    of (``key_columns``), which are used instead of reading each recipient's attributes.
    :meth:`Deduper.filter` runs the same code for one recipient: it is correct but costs tens
    of µs per call, so the engine must use the batch API.

numpy (>= 2.0, for ``bitwise_count``) is a runtime dependency: a pure-Python table costs
about 400 ns per key before any bookkeeping, and a ``set`` cannot be bounded.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import is_not
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from bulksend.dedup.keyset_base import DEFAULT_KIND, KeySetBase

__all__ = ["DEFAULT_KIND", "BoolArray", "KeySet", "SpillStore", "U64Array"]

_SLOTS: Final = 8
_MAX_LOAD: Final = 0.75
_MIN_BUCKETS: Final = 1024
#: keys of fewer UTF-8 bytes are packed together; longer ones in small groups of their own
_SHORT: Final = 64
_LONG_GROUP: Final = 256
#: a spill file up to this size is read back through a map (it may all come into the RSS);
#: a larger one with a ``pread`` per record
_MAP_BUDGET: Final = 64 << 20
#: the spill file grows (sparse) by at least this much at a time
_GROW_FILE: Final = 16 << 20
_MASK64: Final = (1 << 64) - 1
_U32_MAX: Final = (1 << 32) - 1
#: ``find_kinds`` names a key containing NUL (kept in memory, not in the spill) from here up
_ODD: Final = 1 << 40

BoolArray = npt.NDArray[np.bool_]
U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]
U64Array = npt.NDArray[np.uint64]
IntpArray = npt.NDArray[np.intp]
I32Array = npt.NDArray[np.int32]


class _Group(NamedTuple):
    """Records (kind byte, UTF-8 bytes, NUL padding to ``width``, a multiple of 8) of keys."""

    rows: IntpArray | None  # positions of these keys among all keys of the call; None: ``start``+
    start: int
    records: U8Array  # shape (number of keys, width)
    size: int = 0  # when every record holds the same number of bytes before its NUL padding


class _Plan(NamedTuple):
    """Where one part of an ``add_kinds`` call went among the keys handled together."""

    kind: int
    start: int  # its first key among them
    used: int  # how many of its keys are there
    plain: list[int] | None  # which of its keys those are (None: all, in order)
    odd_new: BoolArray | None  # keys containing NUL that were new (with ``plain``)
    present: BoolArray | None  # None: no key was None


def _pack_fixed(keys: Sequence[str | None], tag: str, start: int) -> _Group | None:
    """The usual file: every key a ``str`` of the same ASCII length, none with NUL; else None."""
    count = len(keys)
    first = keys[0]
    if first is None:
        return None
    size = len(first) + 1
    if size >= _SHORT:
        return None
    width = (size + 8) & ~7
    padding = "\0" * (width - size)
    try:
        data = tag + (padding + tag).join(keys) + padding  # type: ignore[arg-type]
    except TypeError:  # a None among them
        return None
    if len(data) != count * width or not data.isascii():
        return None
    records = np.frombuffer(data.encode("ascii"), dtype=np.uint8).reshape(count, width)
    # every key is ``size - 1`` long exactly when no NUL falls in the first ``size`` columns
    # (the byte count leaves no room for a shorter key to be offset by a longer one)
    if not records[:, :size].all():
        return None
    return _Group(None, start, records, size)


def _pack_general(keys: Sequence[str], tag: str, start: int) -> list[_Group]:
    """Records for ``keys`` (none containing NUL), grouped by size; rows count from ``start``."""
    count = len(keys)
    tagged = [tag + key for key in keys]
    encoded: Sequence[str | bytes]
    if "".join(keys).isascii():
        encoded = tagged
    else:
        encoded = [key.encode("utf-8", "surrogatepass") for key in tagged]
    lengths = np.fromiter(map(len, encoded), dtype=np.intp, count=count)
    groups = []
    short = np.flatnonzero(lengths < _SHORT)
    if short.size:
        groups.append(_records(encoded, short, lengths, start))
    long = np.flatnonzero(lengths >= _SHORT)
    for first in range(0, long.size, _LONG_GROUP):
        groups.append(_records(encoded, long[first : first + _LONG_GROUP], lengths, start))
    return groups


def _records(
    encoded: Sequence[str | bytes], rows: IntpArray, lengths: IntpArray, start: int
) -> _Group:
    width = (int(lengths[rows].max()) + 8) & ~7
    picked = [encoded[i] for i in rows.tolist()]
    records = np.array(picked, dtype=f"S{width}").view(np.uint8).reshape(len(picked), width)
    return _Group(rows + start, start, records)


class _Hasher:
    """64-bit hash of a record: multilinear over its 8-byte words, then the splitmix64 finaliser.

    All-zero words add nothing, so a key hashes the same whatever padding width it was packed
    with. The constants are random per process (like Python's own ``hash``) unless seeded.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._k = np.zeros(0, dtype=np.uint64)

    def __call__(self, records: U8Array) -> U64Array:
        words = records.view(np.uint64)
        n = words.shape[1]
        if n > len(self._k):  # constants are drawn in order, so they never change once drawn
            more = self._rng.integers(0, 1 << 63, size=max(n, 8) - len(self._k), dtype=np.uint64)
            self._k = np.concatenate([self._k, (more << np.uint64(1)) | np.uint64(1)])
        k = self._k
        if n <= 8:  # column by column: no (rows, n) temporary, no strided reduction
            z = words[:, 0] * k[0]
            term = np.empty_like(z)
            for j in range(1, n):
                np.multiply(words[:, j], k[j], out=term)
                z += term
        else:
            z = (words * k[:n]).sum(axis=1, dtype=np.uint64)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        hashes: U64Array = z
        return hashes


def _close_store(fd: int, mapping: list[mmap.mmap]) -> None:
    for view in mapping:
        view.close()
    mapping.clear()
    os.close(fd)


class SpillStore:
    """Append-only file of key records (kind byte, UTF-8 bytes, NUL padding to a multiple of 8).

    A record is addressed by ``o``: it starts at byte ``8 * o``. ``o`` fits 32 bits, so one
    store holds up to 32 GiB (about 700 million 32-character keys).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="bulksend-dedup-", dir=directory)
        os.unlink(path)
        self._fd = fd
        self._mapping: list[mmap.mmap] = []  # the read-only map of the file, once made
        self._finalizer = weakref.finalize(self, _close_store, fd, self._mapping)
        os.write(fd, bytes(8))  # o = 0 is never a record
        self._end = 8
        self._capacity = 8  # the file's size: records, then sparse room to grow

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._end

    def close(self) -> None:
        self._finalizer()

    def append(self, records: U8Array) -> U32Array:
        """Write fixed-width records (one per row); returns each record's ``o``."""
        count, width = records.shape
        first = self._end >> 3
        end = self._end + count * width
        if (end >> 3) > _U32_MAX:
            raise OverflowError("deduplication spill file is full (32 GiB of keys)")
        if end > self._capacity:
            self._grow(end)
        view = memoryview(np.ascontiguousarray(records).data).cast("B")
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._end = end
        step = np.uint64(width >> 3)
        return (np.arange(count, dtype=np.uint64) * step + np.uint64(first)).astype(np.uint32)

    def _grow(self, end: int) -> None:
        capacity = max(end + _GROW_FILE, min(2 * self._capacity, end + (1 << 30)))
        os.ftruncate(self._fd, capacity)  # the write position stays at the end of the records
        self._capacity = capacity
        self._unmap()

    def _unmap(self) -> None:
        for view in self._mapping:
            view.close()
        self._mapping.clear()

    def _map(self) -> mmap.mmap:
        if not self._mapping:
            self._mapping.append(mmap.mmap(self._fd, self._capacity, access=mmap.ACCESS_READ))
        return self._mapping[0]

    def same(self, offsets: Sequence[int] | U32Array, records: Sequence[bytes]) -> BoolArray:
        """For each pair, whether the record at ``o`` is exactly ``records[i]`` (kind byte and
        UTF-8 bytes, without NUL) followed by NUL."""
        count = len(records)
        if not count:
            return np.zeros(0, dtype=np.bool_)
        lengths = np.fromiter(map(len, records), dtype=np.intp, count=count) + 1
        width = (int(lengths.max()) + 7) & ~7
        probe = np.array(records, dtype=f"S{width}").view(np.uint8).reshape(count, width)
        return self.same_records(offsets, probe, lengths)

    def same_records(
        self, offsets: Sequence[int] | U32Array, probe: U8Array, lengths: IntpArray | int
    ) -> BoolArray:
        """``same`` for records laid out in ``probe`` (one per row, NUL-padded), of which the
        first ``lengths`` bytes (up to and including the first NUL) are compared."""
        count = len(probe)
        out = np.zeros(count, dtype=np.bool_)
        if not count:
            return out
        width = probe.shape[1]
        starts = np.asarray(offsets, dtype=np.int64)
        words = np.arange(width >> 3, dtype=np.int64)
        care = None
        if isinstance(lengths, int):
            keep = (lengths + 7) & ~7
            words = words[: keep >> 3]
            probe = probe[:, :keep]
            if keep != lengths:
                care = np.arange(keep) < lengths
        else:
            care = np.arange(width) < lengths[:, None]
        equal = self._gather(starts, words).view(np.uint8) == probe
        if care is not None:
            equal |= ~care
        out[:] = equal.all(axis=1)
        return out

    def _gather(self, starts: npt.NDArray[np.int64], words: npt.NDArray[np.int64]) -> U64Array:
        """The 8-byte words at ``starts[i] + words`` (counted in words; past the end: 0)."""
        if self._end > _MAP_BUDGET:
            return self._read(starts, len(words))
        mapped = self._map()  # at most the records written come into memory: a small file
        where = starts[:, None] + words
        np.minimum(where, (self._capacity >> 3) - 1, out=where)
        data = np.frombuffer(mapped, dtype=np.uint64)
        try:
            stored: U64Array = np.take(data, where)
        finally:
            del data  # release the buffer, so the map can be closed
        return stored

    def _read(self, starts: npt.NDArray[np.int64], words: int) -> U64Array:
        """``_gather`` with one ``pread`` per record: for a file too large to map whole."""
        if self._mapping:
            self._unmap()
        size = words * 8
        parts = list(map(os.pread, repeat(self._fd), repeat(size), (starts << 3).tolist()))
        data = b"".join(parts)
        if len(data) != size * len(parts):  # the last record of the file, and a wider probe
            data = b"".join(part.ljust(size, b"\0") for part in parts)
        stored: U64Array = np.frombuffer(data, dtype=np.uint64).reshape(len(parts), words)
        return stored


class KeySet(KeySetBase):
    """The set of keys seen so far; see the module docstring.

    Keys are of a *kind* (1-255: ``Deduper`` uses one per identifier): equal texts of different
    kinds are different keys. ``hash_fn`` replaces the built-in vectorised hash (tests use it to
    force collisions); ``seed`` fixes the built-in hash's constants.
    """

    def __init__(
        self,
        *,
        hash_fn: Callable[[str], int] | None = None,
        seed: int | None = None,
        expected: int = 0,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._hash_fn = hash_fn
        self._hasher = _Hasher(seed)
        self._store = SpillStore(spill_dir)
        #: keys containing NUL, kept exactly in memory, and the number ``find_kinds`` names
        #: each by (``_ODD`` and up: above every ``o``)
        self._odd: dict[tuple[int, str], int] = {}
        self._count = 0
        self._kinds: dict[int, int] = {}  # keys per kind
        self._allocate(_buckets_for(expected + expected // 8))  # estimates run a little low

    def __len__(self) -> int:
        return self._count + len(self._odd)

    def __enter__(self) -> KeySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unique(self, kind: int = DEFAULT_KIND) -> int:
        """How many distinct keys of ``kind`` were added."""
        return self._kinds.get(kind, 0)

    @property
    def buckets(self) -> int:
        return self._nb

    @property
    def table_bytes(self) -> int:
        """RAM held by the table and its scratch arrays."""
        arrays = (self._table, self._mark)
        return sum(int(a.nbytes) for a in arrays)

    @property
    def spill_bytes(self) -> int:
        return self._store.size

    def close(self) -> None:
        self._store.close()

    def _allocate(self, nb: int) -> None:
        self._nb = nb
        #: a bucket is one 64-byte row: 8 fingerprints, then the 8 matching ``o``
        self._table: U32Array = np.zeros((nb, 2 * _SLOTS), dtype=np.uint32)
        self._mark: I32Array = np.zeros(nb, dtype=np.int32)

    def add(self, key: str, kind: int = DEFAULT_KIND) -> bool:
        """Record ``key``; True when it was not seen before."""
        return bool(self.add_many([key], kind)[0])

    def add_kinds(
        self, parts: Sequence[tuple[Sequence[str | None], int]]
    ) -> list[tuple[BoolArray, BoolArray | None]]:
        """``add_many`` for several kinds at once (one pass through the table), in order.

        ``None`` stands for "no key here". For each part: ``(new, present)``, where ``present``
        is None when no key was None.
        """
        flat: list[str] = []
        groups: list[_Group] = []
        bounds: list[tuple[int, int]] = []  # (start in flat, kind) of each part's plain keys
        plans: list[_Plan] = []
        for keys, kind in parts:
            if not 1 <= kind <= 255:
                raise ValueError(f"key kind must be 1-255, not {kind}")
            count = len(keys)
            start = len(flat)
            bounds.append((start, kind))
            group = _pack_fixed(keys, chr(kind), start) if count else None
            if group is not None or not count:
                if group is not None:
                    groups.append(group)
                flat.extend(keys)  # type: ignore[arg-type]
                plans.append(_Plan(kind, start, count, None, None, None))
                continue
            present = np.fromiter(map(is_not, keys, repeat(None)), dtype=np.bool_, count=count)
            plain: list[int] = []
            odd_new = np.zeros(count, dtype=np.bool_)
            for i, key in enumerate(keys):
                if key is None:
                    continue
                if "\0" in key:
                    if (kind, key) not in self._odd:
                        self._odd[(kind, key)] = _ODD + len(self._odd)
                        odd_new[i] = True
                else:
                    plain.append(i)
            picked = [keys[i] for i in plain]
            if picked:
                groups.extend(_pack_general(picked, chr(kind), start))  # type: ignore[arg-type]
                flat.extend(picked)  # type: ignore[arg-type]
            partial = None if present.all() else present
            plans.append(_Plan(kind, start, len(picked), plain, odd_new, partial))
        new_flat = self._add_flat(flat, groups, bounds)
        results: list[tuple[BoolArray, BoolArray | None]] = []
        for plan in plans:
            part_new = new_flat[plan.start : plan.start + plan.used]
            out = part_new
            if plan.plain is not None:
                assert plan.odd_new is not None
                out = plan.odd_new
                if plan.plain:
                    out[np.array(plan.plain, dtype=np.intp)] = part_new
            seen = self._kinds.get(plan.kind, 0)
            self._kinds[plan.kind] = seen + int(np.count_nonzero(out))
            results.append((out, plan.present))
        return results

    def find_kinds(
        self, parts: Sequence[tuple[Sequence[str | None], int]]
    ) -> list[tuple[BoolArray, U64Array]]:
        """Look keys up without adding any (see ``KeySetBase.find_kinds``); ``where`` is the
        record's ``o``."""
        flat: list[str] = []
        groups: list[_Group] = []
        bounds: list[tuple[int, int]] = []
        plans: list[tuple[int, int, list[int] | None, BoolArray, U64Array]] = []
        for keys, kind in parts:
            if not 1 <= kind <= 255:
                raise ValueError(f"key kind must be 1-255, not {kind}")
            bounds.append((len(flat), kind))
            plans.append(self._find_plan(keys, kind, flat, groups))
        found_flat, where_flat = self._find_flat(flat, groups, bounds)
        results: list[tuple[BoolArray, U64Array]] = []
        for start, used, plain, found, where in plans:
            part = slice(start, start + used)
            if plain is None:
                results.append((found_flat[part], where_flat[part]))
                continue
            if plain:
                at = np.array(plain, dtype=np.intp)
                found[at], where[at] = found_flat[part], where_flat[part]
            results.append((found, where))
        return results

    def _find_plan(
        self, keys: Sequence[str | None], kind: int, flat: list[str], groups: list[_Group]
    ) -> tuple[int, int, list[int] | None, BoolArray, U64Array]:
        """Pack one part's keys for ``_find_flat`` (appended to ``flat`` and ``groups``): its
        first key's position there, how many went, which they are (None: all, in order), and
        its answers so far (keys with NUL are answered here, from memory)."""
        count, start = len(keys), len(flat)
        found = np.zeros(count, dtype=np.bool_)
        where = np.zeros(count, dtype=np.uint64)
        group = _pack_fixed(keys, chr(kind), start) if count else None
        if group is not None or not count:
            if group is not None:
                groups.append(group)
            flat.extend(keys)  # type: ignore[arg-type]
            return start, count, None, found, where
        plain: list[int] = []
        for i, key in enumerate(keys):
            if key is None:
                continue
            if "\0" not in key:
                plain.append(i)
            elif (kind, key) in self._odd:
                found[i], where[i] = True, self._odd[(kind, key)]
        picked = [keys[i] for i in plain]
        if picked:
            groups.extend(_pack_general(picked, chr(kind), start))  # type: ignore[arg-type]
            flat.extend(picked)  # type: ignore[arg-type]
        return start, len(picked), plain, found, where

    def _find_flat(
        self, keys: list[str], groups: list[_Group], bounds: list[tuple[int, int]]
    ) -> tuple[BoolArray, U64Array]:
        count = len(keys)
        found = np.zeros(count, dtype=np.bool_)
        where = np.zeros(count, dtype=np.uint64)
        if count == 0:
            return found, where
        h = self._hashes(keys, groups)
        fp = (h >> np.uint64(32)).astype(np.uint32) | np.uint32(1)
        hit_at, hit_o, _, _ = self._lookup(fp)
        if hit_at.size:  # EXACT: found only where the stored record was read back and is equal
            same = self._same(hit_o, keys, groups, bounds, hit_at)
            found[hit_at[same]] = True
            where[hit_at[same]] = hit_o[same]
        return found, where

    def _add_flat(
        self, keys: list[str], groups: list[_Group], bounds: list[tuple[int, int]]
    ) -> BoolArray:
        count = len(keys)
        out = np.zeros(count, dtype=np.bool_)
        if count == 0:
            return out
        h = self._hashes(keys, groups)
        fp = (h >> np.uint64(32)).astype(np.uint32) | np.uint32(1)
        hit_at, hit_o, bucket, fill = self._lookup(fp)
        maybe = np.zeros(count, dtype=np.bool_)  # a fingerprint match: read the record
        maybe[hit_at] = True
        if self._count + count > _MAX_LOAD * self._nb * _SLOTS:  # may grow: the plain way
            known = np.zeros(count, dtype=np.bool_)
            if hit_at.size:
                known[hit_at[self._same(hit_o, keys, groups, bounds, hit_at)]] = True
            fresh = self._firsts(keys, h, np.flatnonzero(~known), bounds)
            if fresh.size:
                offsets, records = self._layout(groups, fresh, count)
                self._grow(self._count + fresh.size)
                self._insert(fp[fresh], offsets)
                self._spill(records)
                self._count += fresh.size
                out[fresh] = True
            return out
        # Keys without a fingerprint match are new: into the table first, while the rows the
        # lookup read are still cached. A key repeated within the call is among them each
        # time (same hash, same buckets); ``_place`` finds those.
        fresh = np.flatnonzero(~maybe)
        if fresh.size:
            offsets, records = self._layout(groups, fresh, count)
            placed = self._place(
                fp[fresh], offsets, bucket[fresh], fill[fresh], keys, h, fresh, bounds
            )
            if placed is not None:
                fresh = fresh[placed]
            self._spill(records)
            self._count += fresh.size
            out[fresh] = True
        if hit_at.size:  # then the others: those whose records all differ are new too
            seen = np.zeros(count, dtype=np.bool_)
            seen[hit_at[self._same(hit_o, keys, groups, bounds, hit_at)]] = True
            fresh = self._firsts(keys, h, np.flatnonzero(maybe & ~seen), bounds)
            if fresh.size:
                offsets, records = self._layout(groups, fresh, count)
                self._insert(fp[fresh], offsets)
                self._spill(records)
                self._count += fresh.size
                out[fresh] = True
        return out

    def _hashes(self, keys: Sequence[str], groups: list[_Group]) -> U64Array:
        if self._hash_fn is not None:
            function = self._hash_fn
            values = [function(key) & _MASK64 for key in keys]
            return np.array(values, dtype=np.uint64).reshape(len(keys))
        if len(groups) == 1 and groups[0].rows is None:
            return self._hasher(groups[0].records)
        h = np.empty(len(keys), dtype=np.uint64)
        for group in groups:
            h[_rows(group)] = self._hasher(group.records)
        return h

    def _layout(
        self, groups: list[_Group], new: IntpArray, count: int
    ) -> tuple[U32Array, list[U8Array]]:
        """Where the records of the keys at positions ``new`` will go in the spill (their ``o``,
        in that order) and the record arrays to append, in order, to put them there.

        The table is filled before the records are written: the rows a lookup just read are
        then still in the CPU cache (writing a chunk of records would push them out).
        """
        out: list[U8Array] = []
        first = self._store.size >> 3

        def place(records: U8Array) -> U32Array:
            nonlocal first
            rows, width = records.shape
            step = width >> 3
            if first + rows * step > _U32_MAX:
                raise OverflowError("deduplication spill file is full (32 GiB of keys)")
            o = np.arange(rows, dtype=np.uint64) * np.uint64(step) + np.uint64(first)
            first += rows * step
            out.append(records)
            return o.astype(np.uint32)

        if all(group.rows is None for group in groups):  # consecutive runs, in order
            parts = []
            for group in groups:
                size = len(group.records)
                begin, end = np.searchsorted(new, (group.start, group.start + size))
                if end - begin == size:
                    parts.append(place(group.records))
                elif 2 * (end - begin) > size:  # cheaper to write them all than to pick
                    parts.append(place(group.records)[new[begin:end] - group.start])
                elif end > begin:
                    parts.append(place(group.records[new[begin:end] - group.start]))
            return (parts[0] if len(parts) == 1 else np.concatenate(parts)), out
        offsets = np.zeros(count, dtype=np.uint32)
        is_new = np.zeros(count, dtype=np.bool_)
        is_new[new] = True
        for group in groups:
            rows = group.rows
            if rows is None:
                rows = np.arange(group.start, group.start + len(group.records), dtype=np.intp)
            chosen = is_new[rows]
            if chosen.all():
                offsets[rows] = place(group.records)
            elif chosen.any():
                offsets[rows[chosen]] = place(group.records[chosen])
        return offsets[new], out

    def _spill(self, records: list[U8Array]) -> None:
        """Append what ``_layout`` laid out (nothing may be written in between)."""
        for part in records:
            self._store.append(part)

    def _record(
        self, keys: Sequence[str], bounds: list[tuple[int, int]], at: IntpArray
    ) -> list[bytes]:
        """Kind byte and UTF-8 bytes of ``keys[i]`` for each ``i`` in ``at``."""
        starts = np.array([start for start, _ in bounds], dtype=np.intp)
        kinds = [chr(kind) for _, kind in bounds]
        part = np.searchsorted(starts, at, side="right") - 1
        return [
            (kinds[p] + keys[i]).encode("utf-8", "surrogatepass")
            for i, p in zip(at.tolist(), part.tolist(), strict=True)
        ]

    def _same(
        self,
        offsets: U32Array,
        keys: Sequence[str],
        groups: list[_Group],
        bounds: list[tuple[int, int]],
        at: IntpArray,
    ) -> BoolArray:
        """Whether the record at ``offsets[i]`` holds ``keys[at[i]]`` (of its part's kind)."""
        if not all(group.rows is None for group in groups):
            return self._store.same(offsets, self._record(keys, bounds, at))
        if len(groups) == 1:
            group = groups[0]
            return self._store.same_records(
                offsets, group.records[at - group.start], group.size + 1
            )
        width = max(group.records.shape[1] for group in groups)
        probe = np.zeros((len(at), width), dtype=np.uint8)
        lengths = np.zeros(len(at), dtype=np.intp)
        for group in groups:
            inside = (at >= group.start) & (at < group.start + len(group.records))
            probe[inside, : group.records.shape[1]] = group.records[at[inside] - group.start]
            lengths[inside] = group.size + 1
        return self._store.same_records(offsets, probe, lengths)

    def _firsts(
        self, keys: Sequence[str], h: U64Array, positions: IntpArray, bounds: list[tuple[int, int]]
    ) -> IntpArray:
        """``positions`` (ascending) without the later ones of a key that occurs more than once.

        Only keys with equal 64-bit hashes are compared (as kind byte and bytes).
        """
        if positions.size < 2:
            return positions
        hashes = h[positions]
        order = np.argsort(hashes, kind="stable")  # equal hashes stay in position order
        ordered = hashes[order]
        equal = ordered[1:] == ordered[:-1]
        if not equal.any():
            return positions
        member = np.zeros(len(order), dtype=np.bool_)
        member[1:] = equal
        member[:-1] |= equal
        shared = order[member]  # runs of equal hashes, each in position order
        records = self._record(keys, bounds, positions[shared])
        later = np.zeros(len(positions), dtype=np.bool_)
        firsts: dict[int, list[bytes]] = {}
        for i, value, record in zip(shared.tolist(), hashes[shared].tolist(), records, strict=True):
            seen = firsts.setdefault(value, [])
            if record in seen:
                later[i] = True
            else:
                seen.append(record)
        return positions[~later] if later.any() else positions

    def _home(self, fp: U32Array) -> IntpArray:
        return ((fp.astype(np.uint64) * np.uint64(self._nb)) >> np.uint64(32)).astype(np.intp)

    def _lookup(self, fp: U32Array) -> tuple[IntpArray, U32Array, IntpArray, IntpArray]:
        """Where the keys with fingerprints ``fp`` may be in the table.

        Returns ``(at, o)``: for every slot along a key's scan that holds its fingerprint, the
        key's position and the slot's ``o`` (the record to read to know); and, for every key,
        the first bucket from home that is not full (where it would go) and its used slots.
        """
        count = len(fp)
        end_bucket = np.empty(count, dtype=np.intp)
        end_fill = np.empty(count, dtype=np.intp)
        query = np.arange(count, dtype=np.intp)
        bucket = self._home(fp)
        want = fp
        nb = self._nb
        table = self._table
        found_at: list[IntpArray] = []
        found_o: list[U32Array] = []
        while True:
            rows = np.take(table, bucket, axis=0)
            # whole rows compared (contiguous, so fast); only the first 8 columns count
            hits = rows == want[:, None]
            hit = np.flatnonzero(hits.view(np.uint64)[:, 0])
            if hit.size:
                row, slot = np.nonzero(hits[hit, :_SLOTS])
                qi = hit[row]
                found_at.append(query[qi])
                found_o.append(rows[qi, _SLOTS + slot])
            used = _used(rows)
            stop = used < _SLOTS
            if stop.all():
                end_bucket[query] = bucket
                end_fill[query] = used
                break
            end_bucket[query[stop]] = bucket[stop]
            end_fill[query[stop]] = used[stop]
            more = ~stop  # a full bucket: the key may sit further on
            query = query[more]
            want = want[more]
            bucket = bucket[more] + 1
            bucket[bucket == nb] = 0
        if not found_at:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.uint32), end_bucket, end_fill
        at = found_at[0] if len(found_at) == 1 else np.concatenate(found_at)
        o = found_o[0] if len(found_o) == 1 else np.concatenate(found_o)
        return at, o, end_bucket, end_fill

    def _put(self, bucket: IntpArray, slot: IntpArray, fp: U32Array, offsets: U32Array) -> None:
        flat = self._table.reshape(-1)
        at = bucket * (2 * _SLOTS) + slot
        flat[at] = fp
        flat[at + _SLOTS] = offsets

    def _place(
        self,
        fp: U32Array,
        offsets: U32Array,
        bucket: IntpArray,
        fill: IntpArray,
        keys: Sequence[str],
        h: U64Array,
        positions: IntpArray,
        bounds: list[tuple[int, int]],
    ) -> BoolArray | None:
        """Insert new keys (at ``positions`` among ``keys``) where ``_lookup`` found room.

        Keys aiming at one bucket go one at a time, and among them a key that occurs more than
        once (it has one home) is inserted only at its first position. Returns which of the
        keys were inserted, None for all.
        """
        index = np.arange(len(fp), dtype=np.int32)
        mark = self._mark
        mark[bucket] = index
        win = mark[bucket] == index
        if win.all():
            self._put(bucket, fill, fp, offsets)
            return None
        # every key of a contested bucket: the losers, and the one each bucket's mark kept
        lose = ~win
        win[mark[bucket[lose]]] = False
        contested = np.flatnonzero(~win)
        self._put(bucket[win], fill[win], fp[win], offsets[win])
        firsts = np.searchsorted(positions, self._firsts(keys, h, positions[contested], bounds))
        # the keys sharing a bucket take its next free slots in turn
        order = firsts[np.argsort(bucket[firsts], kind="stable")]
        shared = bucket[order]
        starts = np.empty(len(order), dtype=np.bool_)
        starts[:1] = True
        np.not_equal(shared[1:], shared[:-1], out=starts[1:])
        at = np.arange(len(order), dtype=np.intp)
        slot = fill[order] + at - np.maximum.accumulate(np.where(starts, at, 0))
        room = slot < _SLOTS
        self._put(shared[room], slot[room], fp[order[room]], offsets[order[room]])
        over = order[~room]
        if over.size:
            self._insert(fp[over], offsets[over])
        if len(firsts) == len(contested):
            return None
        placed: BoolArray = win
        placed[firsts] = True
        return placed

    def _insert(self, fp: U32Array, offsets: U32Array) -> None:
        """Put each key in the first bucket from its home that is not full."""
        nb = self._nb
        mark = self._mark
        bucket = self._home(fp)
        while fp.size:
            fill = _used(np.take(self._table, bucket, axis=0))
            free = fill < _SLOTS
            # one key per bucket this round: whichever index the scratch array kept
            index = np.arange(len(fp), dtype=np.int32)
            mark[bucket[free]] = index[free]
            win = free & (mark[bucket] == index)
            self._put(bucket[win], fill[win], fp[win], offsets[win])
            rest = ~win
            fp, offsets, bucket = fp[rest], offsets[rest], bucket[rest]
            full = ~free[rest]
            bucket[full] += 1
            bucket[bucket == nb] = 0

    def _grow(self, needed: int) -> None:
        old = self._table
        self._allocate(_buckets_for(needed, at_least=self._nb * 2))
        step = 1 << 14
        for start in range(0, len(old), step):
            part = old[start : start + step]
            used = part[:, :_SLOTS] != 0
            self._insert_ranked(part[:, :_SLOTS][used], part[:, _SLOTS:][used])
        del old

    def _insert_ranked(self, fp: U32Array, offsets: U32Array) -> None:
        """``_insert`` for many keys sharing buckets (a rebuild): rank them within each bucket.

        Keys taken from the old table in order come nearly sorted by their new home, so the
        stable sort is cheap.
        """
        nb = self._nb
        bucket = self._home(fp)
        while fp.size:
            order = np.argsort(bucket, kind="stable")
            bucket, fp, offsets = bucket[order], fp[order], offsets[order]
            starts = np.empty(len(bucket), dtype=np.bool_)
            starts[0] = True
            np.not_equal(bucket[1:], bucket[:-1], out=starts[1:])
            index = np.arange(len(bucket), dtype=np.intp)
            rank = index - np.maximum.accumulate(np.where(starts, index, 0))
            fill = _used(np.take(self._table, bucket, axis=0))
            slot = fill + rank
            ok = slot < _SLOTS
            self._put(bucket[ok], slot[ok], fp[ok], offsets[ok])
            rest = ~ok
            fp, offsets, bucket = fp[rest], offsets[rest], bucket[rest] + 1
            bucket[bucket == nb] = 0


def _rows(group: _Group) -> IntpArray | slice:
    if group.rows is not None:
        return group.rows
    return slice(group.start, group.start + len(group.records))


def _used(rows: U32Array) -> IntpArray:
    """Slots in use per bucket row (slots fill from the left, and a used one is never 0)."""
    in_use = rows != 0  # 16 bools: two words per row, the first for the fingerprints
    used: IntpArray = np.bitwise_count(in_use.view(np.uint64)[:, 0]).astype(np.intp)
    return used


def _buckets_for(keys: int, *, at_least: int = _MIN_BUCKETS) -> int:
    """Enough buckets for ``keys`` below the load limit (any count: homes use fastrange)."""
    return max(at_least, -(-keys // int(_MAX_LOAD * _SLOTS)) + 1)
