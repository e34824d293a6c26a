"""``bulksend.dedup.suppress``: reading suppression lists and looking recipients up in them.

Exact with both key sets (numpy and C) and with hash functions that collide on purpose, checked
against a model built with Python sets; every reader's format (CSV, TSV, JSON Lines, a plain
list, gzip, byte-order marks, CRLF); the first line that lists a key is the one named.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulksend.dedup import suppress
from bulksend.dedup.suppress import ListSpec, SuppressionList
from bulksend.errors import InputError
from bulksend.models import Recipient, Suppressed
from bulksend.recipients import Recipients
from bulksend.sources import Chunk
from tests.hypothesis_profiles import examples
from tests.keysets import BACKENDS, backend_class

HASHES: list[Callable[[str], int] | None] = [None, lambda s: 0, lambda s: len(s) % 3]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    cls = backend_class(request.param)
    monkeypatch.setattr(suppress, "KeySet", cls)
    return cls


def spec(*paths: Path, id: str | None = "id", uid: str | None = "uid", **kw: Any) -> ListSpec:
    return ListSpec(tuple(str(p) for p in paths), id, uid, **kw)


def rows(*pairs: tuple[str | None, str | None], first: int = 2) -> Recipients:
    return Recipients(
        range(first, first + len(pairs)), [a for a, _ in pairs], [b for _, b in pairs]
    )


def reasons(out: list[Any]) -> dict[int, str]:
    assert all(type(x) is Suppressed for x in out)
    return {x.line: x.reason for x in out}


def test_every_format_of_the_readers(backend: Any, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfid;uid\r\nA;\r\n;b\r\n")  # BOM, ;, CRLF
    (tmp_path / "b.tsv").write_text("uid\tname\nc\tC\n")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"id": 7}\n{"uid": "d"}\n'))
    (tmp_path / "d.txt").write_bytes("E\n\nF\n".encode("utf-16"))  # a plain list, UTF-16 BOM
    names = [tmp_path / n for n in ("a.csv", "b.tsv", "c.jsonl.gz", "d.txt")]
    with SuppressionList.load(spec(*names)) as lists:
        assert lists.keys == 7
        assert [(f.rows, f.keys) for f in lists.files] == [(2, 2), (1, 1), (2, 2), (2, 2)]
        kept, out = lists.split(
            rows(
                ("A", "x"),
                ("y", "b"),
                ("z", "c"),
                ("7", None),
                (None, "d"),
                ("E", None),
                ("F", "zz"),
                ("a", "B"),
            )
        )
    a, b, c, d = (str(n) for n in names)
    assert reasons(out) == {
        2: f"id listed in {a}:2",
        3: f"uid listed in {a}:3",
        4: f"uid listed in {b}:2",
        5: f"id listed in {c}:1",
        6: f"uid listed in {c}:2",
        7: f"id listed in {d}:1",
        8: f"id listed in {d}:3",
    }
    assert isinstance(kept, Recipients)
    assert list(kept.lines) == [9]  # matching is exact: "a" is not "A"


def test_the_first_line_listing_a_key_is_named_and_ids_before_uids(
    backend: Any, tmp_path: Path
) -> None:
    (tmp_path / "one.csv").write_text("id,uid\nx,\nx,\n,y\n")
    (tmp_path / "two.csv").write_text("id,uid\nq,x\nx,y\n")
    with SuppressionList.load(spec(tmp_path / "one.csv", tmp_path / "two.csv")) as lists:
        assert [f.keys for f in lists.files] == [2, 2]  # two.csv adds id q and uid x
        _, out = lists.split(rows(("x", "y"), ("q", "q"), ("x", "x")))
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert reasons(out) == {
        2: f"id listed in {one}:2",
        3: f"id listed in {two}:2",
        4: f"id listed in {one}:2",
    }


def test_a_lookup_adds_nothing_to_the_lists(backend: Any, tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a\n")
    with SuppressionList.load(spec(tmp_path / "l.txt")) as lists:
        for _ in range(3):
            kept, out = lists.split(rows(("b", "a"), ("b", None)))
            assert (len(kept), len(out)) == (2, 0)  # a plain list holds ids, not uids
        assert lists.keys == 1


def test_columns_for_the_lists(backend: Any, tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a\n")
    (tmp_path / "e.csv").write_text("Email,Other\nm@x,1\n")
    both = spec(tmp_path / "l.txt", tmp_path / "e.csv", id=None, uid="email", required={"uid"})
    with SuppressionList.load(both) as lists:
        _, out = lists.split(rows(("a", "b"), ("c", "a"), ("d", "m@x")))
        assert sorted(reasons(out)) == [3, 4]  # the plain list's lines are uids now
    (tmp_path / "i.csv").write_text("id\nz\n")
    with SuppressionList.load(spec(tmp_path / "i.csv", id="id", uid="email")) as lists:
        assert lists.keys == 1  # the campaign's own uid column may be missing from a list
    with pytest.raises(InputError, match="column 'email' not found"):  # not one named for it
        SuppressionList.load(spec(tmp_path / "i.csv", id="id", uid="email", required={"uid"}))


def test_screen_moves_suppressed_rows_to_rejected(backend: Any, tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("b\n")
    with SuppressionList.load(spec(tmp_path / "l.txt")) as lists:
        chunk = Chunk(rows(("a", None), ("b", None), ("c", None)), [])
        [(kept, rejected)] = list(lists.screen([chunk]))
        assert isinstance(kept, Recipients)
        assert list(kept.lines) == [2, 4]
        assert [(r.line, r.id) for r in rejected] == [(3, "b")]
        plain = [Recipient(9, "b"), Recipient(10, "z")]  # any sequence of recipients
        kept2, out = lists.split(plain)
        assert [r.line for r in kept2] == [10]
        assert reasons(out) == {9: f"id listed in {tmp_path / 'l.txt'}:1"}


@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    listed=st.lists(
        st.lists(st.tuples(st.sampled_from(["id", "uid"]), st.sampled_from("abcdefg")), max_size=8),
        min_size=1,
        max_size=3,
    ),
    people=st.lists(
        st.tuples(st.sampled_from([None, *"abcdefgh"]), st.sampled_from([None, *"abcdefgh"])),
        max_size=30,
    ),
    hash_choice=st.integers(0, len(HASHES) - 1),
    name=st.sampled_from([b for b in BACKENDS if isinstance(b, str)] + ["c"]),
)
def test_matches_a_model_made_of_python_sets(
    tmp_path: Path,
    listed: list[list[tuple[str, str]]],
    people: list[tuple[str | None, str | None]],
    hash_choice: int,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        cls = backend_class(name)
    except AssertionError:
        return  # the C key set was not built (test_keyset_c.py says so, loudly)
    monkeypatch.setattr(suppress, "KeySet", functools.partial(cls, hash_fn=HASHES[hash_choice]))
    first: dict[tuple[str, str], str] = {}
    paths = []
    for number, entries in enumerate(listed):
        path = tmp_path / f"list{number}.csv"
        path.write_text(
            "id,uid\n" + "".join(f"{v},\n" if k == "id" else f",{v}\n" for k, v in entries)
        )
        paths.append(path)
        for line, entry in enumerate(entries, 2):
            first.setdefault(entry, f"{path}:{line}")
    people = [p for p in people if p != (None, None)]
    with SuppressionList.load(spec(*paths)) as lists:
        kept, out = lists.split(rows(*people))
    want: dict[int, str] = {}
    for line, (id, uid) in enumerate(people, 2):
        for key in (("id", id), ("uid", uid)):
            if key[1] is not None and key in first:
                want[line] = f"{key[0]} listed in {first[key]}"
                break
    assert reasons(out) == want
    assert isinstance(kept, Recipients)
    assert list(kept.lines) == [n for n in range(2, 2 + len(people)) if n not in want]


def test_memory_is_bounded_per_key(backend: Any, tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("".join(f"{i:032d}\n" for i in range(50_000)))
    with SuppressionList.load(spec(tmp_path / "l.txt")) as lists:
        assert lists.keys == 50_000
        assert lists.memory_bytes < 50_000 * 17  # table (sized from the file's lines) + index
        assert lists._index.lines is None  # one key a line: kept as one run
        _, out = lists.split(
            rows(("0" * 32, None), (f"{49_999:032d}", None), (f"{777:032d}", None))
        )
    name = tmp_path / "l.txt"
    assert reasons(out) == {
        2: f"id listed in {name}:1",
        3: f"id listed in {name}:50000",
        4: f"id listed in {name}:778",
    }


def test_the_line_index_keeps_runs_or_lines_and_sorts_when_it_must() -> None:
    from bulksend.dedup.suppress import _LineIndex, _runs

    lines = np.concatenate([np.arange(2, 1002), np.arange(2000, 3000)]).astype(np.uint32)
    runs = _runs(lines, block=300)  # runs across blocks: one entry where the shift changes
    assert runs is not None
    assert [runs[0].tolist(), runs[1].tolist()] == [[0, 1000], [2, 1000]]
    assert _runs(np.array([5, 2, 9, 1, 7, 3, 8, 4, 6], dtype=np.uint32)) is None  # no runs

    index = _LineIndex(4)
    index.start_list()
    index.add(np.array([10, 20], dtype=np.uint64), np.array([2, 3], dtype=np.uint32))
    index.start_list()
    index.add(np.array([30, 40, 1 << 33], dtype=np.uint64), np.array([2, 5, 9], dtype=np.uint32))
    index.finish()
    assert len(index) == 5
    assert index.find(np.array([1 << 33, 10, 40], dtype=np.uint64)) == ([1, 0, 1], [9, 2, 5])
    with pytest.raises(RuntimeError, match="no line"):
        index.find(np.array([11], dtype=np.uint64))

    unsorted = _LineIndex(0)  # (keys holding NUL in the numpy key set come out of order)
    unsorted.start_list()
    unsorted.add(np.array([50, 60], dtype=np.uint64), np.array([2, 3], dtype=np.uint32))
    unsorted.start_list()
    unsorted.add(np.array([5], dtype=np.uint64), np.array([7], dtype=np.uint32))
    unsorted.finish()
    assert unsorted.find(np.array([5, 60, 50], dtype=np.uint64)) == ([1, 0, 0], [7, 3, 2])
