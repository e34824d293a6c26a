"""``find_kinds``: looking keys up without adding them, in both key sets (numpy and C).

A suppression list (bulksend.suppress) is a key set its keys were added to; each recipient's
id and uid are then looked up, never added, and the number ``where`` names the stored key, so
that the list's line can be found. Checked against a Python ``dict`` with hash functions that
collide on purpose, across write-buffer flushes and table growth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hypothesis_profiles import examples
from tests.keysets import BACKENDS, backend_class

TINY_HASHES: list[Callable[[str], int] | None] = [
    None,
    lambda s: 0,
    lambda s: len(s) % 3,
    lambda s: (len(s) % 2) << 63,
    lambda s: 0xFFFF_FFFF_0000_0000,
]


@pytest.fixture(params=BACKENDS)
def cls(request: pytest.FixtureRequest) -> Any:
    return backend_class(request.param)


@pytest.fixture
def ks(cls: Any) -> Iterator[Any]:
    with cls() as k:
        yield k


def test_found_keys_and_their_numbers(ks: Any) -> None:
    ks.add_kinds([(["a", "b", None], 1), (["a", "c"], 2)])
    [(found, where), (found2, where2)] = ks.find_kinds([(["a", "x", None, "b"], 1), (["a"], 2)])
    assert found.tolist() == [True, False, False, True]
    assert where[1] == where[2] == 0
    assert found2.tolist() == [True]
    numbers = {int(where[0]), int(where[3]), int(where2[0])}
    assert len(numbers) == 3  # a, b of kind 1 and a of kind 2 differ
    assert 0 not in numbers
    again = ks.find_kinds([(["b", "a"], 1)])[0][1]
    assert again.tolist() == [where[3], where[0]]  # the same key: the same number


def test_a_lookup_adds_nothing(ks: Any) -> None:
    ks.add_many(["a"])
    before = (len(ks), ks.spill_bytes)
    for _ in range(3):
        found, _ = ks.find_kinds([(["z", "z", "a", "y"], 1)])[0]
        assert found.tolist() == [False, False, True, False]
    assert (len(ks), ks.spill_bytes) == before
    assert ks.add_many(["z", "y", "a"]).tolist() == [True, True, False]


def test_empty_parts_and_keys_all_none(ks: Any) -> None:
    ks.add_many(["a"])
    [(f1, w1), (f2, w2)] = ks.find_kinds([([], 1), ([None, None], 2)])
    assert f1.size == w1.size == 0
    assert f2.tolist() == [False, False]
    assert w2.dtype == np.uint64


@pytest.mark.parametrize("hash_fn", TINY_HASHES)
def test_colliding_hashes_find_exactly_the_keys_added(cls: Any, hash_fn: Any) -> None:
    keys = [f"k{i}" for i in range(1500)]
    with cls(hash_fn=hash_fn) as ks:
        ks.add_many(keys[:1000])
        found, where = ks.find_kinds([(keys, 1)])[0]
        assert found[:1000].all()
        assert not found[1000:].any()
        assert len(set(where[:1000].tolist())) == 1000


def test_keys_in_the_write_buffer_and_on_disk_are_found(ks: Any) -> None:
    big = [f"{i:040d}" for i in range(60_000)]  # over a MiB of records: some written out
    ks.add_many(big)
    ks.add_many(["late"])  # still buffered
    found, where = ks.find_kinds([([big[0], big[-1], "late", "absent"], 1)])[0]
    assert found.tolist() == [True, True, True, False]
    assert len(set(where[:3].tolist())) == 3


def test_nul_and_non_ascii_keys(ks: Any) -> None:
    odd = ["a\0b", "é", "\udc80", "日本", "x" * 300]
    ks.add_many(odd)
    found, where = ks.find_kinds([([*odd, "a\0c", "e"], 1)])[0]
    assert found.tolist() == [True] * 5 + [False, False]
    assert len(set(where[:5].tolist())) == 5


def test_kinds_are_checked(ks: Any) -> None:
    with pytest.raises(ValueError, match="1-255"):
        ks.find_kinds([(["a"], 0)])


ALPHABET = st.sampled_from(["a", "b", "\0", "é", "\udc80", "日", "x" * 30])
KEY = st.one_of(st.none(), st.lists(ALPHABET, max_size=4).map("".join))
PART = st.tuples(st.lists(KEY, max_size=40), st.integers(1, 3))
HASHES: list[Callable[[str], int] | None] = [None, lambda s: len(s), lambda s: 0]


@settings(max_examples=examples(200), deadline=None)
@given(
    calls=st.lists(st.tuples(st.booleans(), st.lists(PART, max_size=3)), max_size=8),
    hash_choice=st.integers(0, len(HASHES) - 1),
    backend=st.sampled_from([b if isinstance(b, str) else b.values[0] for b in BACKENDS]),
)
def test_matches_a_python_dict(
    calls: list[tuple[bool, list[tuple[list[str | None], int]]]],
    hash_choice: int,
    backend: str,
) -> None:
    try:
        cls = backend_class(backend)
    except AssertionError:
        return  # the C key set was not built (its own tests say so, loudly)
    numbers: dict[tuple[int, str], int] = {}
    with cls(hash_fn=HASHES[hash_choice]) as ks:
        for add, parts in calls:
            if add:
                ks.add_kinds(parts)
                for keys, kind in parts:
                    for key in keys:
                        if key is not None:
                            numbers.setdefault((kind, key), -1)
                continue
            for (keys, kind), (found, where) in zip(parts, ks.find_kinds(parts), strict=True):
                for key, f, w in zip(keys, found.tolist(), where.tolist(), strict=True):
                    known = key is not None and (kind, key) in numbers
                    assert f == known
                    if known:
                        assert key is not None
                        if numbers[(kind, key)] == -1:
                            numbers[(kind, key)] = w
                        assert numbers[(kind, key)] == w
        named = [n for n in numbers.values() if n != -1]
        assert len(named) == len(set(named))
