"""Header readings and the pure bucket math (bulksend.core.ratelimit, bulksend.core.backoff)."""

from __future__ import annotations

import itertools
import math
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from bulksend.core.backoff import RetryBudget, full_jitter
from bulksend.core.ratelimit import (
    MAX_DELAY,
    Bucket,
    FeedbackKind,
    parse_headers,
    parse_reset,
    parse_retry_after,
    parse_seconds,
    plain_counts,
)
from bulksend.core.ratelimit import _parse_all as parse_all_fields

WALL = 1_800_000_000.0


# ---- Retry-After ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("2.0", 2.0), (" 0.5 ", 0.5), (".25", 0.25), ("0", 0.0), ("120", 120.0)],
)
def test_retry_after_seconds_and_decimals(value: str, expected: float) -> None:
    assert parse_retry_after(value, wall_now=WALL) == expected


def test_retry_after_http_date_in_the_future_past_and_obsolete_forms() -> None:
    in_7 = formatdate(WALL + 7, usegmt=True)  # IMF-fixdate
    assert parse_retry_after(in_7, wall_now=WALL) == pytest.approx(7.0)
    assert parse_retry_after(formatdate(WALL - 30, usegmt=True), wall_now=WALL) == 0.0
    rfc850 = "Friday, 15-Jan-27 08:00:07 GMT"
    stamp = 1_800_000_000.0  # Fri, 15 Jan 2027 08:00:00 GMT
    assert parse_retry_after(rfc850, wall_now=stamp) == pytest.approx(7.0)


@pytest.mark.parametrize("value", ["", "soon", "-3", "1e3", "nan", "inf", "7s", "0x10", "1,5"])
def test_malformed_retry_after_is_ignored(value: str) -> None:
    assert parse_retry_after(value, wall_now=WALL) is None


def test_absurd_retry_after_is_capped() -> None:
    assert parse_retry_after("99999999999", wall_now=WALL) == MAX_DELAY
    far = formatdate(WALL + 10 * 365 * 86400, usegmt=True)
    assert parse_retry_after(far, wall_now=WALL) == MAX_DELAY


# ---- X-RateLimit-Reset ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),  # seconds until
        ("1.5", 1.5),
        (str(int(WALL + 30)), 30.0),  # epoch seconds
        (str(int((WALL + 30) * 1000)), 30.0),  # epoch milliseconds
        ("30000", 30.0),  # milliseconds until (a 60 s window)
        (str(int(WALL - 5)), 0.0),  # an epoch already past
        (formatdate(WALL + 12, usegmt=True), 12.0),
    ],
)
def test_reset_forms(value: str, expected: float) -> None:
    assert parse_reset(value, wall_now=WALL, window=60.0) == pytest.approx(expected)


def test_reset_seconds_in_an_hour_window_are_not_read_as_milliseconds() -> None:
    assert parse_reset("1800", wall_now=WALL, window=3600.0) == 1800.0
    assert parse_reset("1800000", wall_now=WALL, window=3600.0) == 1800.0


@pytest.mark.parametrize("value", ["abc", "-1", "", "12:00"])
def test_malformed_reset_is_ignored(value: str) -> None:
    assert parse_reset(value, wall_now=WALL, window=60.0) is None


# ---- whole responses --------------------------------------------------------------------------


def test_x_ratelimit_headers_in_any_case_plain_dict_and_cimultidict() -> None:
    plain = {"x-RateLimit-LIMIT": "600", "X-RATELIMIT-remaining": "42", "retry-AFTER": "3"}
    proxy = CIMultiDictProxy(CIMultiDict(plain))
    for headers in (plain, proxy):
        info = parse_headers(headers, wall_now=WALL, window=60.0)
        assert (info.limit, info.remaining, info.retry_after) == (600, 42, 3.0)
        assert info.window is None  # per the group's window
        assert info.has_rate_headers


def test_ietf_policy_and_ratelimit_fields() -> None:
    info = parse_headers(
        {"RateLimit-Policy": '"permin";q=50;w=60', "RateLimit": '"permin";r=12;t=30'},
        wall_now=WALL,
        window=60.0,
    )
    assert (info.limit, info.remaining, info.reset) == (50, 12, 30.0)
    assert info.policies == ((50, 60.0),)


def test_ietf_several_policies_shortest_window_leads_lowest_remaining_wins() -> None:
    info = parse_headers(
        {
            "RateLimit-Policy": '"burst";q=100;w=10, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=40;t=3, "daily";r=7;t=5000',
        },
        wall_now=WALL,
        window=60.0,
    )
    assert (info.limit, info.window) == (100, 10.0)
    assert set(info.policies) == {(100, 10.0), (1000, 86400.0)}
    assert (info.remaining, info.reset) == (7, 5000.0)


def test_ietf_draft_07_dictionary_and_older_separate_fields() -> None:
    d7 = parse_headers({"RateLimit": "limit=100, remaining=50, reset=5"}, wall_now=WALL)
    assert (d7.limit, d7.remaining, d7.reset) == (100, 50, 5.0)
    old = parse_headers(
        {
            "RateLimit-Limit": "10, 10;w=1, 500;w=60",
            "RateLimit-Remaining": "4",
            "RateLimit-Reset": "1",
        },
        wall_now=WALL,
        window=60.0,
    )
    assert (old.limit, old.remaining, old.reset) == (10, 4, 1.0)
    assert (500, 60.0) in old.policies


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Limit": "abc", "X-RateLimit-Remaining": "-4"},
        {"X-RateLimit-Limit": "0", "X-RateLimit-Remaining": "1.5"},
        {"X-RateLimit-Limit": "", "RateLimit": "garbage;;;", "RateLimit-Policy": '"x";q=-1'},
        {"Content-Type": "application/json"},
    ],
)
def test_malformed_rate_headers_are_ignored(headers: dict[str, str]) -> None:
    info = parse_headers(headers, wall_now=WALL)
    assert info.limit is None
    assert info.remaining is None
    assert not info.has_rate_headers


@given(
    st.dictionaries(
        st.sampled_from(
            _NAMES := [
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
                "RateLimit",
                "RateLimit-Policy",
                "RateLimit-Limit",
                "RateLimit-Reset",
            ]
        ),
        st.text(max_size=40),
    )
)
def test_parsing_never_raises_and_never_returns_absurd_waits(headers: dict[str, str]) -> None:
    info = parse_headers(headers, wall_now=WALL, window=60.0)
    for wait in (info.reset, info.retry_after):
        assert wait is None or 0.0 <= wait <= MAX_DELAY
    assert info.limit is None or info.limit > 0
    assert info.remaining is None or info.remaining >= 0


_FIELD_NAMES = [
    *_NAMES,
    "RateLimit-Remaining",
    "X-RateLimit-Reset-After",
    "Content-Type",
    "Date",
]
_VALUES = st.one_of(
    st.integers(min_value=0, max_value=10**20).map(str),  # plain counts, some past 15 digits
    st.sampled_from(["", " 7", "7 ", "0600", "600.0", "-1", "1e3", "٣", "²", "10, 10;w=1"]),
    st.text(max_size=12),
)


def _case(name: str, flips: int) -> str:
    return "".join(c.upper() if (flips >> i) & 1 else c.lower() for i, c in enumerate(name))


@given(
    st.lists(st.tuples(st.sampled_from(_FIELD_NAMES), st.integers(0, 2**20), _VALUES), max_size=6)
)
def test_the_plain_shortcut_reads_exactly_what_the_full_parser_reads(
    fields: list[tuple[str, int, str]],
) -> None:
    pairs = [(_case(name, flips), value) for name, flips, value in fields]
    proxy = CIMultiDictProxy(CIMultiDict(pairs))
    plain = dict(pairs)
    for headers in (proxy, plain):
        full = parse_all_fields(headers, wall_now=WALL, window=60.0)
        assert parse_headers(headers, wall_now=WALL, window=60.0) == full
        counts = plain_counts(headers)
        if counts is not None:
            assert counts == (full.limit, full.remaining)
            assert (full.window, full.policies, full.reset, full.retry_after) == (
                None,
                (),
                None,
                None,
            )


def test_plain_counts_is_the_common_case_only() -> None:
    common = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "application/json"),
                ("X-RateLimit-Limit", "600"),
                ("X-RateLimit-Remaining", "599"),
                ("Server", "x"),
            ]
        )
    )
    assert plain_counts(common) == (600, 599)
    assert plain_counts({"x-ratelimit-remaining": "0"}) == (None, 0)
    assert plain_counts({"X-RateLimit-Limit": "1000000000"}) == (None, None)  # over 10 million
    assert plain_counts({"Content-Type": "text/plain"}) == (None, None)
    for other in ("Retry-After", "X-RateLimit-Reset", "RateLimit", "ratelimit-policy"):
        assert plain_counts({"X-RateLimit-Limit": "600", other: "1"}) is None
    for odd in (" 600", "600.0", "100, 100;w=60", "٣", "1234567890123456"):
        assert plain_counts({"X-RateLimit-Limit": odd}) is None


def test_parse_seconds_rejects_non_decimal_forms() -> None:
    assert parse_seconds("12") == 12.0
    assert parse_seconds("1_000") is None
    assert parse_seconds("٣") is None  # a non-ASCII digit


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
    b = Bucket(configured=5, window=10.0, max_in_flight=100, burst=1.0, headers_seen=True)
    times = drain(b, 0.0, 20)
    assert times[:5] == [0.0] * 5  # the burst tolerance lets five go at once
    for i in range(5, 20):
        assert times[i] - times[i - 5] >= 10.0 + b.margin() - 1e-9


def test_default_pacing_is_even_with_no_start_up_burst() -> None:
    b = Bucket(configured=600, window=60.0, max_in_flight=1000, headers_seen=True)
    times = drain(b, 0.0, 50)
    gaps = {round(t2 - t1, 6) for t1, t2 in itertools.pairwise(times)}
    assert gaps == {round(60.05 / 600, 6)}


def test_user_ceiling_wins_when_lower() -> None:
    b = Bucket(configured=600, window=60.0, ceiling=5.0)
    assert b.limit(0.0) == 300
    assert b.rate(0.0) <= 5.0
    b.feedback(
        0.1,
        seq=b.send(0.0)[0],
        sent_at=0.0,
        kind=FeedbackKind.OK,
        headers={"X-RateLimit-Limit": "1000"},
    )
    assert b.limit(0.1) == 300


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
    assert b.mode == "configured"


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


def test_adaptive_cut_on_429_then_cubic_regrowth() -> None:
    b = Bucket(configured=100, window=10.0, max_in_flight=1000, adaptive_only=True)
    times = drain(b, 0.0, 200)  # more than a window: no first-window scaling
    seq, _ = b.send(times[-1] + 0.2)
    cut_at = times[-1] + 0.3
    before = b.limit(cut_at)
    assert before > 100  # slow start: the budget grew while every request succeeded
    seen = b.used(cut_at)  # what the server saw from us in the last window
    b.feedback(cut_at, seq=seq, sent_at=times[-1] + 0.2, kind=FeedbackKind.THROTTLED)
    after = b.limit(cut_at)
    assert after == pytest.approx(0.85 * min(before, seen), abs=1.0)
    assert b.recovering  # one probe at a time, after a pause
    assert b.wait_time(cut_at) >= 1.0 / 6
    assert b.limit(cut_at + 20.0) >= after  # two windows later: back near Wmax
    assert b.mode == "adaptive"


def test_backoff_is_full_jitter_and_capped() -> None:
    assert full_jitter(1, base=0.5, cap=30.0, u=0.999) == pytest.approx(0.4995)
    assert full_jitter(3, base=0.5, cap=30.0, u=0.5) == pytest.approx(1.0)
    assert full_jitter(1000, base=0.5, cap=30.0, u=0.999) == pytest.approx(29.97)
    assert full_jitter(2, base=0.5, cap=30.0, u=0.0) == 0.0
    assert full_jitter(2, base=0.5, cap=30.0, u=float("nan")) == 0.0


def test_retry_budget_spends_refills_and_earns() -> None:
    budget = RetryBudget(capacity=3, floor=1.0, earn=0.1, horizon=10.0)
    for _ in range(3):
        assert budget.wait_time(0.0) == 0.0
        budget.spend(0.0)
    assert budget.wait_time(0.0) == pytest.approx(1.0)  # floor: one per second
    for i in range(200):  # 20 successes per second for 10 s
        budget.success(i * 0.05)
    assert budget.income(10.0) == pytest.approx(2.0, rel=0.01)  # 10 % of the success rate
    assert budget.tokens(10.0) == 3.0  # never above capacity
