"""The pacer (bulksend.ratelimit.pacing): pure, with the time given."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.ratelimit.pacing import BURST, Pacer


def test_nothing_waits_before_a_round_trip_is_known() -> None:
    pacer = Pacer(32)
    assert pacer.rate is None
    assert [pacer.delay(1.0) for _ in range(100)] == [0.0] * 100


def test_a_bunch_leaves_at_in_flight_per_least_round_trip() -> None:
    pacer = Pacer(32)
    pacer.observe(0.030)
    pacer.observe(0.020)  # the least counts
    pacer.observe(0.025)
    assert pacer.rate == pytest.approx(1600)
    now = 10.0
    delays = [pacer.delay(now) for _ in range(BURST)]
    assert delays == [0.0] * BURST  # a burst leaves at once
    wait = pacer.delay(now)
    assert wait == pytest.approx(1 / 1600)
    now += wait
    assert pacer.delay(now) == 0.0  # its turn
    assert pacer.delay(now) == pytest.approx(1 / 1600)


def test_requests_further_apart_than_the_pace_never_wait() -> None:
    pacer = Pacer(8)
    pacer.observe(0.001)  # 8,000 a second at most
    now = 0.0
    for _ in range(1000):
        now += 0.0002  # the client's own pace: 5,000 a second
        assert pacer.delay(now) == 0.0


def test_a_wrong_round_trip_is_ignored() -> None:
    pacer = Pacer(4)
    pacer.observe(0.0)
    pacer.observe(-1.0)
    assert pacer.rate is None


@given(
    in_flight=st.integers(1, 256),
    least=st.floats(0.0005, 1.0),
    gaps=st.lists(st.floats(0.0, 0.05), min_size=1, max_size=200),
)
def test_it_never_lets_out_more_than_burst_plus_rate_times_time(
    in_flight: int, least: float, gaps: list[float]
) -> None:
    """Whatever the calls' times, the requests let out by time t are at most BURST + rate * t,
    and a request told to wait leaves when it comes back after that wait."""
    pacer = Pacer(in_flight)
    pacer.observe(least)
    rate = in_flight / least
    now = start = 0.0
    for out, gap in enumerate(gaps, start=1):
        now += gap
        wait = pacer.delay(now)
        if wait > 0:
            now += wait
            assert pacer.delay(now) == 0.0
        assert out <= BURST + rate * (now - start) + 1e-6
