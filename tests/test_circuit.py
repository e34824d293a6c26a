from __future__ import annotations

from bulksend.core.circuit import Circuit, State


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
