"""``bulksend.dispatch.isolate``: which recipients of a refused part are invalid or resent."""

from __future__ import annotations

import itertools

import pytest

from bulksend.dispatch.isolate import How, Isolation, isolate


def _positions(isolation: Isolation) -> list[int]:
    """Every position the isolation settles or resends, each once when it is complete."""
    return sorted(
        [i for i, _ in isolation.invalid] + [i for part in isolation.resend for i in part]
    )


def test_every_named_position_invalid_and_nothing_resent() -> None:
    isolation = isolate(3, {0: "bad a", 1: "bad b", 2: "bad c"}, budget=0)
    assert isolation == Isolation(How.NAMED, ((0, "bad a"), (1, "bad b"), (2, "bad c")))
    assert isolation.cost == 0


def test_some_named_reports_them_and_resends_the_rest_as_one_part() -> None:
    isolation = isolate(5, {3: "no @", 1: "too long"}, budget=1)
    assert isolation.how is How.NAMED
    assert isolation.invalid == ((1, "too long"), (3, "no @"))  # in the part's order
    assert [list(p) for p in isolation.resend] == [[0, 2, 4]]
    assert isolation.cost == 1


def test_some_named_without_budget_makes_the_whole_part_invalid() -> None:
    # naming some but not all needs a resend (1 request): with none left it cannot,
    # and bisection (2 requests) cannot either, so the whole part is invalid
    assert isolate(5, {1: "x"}, budget=0) == Isolation(How.ALL)


def test_none_named_bisects_first_half_first() -> None:
    isolation = isolate(5, None, budget=2)
    assert isolation.how is How.BISECT
    assert [list(p) for p in isolation.resend] == [[0, 1], [2, 3, 4]]
    assert isolation.invalid == ()
    assert isolation.cost == 2


def test_one_recipient_or_too_little_budget_makes_the_whole_part_invalid() -> None:
    assert isolate(1, {}, budget=64) == Isolation(How.ALL)
    assert isolate(4, {}, budget=1) == Isolation(How.ALL)


def test_named_positions_outside_the_part_are_ignored() -> None:
    assert isolate(2, {5: "x", -1: "y"}, budget=2).how is How.BISECT
    isolation = isolate(2, {0: "x", 7: "y"}, budget=1)
    assert isolation.invalid == ((0, "x"),)
    assert [list(p) for p in isolation.resend] == [[1]]


@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_every_position_is_settled_or_resent_once_or_the_part_is_all_invalid(size: int) -> None:
    for budget, k in itertools.product(range(4), range(size + 1)):
        for named_positions in itertools.combinations(range(size), k):
            named = {i: f"bad {i}" for i in named_positions}
            isolation = isolate(size, named, budget)
            assert isolation.cost <= budget
            if isolation.how is How.ALL:
                assert isolation == Isolation(How.ALL)
                continue
            assert _positions(isolation) == list(range(size)), (size, named, budget)
            assert all(len(part) for part in isolation.resend)
            assert len(isolation.resend) == isolation.cost  # one request per part resent
