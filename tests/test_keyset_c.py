"""The C key set (bulksend/dedup/_keyset.c): built, chosen, exact, robust.

The tests shared with the numpy key set are in test_dedup.py (they run against both); these
are the C one's own: its spill read back after the write buffer went out, growth from the
spill, awkward and huge keys, errors, descriptors and references, and a model check against a
Python ``set``. The first tests check that the extension is the one in use (test_dedup.py
checks that it was built wherever a C compiler exists, so that CI never falls back to numpy
without saying so).
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulksend.dedup import deduper as dedup
from bulksend.dedup.deduper import Deduper
from bulksend.models import Recipient
from tests.hypothesis_profiles import examples
from tests.keysets import keyset_c, needs_c

pytestmark = needs_c
KeySet: Any = keyset_c.KeySet if keyset_c is not None else None
_keyset: Any = getattr(keyset_c, "_keyset", None)


@pytest.fixture
def ks() -> Iterator[Any]:
    with KeySet() as k:
        yield k


# -- built and chosen -----------------------------------------------------------------------


def backend_in_subprocess(env: dict[str, str], *pre: str) -> str:
    code = "\n".join([*pre, "from bulksend.dedup import deduper as dedup", "print(dedup.BACKEND)"])
    full = {k: v for k, v in os.environ.items() if k != "BULKSEND_NO_EXTENSIONS"} | env
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full
    )
    return out.stdout.strip()


def test_the_c_key_set_is_the_default() -> None:
    assert backend_in_subprocess({}) == "c"
    assert backend_in_subprocess({"BULKSEND_NO_EXTENSIONS": ""}) == "c"
    assert backend_in_subprocess({"BULKSEND_NO_EXTENSIONS": "0"}) == "c"
    if os.environ.get("BULKSEND_NO_EXTENSIONS", "") in ("", "0"):
        assert dedup.BACKEND == "c"
        assert dedup.KeySet is KeySet


def test_bulksend_no_extensions_forces_numpy() -> None:
    assert backend_in_subprocess({"BULKSEND_NO_EXTENSIONS": "1"}) == "numpy"


def test_without_the_extension_numpy_is_used() -> None:
    # as after an install without a C compiler: the module cannot be imported
    block = [
        "import sys",
        "class Block:",
        "    def find_spec(self, name, path=None, target=None):",
        "        if name == 'bulksend.dedup._keyset':",
        "            raise ImportError('not built')",
        "sys.meta_path.insert(0, Block())",
    ]
    assert backend_in_subprocess({}, *block) == "numpy"
    dedupe = "from bulksend.models import Recipient as R; d = dedup.Deduper()"
    check = "assert d.filter_many([R(2, 'a'), R(3, 'a')])[1] == [R(3, 'a')]"
    lines = [*block, "from bulksend.dedup import deduper as dedup", dedupe, check]
    assert backend_in_subprocess({}, *lines) == "numpy"


# -- the spill: read back from the file, growth rebuilt from it -----------------------------


def test_keys_are_found_after_the_write_buffer_was_written_out(ks: Any) -> None:
    keys = [f"{i:032x}" for i in range(2000)]
    assert ks.add_many(keys).all()
    assert ks._table.buffered > 0
    ks._table.flush()
    assert ks._table.buffered == 0
    before = ks._table.reads
    assert not ks.add_many(keys).any()
    assert ks._table.reads > before  # compared with records read back from the file
    # keys sharing fingerprints with stored ones are still new
    assert ks.add_many([k + "x" for k in keys]).all()


def test_the_write_buffer_goes_out_by_itself_and_everything_is_found(ks: Any) -> None:
    keys = [f"key-{i:028d}" for i in range(150_000)]  # about 5 MB of records
    for start in range(0, len(keys), 10_000):
        assert ks.add_many(keys[start : start + 10_000]).all()
    assert ks.spill_bytes > 4 * _keyset.FLUSH_AT
    assert ks._table.buffered < _keyset.FLUSH_AT
    assert not ks.add_many(keys[::3]).any()
    assert not ks.add_many(list(reversed(keys[-5000:]))).any()


def test_growth_without_a_size_hint_rebuilds_from_the_spill() -> None:
    keys = [f"u{i:011d}" for i in range(300_000)]
    with KeySet() as ks:
        start = ks.buckets
        assert start == _keyset.MIN_SLOTS
        for i in range(0, len(keys), 7919):  # odd steps: some records buffered, some written
            assert ks.add_many(keys[i : i + 7919]).all()
            if i % 3:
                ks._table.flush()
        assert ks._table.rebuilds >= 6
        assert ks.buckets > start
        assert ks.buckets & (ks.buckets - 1) == 0  # doubled (sometimes twice at once)
        assert 3 * ks.buckets // 4 >= len(ks) == 300_000
        assert ks.table_bytes == 8 * ks.buckets
        assert not ks.add_many(keys).any()
        assert ks.add_many([k + "!" for k in keys[:1000]]).all()


def test_growth_of_a_large_table_in_place() -> None:
    # past 4 MiB the table is mapped, and grows by remapping (its pages reused, zeroed)
    keys = [f"{i:032x}" for i in range(1_000_000)]
    with KeySet() as ks:
        for i in range(0, len(keys), 8192):
            assert ks.add_many(keys[i : i + 8192]).all()
        assert ks.table_bytes >= 8 << 20
        assert not ks.add_many(keys[::37]).any()
        assert ks.add_many([k + "!" for k in keys[:5000:7]]).all()


def test_growth_with_a_hash_fn_decodes_the_records() -> None:
    seen: list[str] = []

    def hash_fn(key: str) -> int:
        seen.append(key)
        return len(key) * 0x9E3779B97F4A7C15 + ord(key[-1])

    keys = [f"{i}-é-\udc80-\0-日{chr(0x1F600 + i % 50)}" for i in range(5000)]
    with KeySet(hash_fn=hash_fn) as ks:
        assert ks.add_many(keys).all()
        assert ks._table.rebuilds >= 1
        assert set(keys) <= set(seen)  # the rebuild hashed the decoded records again
        assert not ks.add_many(keys).any()


def test_a_size_hint_sizes_the_table_once() -> None:
    with KeySet(expected=100_000) as ks:
        slots = ks.buckets
        assert 100_000 * 4 // 3 < slots < 100_000 * 2
        assert ks.add_many([f"{i:032x}" for i in range(100_000)]).all()
        assert ks.buckets == slots
        assert ks._table.rebuilds == 0
        assert ks.table_bytes / len(ks) < 14
        more = [f"more-{i}" for i in range(100_000)]  # the estimate was low: it grows
        assert ks.add_many(more).all()
        assert ks.buckets > slots
        assert not ks.add_many(more[::11]).any()


def test_a_large_size_hint_fills_its_table_in_a_thread_while_a_small_one_takes_keys() -> None:
    # from 8 MiB the table sized for the hint is faulted in by a thread, and a small table
    # takes the first keys; they move to the big one once it is ready, at the latest when the
    # small one is full (196,608 keys)
    keys = [f"{i:032x}" for i in range(300_000)]
    with KeySet(expected=2_000_000) as ks:
        slots = ks.buckets
        assert 2_000_000 * 4 // 3 < slots < 2_000_000 * 2  # the size it will have, at once
        assert ks._table.early
        for i in range(0, len(keys), 5000):
            assert ks.add_many(keys[i : i + 5000]).all()
            assert not ks.add_many(keys[i // 2 : i // 2 + 100]).any()
        assert not ks._table.early
        assert ks.buckets == slots
        assert ks._table.rebuilds == 0
        assert not ks.add_many(keys[::7]).any()
        assert ks.add_many([k + "!" for k in keys[:1000]]).all()


def test_the_keys_move_to_the_big_table_as_soon_as_it_is_ready() -> None:
    with KeySet(expected=2_000_000) as ks:
        assert ks.add_many(["first", "second"]).all()
        deadline = time.monotonic() + 30
        while ks._table.early:  # moved by the first call after the thread is done
            assert time.monotonic() < deadline
            time.sleep(0.01)
            ks.add_many(["first"])
        assert len(ks) == 2
        assert not ks.add_many(["second", "first"]).any()


def test_keys_move_to_the_big_table_with_a_hash_fn_whose_fingerprints_collide() -> None:
    def hash_fn(key: str) -> int:  # homes spread, one fingerprint for all: every key read back
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) << 32 | 7

    keys = [f"{i}-é-\udc80" for i in range(40_000)]
    with KeySet(hash_fn=hash_fn, expected=1_000_000) as ks:
        for i in range(0, len(keys), 4000):
            assert ks.add_many(keys[i : i + 4000]).all()
            assert not ks.add_many(keys[: i + 4000 : 97]).any()
        deadline = time.monotonic() + 30
        while ks._table.early:
            assert time.monotonic() < deadline
            time.sleep(0.01)
            assert not ks.add_many(keys[:1]).any()
        assert len(ks) == len(keys)
        assert not ks.add_many(keys).any()
        assert ks.add_many([k + "!" for k in keys[::50]]).all()


def test_a_key_set_closed_or_dropped_while_its_table_fills() -> None:
    for _ in range(10):
        ks = KeySet(expected=4_000_000)
        ks.add("a")
        ks.close()  # the thread is stopped and its table unmapped
        assert ks.table_bytes == 0
        dropped = KeySet(expected=4_000_000)
        del dropped
        gc.collect()


# -- keys of every sort ---------------------------------------------------------------------


def test_kinds_are_separate_and_checked(ks: Any) -> None:
    assert ks.add("same", 1)
    assert ks.add("same", 2)
    assert ks.add("same", 255)
    assert not ks.add("same", 255)
    assert (ks.unique(1), ks.unique(2), ks.unique(255), ks.unique(3), len(ks)) == (1, 1, 1, 0, 3)
    assert ks.unique(0) == ks.unique(256) == 0  # as the numpy one
    for bad in (0, 256, -1):
        with pytest.raises(ValueError, match="1-255"):
            ks.add("x", bad)
        with pytest.raises(ValueError, match="1-255"):
            ks.add_kinds([(["x"], 1), (["y"], bad)])
    with pytest.raises(TypeError):
        ks.add("x", "1")
    assert len(ks) == 3  # nothing was added by the calls that failed


def test_a_kind_given_twice_takes_its_parts_in_order(ks: Any) -> None:
    (a, _), (b, _) = ks.add_kinds([(["x", "y"], 1), (["y", "x", "z"], 1)])
    assert a.tolist() == [True, True]
    assert b.tolist() == [False, False, True]
    # parts of different lengths and kinds, with missing keys
    (c, pc), (d, pd) = ks.add_kinds([(["p", None, "q", "p"], 2), ([None, "p"], 3)])
    assert (c.tolist(), pc.tolist()) == ([True, False, True, False], [True, False, True, True])
    assert (d.tolist(), pd.tolist()) == ([False, True], [False, True])
    assert ks.add_kinds([((), 1)])[0][0].tolist() == []
    assert ks.add_kinds([]) == []


@pytest.mark.parametrize("size", [63, 64, 65, 4096, 70_000, 1_500_000])
def test_huge_keys(size: int) -> None:
    big = ["x" * size, "x" * (size - 1) + "y", "é" * size, "x" * (size + 1)]
    with KeySet() as ks:
        assert ks.add_many(big).all()
        assert not ks.add_many(big).any()  # in the buffer
        ks._table.flush()
        assert not ks.add_many(big).any()  # from the file
        assert ks.add_many(["x" * (size + 2)]).all()
        for i in range(3):  # grow: the rebuild reads the huge records back
            ks.add_many([f"{i}-{j}" for j in range(4000)])
        assert ks._table.rebuilds >= 1
        assert not ks.add_many(big).any()


def test_nul_surrogates_and_other_awkward_keys(ks: Any) -> None:
    awkward = [
        "",
        "\0",
        "\0\0",
        "a\0",
        "\0a",
        "a",
        "\udc80",  # a lone surrogate (from surrogateescape decoding)
        "\udcff\udc80",
        "\ud83d\ude00",  # a surrogate pair as two code points ...
        "\U0001f600",  # ... is not the character it would stand for
        "é",
        "e\u0301",
        "\xff",
        "日本",
        "a" * 7,
        "a" * 8,
        "a" * 9,
    ]
    assert ks.add_many(awkward).all()
    assert not ks.add_many(awkward).any()
    ks._table.flush()
    for key in awkward:
        assert not ks.add(key)
        assert ks.add(key + "#")
    assert len(ks) == 2 * len(awkward)


def test_str_subclasses_and_tuples_are_accepted(ks: Any) -> None:
    class Name(str):
        pass

    assert ks.add_many(("a", Name("b"))).tolist() == [True, True]
    assert ks.add_many([Name("a"), "b"]).tolist() == [False, False]


@pytest.mark.parametrize("bad", [b"bytes", 1, 1.5, ("a",), object()])
def test_a_key_that_is_not_a_str_raises_and_adds_nothing(ks: Any, bad: object) -> None:
    with pytest.raises(TypeError, match="keys must be str"):
        ks.add_many(["a", "b", bad, "c"])
    with pytest.raises(TypeError, match="keys must be str"):
        ks.add_kinds([(["d"], 1), (["e", bad], 2)])
    with pytest.raises(TypeError, match="keys must be str"):
        ks.add(bad)
    assert len(ks) == 0
    # also when the call is larger than one batch
    many = [f"k{i}" for i in range(3 * _keyset.BATCH)]
    with pytest.raises(TypeError):
        ks.add_many([*many, bad])
    assert len(ks) == 0
    assert ks.add_many(["a", "b", "c", "d", "e"]).all()


def test_keys_must_be_a_sequence(ks: Any) -> None:
    with pytest.raises(TypeError):
        ks.add_many(iter(["a"]))
    with pytest.raises(TypeError):
        ks.add_many(None)


def test_a_list_changed_while_its_call_is_set_up_does_not_change_what_is_added(ks: Any) -> None:
    keys = ["a", "b", "c"] * 1000

    class Pair:  # the second part empties the first one's list while the call is set up
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> object:
            if i == 0:
                return ["x"]
            if i == 1:
                keys.clear()
                return 2
            raise IndexError(i)

    def answers(n: int) -> Any:
        return np.zeros(n, dtype=np.bool_)

    table = ks._table
    new = [answers(3000), answers(1)]
    # each part's keys are copied (a tuple) as it is taken: the list read is the one given
    table.add_kinds([(keys, 1), Pair()], new, [answers(3000), answers(1)])
    assert new[0][:3].all()
    assert not new[0][3:].any()
    assert new[1].tolist() == [True]
    assert len(ks) == 4


def test_other_threads_run_while_keys_are_probed_and_cannot_use_the_set(ks: Any) -> None:
    import threading

    keys = [f"{i:032x}" for i in range(1_000_000)]
    inside = threading.Event()  # set just before the one big call
    done = threading.Event()
    ticks = 0
    refused: list[BaseException] = []

    def other() -> None:
        nonlocal ticks
        inside.wait()
        while not done.is_set():
            ticks += 1  # runs only if the call let go of the GIL: C code is never preempted
            try:
                ks.add_many(["zz"])
            except RuntimeError as error:
                refused.append(error)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        inside.set()
        assert ks.add_many(keys).all()
    finally:
        done.set()
        thread.join()
    assert ticks > 0
    assert refused
    assert all("in use" in str(e) for e in refused)
    assert not ks.add_many(keys[::1000]).any()


# -- hash_fn --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hash_fn",
    [
        lambda s: 0,
        lambda s: -1,
        lambda s: 1 << 200 | len(s),  # masked to 64 bits, like the numpy key set
        lambda s: -len(s),
        lambda s: 0xFFFF_FFFF_0000_0000,
    ],
)
def test_any_int_from_hash_fn_works(hash_fn: Callable[[str], int]) -> None:
    keys = [f"k{i}" for i in range(500)]
    with KeySet(hash_fn=hash_fn) as ks:
        assert ks.add_many(keys).all()
        ks._table.flush()
        assert not ks.add_many(keys).any()
        assert len(ks) == 500


def test_a_failing_hash_fn_raises_and_the_set_goes_on() -> None:
    def hash_fn(key: str) -> int:
        if key == "boom":
            raise KeyError(key)
        if key == "text":
            return "not an int"  # type: ignore[return-value]
        return len(key)

    with KeySet(hash_fn=hash_fn) as ks:
        assert ks.add_many(["a", "bb"]).all()
        with pytest.raises(KeyError):
            ks.add_many(["c", "boom"])
        with pytest.raises(TypeError):
            ks.add("text")
        assert ks.add_many(["a", "c", "dd"]).tolist() == [False, True, True]


def test_a_hash_fn_cannot_call_back_into_its_key_set() -> None:
    holder: list[Any] = []

    def hash_fn(key: str) -> int:
        if key == "again":
            holder[0].add("inner")
        if key == "close":
            holder[0].close()
        return 7

    with KeySet(hash_fn=hash_fn) as ks:
        holder.append(ks)
        with pytest.raises(RuntimeError, match="in use"):
            ks.add("again")
        with pytest.raises(RuntimeError, match="in use"):
            ks.add_many(["close"])
        assert ks.add("fine")


# -- errors, descriptors, references, memory -------------------------------------------------


def test_the_descriptor_is_closed_by_close_and_by_dealloc(tmp_path: Path) -> None:
    ks = KeySet(spill_dir=tmp_path)
    ks.add_many(["a", "b"])
    fd = ks._table.fileno
    assert os.fstat(fd).st_nlink == 0
    assert list(tmp_path.iterdir()) == []  # unlinked at once
    ks.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    ks.close()  # idempotent
    assert ks._table.closed
    assert ks.table_bytes == 0
    with pytest.raises(ValueError, match="closed"):
        ks.add("c")
    with pytest.raises(ValueError, match="closed"):
        ks.add_many(["c"])
    assert len(ks) == 2

    other = KeySet()
    other.add("a")
    fd = other._table.fileno
    del other
    gc.collect()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_spill_io_errors_raise_oserror(ks: Any) -> None:
    keys = [f"{i:032x}" for i in range(1000)]
    ks.add_many(keys)
    ks._table.flush()
    ks.add_many(["buffered"])
    fd = ks._table.fileno
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, fd)  # the spill is now a read-only, empty file
    finally:
        os.close(null)
    with pytest.raises(OSError, match="Bad file descriptor"):
        ks._table.flush()  # cannot write
    with pytest.raises(OSError, match="shorter"):
        ks.add_many(keys[:10])  # cannot read the records back


def test_a_huge_size_hint_is_refused() -> None:
    with pytest.raises(OverflowError):
        KeySet(expected=10**12)


def test_no_reference_is_kept_or_lost(ks: Any) -> None:
    keys = [f"ref-{i}" for i in range(3000)] + [None, "ref-1"]
    listed = [keys]
    counts = [sys.getrefcount(k) for k in keys[:50]] + [sys.getrefcount(keys)]
    for _ in range(5):
        ks.add_kinds([(keys, 1), (keys, 2)])
        with pytest.raises(TypeError):
            ks.add_kinds([(keys, 3), ([*keys[:10], 5], 4)])
        with pytest.raises(ValueError, match="1-255"):
            ks.add_kinds([(keys, 300)])
    assert [sys.getrefcount(k) for k in keys[:50]] + [sys.getrefcount(keys)] == counts
    assert listed[0] is keys

    def hash_fn(key: str) -> int:
        if key == "boom":
            raise KeyError(key)
        return len(key)

    with KeySet(hash_fn=hash_fn) as hashed:
        for _ in range(5):
            hashed.add_kinds([(keys, 1)])
            with pytest.raises(KeyError):
                hashed.add_kinds([([*keys[:5], "boom"], 1)])
    assert [sys.getrefcount(k) for k in keys[:50]] + [sys.getrefcount(keys)] == counts


def test_no_memory_leaks_over_many_calls() -> None:
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    chunk = [f"{i:032x}" for i in range(512)]
    uids = [f"u{i:011d}" if i % 5 else None for i in range(512)]
    with KeySet(expected=50_000) as ks:

        def work(rounds: int) -> None:
            for r in range(rounds):
                ks.add_kinds([(chunk, 1), (uids, 2)])  # repeats: records read back
                ks.add_many([f"{r}-{i}" for i in range(8)])
                with pytest.raises(TypeError):
                    ks.add_many([*chunk[:3], 1])
                if r % 50 == 0:
                    ks._table.flush()

        work(200)
        gc.collect()
        before = process.memory_info().rss
        work(2000)
        gc.collect()
        grown = process.memory_info().rss - before
    assert grown < 8 << 20, f"RSS grew by {grown / 1e6:.1f} MB over 2000 calls"


def test_a_deduper_uses_the_c_key_set_by_default() -> None:
    if dedup.BACKEND != "c":
        pytest.skip("BULKSEND_NO_EXTENSIONS is set")
    with Deduper() as d:
        assert isinstance(d._set, KeySet)
        kept, dups = d.filter_many([Recipient(2, "a", "x"), Recipient(3, "a", "x")])
        assert (len(kept), len(dups)) == (1, 1)


# -- against a Python set -------------------------------------------------------------------

ALPHABET = st.sampled_from(["a", "b", "\0", "é", "\udc80", "日", "\U0001f600", "x" * 30])
KEY = st.one_of(st.none(), st.lists(ALPHABET, max_size=4).map("".join), st.text(max_size=3))
PART = st.tuples(st.lists(KEY, max_size=60), st.integers(1, 4))
HASHES: list[Callable[[str], int] | None] = [
    None,
    lambda s: len(s),  # collide on purpose
    lambda s: 0,
    lambda s: len(s) << 40,  # same home, different fingerprints
]


@settings(max_examples=examples(300), deadline=None)
@given(
    calls=st.lists(st.lists(PART, max_size=3), max_size=8),
    hash_choice=st.integers(0, len(HASHES) - 1),
    flush_after=st.sets(st.integers(0, 8)),
    expected=st.sampled_from([0, 1_000_000]),  # (a table filled in a thread, keys moved to it)
)
def test_matches_a_python_set(
    calls: list[list[tuple[list[str | None], int]]],
    hash_choice: int,
    flush_after: set[int],
    expected: int,
) -> None:
    seen: set[tuple[int, str]] = set()
    with KeySet(hash_fn=HASHES[hash_choice], expected=expected) as ks:
        for number, parts in enumerate(calls):
            got = ks.add_kinds(parts)
            for (keys, kind), (new, present) in zip(parts, got, strict=True):
                expected_new = []
                for key in keys:
                    expected_new.append(key is not None and (kind, key) not in seen)
                    if key is not None:
                        seen.add((kind, key))
                assert new.tolist() == expected_new
                if None in keys:
                    assert present is not None
                    assert present.tolist() == [k is not None for k in keys]
                else:
                    assert present is None
            if number in flush_after:
                ks._table.flush()
        assert len(ks) == len(seen)
        for kind in range(1, 5):
            assert ks.unique(kind) == sum(1 for k, _ in seen if k == kind)
        assert not any(ks.add(key, kind) for kind, key in seen)
