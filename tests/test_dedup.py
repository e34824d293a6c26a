"""Exact deduplication: semantics, forced hash collisions, growth, and a reference set model.

Every test that takes the ``keyset`` fixture runs against both key sets, the numpy one and the
C one (skipped, loudly, only where the extension could not be built: see test_keyset_c.py);
``Deduper`` is given the same one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.dedup import deduper as dedup_module
from bulksend.dedup import keyset_numpy
from bulksend.dedup.deduper import Deduper
from bulksend.models import Recipient
from bulksend.recipients import Recipients
from tests.hypothesis_profiles import examples
from tests.keysets import BACKENDS, C_MISSING, backend_class, c_compiler, keyset_c, spill_fd

#: the key set class under test (numpy's or C's); Deduper uses the same
KeySet = Any


def R(line: int, id: str | None, uid: str | None = None) -> Recipient:
    return Recipient(line, id, uid)


def test_the_c_extension_was_built_where_a_compiler_exists() -> None:
    if keyset_c is not None:
        return
    missing = c_compiler()
    if missing is not None:
        pytest.skip(f"C EXTENSION NOT BUILT -- {missing}: dedup uses the slower numpy key set")
    pytest.fail(C_MISSING + " (a C compiler and Python's headers are here: the build failed)")


@pytest.fixture(params=BACKENDS)
def keyset(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> KeySet:
    cls = backend_class(request.param)
    monkeypatch.setattr(dedup_module, "KeySet", cls)
    return cls


@pytest.fixture
def dedup(keyset: KeySet) -> Iterator[Deduper]:
    with Deduper(("id", "uid")) as d:
        yield d


def test_new_partial_and_duplicate(dedup: Deduper) -> None:
    assert dedup.filter(R(2, "a", "x")) == R(2, "a", "x")
    assert dedup.filter(R(3, "a", "y")) == R(3, None, "y")  # id seen: only the uid goes on
    assert dedup.filter(R(4, "b", "x")) == R(4, "b", None)
    assert dedup.filter(R(5, "a", "y")) is None
    assert dedup.filter(R(6, None, "x")) is None
    assert (dedup.duplicates, dedup.partial) == (2, 2)
    assert (dedup.unique("id"), dedup.unique("uid")) == (2, 2)


def test_ids_and_uids_are_separate_key_spaces(keyset: KeySet, dedup: Deduper) -> None:
    assert dedup.filter(R(2, "same", None)) == R(2, "same", None)
    assert dedup.filter(R(3, None, "same")) == R(3, None, "same")


def test_only_the_chosen_keys_are_deduplicated(keyset: KeySet) -> None:
    with Deduper(("id",)) as d:
        assert d.filter(R(2, "a", "x")) == R(2, "a", "x")
        assert d.filter(R(3, "b", "x")) == R(3, "b", "x")  # uid not deduplicated
        assert d.filter(R(4, "a", "z")) is None
        assert d.filter(R(5, None, "x")) == R(5, None, "x")  # nothing to deduplicate on


def test_filter_many_returns_kept_and_duplicates_in_order(dedup: Deduper) -> None:
    rows = [R(2, "a", "x"), R(3, "a", "x"), R(4, "b", "x"), R(5, "c", None), R(6, "c", "q")]
    kept, dups = dedup.filter_many(rows)
    assert kept == [R(2, "a", "x"), R(4, "b", None), R(5, "c", None), R(6, None, "q")]
    assert dups == [R(3, "a", "x")]
    assert (dedup.duplicates, dedup.partial) == (1, 2)


def test_rejects_unknown_keys(keyset: KeySet) -> None:
    with pytest.raises(ValueError, match="dedup keys"):
        Deduper(("email",))


# -- the key set: exact whatever the hash ------------------------------------------------------

TINY_HASHES: list[Callable[[str], int]] = [
    lambda s: 0,  # every key collides: one bucket, long overflow chains round the table
    lambda s: len(s) % 3,
    lambda s: (len(s) % 2) << 63,  # collisions in the fingerprint bits only
    lambda s: 0xFFFF_FFFF_0000_0000,  # home is the last bucket: chains wrap round to the first
]


@pytest.mark.parametrize("hash_fn", TINY_HASHES)
def test_colliding_hashes_never_drop_a_key(keyset: KeySet, hash_fn: Callable[[str], int]) -> None:
    keys = [f"k{i}" for i in range(1200)]
    with keyset(hash_fn=hash_fn) as ks:
        assert ks.add_many(keys[:400]).all()
        assert not ks.add_many(keys[:400]).any()
        out = ks.add_many(keys[200:1200])
        assert not out[:200].any()
        assert out[200:].all()
        assert len(ks) == 1200


def test_growth_from_a_tiny_table_keeps_everything(keyset: KeySet) -> None:
    with keyset() as ks:
        start = ks.buckets
        for base in range(0, 60_000, 7000):
            assert ks.add_many([f"key-{i}" for i in range(base, base + 7000)]).all()
        assert ks.buckets > start
        assert not ks.add_many([f"key-{i}" for i in range(0, 63_000, 3)]).any()


def test_repeats_within_one_call_are_new_only_first(keyset: KeySet) -> None:
    with keyset(hash_fn=lambda s: 7) as ks:
        assert ks.add_many(["a", "b", "a", "c", "b", "a"]).tolist() == [
            True,
            True,
            False,
            True,
            False,
            False,
        ]


def test_awkward_keys_nul_unicode_long_and_mixed_widths(keyset: KeySet) -> None:
    awkward = ["", "a\0b", "a", "a\0", "é", "e\u0301", "\udc80", "x" * 500, "x" * 499, "日本"]
    with keyset() as ks:
        assert ks.add_many(awkward).all()
        # one by one, and padded to other widths among other keys: still all found
        for key in awkward:
            assert not ks.add(key)
            assert ks.add_many(["zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz" + key, key]).tolist() == [
                True,
                False,
            ]


def test_the_spill_file_is_gone_after_close(keyset: KeySet) -> None:
    ks = keyset()
    ks.add_many(["a", "b"])
    fd = spill_fd(ks)
    assert os.fstat(fd).st_nlink == 0  # unlinked at once
    ks.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_memory_is_a_few_bytes_per_key(keyset: KeySet) -> None:
    with Deduper(("id",), expected=100_000) as d:
        d.filter_many([R(i, f"{i:032x}") for i in range(100_000)])
        assert d.memory_bytes < 100_000 * 30 + 5_000_000  # table + fixed scratch


# -- against a set-based reference ------------------------------------------------------------


def reference(
    rows: list[tuple[str | None, str | None]],
) -> list[tuple[str | None, str | None] | None]:
    ids: set[str] = set()
    uids: set[str] = set()
    out: list[tuple[str | None, str | None] | None] = []
    for id, uid in rows:
        new_id = id if id is not None and id not in ids else None
        new_uid = uid if uid is not None and uid not in uids else None
        if id is not None:
            ids.add(id)
        if uid is not None:
            uids.add(uid)
        if new_id is None and new_uid is None and (id is not None or uid is not None):
            out.append(None)
        else:
            out.append((new_id if id is not None else None, new_uid if uid is not None else None))
    return out


KEY = st.one_of(st.none(), st.text(alphabet="ab\0é", max_size=3))


# the fixture only picks a class: nothing to reset between examples
@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(st.tuples(KEY, KEY), max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    collide=st.booleans(),
)
def test_matches_a_set_based_reference(
    keyset: KeySet, rows: list[tuple[str | None, str | None]], cuts: list[int], collide: bool
) -> None:
    recipients = [R(i, id, uid) for i, (id, uid) in enumerate(rows)]
    bounds = sorted({0, len(rows), *[c for c in cuts if c <= len(rows)]})
    got: list[tuple[str | None, str | None] | None] = [None] * len(rows)
    with Deduper(hash_fn=(lambda s: len(s)) if collide else None) as d:
        for start, end in itertools.pairwise(bounds):
            kept, dups = d.filter_many(recipients[start:end])
            for r in kept:
                got[r.line] = (r.id, r.uid)
            assert all(got[r.line] is None for r in dups)
        expected = reference(rows)
        assert got == expected
        assert d.duplicates == expected.count(None)


# -- kinds, repeats while the table grows, numpy's spill read back under a small budget -----


def test_kinds_share_one_table_but_not_their_keys(keyset: KeySet) -> None:
    with keyset(hash_fn=lambda s: 5) as ks:  # one fingerprint: every key is read back
        (ids, _), (uids, _) = ks.add_kinds([(["a", "b", "a"], 1), (["a", "c", "c"], 2)])
        assert ids.tolist() == [True, True, False]
        assert uids.tolist() == [True, True, False]
        assert ks.add_many(["a", "c"], kind=2).tolist() == [False, False]
        assert ks.add_many(["c"], kind=1).tolist() == [True]
        assert (ks.unique(1), ks.unique(2), len(ks)) == (3, 2, 5)


def test_repeats_within_a_call_that_grows_the_table(keyset: KeySet) -> None:
    keys = [f"k{i % 9000}" for i in range(20_000)]  # far more than a fresh table holds
    with keyset() as ks:
        out = ks.add_many(keys)
        assert out.tolist() == [i < 9000 for i in range(20_000)]
        assert len(ks) == 9000
        assert not ks.add_many(keys[:9000]).any()


@pytest.mark.parametrize("budget", [64 << 20, 100_000])
def test_records_read_back_mapped_and_with_pread(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    # small steps of file growth: the map is made again often; past the budget: pread
    monkeypatch.setattr(keyset_numpy, "_MAP_BUDGET", budget)
    monkeypatch.setattr(keyset_numpy, "_GROW_FILE", 4096)
    keys = [f"{i:032x}" for i in range(30_000)]
    with keyset_numpy.KeySet() as ks:  # numpy's read paths (C's: test_keyset_c.py)
        for start in range(0, 30_000, 3000):
            assert ks.add_many(keys[start : start + 3000]).all()
        assert not ks.add_many(keys[::7]).any()
        assert not ks.add_many(["x" * 40 + k for k in keys[:50]] + keys[:50])[50:].any()


def test_columns_are_deduplicated_without_making_recipients(keyset: KeySet) -> None:
    rows = [R(2, "a", "x"), R(3, "a", "y"), R(4, "b", None), R(5, "b", "x")]
    with Deduper() as plain, Deduper() as columns:
        expected = plain.filter_many(rows)
        given = Recipients(range(2, 6), ["a", "a", "b", "b"], ["x", "y", None, "x"])
        kept, dups = columns.filter_many(given)
        assert (kept, dups) == expected
        assert kept == [R(2, "a", "x"), R(3, None, "y"), R(4, "b", None)]
        assert dups == [R(5, "b", "x")]
        assert given.ids == ["a", "a", "b", "b"]  # the input's columns are left alone
        assert (columns.duplicates, columns.partial) == (1, 1)
    with Deduper() as d:
        kept, dups = d.filter_many(Recipients(range(2, 5), ["a", "b", "a"]))  # no uid column
        assert kept.uids is None
        assert kept._made is None
        assert [r.line for r in kept] == [2, 3]
        assert dups == [R(4, "a", None)]
