from __future__ import annotations

import random

from bulksend.ratelimit.circuit import Circuit, State


def test_opens_after_consecutive_failures_only() -> None:
    c = Circuit(threshold=3, cooldown=2.0)
    for _ in range(2):
        assert c.on_result(0.0, failure=True) is None
    assert c.on_result(0.0, failure=False) is None  # a success resets the count
    assert c.on_result(0.0, failure=True) is None
    assert c.on_result(0.0, failure=True) is None
    assert c.on_result(1.0, failure=True) is State.OPEN
    assert c.wait_time(1.5) == 1.5
    assert c.opened == 1


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    c = Circuit(threshold=1, cooldown=2.0)
    c.on_result(10.0, failure=True)
    assert c.wait_time(12.0) == 0.0  # cooldown over: half-open
    assert c.state is State.HALF_OPEN
    assert c.on_send() is True  # the probe
    assert c.wait_time(12.0) is None  # everyone else waits for its outcome
    assert c.on_send() is False
    assert c.on_result(12.1, failure=False) is State.CLOSED
    assert c.wait_time(12.1) == 0.0


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap() -> None:
    c = Circuit(threshold=1, cooldown=2.0, max_cooldown=5.0)
    c.on_result(0.0, failure=True)
    now = 0.0
    for expected in (4.0, 5.0, 5.0):
        now += c.current_cooldown
        assert c.wait_time(now) == 0.0
        c.on_send()
        assert c.on_result(now, failure=True) is State.OPEN
        assert c.current_cooldown == expected
    assert c.failed_probes == 3
    c.wait_time(now + 10)
    c.on_send()
    c.on_result(now + 10, failure=False)
    assert c.failed_probes == 0


def test_random_failures_of_a_working_endpoint_never_open_it() -> None:
    rng = random.Random(5)
    c, old = Circuit(), Circuit(window=1, failure_rate=0.0)  # old: 5 in a row alone opens
    for i in range(200_000):  # 1,000 s at 200 requests a second, 20 % failing at random
        failure = rng.random() < 0.2
        c.on_result(i / 200, failure=failure)
        if old.on_result(i / 200, failure=failure) is State.OPEN:
            old.wait_time(i / 200 + old.current_cooldown)  # half-open: the next one probes
            old.on_send()
    assert c.opened == 0
    assert old.opened > 20  # every ~20 s


def test_an_endpoint_that_dies_opens_it_within_half_the_window() -> None:
    c = Circuit(threshold=5, window=50, failure_rate=0.5)
    for _ in range(1000):
        c.succeeded()
    opened_after = next(n for n in range(1, 100) if c.on_result(0.0, failure=True))
    assert opened_after == 25  # half of the last 50 failed
    assert c.state is State.OPEN


def test_a_wrong_base_url_opens_it_after_the_threshold() -> None:
    c = Circuit(threshold=5)
    assert [c.on_result(0.0, failure=True) for _ in range(5)][-1] is State.OPEN
    assert c.failure_share() == 1.0


def _fail_probes(c: Circuit, probes: int, now: float = 0.0) -> float:
    """Open ``c`` (threshold 1) and fail ``probes`` half-open probes; returns the time."""
    c.on_result(now, failure=True)
    for _ in range(probes):
        now += c.current_cooldown
        c.wait_time(now)
        c.on_send()
        c.on_result(now, failure=True)
    return now


def test_a_group_that_never_answered_is_given_up_after_three_probes() -> None:
    c = Circuit(threshold=1, cooldown=1.0)
    _fail_probes(c, 2)
    assert not c.exhausted(max_probes=10)
    _fail_probes(c, 1, now=100.0)
    assert c.state is State.OPEN
    assert c.exhausted(max_probes=10)
    assert Circuit(threshold=1).exhausted(max_probes=10) is False  # closed: never


def test_a_group_that_answered_well_gets_every_probe_it_is_allowed() -> None:
    c = Circuit(threshold=1, cooldown=1.0)
    c.on_result(0.0, failure=False)
    assert c.answered
    _fail_probes(c, 3, now=1.0)
    assert not c.exhausted(max_probes=5)
    _fail_probes(c, 2, now=100.0)
    assert c.exhausted(max_probes=5)
    assert not c.exhausted(max_probes=6)


def test_an_unexpected_answer_is_not_a_good_answer() -> None:
    c = Circuit(threshold=1)
    c.on_result(0.0, failure=False, answered=False)
    assert not c.answered
    _fail_probes(c, 3, now=1.0)
    assert c.exhausted(max_probes=10)
