"""Sandbox rate-limit profiles: the pure models on fake time, then each profile over HTTP.

The models are driven with exact times (binary fractions, so the arithmetic is exact); nothing
here sleeps or measures real time. Where the real library is installed (limits, Flask-Limiter),
the models are also compared with it request by request on the same fake clock.
"""

from __future__ import annotations

import argparse
import random
import re
import shlex
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bulksend.sandbox import Sandbox, SandboxConfig, SandboxConfigError
from bulksend.sandbox.cli import add_arguments, config_from_args
from bulksend.sandbox.config import PROFILES
from bulksend.sandbox.limiters import (
    Bare429Limiter,
    BodyKind,
    Decision,
    FixedLimiter,
    GitHubLimiter,
    IetfLimiter,
    LeakyBucket,
    LimitsFixedWindow,
    LimitsMovingWindow,
    Policy,
    make_limiter,
    nginx_error_page,
    nginx_rate,
    werkzeug_429_page,
)
from bulksend.sandbox.testing import FakeClock, sandbox

ROOT = Path(__file__).resolve().parent.parent
WALL0 = 1_800_000_000.25  # Unix time at monotonic 1000.0 in the HTTP tests
KEY = "sandbox-key"
AUTH = {"Authorization": f"key={KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
SEND = orjson.dumps({"messages": [{"title": "Hi"}], "to_ids": ["a"]})


def status_of(d: Decision) -> int:
    return d.status if not d.allowed else 200


def pattern(decisions: list[Decision]) -> str:
    """``.`` for an accepted request, ``x`` for a refused one."""
    return "".join("." if d.allowed else "x" for d in decisions)


# ---------------------------------------------------------------------------- fixed, bare429


def test_fixed_keeps_the_providers_counts_and_adds_only_retry_after() -> None:
    limiter = FixedLimiter(2, 10.0, origin=100.0)
    first, second = limiter.hit(100.0, 0.0), limiter.hit(101.0, 0.0)
    assert (first.allowed, first.headers, first.counts and first.counts.remaining) == (True, {}, 1)
    assert second.counts is not None
    assert second.counts.remaining == 0
    refused = limiter.hit(102.0, 0.0)
    assert (refused.allowed, refused.status, refused.body_kind) == (False, 429, BodyKind.PROVIDER)
    assert refused.headers == {"Retry-After": "8"}
    assert refused.retry_in == 8.0
    peek = limiter.peek(105.5, 0.0)
    assert (peek.allowed, peek.headers) == (False, {})
    assert limiter.hit(110.0, 0.0).allowed  # the next window, aligned to the origin
    quiet = FixedLimiter(1, 10.0, retry_after=False)
    quiet.hit(0.0, 0.0)
    assert quiet.hit(1.0, 0.0).headers == {}


def test_bare429_sends_no_header_at_all() -> None:
    limiter = Bare429Limiter(1, 10.0, origin=0.0)
    assert limiter.hit(0.0, 0.0).headers == {}
    refused = limiter.hit(2.5, 0.0)
    assert (refused.allowed, refused.status, refused.headers) == (False, 429, {})
    assert (refused.body_kind, refused.retry_in, refused.counts) == (BodyKind.PROVIDER, 7.5, None)
    assert limiter.hit(10.0, 0.0).allowed


# ---------------------------------------------------------------------------- nginx limit_req


def test_nginx_rate_is_stored_in_thousandths_and_truncated() -> None:
    assert nginx_rate(10, 1) == 10_000  # rate=10r/s
    assert nginx_rate(30, 60) == 500  # rate=30r/m
    assert nginx_rate(7, 60) == 116  # 7000 / 60 = 116.67, truncated as nginx does
    assert nginx_rate(600, 60) == 10_000


def test_leaky_refuses_sooner_than_one_interval_after_the_last_accepted() -> None:
    bucket = LeakyBucket(nginx_rate(10, 1))  # one request per 100 ms, no burst
    times = [0.0, 0.05, 0.099, 0.1, 0.15, 0.1999, 0.2, 0.25, 0.3]
    decisions = [bucket.hit(1000.0 + t, 0.0) for t in times]
    # the first request is accepted (a new node), then only 100 ms after the previous accepted
    # one: 0.1999 s is 99 ms after 0.1 in whole milliseconds; refusals change nothing
    assert pattern(decisions) == ".xx.xx.x."
    refused = decisions[1]
    assert (refused.status, refused.headers, refused.body_kind) == (503, {}, BodyKind.GATEWAY)
    assert refused.retry_in == pytest.approx(0.05)
    assert refused.content_type == "text/html"
    assert refused.body == nginx_error_page(503)


def test_leaky_refuses_even_when_the_last_second_was_nearly_empty() -> None:
    bucket = LeakyBucket(nginx_rate(100, 1))  # 100 per second: one per 10 ms
    assert bucket.hit(5.0, 0.0).allowed
    assert not bucket.hit(5.009, 0.0).allowed  # 2 requests in the last second, of 100
    assert bucket.hit(5.010, 0.0).allowed


def test_leaky_integer_arithmetic_of_a_per_minute_rate() -> None:
    bucket = LeakyBucket(nginx_rate(7, 60))  # 116 thousandths per second, not 7/60 = 116.67
    assert bucket.hit(0.0, 0.0).allowed
    # accepted once 116 * ms // 1000 >= 1000: ms = 8621, not 60 / 7 = 8.571 s
    assert not bucket.hit(8.620, 0.0).allowed
    assert bucket.peek(8.620, 0.0).allowed is False
    assert bucket.hit(8.621, 0.0).allowed
    assert bucket.excess == 0


def test_leaky_burst_in_thousandths() -> None:
    bucket = LeakyBucket(nginx_rate(1, 1), burst=2, status=429)
    same_ms = [bucket.hit(0.0, 0.0) for _ in range(4)]
    assert pattern(same_ms) == "...x"  # the new node, then 2 excess requests
    assert bucket.excess == 2000
    assert same_ms[3].retry_in == 1.0
    half = bucket.hit(0.5, 0.0)  # 2000 - 500 + 1000 = 2500 > 2000
    assert (half.allowed, half.status, half.retry_in) == (False, 429, 0.5)
    assert half.body == nginx_error_page(429)
    assert bucket.excess == 2000  # a refusal stores nothing
    assert bucket.hit(1.0, 0.0).allowed  # 2000 - 1000 + 1000
    assert bucket.excess == 2000
    assert bucket.hit(10.0, 0.0).allowed  # drained: 2000 - 9000 + 1000 < 0, so 0
    assert bucket.excess == 0


def test_leaky_clock_going_back_counts_as_no_time() -> None:
    bucket = LeakyBucket(nginx_rate(10, 1), burst=1)
    assert bucket.hit(10.0, 0.0).allowed
    assert bucket.hit(9.990, 0.0).allowed  # ms < 0 -> 0: excess 1000 <= burst
    assert not bucket.hit(9.995, 0.0).allowed


def test_nginx_page_is_the_builtin_one() -> None:
    assert nginx_error_page(503) == (
        b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n"
        b"<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
        b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


# ---------------------------------------------------------------------------- limits


def flask_headers(d: Decision) -> tuple[str | None, ...]:
    names = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")
    return tuple(d.headers.get(n) for n in names)


def test_limits_fixed_window_starts_at_the_first_hit_and_rounds_the_reset_up() -> None:
    limiter = LimitsFixedWindow(2, 10)
    w = 1_800_000_000.25
    first = limiter.hit(0.0, w)
    # Reset = int(expiry + 1): the window ends at ...010.25, the header says ...011;
    # Retry-After = int(Reset - now), on a 200 too
    assert flask_headers(first) == ("2", "1", "1800000011", "10")
    assert flask_headers(limiter.hit(0.0, w + 4)) == ("2", "0", "1800000011", "6")
    refused = limiter.hit(0.0, w + 9.5)
    assert (refused.allowed, refused.status, refused.body_kind) == (False, 429, BodyKind.GATEWAY)
    assert flask_headers(refused) == ("2", "0", "1800000011", "1")
    assert refused.retry_in == 0.5  # the window really ends at ...010.25
    assert refused.content_type == "text/html; charset=utf-8"
    assert refused.body == werkzeug_429_page("2 per 10 second")
    assert b"<p>2 per 10 second</p>" in refused.body
    # at the expiry instant the counter is gone: a new window from this hit, not the clock
    renewed = limiter.hit(0.0, w + 10)
    assert flask_headers(renewed) == ("2", "1", "1800000021", "10")


def test_limits_fixed_integer_window_end_is_still_one_second_late() -> None:
    limiter = LimitsFixedWindow(1, 10)
    assert flask_headers(limiter.hit(0.0, 2000.0)) == ("1", "0", "2011", "11")
    peek = limiter.peek(0.0, 2004.0)
    assert (peek.allowed, flask_headers(peek)) == (False, ("1", "0", "2011", "7"))
    fresh = LimitsFixedWindow(3, 10).peek(0.0, 2000.5)  # no window yet: reset = now
    assert (fresh.allowed, flask_headers(fresh)) == (True, ("3", "3", "2001", "0"))


def test_limits_moving_window_counts_any_trailing_window() -> None:
    moving, fixed = LimitsMovingWindow(2, 10), LimitsFixedWindow(2, 10)
    times = [0.5, 3.0, 5.0, 10.6, 10.7, 12.0, 13.5]
    moved = [moving.hit(0.0, 1000.0 + t) for t in times]
    fixedd = [fixed.hit(0.0, 1000.0 + t) for t in times]
    assert pattern(moved) == "..x.xx."
    assert pattern(fixedd) == "..x..xx"  # a fresh window from 10.6 lets two through
    refused = moved[2]
    assert flask_headers(refused) == ("2", "0", "1011", "6")  # oldest 1000.5 + 10 + 1
    assert refused.retry_in == pytest.approx(5.5)
    assert flask_headers(moved[3]) == ("2", "0", "1014", "3")  # oldest now 1003.0


def test_limits_moving_boundary_refuses_but_no_longer_counts() -> None:
    limiter = LimitsMovingWindow(2, 10)
    limiter.hit(0.0, 1000.0)
    limiter.hit(0.0, 1003.0)
    limiter.hit(0.0, 1010.5)  # 1000.0 left the window: accepted
    # at 1013.0 the hit of 1003.0 is exactly 10 s old: acquire_entry still refuses (>=), but
    # get_moving_window no longer counts it (>): a 429 that says one request remains
    at_boundary = limiter.hit(0.0, 1013.0)
    assert not at_boundary.allowed
    assert at_boundary.headers["X-RateLimit-Remaining"] == "1"
    assert limiter.hit(0.0, 1013.25).allowed


def test_limits_retry_after_can_be_left_out() -> None:
    limiter = LimitsFixedWindow(1, 1, retry_after=False)
    assert "Retry-After" not in limiter.hit(0.0, 5.0).headers


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``limits`` and Flask-Limiter read ``time.time()``: both get this clock instead."""
    memory = pytest.importorskip("limits.storage.memory")
    extension = pytest.importorskip("flask_limiter._extension")
    now = [1_800_000_000.125]
    fake = types.SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(memory, "time", fake)
    monkeypatch.setattr(extension, "time", fake)
    return now


@pytest.mark.parametrize(("strategy", "limit", "window"), [
    ("fixed-window", 5, 2), ("moving-window", 5, 2), ("fixed-window", 3, 60),
    ("moving-window", 3, 60),
])  # fmt: skip
def test_limits_models_answer_as_the_real_flask_limiter(
    fake_time: list[float], strategy: str, limit: int, window: int
) -> None:
    pytest.importorskip("flask")
    pytest.importorskip("flask_limiter")
    import flask  # (importorskip returns Any: imported again for the types)
    import flask_limiter

    app = flask.Flask(__name__)
    real = flask_limiter.Limiter(
        key_func=lambda: "k",
        app=app,
        headers_enabled=True,
        storage_uri="memory://",
        strategy=strategy,
    )

    @app.route("/")
    @real.limit(f"{limit} per {window} second")
    def index() -> str:
        return "ok"

    model = (LimitsFixedWindow if strategy == "fixed-window" else LimitsMovingWindow)(limit, window)
    client = app.test_client()
    rng = random.Random(f"{strategy}{limit}")  # irregular times: no exact window-boundary ties
    try:
        for _ in range(250):
            fake_time[0] += rng.expovariate(1.3 * limit / window)
            response = client.get("/")
            mine = model.hit(0.0, fake_time[0])
            names = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
            theirs = tuple(response.headers.get(n) for n in (*names, "Retry-After"))
            assert (response.status_code, theirs) == (status_of(mine), flask_headers(mine))
            if response.status_code == 429:
                assert response.data == mine.body
                assert response.headers["Content-Type"] == mine.content_type
    finally:
        timer = getattr(real.storage, "timer", None)
        if timer is not None:
            timer.cancel()


# ---------------------------------------------------------------------------- GitHub


def test_github_headers_on_every_answer_and_403_when_spent() -> None:
    limiter = GitHubLimiter(2, 60.0, origin=1000.0)
    first = limiter.hit(1000.0, WALL0)
    assert first.headers == {
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "1",
        "x-ratelimit-reset": "1800000061",  # the window ends at ...060.25: rounded up
        "x-ratelimit-used": "1",
        "x-ratelimit-resource": "core",
    }
    limiter.hit(1030.0, WALL0 + 30)
    refused = limiter.hit(1045.5, WALL0 + 45.5)
    assert (refused.allowed, refused.status, refused.retry_in) == (False, 403, 14.5)
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-used"] == "2"
    assert "retry-after" not in refused.headers  # primary limits carry none
    body = orjson.loads(refused.body)
    assert body["message"].startswith("API rate limit exceeded")
    assert body["documentation_url"].startswith("https://docs.github.com/")
    assert refused.content_type == "application/json; charset=utf-8"
    peek = limiter.peek(1050.0, WALL0 + 50)
    assert (peek.allowed, peek.headers["x-ratelimit-remaining"]) == (False, "0")
    again = limiter.hit(1060.0, WALL0 + 60)
    assert again.headers["x-ratelimit-reset"] == "1800000121"


def test_github_429_and_retry_after_on_request() -> None:
    limiter = GitHubLimiter(1, 60.0, status=429, retry_after=True)
    limiter.hit(0.0, 5000.0)
    refused = limiter.hit(20.25, 5020.25)
    assert (refused.status, refused.headers["retry-after"]) == (429, "40")  # ceil(39.75)


# ---------------------------------------------------------------------------- IETF


def ietf() -> IetfLimiter:
    return IetfLimiter((Policy("burst", 2, 1), Policy("long", 3, 10)), origin=1000.0)


def test_ietf_two_policies_and_rounded_up_t() -> None:
    limiter = ietf()
    first = limiter.hit(1000.0, 0.0)
    assert first.headers == {
        "RateLimit-Policy": '"burst";q=2;w=1, "long";q=3;w=10',
        "RateLimit": '"burst";r=1;t=1, "long";r=2;t=10',
    }
    assert limiter.hit(1000.25, 0.0).headers["RateLimit"] == '"burst";r=0;t=1, "long";r=1;t=10'
    refused = limiter.hit(1000.5, 0.0)  # t = ceil(0.5) and ceil(9.5)
    assert (refused.allowed, refused.status) == (False, 429)
    assert refused.headers["RateLimit"] == '"burst";r=0;t=1, "long";r=1;t=10'
    assert refused.headers["Retry-After"] == "1"
    assert refused.content_type == "application/problem+json"
    problem = orjson.loads(refused.body)
    assert problem["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert problem["violated-policies"] == ["burst"]
    # the next burst window: the long policy's last request
    third = limiter.hit(1001.25, 0.0)
    assert third.headers["RateLimit"] == '"burst";r=1;t=1, "long";r=0;t=9'
    # long spent: refused, and the burst policy is not charged either
    spent = limiter.hit(1001.5, 0.0)
    assert spent.headers["RateLimit"] == '"burst";r=1;t=1, "long";r=0;t=9'
    assert spent.headers["Retry-After"] == "9"  # not earlier than the spent policy's t
    assert orjson.loads(spent.body)["violated-policies"] == ["long"]
    assert spent.retry_in == 8.5
    assert limiter.hit(1010.0, 0.0).headers["RateLimit"] == '"burst";r=1;t=1, "long";r=2;t=10'


def test_ietf_both_spent_retry_after_is_the_later_reset() -> None:
    limiter = IetfLimiter((Policy("burst", 1, 2), Policy("long", 1, 10)), retry_after=True)
    limiter.hit(0.0, 0.0)
    refused = limiter.hit(0.5, 0.0)
    assert orjson.loads(refused.body)["violated-policies"] == ["burst", "long"]
    assert refused.headers["Retry-After"] == "10"  # ceil(9.5), the later of 1.5 and 9.5
    quiet = IetfLimiter((Policy("p", 1, 1),), retry_after=False)
    quiet.hit(0.0, 0.0)
    assert "Retry-After" not in quiet.hit(0.5, 0.0).headers


# ---------------------------------------------------------------------------- factory, config


def test_make_limiter_per_profile() -> None:
    def make(**settings: Any) -> Any:
        config = SandboxConfig(window=1, **settings)
        config.validate()
        return make_limiter(config, 20, origin=5.0)

    assert isinstance(make(), FixedLimiter)
    bucket = make(profile="leaky", burst=3)
    assert (bucket.rate, bucket.burst, bucket.status) == (20_000, 3000, 503)
    assert isinstance(make(profile="limits-fixed"), LimitsFixedWindow)
    assert isinstance(make(profile="limits-moving"), LimitsMovingWindow)
    assert make(profile="github").status == 403
    assert isinstance(make(profile="bare429"), Bare429Limiter)
    policy = make(profile="ietf").hit(5.0, 0.0).headers["RateLimit-Policy"]
    assert policy == '"burst";q=20;w=1, "long";q=600;w=60'  # 30 x the limit, 60 x the window
    custom = make(profile="ietf", long_limit=100, long_window=3600).hit(5.0, 0.0)
    assert custom.headers["RateLimit-Policy"] == '"burst";q=20;w=1, "long";q=100;w=3600'


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"profile": "token-bucket"}, "profile must be one of"),
        ({"burst": 2}, "burst applies to the leaky profile only"),
        ({"profile": "leaky", "burst": -1}, "burst must be >= 0"),
        ({"profile": "leaky", "reject_status": 403}, "must be 503 or 429"),
        ({"profile": "github", "reject_status": 503}, "must be 403 or 429"),
        ({"profile": "ietf", "reject_status": 503}, "must be 429"),
        ({"long_limit": 10}, "apply to the ietf profile only"),
        ({"profile": "ietf", "long_limit": 0}, "long_limit must be >= 1"),
        ({"profile": "ietf", "window": 1.5}, "whole number of seconds"),
        ({"profile": "ietf", "window": 1, "long_window": 0.5}, "long_window"),
        ({"profile": "limits-moving", "window": 0.5}, "whole number of seconds"),
        ({"profile": "leaky", "retry_after": True}, "never sends Retry-After"),
        ({"profile": "bare429", "retry_after": True}, "never sends Retry-After"),
        ({"profile": "github", "ratelimit_headers": False}, "fixed profile only"),
        ({"profile": "leaky", "limit": 1, "window": 5000}, "lowest rate"),
    ],
)
def test_config_refuses_settings_that_do_not_fit_the_profile(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(SandboxConfigError, match=re.escape(message)) as info:
        SandboxConfig(**settings).validate()
    assert "\n" not in str(info.value)


def test_retry_after_and_reject_status_default_per_profile() -> None:
    wants = {"fixed": True, "leaky": False, "limits-fixed": True, "github": False, "ietf": True}
    for profile, expected in wants.items():
        assert SandboxConfig(profile=profile).effective_retry_after is expected, profile
    assert SandboxConfig(profile="github", retry_after=True).effective_retry_after is True
    assert SandboxConfig(profile="fixed", retry_after=False).effective_retry_after is False
    statuses = {p: SandboxConfig(profile=p).effective_reject_status for p in PROFILES}
    assert statuses == {p: 503 if p == "leaky" else 403 if p == "github" else 429 for p in PROFILES}


def parse(argv: list[str]) -> SandboxConfig:
    parser = argparse.ArgumentParser(prog="bulksend sandbox", exit_on_error=False)
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_cli_flags_reach_the_config() -> None:
    config = parse(shlex.split("maxtraffic --profile leaky --burst 5 --reject-status 429"))
    assert (config.profile, config.burst, config.reject_status) == ("leaky", 5, 429)
    config = parse(["traitly", "--profile", "ietf", "--long-limit", "9", "--long-window", "30"])
    assert (config.long_limit, config.long_window, config.retry_after) == (9, 30.0, None)
    assert parse(["maxtraffic", "--profile", "github", "--retry-after"]).retry_after is True
    assert parse(["maxtraffic", "--no-retry-after"]).retry_after is False
    with pytest.raises(SandboxConfigError, match="burst applies"):
        parse(["maxtraffic", "--burst", "2"])


def test_help_names_every_profile() -> None:
    parser = argparse.ArgumentParser(prog="bulksend sandbox")
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for profile in PROFILES:
        assert profile in text
    for flag in ("--burst", "--reject-status", "--long-limit", "--long-window", "--retry-after"):
        assert flag in text


def documented_sandbox_commands() -> Iterator[str]:
    text = (ROOT / "docs" / "providers.md").read_text()
    section = text.split("## The sandboxes", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith("bulksend sandbox "):
            yield line


def test_documented_sandbox_commands_are_valid() -> None:
    commands = list(documented_sandbox_commands())
    assert len(commands) >= 5
    profiles = set()
    for command in commands:
        config = parse(shlex.split(command)[2:])
        profiles.add(config.profile)
    assert profiles >= {"leaky", "limits-moving", "github", "ietf", "bare429"}


# ---------------------------------------------------------------------------- over HTTP


class Clocks:
    """A monotonic and a wall clock that move together."""

    def __init__(self) -> None:
        self.mono = FakeClock(1000.0)
        self.wall = FakeClock(WALL0)

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)
        self.wall.advance(seconds)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, sb: Sandbox, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Any]:
    url = sb.base_url + "/v1/notifications"
    async with http.post(url, data=SEND, headers=JSON if headers is None else headers) as r:
        return r.status, await r.read(), r.headers


async def get(http: aiohttp.ClientSession, sb: Sandbox, path: str) -> tuple[int, bytes, Any]:
    async with http.get(sb.base_url + path, headers=AUTH) as r:
        return r.status, await r.read(), r.headers


RATE_HEADERS = {"x-ratelimit-limit", "x-ratelimit-remaining", "retry-after", "ratelimit"}


def rate_headers_in(h: Any) -> set[str]:
    return RATE_HEADERS & {name.lower() for name in h}


@pytest.mark.parametrize("status", [None, 429])
async def test_http_leaky(http: aiohttp.ClientSession, tmp_path: Path, status: int | None) -> None:
    clocks = Clocks()
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, profile="leaky", limit=10, window=1,
        reject_status=status, clock=clocks.mono, wall=clocks.wall,
    ) as sb:  # fmt: skip
        code, _, h = await post(http, sb)
        assert code == 200
        assert rate_headers_in(h) == set()
        code, body, h = await post(http, sb)  # the same millisecond
        expected = status or 503
        assert code == expected
        assert body == nginx_error_page(expected)
        assert h["Content-Type"] == "text/html"
        assert rate_headers_in(h) == set()
        code, _, h = await post(http, sb, {"Content-Type": "application/json"})
        assert (code, rate_headers_in(h)) == (401, set())  # consumes nothing
        clocks.advance(0.1)
        assert (await post(http, sb))[0] == 200
        clocks.advance(0.05)
        assert (await get(http, sb, "/v1/visitors/abc"))[0] == expected  # one bucket per group
        assert sb.stats.rate_limited == 2
        assert sb.stats.rate_limited_by_group == {"api": 2}
        assert sb.stats.by_status[expected] == 2
        assert sb.stats.as_dict()["profile"] == "leaky"
        assert len(sb.ledger_entries()) == 2


@pytest.mark.parametrize("profile", ["limits-fixed", "limits-moving"])
async def test_http_limits(http: aiohttp.ClientSession, tmp_path: Path, profile: str) -> None:
    clocks = Clocks()
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, profile=profile, limit=2, window=10,
        clock=clocks.mono, wall=clocks.wall,
    ) as sb:  # fmt: skip

        def seen(h: Any) -> tuple[str, ...]:
            names = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
            return tuple(h[n] for n in (*names, "Retry-After"))

        code, _, h = await post(http, sb)
        assert (code, seen(h)) == (200, ("2", "1", "1800000011", "10"))
        clocks.advance(4)
        code, _, h = await post(http, sb)
        assert (code, seen(h)) == (200, ("2", "0", "1800000011", "6"))
        clocks.advance(5.5)
        code, body, h = await post(http, sb)
        assert (code, seen(h)) == (429, ("2", "0", "1800000011", "1"))
        assert h["Content-Type"] == "text/html; charset=utf-8"
        assert body == werkzeug_429_page("2 per 10 second")
        code, _, h = await post(http, sb, {"Content-Type": "application/json"})
        assert (code, seen(h)) == (401, ("2", "0", "1800000011", "1"))  # MaxTraffic: every answer
        clocks.advance(1)  # 10.5 s after the first request
        code, _, h = await post(http, sb)
        if profile == "limits-fixed":  # a new window from this request
            assert (code, seen(h)) == (200, ("2", "1", "1800000021", "10"))
        else:  # the request of 4 s is still in the trailing window
            assert (code, seen(h)) == (200, ("2", "0", "1800000015", "4"))
        assert sb.stats.rate_limited == 1
        assert len(sb.ledger_entries()) == 3


@pytest.mark.parametrize(("status", "retry_after"), [(None, None), (429, True)])
async def test_http_github(
    http: aiohttp.ClientSession, tmp_path: Path, status: int | None, retry_after: bool | None
) -> None:
    clocks = Clocks()
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, profile="github", limit=2, window=60,
        reject_status=status, retry_after=retry_after, clock=clocks.mono, wall=clocks.wall,
    ) as sb:  # fmt: skip
        code, _, h = await post(http, sb)
        assert code == 200
        assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"], h["x-ratelimit-used"]) == (
            "2",
            "1",
            "1",
        )
        assert (h["x-ratelimit-reset"], h["x-ratelimit-resource"]) == ("1800000061", "core")
        assert len(h.getall("X-RateLimit-Limit")) == 1  # the gateway's replace MaxTraffic's
        assert (await post(http, sb))[0] == 200
        clocks.advance(20.5)
        code, body, h = await post(http, sb)
        assert code == (status or 403)
        assert h["x-ratelimit-remaining"] == "0"
        assert orjson.loads(body)["message"].startswith("API rate limit exceeded")
        assert h.get("retry-after") == ("40" if retry_after else None)  # ceil(39.5)
        clocks.advance(39.5)
        code, _, h = await post(http, sb)
        assert (code, h["x-ratelimit-remaining"], h["x-ratelimit-reset"]) == (
            200,
            "1",
            "1800000121",
        )


async def test_http_ietf(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clocks = Clocks()
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, profile="ietf", limit=2, window=1, long_limit=3,
        long_window=10, clock=clocks.mono, wall=clocks.wall,
    ) as sb:  # fmt: skip
        policy = '"burst";q=2;w=1, "long";q=3;w=10'
        answers = [await post(http, sb) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 429]
        assert all(a[2]["RateLimit-Policy"] == policy for a in answers)
        assert [a[2]["RateLimit"] for a in answers] == [
            '"burst";r=1;t=1, "long";r=2;t=10',
            '"burst";r=0;t=1, "long";r=1;t=10',
            '"burst";r=0;t=1, "long";r=1;t=10',
        ]
        _, body, h = answers[2]
        assert h["Retry-After"] == "1"
        assert h["Content-Type"] == "application/problem+json"
        assert orjson.loads(body)["violated-policies"] == ["burst"]
        assert "Retry-After" not in answers[0][2]
        clocks.advance(1.25)
        code, _, h = await post(http, sb)
        assert (code, h["RateLimit"]) == (200, '"burst";r=1;t=1, "long";r=0;t=9')
        code, body, h = await post(http, sb)  # the long policy is spent
        assert (code, h["RateLimit"], h["Retry-After"]) == (
            429,
            '"burst";r=1;t=1, "long";r=0;t=9',
            "9",
        )
        assert orjson.loads(body)["violated-policies"] == ["long"]
        assert sb.stats.rate_limited == 2


async def test_http_bare429(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with sandbox("maxtraffic", tmp_path=tmp_path, profile="bare429", limit=1) as sb:
        code, _, h = await post(http, sb)
        assert (code, rate_headers_in(h)) == (200, set())
        code, body, h = await post(http, sb)
        assert (code, orjson.loads(body)) == (429, {"message": "Too Many Requests"})
        assert rate_headers_in(h) == set()
        code, _, h = await post(http, sb, {"Content-Type": "application/json"})
        assert (code, rate_headers_in(h)) == (401, set())


async def test_http_faults_keep_working_behind_a_gateway(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clocks = Clocks()
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, profile="limits-fixed", limit=5, window=10,
        faults={"fail_rate": 1.0}, clock=clocks.mono, wall=clocks.wall,
    ) as sb:  # fmt: skip
        answers = [await post(http, sb) for _ in range(3)]
        assert {a[0] for a in answers} <= {500, 503}
        assert [a[2]["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2"]
        # limits' Retry-After (10) is later than the injected 503's (1): the larger one stays
        assert [a[2]["Retry-After"] for a in answers] == ["10", "10", "10"]
        assert sb.stats.faults["500"] + sb.stats.faults["503"] == 3
        assert sb.ledger_entries() == []


async def test_http_storm_behind_a_gateway_counts_at_the_gateway(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clocks = Clocks()
    async with sandbox(
        "maxtraffic", tmp_path=tmp_path, profile="github", limit=5, window=60,
        faults={"storm_every": 10, "storm_for": 5}, clock=clocks.mono, wall=clocks.wall,
    ) as sb:  # fmt: skip
        clocks.advance(6)  # the storm holds [5, 10)
        code, _, h = await post(http, sb)
        assert (code, h["x-ratelimit-remaining"], h["Retry-After"]) == (429, "4", "4")
        code, _, h = await get(http, sb, "/v1/visitors/abc")  # not a send: no storm
        assert (code, h["x-ratelimit-remaining"]) == (200, "3")
        assert (sb.stats.storm_limited, sb.stats.rate_limited) == (1, 0)


async def test_http_every_group_gets_its_own_limiter(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    headers = {"x-api-key": KEY, "x-brand-id": "sandbox-brand", "Content-Type": "application/json"}
    body = orjson.dumps({"nv": [{"userID": "u1"}]})
    async with sandbox(
        "notifyvisitors", tmp_path=tmp_path, profile="ietf", window=1,
        group_limits={"user": 1, "event": 2},
    ) as sb:  # fmt: skip
        async with http.post(sb.base_url + "/api/v1/user/create", data=body, headers=headers) as r:
            assert r.status == 200
            assert r.headers["RateLimit-Policy"] == '"burst";q=1;w=1, "long";q=30;w=60'
        async with http.post(sb.base_url + "/api/v1/user/create", data=body, headers=headers) as r:
            assert r.status == 429
        ev = orjson.dumps({"nv": [{"userID": "u1", "event": "login"}]})
        async with http.post(sb.base_url + "/api/v1/event/track", data=ev, headers=headers) as r:
            assert r.headers["RateLimit-Policy"] == '"burst";q=2;w=1, "long";q=60;w=60'
        assert sb.stats.rate_limited_by_group == {"user": 1}
