"""A worker stalled past ``--idle`` whose request had really been answered (bulksend.workers.late),
with real processes against a real ``redis-server`` and a sandbox process.

Worker A sends the campaign's one batch; the sandbox accepts it (ledger) and holds the answer
(``--slow-rate 1``); A is stopped (SIGSTOP) before it reads it. Worker B takes the batch over
and resends it as a possible duplicate; the sandbox answers B's resend 500 (``--fail-rate``
with a seed whose first draw passes and the next ones fail). Whatever order the two outcomes
come in, the campaign ends with the rows delivered -- A's request delivered them -- and no
request for them is sent a third time.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis

from bulksend.distributed.testing import RedisServer
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import wait_until
from bulksend.state.redis_journal import StateKeys
from bulksend.workers.late import delivered_late, reconcile
from bulksend.workers.status import progress, read_status
from tests.test_workers_redis import Campaign, _no_process_left  # noqa: F401

FAILED = {"state": "failed", "reason": "500 injected (gave up after 1 attempts)", "http": 500}
LATE = {"worker": "A", "record": {"state": "delivered", "reason": "", "http": 200}, "parts": {}}


# -- the pure decisions -----------------------------------------------------------------------
def test_a_late_delivery_turns_a_failed_resend_into_delivered() -> None:
    record, parts = reconcile({**FAILED, "size": 3, "doubt": "resent ..."}, {}, LATE)
    assert record["state"] == "delivered"
    assert record["reason"] == (
        "delivered by worker A's request (in flight when another worker took the batch over); "
        "the resend ended failed: 500 injected (gave up after 1 attempts)"
    )
    assert record["http"] == 200
    assert (record["size"], record["doubt"]) == (3, "resent ...")  # the rest stays
    assert parts == {}


def test_a_resend_that_may_have_arrived_too_makes_a_possible_duplicate() -> None:
    unknown = {"state": "unknown", "reason": "timed out", "http": None}
    record, _ = reconcile(unknown, {}, LATE)
    assert record["state"] == "delivered"
    assert record["reason"].startswith("may have arrived twice: delivered by worker A's")


@pytest.mark.parametrize(
    ("record", "late"),
    [
        ({"state": "delivered", "reason": "may have arrived twice: x"}, LATE),  # B's stands
        ({"state": "in_flight"}, LATE),  # not settled yet
        (FAILED, None),
        (FAILED, {**LATE, "record": {"state": "failed", "reason": "503"}}),  # A's failed too
        (FAILED, {**LATE, "record": {"state": "unknown", "reason": "timeout"}}),
    ],
)
def test_a_late_outcome_that_delivered_nothing_more_changes_nothing(
    record: dict[str, object], late: dict[str, object] | None
) -> None:
    assert reconcile(record, {}, late) == (record, {})


def test_split_outcomes_are_joined_row_by_row() -> None:
    """A bisected a 422 (rows 2 and 3 delivered, 4 invalid); B's resend failed whole."""
    late = {
        "worker": "A",
        "record": {"state": "split"},
        "parts": {
            "1:2": {"state": "delivered", "reason": "", "http": 200},
            "1:3": {"state": "delivered", "reason": "", "http": 200},
            "1:4": {"state": "invalid", "reason": "bad id", "http": 422},
        },
    }
    record, parts = reconcile(FAILED, {}, late)
    assert record["state"] == "split"
    assert {line: p["state"] for line, p in parts.items()} == {
        2: "delivered",
        3: "delivered",
        4: "failed",
    }
    # and B split while A delivered the whole batch: B's delivered rows stay delivered, and
    # since both requests delivered them, they arrived twice
    mine = {2: {"state": "delivered", "reason": "", "http": 200}, 3: FAILED}
    record, parts = reconcile({"state": "split"}, mine, LATE)
    assert (parts[2]["state"], parts[2]["http"]) == ("delivered", 200)
    assert parts[2]["reason"].startswith("may have arrived twice: delivered by two workers'")
    assert parts[3]["state"] == "delivered"
    assert parts[3]["reason"].startswith("delivered by worker A's request")


def test_a_resend_asks_whether_the_rows_were_delivered_late() -> None:
    assert delivered_late(LATE, [2, 3]).startswith("delivered by worker A's request")
    assert delivered_late(LATE, [2], unanswered=True).startswith("may have arrived twice")
    assert delivered_late(None, [2]) == ""
    assert delivered_late({**LATE, "record": {"state": "failed"}}, [2]) == ""
    split = {"worker": "A", "record": {"state": "split"}, "parts": {"1:2": LATE["record"]}}
    assert delivered_late(split, [2]) != ""
    assert delivered_late(split, [2, 3]) == ""  # row 3: no outcome of A's


async def test_status_counts_a_late_delivery_as_delivered(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    keys = StateKeys("maxtraffic", "late", "f00d:beef")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.hset(keys.work, mapping={"rows": 20, "started": 1.0, "all_enqueued": 1})
        await client.hset(keys.batches, "1", orjson.dumps({**FAILED, "size": 10}))
        await client.hset(keys.batches, "2", orjson.dumps({**FAILED, "size": 10}))
        await client.hset(keys.late, "1", orjson.dumps(LATE))
        shown = progress(await read_status(client, keys), now=2.0)
    finally:
        await client.aclose()
    assert (shown.settled, shown.delivered) == (20, 10)


# -- real processes ---------------------------------------------------------------------------

#: the sandbox's faults: each send request draws from seed 22 -- the 1st passes (A's), the
#: 2nd and 3rd fail with a 500 (B's); each request waits 1.2 s before it is handled, and an
#: accepted one is answered 0.6 s after the ledger has it
FAULTS = (
    "--fail-rate", "0.5", "--seed", "22", "--slow-rate", "1", "--slow-ms", "600",
    "--latency-ms", "1200",
)  # fmt: skip


def _held_by(url: str, name: str) -> bool:
    """Whether worker ``name`` holds a batch of the campaign's stream."""
    client = redis.Redis.from_url(url)
    try:
        for stream in client.keys("bulksend:state:*:stream"):
            pending = client.xpending_range(stream, "workers", "-", "+", 10)
            if any(p["consumer"] == name.encode() for p in pending):
                return True
        return False
    finally:
        client.close()


def _record(url: str) -> dict[str, object] | None:
    """The record of the campaign's one batch (None before the planner queued it)."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.keys("bulksend:state:*:batches"):
            raw = client.hget(key, "1")
            return orjson.loads(raw) if raw else None
        return None
    finally:
        client.close()


def _late(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        keys = client.keys("bulksend:state:*:late")
        assert len(keys) == 1, keys
        got = cast("dict[bytes, bytes]", client.hgetall(keys[0]))  # (the client does not decode)
        return {k.decode(): orjson.loads(v) for k, v in got.items()}
    finally:
        client.close()


def _stall_a(run: Campaign, url: str) -> subprocess.Popen[str]:
    """A takes the batch and sends it; once the sandbox has accepted it (the ledger), A is
    stopped before its answer comes, and B is started to take the batch over."""
    run.plan(url)
    a = run.worker(url, "A", "--idle", "1")
    wait_until(lambda: run.delivered() > 0, timeout=30, interval=0.02)
    os.kill(a.pid, signal.SIGSTOP)
    held = _record(url)
    assert held is not None
    assert held["state"] == "in_flight"
    run.worker(url, "B", "--idle", "1")
    wait_until(lambda: _held_by(url, "B"), timeout=30, interval=0.05)
    # B's own in-flight mark (its run), written just before its resend goes out
    wait_until(lambda: (_record(url) or {}).get("run") != held["run"], timeout=30, interval=0.02)
    time.sleep(0.2)
    return a


def _report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _sent_once(run: Campaign) -> None:
    ids = Counter(e["value"] for e in read_ledger(run.ledger) if e["kind"] == "id")
    assert ids == Counter({f"v{i:06d}": 1 for i in range(run.n_unique)})


def test_a_late_delivery_known_before_the_resend_s_retry_ends_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A's answer is written (late) while B's resend is at the sandbox; B's resend fails,
    and before its retry B finds A's outcome: it reports the rows delivered, not sent again."""
    run = Campaign(tmp_path, n_unique=10, faults=FAULTS)
    a = _stall_a(run, redis_server.url)
    os.kill(a.pid, signal.SIGCONT)  # B's resend is at the sandbox (1.2 s): A answers first
    status, err, codes = run.finish()
    assert status == 0, err[-3000:]
    assert codes == {"A": 0, "B": 0}
    report = _report(tmp_path / "report.csv")
    delivered = [r for r in report if r["status"] == "delivered"]
    assert len(delivered) == 10
    assert all(r["reason"].startswith("delivered by worker A's request") for r in delivered)
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["delivered"] == 10
    assert summary["failed"] == summary["unknown"] == 0
    assert summary["possible_duplicates"] == 0  # B's resend was answered 500: it did not arrive
    _sent_once(run)
    stats = orjson.loads(run.stats_path.read_bytes())
    assert stats["accepted"] == 1
    assert stats["faults"]["500"] == 1  # two requests in all: A's, and B's one resend
    assert stats["requests"] == 2


def test_a_late_delivery_known_after_the_planner_ended_is_reported_by_the_next_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """B's resend fails (one attempt) and the planner ends while A is still stopped: it
    reports the rows failed, as it knows them. A then goes on and writes its outcome; the same
    command run again reports them delivered (by A, earlier) and sends nothing."""
    run = Campaign(tmp_path, n_unique=10, faults=FAULTS, extra="max_attempts = 1")
    a = _stall_a(run, redis_server.url)
    assert run.planner is not None
    _, err = run.planner.communicate(timeout=60)
    assert run.planner.returncode == 4, err[-3000:]  # (all failed, none delivered)
    first = _report(tmp_path / "report.csv")
    assert Counter(r["status"] for r in first) == {"failed": 10, "invalid": 2}
    _, b_err = run.workers["B"].communicate(timeout=30)
    assert run.workers["B"].returncode == 0
    os.kill(a.pid, signal.SIGCONT)
    _, a_err = a.communicate(timeout=30)
    assert a.returncode == 0, a_err[-3000:]
    assert "taken over by another worker" in a_err
    late = _late(redis_server.url)
    assert [v["record"]["state"] for v in late.values()] == ["delivered"]
    again = run.plan(redis_server.url)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err[-3000:]
    report = _report(tmp_path / "report.csv")
    assert Counter(r["status"] for r in report) == {"delivered": 10, "invalid": 2}
    reasons = {r["reason"] for r in report if r["status"] == "delivered"}
    assert len(reasons) == 1
    assert next(iter(reasons)).startswith("delivered by worker A's request")
    assert "the resend ended failed" in next(iter(reasons))
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["delivered"] == summary["delivered_earlier"] == 10
    assert summary["possible_duplicates"] == 0
    assert not list(tmp_path.rglob("*dead-letter*"))  # nothing left to send again
    time.sleep(0.2)
    run.stop()
    _sent_once(run)
    stats = orjson.loads(run.stats_path.read_bytes())
    assert stats["accepted"] == 1
    assert stats["faults"]["500"] == 1, b_err[-3000:]
    assert stats["requests"] == 2
