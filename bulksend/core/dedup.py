"""Exact deduplication of recipients across a whole campaign, in bounded memory.

Why not a ``set``
    A Python ``set`` of 10 million 32-character strings costs well over 1 GB (about 80 bytes per
    string object plus the set's slots). Here each key costs **8 bytes of RAM** (plus the table's
    free slots) and its text goes to an append-only *spill file* on disk.

The structure (one :class:`KeySet` per deduplicated identifier: ids and uids separately)
    * A key's *record* is its UTF-8 bytes followed by at least one NUL byte, padded to a
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
    A key is reported as *already seen* only when :meth:`SpillStore.same_keys` has read the stored
    record back and found **the same bytes followed by NUL**. Hashes, fingerprints and buckets only
    choose *which* records to read; they never decide "duplicate" on their own. Keys containing
    NUL (never produced by :mod:`bulksend.sources`, which rejects control characters) are kept
    in a small exact ``set`` instead, so the NUL terminator is unambiguous for all others.
    Repeats inside one chunk are settled the same way: keys whose hashes meet in a scratch table
    are compared as strings.

    Conversely, a key that was stored is always found again: lookup scans from the home bucket to
    the first bucket that is not full, comparing every slot with the same fingerprint. Insertion
    put the key into the first non-full bucket from home; buckets between home and there were
    full then and stay full (nothing is ever removed), so the scan reaches the key's bucket. The
    load factor is kept at or below 0.75, so a non-full bucket always exists and the scan ends.

    So the answer is exactly that of a ``set`` of the real keys (tests check this against one,
    with hash functions that collide on purpose). Collisions only cost time: a record read for
    each fingerprint match. The bucket index is made of the fingerprint's top bits, so about
    ``8 * 0.6 * nb / 2**32`` of the lookups (0.2 % at 10 million keys) read a record that turns
    out to be different. Every true duplicate costs one read: from the last 8 MB of records kept
    in memory, else a ``pread`` of the page cache (about 1-2 µs on the test machine).

Memory
    64 bytes per bucket (8 slots) plus 8 bytes of scratch, about 10.7 bytes per key at the
    0.75 load limit. With ``expected`` (the engine can pass ``Rows.estimated_rows``) the table is
    sized once with 12 % headroom: 10 million keys take about 120 MB. Without it the table
    doubles from 1024 buckets, and while doubling holds the old table too. Measured for 10
    million rows, ids and uids both deduplicated, in one process that also imports the engine:
    357 MB peak RSS sized from the estimate, 440 MB growing (see benchmarks/ingest.py). The
    spill (about 40 bytes per 32-character key) is on disk in ``spill_dir`` (default: the system
    temporary directory; a tmpfs lives in RAM, though not in the process's RSS). The file is
    unlinked at once and vanishes when the key set is closed.

Speed
    Work is done a chunk at a time (:meth:`Deduper.filter_many`): numpy does the hashing and the
    table arithmetic, about 230 ns per key on the 2-core test machine, most of it one random
    64-byte read of the table. :meth:`Deduper.filter` runs the same code for one recipient: it is
    correct but costs about 100 µs per call, so the engine must use the batch API.

numpy (>= 2.0, for ``bitwise_count``) becomes a runtime dependency: a pure-Python table costs
about 400 ns per key before any bookkeeping, and a ``set`` cannot be bounded.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from itertools import compress
from operator import attrgetter
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt

from bulksend.models import Recipient

__all__ = ["Deduper", "KeySet", "SpillStore"]

_SLOTS: Final = 8
_MAX_LOAD: Final = 0.75
_MIN_BUCKETS: Final = 1024
#: keys of fewer UTF-8 bytes are packed together; longer ones in small groups of their own
_SHORT: Final = 64
_LONG_GROUP: Final = 256
#: in-chunk repeats are found through a scratch table indexed by this many hash bits
_SCRATCH_BITS: Final = 20
#: bytes of the newest spill records also kept in memory, per key set
_RECENT: Final = 8 << 20
_MASK64: Final = (1 << 64) - 1
_U32_MAX: Final = (1 << 32) - 1

BoolArray = npt.NDArray[np.bool_]
U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]
U64Array = npt.NDArray[np.uint64]
IntpArray = npt.NDArray[np.intp]
I32Array = npt.NDArray[np.int32]


class _Group(NamedTuple):
    """Keys laid out as fixed-width records: UTF-8 bytes, NUL-padded to ``width`` (8k) bytes."""

    rows: IntpArray | None  # positions of these keys in the chunk; None: all, in order
    records: U8Array  # shape (len(rows), width)


def _pack(keys: Sequence[str]) -> list[_Group]:
    """Records for ``keys`` (none containing NUL), in as few numpy arrays as is cheap."""
    count = len(keys)
    size = len(keys[0])
    if 0 < size < _SHORT:  # the usual file: every key the same ASCII length
        width = (size + 8) & ~7
        padding = "\0" * (width - size)
        data = padding.join(keys) + padding
        if len(data) == count * width and data.isascii():
            records = np.frombuffer(data.encode("ascii"), dtype=np.uint8).reshape(count, width)
            # every key is ``size`` long exactly when no NUL falls in the first ``size`` columns
            # (the byte count leaves no room for a shorter key to be offset by a longer one)
            if records[:, :size].all():
                return [_Group(None, records)]
    encoded: Sequence[str | bytes]
    if "".join(keys).isascii():
        encoded = keys
    else:
        encoded = [key.encode("utf-8", "surrogatepass") for key in keys]
    lengths = np.fromiter(map(len, encoded), dtype=np.intp, count=count)
    groups = []
    short = np.flatnonzero(lengths < _SHORT)
    if short.size:
        groups.append(_records(encoded, short, lengths))
    long = np.flatnonzero(lengths >= _SHORT)
    for start in range(0, long.size, _LONG_GROUP):
        groups.append(_records(encoded, long[start : start + _LONG_GROUP], lengths))
    return groups


def _records(encoded: Sequence[str | bytes], rows: IntpArray, lengths: IntpArray) -> _Group:
    width = (int(lengths[rows].max()) + 8) & ~7
    picked = [encoded[i] for i in rows.tolist()]
    records = np.array(picked, dtype=f"S{width}").view(np.uint8).reshape(len(picked), width)
    return _Group(rows, records)


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
        z = (words * self._k[:n]).sum(axis=1, dtype=np.uint64)
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
        hashes: U64Array = z
        return hashes


class SpillStore:
    """Append-only file of key records (UTF-8 bytes, then NUL padding to a multiple of 8).

    A record is addressed by ``o``: it starts at byte ``8 * o``. ``o`` fits 32 bits, so one
    store holds up to 32 GiB (about 700 million 32-character keys).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="bulksend-dedup-", dir=directory)
        os.unlink(path)
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        os.write(fd, bytes(8))  # o = 0 is never a record
        self._end = 8
        #: the most recent records, also kept in memory (at most ``_RECENT`` bytes): a
        #: duplicate of a recent key is then checked without a system call
        self._recent: list[bytes] = []
        self._recent_starts: list[int] = []
        self._recent_bytes = 0

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
        data = records.tobytes()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._recent.append(data)
        self._recent_starts.append(self._end)
        self._recent_bytes += len(data)
        while self._recent_bytes > _RECENT and len(self._recent) > 1:
            self._recent_bytes -= len(self._recent.pop(0))
            self._recent_starts.pop(0)
        self._end = end
        step = np.uint64(width >> 3)
        return (np.arange(count, dtype=np.uint64) * step + np.uint64(first)).astype(np.uint32)

    def same_key(self, o: int, key: str) -> bool:
        """Whether the record at ``o`` holds exactly ``key``."""
        return self.same_keys([o], [key])[0]

    def same_keys(self, offsets: Sequence[int], keys: Sequence[str]) -> list[bool]:
        """For each pair, whether the record at ``o`` holds exactly the key.

        A recent record is compared in memory; an older one costs a ``pread`` (about 1 µs: the
        spill was written during this run and is in the page cache).
        """
        out: list[bool] = []
        starts = self._recent_starts
        oldest = starts[0] if starts else self._end
        recent = self._recent
        fd = self._fd
        for o, key in zip(offsets, keys, strict=True):
            data = key.encode("utf-8", "surrogatepass") + b"\0"
            start = o << 3
            if start >= oldest:
                i = bisect_right(starts, start) - 1
                offset = start - starts[i]
                out.append(recent[i][offset : offset + len(data)] == data)
            else:
                out.append(os.pread(fd, len(data), start) == data)
        return out


class KeySet:
    """The set of keys of one kind (ids, or uids) seen so far; see the module docstring.

    ``hash_fn`` replaces the built-in vectorised hash (tests use it to force collisions);
    ``seed`` fixes the built-in hash's constants.
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
        self._odd: set[str] = set()  # keys containing NUL: kept exactly, in memory
        self._count = 0
        self._scratch: I32Array = np.zeros(1 << _SCRATCH_BITS, dtype=np.int32)
        self._allocate(_buckets_for(expected + expected // 8))  # estimates run a little low

    def __len__(self) -> int:
        return self._count + len(self._odd)

    def __enter__(self) -> KeySet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def buckets(self) -> int:
        return self._nb

    @property
    def table_bytes(self) -> int:
        """RAM held by the table and its scratch arrays."""
        arrays = (self._table, self._mark, self._scratch)
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

    def add(self, key: str) -> bool:
        """Record ``key``; True when it was not seen before."""
        return bool(self.add_many([key])[0])

    def add_many(self, keys: Sequence[str]) -> BoolArray:
        """Record ``keys`` in order; ``out[i]`` is True when ``keys[i]`` is seen for the first time.

        A key repeated within ``keys`` is new only at its first position, exactly as if the keys
        were added one by one.
        """
        count = len(keys)
        if count == 0:
            return np.zeros(0, dtype=np.bool_)
        groups = None
        if "\0" not in keys[0]:
            groups = _pack(keys)  # the fast path has checked for NUL on the way
            if groups[0].rows is not None and "\0" in "".join(keys):
                groups = None
        if groups is None:
            return self._add_with_nul(keys)
        return self._add_packed(keys, groups)

    def _add_with_nul(self, keys: Sequence[str]) -> BoolArray:
        out = np.zeros(len(keys), dtype=np.bool_)
        plain = [i for i, key in enumerate(keys) if "\0" not in key]
        for i, key in enumerate(keys):
            if "\0" in key and key not in self._odd:
                self._odd.add(key)
                out[i] = True
        if plain:
            subset = [keys[i] for i in plain]
            out[np.array(plain, dtype=np.intp)] = self._add_packed(subset, _pack(subset))
        return out

    def _hashes(self, keys: Sequence[str], groups: list[_Group]) -> U64Array:
        if self._hash_fn is not None:
            function = self._hash_fn
            values = [function(key) & _MASK64 for key in keys]
            return np.array(values, dtype=np.uint64).reshape(len(keys))
        if groups[0].rows is None:
            return self._hasher(groups[0].records)
        h = np.empty(len(keys), dtype=np.uint64)
        for group in groups:
            h[group.rows] = self._hasher(group.records)
        return h

    def _add_packed(self, keys: Sequence[str], groups: list[_Group]) -> BoolArray:
        count = len(keys)
        h = self._hashes(keys, groups)
        candidates = self._first_in_chunk(keys, h)
        fp = (h >> np.uint64(32)).astype(np.uint32) | np.uint32(1)
        if candidates is not None:
            fp = fp[candidates]
        known, bucket, fill = self._lookup(fp, keys, candidates)
        fresh = np.flatnonzero(~known)
        new = fresh if candidates is None else candidates[fresh]
        out = np.zeros(count, dtype=np.bool_)
        if not new.size:
            return out
        out[new] = True
        offsets = self._write(groups, new, count)
        self._count += new.size
        if self._count > _MAX_LOAD * self._nb * _SLOTS:
            self._grow(self._count)
            self._insert(fp[fresh], offsets)
        else:
            self._place(fp[fresh], offsets, bucket[fresh], fill[fresh])
        return out

    def _write(self, groups: list[_Group], new: IntpArray, count: int) -> U32Array:
        """Spill the records of the keys at positions ``new``; their ``o`` in that order."""
        if groups[0].rows is None:
            records = groups[0].records
            return self._store.append(records if new.size == count else records[new])
        offsets = np.zeros(count, dtype=np.uint32)
        is_new = np.zeros(count, dtype=np.bool_)
        is_new[new] = True
        for group in groups:
            assert group.rows is not None
            chosen = is_new[group.rows]
            if chosen.any():
                offsets[group.rows[chosen]] = self._store.append(group.records[chosen])
        return offsets[new]

    def _first_in_chunk(self, keys: Sequence[str], h: U64Array) -> IntpArray | None:
        """Positions of first occurrences within the chunk, or None when all keys differ."""
        count = len(keys)
        slot = (h >> np.uint64(64 - _SCRATCH_BITS)).astype(np.intp)
        index = np.arange(count, dtype=np.int32)
        scratch = self._scratch
        scratch[slot] = index
        clash = np.flatnonzero(scratch[slot] != index)
        if not clash.size:
            return None
        # keys sharing a scratch slot: the losers and each slot's winner; compare the strings
        shared = sorted({*clash.tolist(), *scratch[slot[clash]].tolist()})
        repeat = np.zeros(count, dtype=np.bool_)
        firsts: dict[int, list[str]] = {}
        for i, value in zip(shared, h[shared].tolist(), strict=True):
            seen = firsts.setdefault(value, [])
            if keys[i] in seen:
                repeat[i] = True
            else:
                seen.append(keys[i])
        return np.flatnonzero(~repeat) if repeat.any() else None

    def _home(self, fp: U32Array) -> IntpArray:
        return ((fp.astype(np.uint64) * np.uint64(self._nb)) >> np.uint64(32)).astype(np.intp)

    def _lookup(
        self, fp: U32Array, keys: Sequence[str], where: IntpArray | None
    ) -> tuple[BoolArray, IntpArray, IntpArray]:
        """Which keys (``keys[where[i]]``, fingerprint ``fp[i]``) are in the table.

        For the others, also the first bucket from home that is not full (where the key would
        go) and how many slots of it are used.
        """
        count = len(fp)
        known = np.zeros(count, dtype=np.bool_)
        end_bucket = np.empty(count, dtype=np.intp)
        end_fill = np.empty(count, dtype=np.intp)
        query = np.arange(count, dtype=np.intp)
        bucket = self._home(fp)
        want = fp
        nb = self._nb
        while True:
            rows = _fingerprints(self._table, bucket)
            hits = rows == want[:, None]
            if hits.view(np.uint64).any():
                qi, slot = np.nonzero(hits)
                offsets = self._table[bucket[qi], _SLOTS + slot].tolist()
                positions = query[qi]
                at = (positions if where is None else where[positions]).tolist()
                same = self._store.same_keys(offsets, [keys[i] for i in at])
                if True in same:
                    known[positions[np.array(same, dtype=np.bool_)]] = True
            more = rows[:, _SLOTS - 1] != 0  # a full bucket: the key may sit further on
            stop = ~more
            if stop.all():
                end_bucket[query] = bucket
                end_fill[query] = _used(rows)
                return known, end_bucket, end_fill
            end_bucket[query[stop]] = bucket[stop]
            end_fill[query[stop]] = _used(rows[stop])
            more &= ~known[query]
            if not more.any():
                return known, end_bucket, end_fill
            query = query[more]
            want = want[more]
            bucket = bucket[more] + 1
            bucket[bucket == nb] = 0

    def _put(self, bucket: IntpArray, slot: IntpArray, fp: U32Array, offsets: U32Array) -> None:
        flat = self._table.reshape(-1)
        at = bucket * (2 * _SLOTS) + slot
        flat[at] = fp
        flat[at + _SLOTS] = offsets

    def _place(self, fp: U32Array, offsets: U32Array, bucket: IntpArray, fill: IntpArray) -> None:
        """Insert where ``_lookup`` found room; keys aiming at one bucket go one at a time."""
        index = np.arange(len(fp), dtype=np.int32)
        self._mark[bucket] = index
        win = self._mark[bucket] == index
        if win.all():
            self._put(bucket, fill, fp, offsets)
            return
        self._put(bucket[win], fill[win], fp[win], offsets[win])
        lose = ~win
        self._insert(fp[lose], offsets[lose])

    def _insert(self, fp: U32Array, offsets: U32Array) -> None:
        """Put each key in the first bucket from its home that is not full."""
        nb = self._nb
        mark = self._mark
        bucket = self._home(fp)
        while fp.size:
            fill = _used(_fingerprints(self._table, bucket))
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
            fill = _used(_fingerprints(self._table, bucket))
            slot = fill + rank
            ok = slot < _SLOTS
            self._put(bucket[ok], slot[ok], fp[ok], offsets[ok])
            rest = ~ok
            fp, offsets, bucket = fp[rest], offsets[rest], bucket[rest] + 1
            bucket[bucket == nb] = 0


def _fingerprints(table: U32Array, bucket: IntpArray) -> U32Array:
    """The fingerprint halves of the given buckets' rows, as a contiguous (n, 8) array."""
    return np.ascontiguousarray(np.take(table, bucket, axis=0)[:, :_SLOTS])


def _used(fingerprints: U32Array) -> IntpArray:
    """Slots in use per row (slots fill from the left, and a used one is never 0)."""
    in_use = np.ascontiguousarray(fingerprints != 0)  # 8 bools: one uint64 per row
    return np.bitwise_count(in_use.view(np.uint64)).reshape(-1).astype(np.intp)


def _buckets_for(keys: int, *, at_least: int = _MIN_BUCKETS) -> int:
    """Enough buckets for ``keys`` below the load limit (any count: homes use fastrange)."""
    return max(at_least, -(-keys // int(_MAX_LOAD * _SLOTS)) + 1)


class Deduper:
    """Drops identifiers already seen in this campaign, separately per key (``id``, ``uid``).

    ``filter(r)`` returns ``r`` unchanged when all its identifiers are new, a copy with the
    already-seen ones set to ``None`` when some are new (counted in ``partial``), or ``None``
    when none is new (counted in ``duplicates``). Identifiers not in ``keys`` pass through
    untouched, and a recipient with none of the ``keys`` set passes through as it is.
    ``filter_many`` does the same for a list, in order, much faster.
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
        self._sets = {
            key: KeySet(hash_fn=hash_fn, seed=seed, expected=expected, spill_dir=spill_dir)
            for key in self.keys
        }

    def __enter__(self) -> Deduper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for keyset in self._sets.values():
            keyset.close()

    def unique(self, key: str) -> int:
        """How many distinct values of ``key`` were seen."""
        return len(self._sets[key])

    @property
    def memory_bytes(self) -> int:
        """RAM held by the tables (the spill is on disk)."""
        return sum(keyset.table_bytes for keyset in self._sets.values())

    def filter(self, recipient: Recipient) -> Recipient | None:
        kept, _ = self.filter_many([recipient])
        return kept[0] if kept else None

    def filter_many(
        self, recipients: Sequence[Recipient]
    ) -> tuple[list[Recipient], list[Recipient]]:
        """Returns ``(kept, duplicates)``; ``kept`` in order, with seen identifiers cleared."""
        count = len(recipients)
        if count == 0:
            return [], []
        drop = np.zeros(count, dtype=np.bool_)  # a present key that was seen before
        keep = np.zeros(count, dtype=np.bool_)  # a present key that is new
        present_any = np.zeros(count, dtype=np.bool_)
        seen_masks: dict[str, BoolArray] = {}
        for key, keyset in self._sets.items():
            values: list[Any] = list(map(attrgetter(key), recipients))
            if None in values:
                present = np.fromiter((v is not None for v in values), dtype=np.bool_, count=count)
                where = np.flatnonzero(present)
                new = np.zeros(count, dtype=np.bool_)
                new[where] = keyset.add_many([values[i] for i in where.tolist()])
            else:
                present = np.ones(count, dtype=np.bool_)
                new = keyset.add_many(values)
            seen = present & ~new
            seen_masks[key] = seen
            drop |= seen
            keep |= new
            present_any |= present
        if not drop.any():
            return list(recipients), []
        duplicate = drop & ~keep & present_any
        partial = drop & keep
        dups = list(compress(recipients, duplicate.tolist()))
        self.duplicates += len(dups)
        if not partial.any():
            return list(compress(recipients, (~duplicate).tolist())), dups
        self.partial += int(partial.sum())
        kept: list[Recipient] = []
        no = [False] * count
        id_seen = seen_masks["id"].tolist() if "id" in seen_masks else no
        uid_seen = seen_masks["uid"].tolist() if "uid" in seen_masks else no
        for i, (recipient, dropped, split) in enumerate(
            zip(recipients, duplicate.tolist(), partial.tolist(), strict=True)
        ):
            if dropped:
                continue
            if split:
                recipient = replace(
                    recipient,
                    id=None if id_seen[i] else recipient.id,
                    uid=None if uid_seen[i] else recipient.uid,
                )
            kept.append(recipient)
        return kept, dups
