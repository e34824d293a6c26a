"""Rate-limit header readings (bulksend.ratelimit.headers)."""

from __future__ import annotations

import dataclasses
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from bulksend.ratelimit.headers import (
    MAX_DELAY,
    Policy,
    RateLimitInfo,
    counts,
    parse_all,
    parse_headers,
    parse_reset,
    parse_retry_after,
    parse_seconds,
    plain_counts,
    throttle_evidence,
)

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
        assert info.window is None  # a count without a window: the window is inferred
        assert info.has_rate_headers


def test_ietf_policy_and_ratelimit_fields() -> None:
    info = parse_headers(
        {"RateLimit-Policy": '"permin";q=50;w=60', "RateLimit": '"permin";r=12;t=30'},
        wall_now=WALL,
        window=60.0,
    )
    assert (info.limit, info.remaining, info.reset) == (50, 12, 30.0)
    assert info.policies == (Policy(50, 60.0, "permin"),)
    assert info.remaining_policy == Policy(50, 60.0, "permin")
    assert info.reset_quantum == 1.0  # t is a whole number of seconds


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
    assert {(p.quota, p.window) for p in info.policies} == {(100, 10.0), (1000, 86400.0)}
    assert (info.remaining, info.reset) == (7, 5000.0)
    assert info.remaining_policy == Policy(1000, 86400.0, "daily")


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
    assert Policy(500, 60.0) in old.policies


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
        full = parse_all(headers, wall_now=WALL, window=60.0)
        assert parse_headers(headers, wall_now=WALL, window=60.0) == full
        found = plain_counts(headers)
        if found is not None:
            assert found == (full.limit, full.remaining)
            assert (full.window, full.reset, full.retry_after) == (None, None, None)
            assert all(p.window is None for p in full.policies)


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


# ---- what the real limiters send ---------------------------------------------------------------


def test_flask_limiter_epoch_reset_is_whole_seconds_on_the_servers_clock() -> None:
    headers = {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "10",
        "X-RateLimit-Reset": str(int(WALL) + 2),
        "Retry-After": "1",
    }
    info = parse_headers(headers, wall_now=WALL + 0.4, window=60.0)
    assert (info.limit, info.window, info.remaining) == (50, None, 10)
    assert info.reset == pytest.approx(1.6)  # against our clock: no Date came with it
    assert (info.reset_quantum, info.reset_epoch) == (1.0, True)
    assert info.retry_after == 1.0  # on a 200 too: the bucket ignores it unless throttled


@pytest.mark.parametrize("skew", [-300.0, -3.0, 0.0, 3.0, 300.0])
def test_an_epoch_reset_is_read_against_the_servers_own_date(skew: float) -> None:
    # the server's clock is ``skew`` seconds ahead of ours: its Date and its epoch agree
    server_now = WALL + skew
    headers = {
        "X-RateLimit-Limit": "100",
        "X-RateLimit-Remaining": "10",
        "X-RateLimit-Reset": str(int(server_now) + 7),
        "Date": formatdate(server_now, usegmt=True),
        "Retry-After": formatdate(server_now + 5, usegmt=True),
    }
    info = parse_headers(headers, wall_now=WALL, window=60.0)
    assert info.reset == pytest.approx(7.0)  # whatever the skew
    assert (info.reset_quantum, info.reset_epoch) == (2.0, False)  # Date is whole seconds
    assert info.retry_after == pytest.approx(5.0)


def test_github_used_resource_and_epoch() -> None:
    headers = {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-used": "4990",
        "x-ratelimit-reset": str(int(WALL) + 600),
        "x-ratelimit-resource": "core",
    }
    info = parse_headers(headers, wall_now=WALL, window=3600.0)
    assert (info.limit, info.remaining, info.partition) == (5000, 10, "core")
    assert info.reset == 600.0


def test_fractional_and_millisecond_resets_are_fine_grained() -> None:
    assert (
        parse_headers(
            {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "0.25"}, wall_now=WALL
        ).reset_quantum
        == 0.0
    )
    ms = str(int((WALL + 1.5) * 1000))
    info = parse_headers({"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": ms}, wall_now=WALL)
    assert info.reset == pytest.approx(1.5)
    assert (info.reset_quantum, info.reset_epoch) == (0.001, True)


def test_ietf_partition_key_is_kept() -> None:
    info = parse_headers(
        {"RateLimit-Policy": '"key";q=100;w=60;pk=:YWJj:', "RateLimit": '"key";r=5;t=10'},
        wall_now=WALL,
    )
    assert info.remaining_policy == Policy(100, 60.0, "key", ":YWJj:")
    assert info.partition == ":YWJj:"


@pytest.mark.parametrize(
    ("headers", "evidence"),
    [
        ({"x-ratelimit-remaining": "0", "retry-after": "2"}, "retry-after"),
        ({"X-RateLimit-Remaining": "0"}, "remaining 0"),
        ({"RateLimit": '"burst";r=0;t=1'}, "remaining 0"),
        ({"Retry-After": formatdate(WALL + 30, usegmt=True)}, "retry-after"),
        ({"Stripe-Rate-Limited-Reason": "global-rate"}, "stripe-rate-limited-reason"),
        ({"x-sib-ratelimit-remaining": "0"}, "x-sib-ratelimit-remaining: 0"),
    ],
)
def test_throttle_evidence(headers: dict[str, str], evidence: str) -> None:
    assert throttle_evidence(headers, wall_now=WALL) == evidence


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"X-RateLimit-Remaining": "12"}, {"Content-Type": "application/json"}],
)
def test_no_throttle_evidence(headers: dict[str, str] | None) -> None:
    assert throttle_evidence(headers, wall_now=WALL) is None


@pytest.mark.parametrize(("limit", "remaining"), [(600, 599), (None, 0), (5, None), (None, None)])
def test_counts_is_the_info_the_constructor_makes(limit: int | None, remaining: int | None) -> None:
    made = RateLimitInfo(limit=limit, remaining=remaining)
    info = counts(limit, remaining)
    assert info == made
    assert hash(info) == hash(made)
    assert repr(info) == repr(made)
    assert info.has_rate_headers is made.has_rate_headers
    assert counts(1, 2) is not counts(1, 2)  # a new one each time, frozen as the others
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.remaining = 1  # type: ignore[misc]
