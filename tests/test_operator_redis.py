"""What an operator ran into using ``--state`` / ``--workers`` for real (issue 17), each as
real processes against a real ``redis-server`` and a sandbox process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

from bulksend.distributed.testing import RedisServer
from bulksend.sandbox.testing import wait_until
from tests.conftest import KEY, run_bulksend, write_campaign, write_recipients
from tests.test_workers_redis import Campaign, _no_process_left  # noqa: F401 (its fixture)

NO_REDIS = (
    "REDIS UNAVAILABLE -- these tests did NOT run: install redis-server "
    "(apt-get install redis-server; .ci/run does it)"
)


def private_redis(*extra: str) -> RedisServer:
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    return RedisServer(extra=list(extra))


@pytest.mark.parametrize("flag", ["--state", "--workers"])
def test_a_database_redis_refuses_is_one_line_not_a_traceback(tmp_path: Path, flag: str) -> None:
    recipients = write_recipients(tmp_path / "r.csv", [("v1", "u1"), ("v2", "u2")])
    campaign = write_campaign(tmp_path, recipients)
    with private_redis() as server:
        url = f"redis://127.0.0.1:{server.port}/99"  # (16 databases: 0-15)
        sent = run_bulksend(
            "send", str(campaign), flag, url, "--base-url", "http://127.0.0.1:9",
            "--progress", "never", "-q",
            env={"MAXTRAFFIC_API_KEY": KEY},
        )  # fmt: skip
    assert "Traceback" not in sent.stderr, sent.stderr
    assert sent.returncode == 4, sent.stderr
    assert sent.stderr.splitlines() == [
        f"bulksend: state {url} refused the state (DB index is out of range); check the URL "
        "(its database number) and the user's rights"
    ]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--idle", "0", "a number > 0"),  # (every worker would take every batch over at once)
        ("--idle", "-1", "a number > 0"),
        ("--idle", "nan", "a number > 0"),
        ("--wait", "-1", "a number >= 0"),
    ],
)
def test_worker_refuses_an_idle_or_wait_that_cannot_work(
    flag: str, value: str, expected: str
) -> None:
    ran = run_bulksend("worker", "redis://127.0.0.1:9/0", flag, value)
    assert ran.returncode == 2, ran.stderr
    assert ran.stderr.splitlines()[-1] == (
        f"bulksend worker: error: argument {flag}: expected {expected}, got '{value}'"
    )


def test_a_pause_longer_than_idle_takes_no_batch_over(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A paused worker keeps refreshing what it holds: a pause longer than ``--idle`` (the
    normal case: minutes against 30 s) makes no worker take another's batches over after
    ``bulksend resume`` (before, each worker's feed stood still while its engine queue was
    full, and the others took its batches over, saying so in warnings and resending what was
    in flight)."""
    run = Campaign(tmp_path, n_unique=3_000, limit=100)
    run.plan(redis_server.url)
    for i in range(2):
        run.worker(redis_server.url, f"w{i}", "--idle", "1")
    wait_until(lambda: run.delivered() > 300, timeout=20, interval=0.1)
    paused = run_bulksend("pause", redis_server.url, "--campaign", "E2E")
    assert paused.returncode == 0, paused.stderr
    time.sleep(4)  # four times --idle
    during = run_bulksend("status", redis_server.url, "E2E")
    resumed = run_bulksend("resume", redis_server.url, "--campaign", "E2E")
    assert resumed.returncode == 0, resumed.stderr
    assert run.planner is not None
    try:
        _, err = run.planner.communicate(timeout=60)
        workers = {name: p.communicate(timeout=60)[1] for name, p in run.workers.items()}
    finally:
        run.stop()
    assert run.planner.returncode == 0, err[-3000:]
    for name, werr in workers.items():
        assert "taken over" not in werr, werr[-3000:]
        assert run.workers[name].returncode == 0, werr[-3000:]
    assert "seen 0 s ago" in during.stdout or "seen 1 s ago" in during.stdout, during.stdout
    summary = run.check()
    assert summary["possible_duplicates"] == 0


def test_a_batch_both_workers_delivered_is_reported_as_arrived_twice() -> None:
    """The batch changed hands twice (w0, w1, w0 again: seen with two workers and a tiny
    --idle): w0's record says delivered, w1's resend -- delivered too -- was kept apart as
    the late outcome. Both requests were answered, so the rows arrived twice: reported so
    (before, w0's record stood and the duplicate went unreported)."""
    from bulksend.workers.late import reconcile

    mine = {"state": "delivered", "reason": "", "http": 200, "size": 3}
    late = {
        "worker": "w1",
        "record": {
            "state": "delivered",
            "reason": "may have arrived twice: resent after run 2 was interrupted",
            "http": 200,
        },
        "parts": {},
    }
    record, parts = reconcile(mine, {}, late)
    assert record["state"] == "delivered"
    assert record["reason"] == (
        "may have arrived twice: delivered by two workers' requests (worker w1's too: the "
        "batch was taken over while it was in flight)"
    )
    assert (record["size"], parts) == (3, {})
    # split: the row both delivered is marked, the others stand
    split = {"state": "split", "reason": "", "http": None}
    parts_in = {
        1: {"state": "delivered", "reason": "", "http": 200},
        2: {"state": "invalid", "reason": "bad id", "http": 422},
    }
    their_parts = {"9:1": {"state": "delivered", "reason": "", "http": 200}}
    record, parts = reconcile(split, parts_in, {**late, "record": split, "parts": their_parts})
    assert parts[1]["reason"].startswith("may have arrived twice: delivered by two workers'")
    assert parts[2] == parts_in[2]


def test_a_delivery_reported_from_the_late_outcome_is_not_counted_twice() -> None:
    """A takeover that did not send the rows (the late outcome said they were delivered) and
    the late outcome itself: one request, so not a duplicate."""
    from bulksend.workers.late import reconcile

    told = {
        "state": "delivered",
        "reason": "delivered by worker w0's request (in flight when this batch was taken over "
        "from it); not sent again",
        "http": None,
    }
    late = {"worker": "w0", "record": {"state": "delivered", "reason": "", "http": 200}}
    record, _ = reconcile(told, {}, late)
    assert record["reason"] == told["reason"]
