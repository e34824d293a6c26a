"""Recipients as columns: the same rows as a list of objects, whatever is done to them."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.models import Recipient
from bulksend.providers.base import CountBatcher
from bulksend.providers.maxtraffic import notification_body
from bulksend.recipients import EMPTY, AttrColumns, Recipients
from bulksend.state.journal import batch_digest


def R(line: int, id: str | None, uid: str | None = None, **attrs: str) -> Recipient:
    return Recipient(line, id, uid, attrs or EMPTY)


def test_columns_make_the_rows_they_describe() -> None:
    rows = Recipients(range(2, 5), ["a", None, "c"], None, AttrColumns(["n"], [["x", "y", "z"]]))
    assert len(rows) == 3
    assert rows == [R(2, "a", n="x"), R(3, None, n="y"), R(4, "c", n="z")]
    assert rows[0] is rows[0]  # made once
    assert rows[-1] == R(4, "c", n="z")
    assert rows.column("uid") == [None, None, None]
    with pytest.raises(KeyError, match="email"):
        rows.column("email")
    with pytest.raises(ValueError, match="unequal length"):
        Recipients(range(3), ["a"])


def test_slices_selections_and_joins_stay_columns() -> None:
    rows = Recipients(range(10, 16), [f"i{n}" for n in range(6)], [f"u{n}" for n in range(6)])
    part = rows[1:4]
    assert isinstance(part, Recipients)
    assert part.lines == range(11, 14)
    picked = rows.select([True, False, True, False, False, True])
    assert picked == [R(10, "i0", "u0"), R(12, "i2", "u2"), R(15, "i5", "u5")]
    joined = Recipients.join([rows[:2], rows[2:5], rows[5:]])
    assert joined.lines == range(10, 16)  # consecutive ranges join into one range
    assert rows._made is None  # nothing above made a Recipient object
    assert joined._made is None
    assert joined == rows
    assert Recipients.join([]) == []
    assert Recipients.join([rows[:0], part]) is part


def test_joins_fill_a_missing_column() -> None:
    a = Recipients([5, 7], ["a", "b"], None)
    b = Recipients([9], None, ["z"], [{"k": "v"}])
    c = Recipients([11], ["c"], None, AttrColumns(["k"], [["w"]]))
    assert Recipients.join([a, b, c]) == [
        R(5, "a"),
        R(7, "b"),
        R(9, None, "z", k="v"),
        R(11, "c", k="w"),
    ]
    same = Recipients.join([c, Recipients([12], ["d"], None, AttrColumns(["k"], [["q"]]))])
    assert isinstance(same.attrs, AttrColumns)
    assert same == [R(11, "c", k="w"), R(12, "d", k="q")]


def test_of_keeps_the_objects_it_was_given() -> None:
    objects = [R(2, "a"), R(3, None, "x", name="n")]
    rows = Recipients.of(objects)
    assert rows.ids == ["a", None]
    assert rows.uids == [None, "x"]
    assert rows[1] is objects[1]
    assert rows.select([False, True])[0] is objects[1]
    assert Recipients.of(rows) is rows
    assert Recipients.of([R(2, "a")]).uids is None  # a column absent everywhere is None
    assert Recipients.of([R(2, "a")]).attrs is None


ROW = st.tuples(
    st.one_of(st.none(), st.text(max_size=4)),
    st.one_of(st.none(), st.text(max_size=4)),
    st.dictionaries(st.sampled_from("ab"), st.text(max_size=2), max_size=2),
)


@given(
    st.lists(ROW, max_size=30),
    st.lists(st.booleans(), min_size=30, max_size=30),
    st.integers(0, 30),
    st.integers(0, 30),
)
def test_columns_behave_like_a_list_of_recipients(
    rows: list[tuple[str | None, str | None, dict[str, str]]],
    keep: list[bool],
    start: int,
    stop: int,
) -> None:
    objects = [R(n, i, u, **a) for n, (i, u, a) in enumerate(rows, 2)]
    columns = Recipients(
        range(2, 2 + len(rows)),
        [i for i, _, _ in rows],
        [u for _, u, _ in rows],
        [a or EMPTY for _, _, a in rows],
    )
    assert columns == objects
    assert columns[start:stop] == objects[start:stop]
    chosen = keep[: len(rows)]
    wanted = [o for o, k in zip(objects, chosen, strict=True) if k]
    assert columns.select(chosen) == wanted
    assert columns.select(np.array(chosen, dtype=np.bool_)) == wanted  # range lines
    listed = Recipients.of(objects)  # list lines
    assert listed.select(np.array(chosen, dtype=np.bool_)) == wanted
    assert Recipients.join([columns[:start], columns[start:]]) == objects
    # what goes on the wire and into the journal does not depend on the representation
    assert batch_digest(columns) == batch_digest(objects)
    message = {"messages": [{"title": "t"}]}
    assert orjson.loads(notification_body(message, columns)) == orjson.loads(
        notification_body(message, objects)
    )


def test_the_batcher_cuts_columns_in_order_across_chunks() -> None:
    batcher = CountBatcher(4, "api")
    chunks = [
        Recipients(range(2 + 3 * k, 5 + 3 * k), [f"i{k}{n}" for n in range(3)]) for k in range(3)
    ]
    batches = [b for chunk in chunks for b in batcher.add_many(chunk)]
    batches += batcher.flush()
    assert [b.number for b in batches] == [1, 2, 3]
    assert [len(b) for b in batches] == [4, 4, 1]
    assert [r.line for b in batches for r in b.recipients] == list(range(2, 11))
    assert all(isinstance(b.recipients, Recipients) for b in batches)
    single = CountBatcher(2, "api")
    assert single.add(R(2, "a")) is None
    full = single.add(R(3, "b"))
    assert full is not None
    assert full.recipients == [R(2, "a"), R(3, "b")]
    assert list(single.flush()) == []
