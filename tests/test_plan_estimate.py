"""The send plan's estimated duration: the scheduler's own pacing, checked against a real send."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from bulksend.dispatch.plan import Plan
from bulksend.providers.base import Limit
from bulksend.ratelimit.scheduler import GroupPolicy
from tests.conftest import run_cli, write_campaign, write_recipients


def plan(**requests: int) -> Plan:
    return Plan(requests=Counter(requests))


def test_requests_are_spread_evenly_over_the_window_with_its_margin() -> None:
    policies = {"api": GroupPolicy(Limit(600, 60.0))}
    # one request every (60 s + 50 ms) / 600; a send that fits in one window is not instant
    assert plan(api=400).estimate_seconds(policies) == pytest.approx(399 * 60.05 / 600)
    assert plan(api=1200).estimate_seconds(policies) == pytest.approx(1199 * 60.05 / 600)
    assert plan(api=1).estimate_seconds(policies) == 0.0


def test_the_users_ceiling_slows_the_estimate_when_lower() -> None:
    slow = {"api": GroupPolicy(Limit(600, 60.0), ceiling=2.0)}  # 2/s, with a 1 % margin
    assert plan(api=101).estimate_seconds(slow) == pytest.approx(100 * 1.01 / 2.0)
    fast = {"api": GroupPolicy(Limit(600, 60.0), ceiling=1000.0)}
    assert plan(api=101).estimate_seconds(fast) == pytest.approx(100 * 60.05 / 600)


def test_groups_run_side_by_side_and_the_longest_counts() -> None:
    policies = {"user": GroupPolicy(Limit(100, 60.0)), "event": GroupPolicy(Limit(500, 60.0))}
    p = plan(user=50, event=1000)
    assert p.estimate_seconds(policies) == pytest.approx(999 * 60.05 / 500)
    assert plan(other=10).estimate_seconds(policies) == 0.0  # no policy known: no estimate


def test_the_estimate_matches_a_real_send_paced_by_the_ceiling(tmp_path: Path) -> None:
    rows = [(f"v{i}", f"u{i}") for i in range(55)]
    campaign = write_campaign(tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=5)
    figures = tmp_path / "plan.json"
    checked = run_cli("validate", str(campaign), "--rate", "5/1s", "--json", str(figures), "-q")
    assert checked.status == 0, checked.stderr
    estimate = orjson.loads(figures.read_bytes())["estimated_seconds"]
    assert estimate == pytest.approx(10 * 0.2, abs=0.05)  # 11 requests, 5 a second

    summary = tmp_path / "summary.json"
    sent = run_cli(
        "send", str(campaign), "--sandbox", "--rate", "5/1s", "--no-journal",
        "--summary-json", str(summary), "-q",
    )  # fmt: skip
    assert sent.status == 0, sent.stderr
    done = orjson.loads(summary.read_bytes())
    assert done["requests"] == 11
    # pacing never runs ahead of the estimate; a slow machine may only make it late
    assert estimate - 0.1 <= done["elapsed"] <= estimate * 1.5 + 0.5


def test_a_stated_limit_is_what_the_estimate_assumes() -> None:
    # the user knows the provider allows 1,200 a minute: the estimate assumes that, not 600
    stated = {"api": GroupPolicy(Limit(600, 60.0), stated=Limit(1200, 60.0))}
    assert plan(api=101).estimate_seconds(stated) == pytest.approx(100 * 60.05 / 1200)
    # and a stated limit below the documented one slows it
    lower = {"api": GroupPolicy(Limit(600, 60.0), stated=Limit(60, 60.0))}
    assert plan(api=101).estimate_seconds(lower) == pytest.approx(100 * 60.05 / 60)
