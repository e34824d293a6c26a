"""The pure admission math of one endpoint group (bulksend.ratelimit.bucket)."""

from __future__ import annotations

import itertools
import math

import pytest

from bulksend.ratelimit.bucket import Bucket, FeedbackKind

# ---- bucket math ------------------------------------------------------------------------------


def drain(bucket: Bucket, start: float, count: int, *, retry: bool = False) -> list[float]:
    """Send ``count`` requests as early as the bucket allows; returns the send times."""
    now, times = start, []
    for _ in range(count):
        wait = bucket.wait_time(now, retry)
        assert wait != math.inf
        now += wait
        bucket.send(now, retry)
        times.append(now)
    return times


def test_sliding_log_never_admits_more_than_the_limit_in_window_plus_margin() -> None:
    b = Bucket(configured=5, window=10.0, max_in_flight=100, burst=1.0)
    times = drain(b, 0.0, 20)
    assert times[:5] == [0.0] * 5  # the burst tolerance lets five go at once
    for i in range(5, 20):
        assert times[i] - times[i - 5] >= 10.0 + b.margin() - 1e-9


def test_default_pacing_is_even_with_no_start_up_burst() -> None:
    b = Bucket(configured=600, window=60.0, max_in_flight=1000)
    times = drain(b, 0.0, 50)
    gaps = {round(t2 - t1, 6) for t1, t2 in itertools.pairwise(times)}
    assert gaps == {round(60.05 / 600, 6)}


def test_user_ceiling_wins_when_lower() -> None:
    b = Bucket(configured=600, window=60.0, ceiling=5.0)
    assert b.rate(0.0) == pytest.approx(5.0 / 1.01)  # with a 1 % margin, as every quota
    b.feedback(
        0.1,
        seq=b.send(0.0)[0],
        sent_at=0.0,
        kind=FeedbackKind.OK,
        headers={"X-RateLimit-Limit": "1000"},
    )
    assert b.limit(0.1) == 1000  # what the provider allows ...
    assert b.rate(0.1) == pytest.approx(5.0 / 1.01)  # ... and what the user allows


def test_limit_header_is_adopted_at_once_and_in_flight_cap_holds() -> None:
    b = Bucket(configured=600, window=60.0, max_in_flight=2)
    s1, _ = b.send(0.0)
    s2, _ = b.send(0.0)
    assert b.wait_time(0.0) == math.inf
    b.feedback(0.05, seq=s1, sent_at=0.0, kind=FeedbackKind.OK, headers={"X-RateLimit-Limit": "60"})
    assert b.limit(0.05) == 60
    assert b.mode == "headers"
    # the two slots already taken are repriced at the new spacing: 0.15 s left becomes 10x
    assert b.wait_time(0.05) == pytest.approx(1.5, rel=0.01)
    now = 0.05 + b.wait_time(0.05)
    b.send(now)
    b.feedback(now, seq=s2, sent_at=0.0, kind=FeedbackKind.OK)
    assert b.wait_time(now) == pytest.approx(60.05 / 60, abs=0.01)


def test_a_raised_limit_frees_the_pace_at_once() -> None:
    # the first request goes out priced at the assumed 600/min (0.1 s of spacing); its answer
    # says the quota is far higher: the next send may go at once, not 0.1 s later
    b = Bucket(configured=600, window=60.0, max_in_flight=32)
    s1, _ = b.send(0.0)
    assert b.wait_time(0.001) == pytest.approx(0.1 + 0.05 / 600 - 0.001)
    headers = {"X-RateLimit-Limit": "1000000", "X-RateLimit-Remaining": "999999"}
    b.feedback(0.002, seq=s1, sent_at=0.0, kind=FeedbackKind.OK, headers=headers)
    assert b.wait_time(0.002) < 1e-4
    # a Remaining alone that proves a higher limit (no usable Limit header) does the same
    c = Bucket(configured=600, window=60.0, max_in_flight=32)
    s3, _ = c.send(0.0)
    absurd = {"X-RateLimit-Limit": "1000000000", "X-RateLimit-Remaining": "999999999"}
    c.feedback(0.002, seq=s3, sent_at=0.0, kind=FeedbackKind.OK, headers=absurd)
    assert c.wait_time(0.002) < 1e-4
    # the same limit again changes nothing
    s2, _ = b.send(0.002)
    due = b.wait_time(0.002)
    b.feedback(0.003, seq=s2, sent_at=0.002, kind=FeedbackKind.OK, headers=headers)
    assert b.wait_time(0.003) == pytest.approx(max(0.0, due - 0.001))


def test_pacing_waits_below_the_timer_resolution_are_no_waits() -> None:
    fast = Bucket(configured=6_000_000, window=60.0, max_in_flight=1000)  # 10 µs apart
    for _ in range(50):  # 50 sends in the same instant: 0.5 ms of pace, under the resolution
        assert fast.wait_time(1.0) == 0.0
        fast.send(1.0)
    for _ in range(60):
        fast.send(1.0)
    assert fast.wait_time(1.0) == pytest.approx(110 * 60.05 / 6_000_000, rel=0.01)
    slow = Bucket(configured=600, window=60.0, max_in_flight=100)
    slow.send(1.0)
    assert slow.wait_time(1.0) == pytest.approx(0.1, rel=0.01)


def test_remaining_is_adopted_minus_requests_sent_after_it() -> None:
    b = Bucket(configured=100, window=60.0, max_in_flight=100, burst=1.0)
    seqs = [b.send(0.0)[0] for _ in range(10)]
    # the first request's response says 9 left: 9 more were sent after it, so none is left
    b.feedback(
        0.1,
        seq=seqs[0],
        sent_at=0.0,
        kind=FeedbackKind.OK,
        headers={"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "9"},
    )
    wait = b.wait_time(0.1)
    assert wait == pytest.approx(60.0 + b.margin(), abs=0.01)  # until the window frees
    assert b.hold_until(0.1) == pytest.approx(60.1 + b.margin(), abs=0.01)


def test_remaining_zero_with_reset_holds_until_the_reset_only() -> None:
    b = Bucket(configured=100, window=60.0)
    seq, _ = b.send(0.0)
    b.feedback(
        0.1,
        seq=seq,
        sent_at=0.0,
        kind=FeedbackKind.OK,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "12"},
    )
    assert b.wait_time(0.1) == pytest.approx(12.0)
    assert b.wait_time(12.2) == 0.0


def test_remaining_only_header_proves_a_higher_limit() -> None:
    b = Bucket(configured=100, window=60.0)
    seq, _ = b.send(0.0)
    b.feedback(
        0.1, seq=seq, sent_at=0.0, kind=FeedbackKind.OK, headers={"X-RateLimit-Remaining": "499"}
    )
    assert b.limit(0.1) == 500
    assert b.mode == "headers"


@pytest.mark.parametrize("retry", [False, True])
def test_retry_after_pauses_the_whole_group(retry: bool) -> None:
    b = Bucket(configured=600, window=60.0, max_in_flight=10)
    seq, _ = b.send(0.0)
    b.send(0.0)
    b.feedback(0.1, seq=seq, sent_at=0.0, kind=FeedbackKind.THROTTLED, headers={"Retry-After": "7"})
    assert b.wait_time(0.1, retry) == pytest.approx(7.0)
    assert b.wait_time(7.1, retry) == 0.0


def test_cancelled_send_gives_everything_back() -> None:
    b = Bucket(configured=3, window=10.0, max_in_flight=5, burst=1.0)
    b.send(0.0)
    seq, cost = b.send(0.0, retry=True)
    tokens = b.budget.tokens(0.0)
    b.unsend(0.0, seq, 0.0, cost, True)
    assert (b.in_flight, b.stats.sent, b.stats.retries) == (1, 1, 0)
    assert b.budget.tokens(0.0) == tokens + 1
    assert drain(b, 0.0, 2) == [0.0, 0.0]  # exactly the two slots left in the window


def test_adaptive_slow_start_cut_on_429_then_cubic_regrowth() -> None:
    b = Bucket(configured=60, window=60.0, max_in_flight=1000, adaptive_only=True)
    assert b.rate(0.0) == pytest.approx(1.0, rel=0.02)
    now = 0.0
    for _ in range(40):  # slow start: the rate doubles every half second while all goes well
        now += b.wait_time(now)
        seq, _ = b.send(now)
        b.feedback(now + 0.01, seq=seq, sent_at=now, kind=FeedbackKind.OK)
    assert b.rate(now) > 4.0
    before = b.rate(now)
    seq, _ = b.send(now)
    b.feedback(now + 0.01, seq=seq, sent_at=now, kind=FeedbackKind.THROTTLED)
    after = b.rate(now + 0.01)
    assert after == pytest.approx(0.85 * before, rel=0.05)
    assert b.recovering  # one probe at a time, after a pause of one send interval
    assert b.wait_time(now + 0.01) >= 1.0 / before - 0.01 - 1e-9
    assert b.mode == "adaptive"
    period = b.probe.period()
    assert b.probe.r_max == pytest.approx(0.97 * before, rel=0.05)  # the plateau: just below
    assert b.probe.rate(now + 2 * period) == pytest.approx(b.probe.r_max, rel=0.01)
