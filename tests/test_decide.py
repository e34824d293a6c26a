"""``bulksend.dispatch.decide``: the engine's decision table, checked without any I/O.

Every verdict (and no answer) meets every mix of the other inputs; each mix must match exactly
one row of ``TABLE`` (the module docstring's table, written out), and ``decide`` must return
that row's action.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import NamedTuple

import pytest

from bulksend.dispatch import engine
from bulksend.dispatch.decide import Action, Do, Stop, decide
from bulksend.models import Status
from bulksend.providers.base import Verdict

MAX_ATTEMPTS = 4
MAX_UNEXPECTED = 3


class Case(NamedTuple):
    verdict: Verdict | None
    attempts: int
    unknown_sent: bool
    retry_after: float | None
    maybe_provider: bool
    streak: int


class Row(NamedTuple):
    verdict: Verdict | None
    when: Callable[[Case], bool]
    action: Callable[[Case], Action]


def _always(case: Case) -> bool:
    return True


def _left(case: Case) -> bool:
    return case.attempts < MAX_ATTEMPTS


def _spent(case: Case) -> bool:
    return case.attempts >= MAX_ATTEMPTS


def _unexpected_status(case: Case) -> Status:
    return Status.UNKNOWN if case.maybe_provider else Status.FAILED


V = Verdict
TABLE: list[Row] = [
    Row(V.DELIVERED, lambda c: not c.unknown_sent, lambda c: Action(Do.DELIVER, Status.DELIVERED)),
    Row(
        V.DELIVERED,
        lambda c: c.unknown_sent,
        lambda c: Action(Do.DELIVER, Status.DELIVERED, twice=True),
    ),
    Row(V.INVALID, _always, lambda c: Action(Do.ISOLATE)),
    Row(V.AUTH, _always, lambda c: Action(Do.STOP, Status.FAILED, Stop.AUTH)),
    Row(V.FATAL, _always, lambda c: Action(Do.STOP, Status.FAILED, Stop.FATAL)),
    Row(
        V.UNEXPECTED,
        lambda c: c.streak < MAX_UNEXPECTED,
        lambda c: Action(Do.SETTLE, _unexpected_status(c)),
    ),
    Row(
        V.UNEXPECTED,
        lambda c: c.streak >= MAX_UNEXPECTED,
        lambda c: Action(Do.STOP, _unexpected_status(c), Stop.UNEXPECTED),
    ),
    Row(V.THROTTLED, _left, lambda c: Action(Do.RETRY)),
    Row(V.THROTTLED, _spent, lambda c: Action(Do.SETTLE, Status.FAILED, gave_up=True)),
    Row(V.RETRY, _left, lambda c: Action(Do.BACKOFF, floor=c.retry_after or 0.0)),
    Row(V.RETRY, _spent, lambda c: Action(Do.SETTLE, Status.FAILED, gave_up=True)),
    Row(None, _left, lambda c: Action(Do.BACKOFF)),
    Row(
        None,
        _spent,
        lambda c: Action(Do.SETTLE, Status.UNKNOWN if c.unknown_sent else Status.FAILED),
    ),
]

CASES = [
    Case(*values)
    for values in itertools.product(
        [*Verdict, None],
        [1, MAX_ATTEMPTS - 1, MAX_ATTEMPTS, MAX_ATTEMPTS + 1],  # below, at and past the max
        [False, True],
        [None, 0.0, 7.5],
        [False, True],
        [1, MAX_UNEXPECTED - 1, MAX_UNEXPECTED, MAX_UNEXPECTED + 1],
    )
]


def _decide(case: Case) -> Action:
    return decide(
        case.verdict,
        case.attempts,
        MAX_ATTEMPTS,
        unknown_sent=case.unknown_sent,
        retry_after=case.retry_after,
        maybe_provider=case.maybe_provider,
        unexpected_streak=case.streak,
        max_unexpected=MAX_UNEXPECTED,
    )


def test_every_case_matches_exactly_one_row_and_gets_its_action() -> None:
    for case in CASES:
        rows = [row for row in TABLE if row.verdict is case.verdict and row.when(case)]
        assert len(rows) == 1, case
        assert _decide(case) == rows[0].action(case), case


def test_every_row_is_reached() -> None:
    reached = {
        i
        for case in CASES
        for i, row in enumerate(TABLE)
        if row.verdict is case.verdict and row.when(case)
    }
    assert reached == set(range(len(TABLE)))


def test_every_action_kind_and_stop_reason_occurs() -> None:
    actions = {_decide(case) for case in CASES}
    assert {a.do for a in actions} == set(Do)
    assert {a.stop for a in actions} - {None} == set(Stop)


def test_a_final_action_names_a_status_and_a_retry_does_not() -> None:
    for case in CASES:
        action = _decide(case)
        final = action.do in (Do.DELIVER, Do.SETTLE, Do.STOP)
        assert (action.status is not None) is final, case
        assert (action.stop is not None) is (action.do is Do.STOP), case


def test_retry_after_only_raises_the_backoff_of_a_retry_verdict() -> None:
    assert decide(Verdict.RETRY, 1, 3, retry_after=12.0).floor == 12.0
    assert decide(Verdict.RETRY, 1, 3).floor == 0.0
    # a throttled answer is paced by the scheduler, which reads Retry-After itself
    assert decide(Verdict.THROTTLED, 1, 3, retry_after=12.0) == Action(Do.RETRY)
    assert decide(None, 1, 3, retry_after=12.0).floor is None


def test_defaults_one_attempt_allows_no_retry() -> None:
    assert decide(Verdict.RETRY, 1, 1).gave_up
    assert decide(None, 1, 1) == Action(Do.SETTLE, Status.FAILED)


def test_actions_are_frozen_values() -> None:
    action = decide(Verdict.DELIVERED, 1, 3)
    assert action == Action(Do.DELIVER, Status.DELIVERED)
    with pytest.raises(FrozenInstanceError):
        action.twice = True  # type: ignore[misc]


def test_the_engine_looks_up_what_decide_says_of_a_delivered_answer() -> None:
    """The engine does not call ``decide`` for a delivered answer: it looks the action up by
    ``unknown_sent`` (computed from ``decide`` at import), and settles the plain one itself."""
    for case in CASES:
        if case.verdict is Verdict.DELIVERED:
            assert engine._ON_DELIVERED[case.unknown_sent] == _decide(case), case
    assert Action(Do.DELIVER, Status.DELIVERED) == engine._DELIVER
