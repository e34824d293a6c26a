"""Many workers, one campaign (issue 17): a planner and worker processes share the work
through a Redis Stream, against a real ``redis-server`` and a sandbox process.

``bulksend send CAMPAIGN --workers URL`` plans (reads, deduplicates, queues batches) and reports;
``bulksend worker URL`` processes send. In every case: each unique recipient arrives exactly once
in the sandbox's ledger, except rows the report counts as possible duplicates; the report
accounts for every row; the sandbox never answered 429 (the quota is shared through Redis).
"""

from __future__ import annotations

import csv
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

from bulksend.distributed.testing import RedisServer
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess, wait_until
from tests.conftest import ROOT, write_campaign, write_recipients

LIMIT, WINDOW = 200, 1.0
NO_REDIS = (
    "REDIS UNAVAILABLE -- the planner/worker tests did NOT run: install redis-server "
    "(apt-get install redis-server; .ci/run does it)"
)


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    yield
    while Campaign.started:
        Campaign.started.pop().stop()


def dataset(n_unique: int, seed: int = 17) -> list[tuple[str, str]]:
    """Unique rows plus 5 % exact copies and two bad rows."""
    rows = [(f"v{i:06d}", f"u{i:06d}") for i in range(n_unique)]
    rows += random.Random(seed).sample(rows, n_unique // 20)
    random.Random(seed + 1).shuffle(rows)
    return [*rows[:10], ("", ""), *rows[10:], ("", "")]


class Campaign:
    """One campaign, one sandbox process, a planner and workers (real processes)."""

    #: every campaign started, so that a test that fails half-way leaves no process behind
    #: (``_no_process_left``): a leaked ``Popen`` fails the next test with a ResourceWarning
    started: ClassVar[list[Campaign]] = []

    def __init__(
        self,
        tmp: Path,
        n_unique: int,
        *,
        limit: int | None = LIMIT,
        faults: tuple[str, ...] = (),
        extra: str = "",
    ) -> None:
        """``faults``: more options of the sandbox; ``extra``: more lines under ``[send]``."""
        Campaign.started.append(self)
        self.tmp = tmp
        self.rows = dataset(n_unique)
        self.n_unique = n_unique
        recipients = write_recipients(tmp / "recipients.csv", self.rows)
        self.campaign = write_campaign(tmp, recipients, batch_size=10, in_flight=4, extra=extra)
        self.key = "mt-" + secrets.token_hex(12)
        self.ledger = tmp / "ledger.jsonl"
        self.stats_path = tmp / "sandbox-stats.json"
        limits = ["--limit", str(limit), "--window", str(WINDOW)] if limit else []
        self.limit = limit
        self.sandbox = SandboxProcess(
            "maxtraffic",
            *limits,
            "--api-key",
            self.key,
            "--ledger",
            str(self.ledger),
            "--stats",
            str(self.stats_path),
            *faults,
        )
        self.base_url = self.sandbox.start()
        self.env = {**os.environ, "MAXTRAFFIC_API_KEY": self.key, "PYTHONPATH": str(ROOT)}
        self.planner: subprocess.Popen[str] | None = None
        self.workers: dict[str, subprocess.Popen[str]] = {}

    def plan(self, url: str) -> subprocess.Popen[str]:
        argv = [
            sys.executable,
            "-m",
            "bulksend",
            "send",
            str(self.campaign),
            "--workers",
            url,
            "--base-url",
            self.base_url,
            "--report",
            str(self.tmp / "report.csv"),
            "--summary-json",
            str(self.tmp / "summary.json"),
            "--progress",
            "never",
            *(["--limit", f"{self.limit}/{WINDOW:g}s"] if self.limit else []),
        ]
        self.planner = self._start(argv)
        return self.planner

    def worker(self, url: str, name: str, *more: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "bulksend", "worker", url, "--name", name, *more]
        self.workers[name] = self._start(argv)
        return self.workers[name]

    def _start(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def delivered(self) -> int:
        return len(read_ledger(self.ledger)) // 2 if self.ledger.exists() else 0

    def finish(self, timeout: float = 60.0) -> tuple[int, str, dict[str, int]]:
        """Wait for the planner and the workers; the planner's status and stderr, and the
        workers' exit statuses."""
        assert self.planner is not None
        try:
            _, err = self.planner.communicate(timeout=timeout)
            codes = {}
            for name, p in self.workers.items():
                killed = p.returncode is not None
                _, werr = p.communicate(timeout=timeout)
                assert killed or p.returncode == 0, werr[-2000:]
                codes[name] = p.returncode
        finally:
            self.stop()
        return self.planner.returncode, err, codes

    def stop(self) -> None:
        """Kill what still runs and close every pipe (idempotent)."""
        for p in [*([self.planner] if self.planner else []), *self.workers.values()]:
            if p.poll() is None:
                p.kill()
            p.communicate()
        self.sandbox.stop()

    def check(self) -> dict[str, Any]:
        """Exactly once (but for possible duplicates), every row reported, no 429."""
        summary: dict[str, Any] = orjson.loads((self.tmp / "summary.json").read_bytes())
        with (self.tmp / "report.csv").open(newline="") as f:
            report = list(csv.DictReader(f))
        assert len(report) == len(self.rows) + 0 == summary["read"]
        statuses = Counter(r["status"] for r in report)
        assert statuses["delivered"] == self.n_unique, statuses
        assert statuses["invalid"] == 2
        assert statuses["duplicate"] == len(self.rows) - 2 - self.n_unique
        twice = {r["id"] for r in report if r["reason"].startswith("may have arrived twice")}
        assert summary["possible_duplicates"] == len(twice)
        entries = read_ledger(self.ledger)
        ids = Counter(e["value"] for e in entries if e["kind"] == "id")
        assert set(ids) == {f"v{i:06d}" for i in range(self.n_unique)}
        again = {v for v, n in ids.items() if n > 1}
        assert again <= twice, sorted(again - twice)[:5]
        stats = orjson.loads(self.stats_path.read_bytes())
        assert stats["rate_limited"] == 0
        return summary


def test_planner_and_four_workers(redis_server: RedisServer, tmp_path: Path) -> None:
    # 50 requests a second: the send lasts 6 s, so `status` (a new process) sees it running
    run = Campaign(tmp_path, n_unique=3_000, limit=50)
    for i in range(4):
        run.worker(redis_server.url, f"w{i}")
    run.plan(redis_server.url)
    wait_until(lambda: run.delivered() > 500, timeout=20, interval=0.2)
    shown = subprocess.run(
        [sys.executable, "-m", "bulksend", "status", redis_server.url, "E2E"],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    assert "settled" in shown.stdout
    assert "worker w" in shown.stdout
    status, err, _ = run.finish()
    assert status == 0, err[-3000:]
    summary = run.check()
    assert summary["possible_duplicates"] == 0
    assert summary["requests"] == 300
    finished = [line for line in err.splitlines() if "send_finished" in line]
    assert len(finished) == 1, finished
    assert orjson.loads(finished[0])["requests"] == 300  # (the workers' requests counted)


def test_a_worker_killed_mid_send_is_taken_over(redis_server: RedisServer, tmp_path: Path) -> None:
    run = Campaign(tmp_path, n_unique=3_000)
    run.plan(redis_server.url)
    for i in range(3):
        run.worker(redis_server.url, f"w{i}", "--idle", "1")
    wait_until(lambda: run.delivered() > 600, timeout=20, interval=0.2)
    os.kill(run.workers["w0"].pid, signal.SIGKILL)
    run.workers["w0"].wait()
    assert run.workers["w0"].returncode == -signal.SIGKILL
    status, err, codes = run.finish()
    assert status == 0, err[-3000:]
    assert codes["w1"] == codes["w2"] == 0
    run.check()


def test_the_planner_killed_and_started_again_resumes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run = Campaign(tmp_path, n_unique=3_000)
    first = run.plan(redis_server.url)
    for i in range(2):
        run.worker(redis_server.url, f"w{i}")
    wait_until(lambda: run.delivered() > 500, timeout=20, interval=0.2)
    first.kill()
    first.communicate()
    run.plan(redis_server.url)
    status, err, _ = run.finish()
    assert status == 0, err[-3000:]
    summary = run.check()
    assert summary["delivered_earlier"] > 0


def test_a_worker_added_half_way_takes_its_share(redis_server: RedisServer, tmp_path: Path) -> None:
    run = Campaign(tmp_path, n_unique=3_000, limit=100)
    run.plan(redis_server.url)
    run.worker(redis_server.url, "first")
    wait_until(lambda: run.delivered() > 1_000, timeout=20, interval=0.2)
    run.worker(redis_server.url, "late")
    status, err, _ = run.finish()
    assert status == 0, err[-3000:]
    run.check()
    done = {name: p.returncode for name, p in run.workers.items()}
    assert done == {"first": 0, "late": 0}


def test_redis_restarted_with_aof_loses_nothing(tmp_path: Path) -> None:
    if not RedisServer.available():
        pytest.skip(NO_REDIS)
    with RedisServer(extra=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        run = Campaign(tmp_path, n_unique=3_000, limit=100)
        run.plan(server.url)
        for i in range(2):
            run.worker(server.url, f"w{i}")
        wait_until(lambda: run.delivered() > 800, timeout=20, interval=0.2)
        server.stop()
        time.sleep(0.5)
        server.start()
        status, err, _ = run.finish()
        assert status == 0, err[-3000:]
        run.check()


def test_the_shell_recipe_runs(redis_server: RedisServer, tmp_path: Path) -> None:
    """samples/workers/workers.sh, as docs/scaling.md shows it: a planner and 3 workers."""
    run = Campaign(tmp_path, n_unique=500, limit=None)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **run.env,
        "REDIS_URL": redis_server.url,
        "BULKSEND_BASE_URL": run.base_url,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
    }
    try:
        done = subprocess.run(
            ["sh", str(ROOT / "samples/workers/workers.sh"), str(run.campaign), "3"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        run.sandbox.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("report.csv", "summary.json"):
        (tmp_path / "out" / name).rename(tmp_path / name)
    run.check()


def test_four_workers_never_exceed_a_shared_quota(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A planner and 4 workers share a 200 requests/s quota through the Redis gate for ~4 s:
    the sandbox (limited to 200/s, its own limiter) refuses nothing. The utilisation is
    printed, not asserted (timing on a loaded machine): benchmarks.workers records it."""
    from benchmarks.common import write_rows
    from benchmarks.workers import run_once

    rows = write_rows(tmp_path / "rows.csv", 8_000)
    m = run_once(
        tmp_path, rows, 8_000, 4, batch_size=10, in_flight=8, quota=LIMIT,
        redis_url=redis_server.url,
    )  # fmt: skip
    assert m.rejected == 0
    assert m.requests == 800
    assert m.recipients == 8_000
    print(f"utilisation {m.utilisation(LIMIT):.3f} over {m.span:.2f} s")
