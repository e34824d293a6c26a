"""Several worker processes share one provider quota through Redis (issue 8, end to end).

Four ``python -m bulksend send --shard I/4 --limiter redis://...`` processes send one campaign to
one sandbox process limited to 100 requests per 1 s window; then the same with Redis killed and
started again mid-send. Redis is a private ``redis-server`` on loopback (these tests kill it);
they skip, loudly, only when there is no ``redis-server`` binary.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

from bulksend.distributed.testing import RedisServer
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess, wait_until
from tests.conftest import ROOT, run_cli, write_campaign, write_recipients
from tests.peers.measure import most_in_any_span

LIMIT, WINDOW = 100, 1.0


def dataset(n_unique: int, seed: int = 8) -> list[tuple[str, str]]:
    """Unique rows plus 5 % exact copies (every shard deduplicates the whole file)."""
    rows = [(f"v{i:06d}", f"u{i:06d}") for i in range(n_unique)]
    rows += random.Random(seed).sample(rows, n_unique // 20)
    random.Random(seed + 1).shuffle(rows)
    return rows


class Run:
    """One campaign, one sandbox, N workers."""

    def __init__(self, tmp: Path, n_unique: int, workers: int) -> None:
        self.tmp = tmp
        self.rows = dataset(n_unique)
        self.n_unique = n_unique
        self.workers = workers
        recipients = write_recipients(tmp / "recipients.csv", self.rows)
        self.campaign = write_campaign(tmp, recipients, batch_size=10, in_flight=4)
        self.key = "mt-" + secrets.token_hex(12)
        self.ledger = tmp / "ledger.jsonl"
        self.stats_path = tmp / "sandbox-stats.json"
        self.sandbox = SandboxProcess(
            "maxtraffic",
            "--limit",
            str(LIMIT),
            "--window",
            str(WINDOW),
            "--api-key",
            self.key,
            "--ledger",
            str(self.ledger),
            "--stats",
            str(self.stats_path),
        )
        self.procs: list[subprocess.Popen[str]] = []
        self.outputs: list[tuple[str, str]] = []

    def start(self, redis_url: str) -> None:
        base_url = self.sandbox.start()
        env = {**os.environ, "MAXTRAFFIC_API_KEY": self.key}
        for i in range(self.workers):
            argv = [
                sys.executable,
                "-m",
                "bulksend",
                "send",
                str(self.campaign),
                "--shard",
                f"{i}/{self.workers}",
                "--limiter",
                redis_url,
                "--limit",
                f"{LIMIT}/{WINDOW:g}s",
                "--base-url",
                base_url,
                "--journal",
                str(self.tmp / f"shard-{i}.journal"),
                "--report",
                str(self.tmp / f"shard-{i}.csv"),
                "--summary-json",
                str(self.tmp / f"shard-{i}.summary.json"),
                "--progress",
                "never",
            ]
            self.procs.append(
                subprocess.Popen(
                    argv,
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )

    def wait(self, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                self.outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.sandbox.stop()
        return [p.returncode for p in self.procs]

    def requests(self) -> list[float]:
        """Arrival times (sandbox wall clock) of the accepted requests."""
        first: dict[int, float] = {}
        for entry in read_ledger(self.ledger):
            first.setdefault(entry["request"], entry["ts"])
        return sorted(first.values())

    def check_every_recipient_arrived_once(self) -> None:
        entries = read_ledger(self.ledger)
        ids = Counter(e["value"] for e in entries if e["kind"] == "id")
        uids = Counter(e["value"] for e in entries if e["kind"] == "uid")
        assert set(ids) == {f"v{i:06d}" for i in range(self.n_unique)}
        assert set(uids) == {f"u{i:06d}" for i in range(self.n_unique)}
        assert max(ids.values()) == 1
        assert max(uids.values()) == 1

    def sandbox_stats(self) -> dict[str, object]:
        stats: dict[str, object] = orjson.loads(self.stats_path.read_bytes())
        return stats


def test_four_workers_share_one_quota_exactly(redis_server: RedisServer, tmp_path: Path) -> None:
    run = Run(tmp_path, n_unique=9_000, workers=4)  # ~900 requests: about 9.5 s at the limit
    run.start(redis_server.url)
    codes = run.wait()
    assert codes == [0, 0, 0, 0], [err[-2000:] for _, err in run.outputs]

    # the sandbox's own fixed windows never saw more than the limit: not one 429
    stats = run.sandbox_stats()
    assert stats["rate_limited"] == 0
    times = run.requests()
    assert len(times) == stats["accepted"]
    started = stats.get("started_at")
    if isinstance(started, float):  # windows aligned to the sandbox's start
        per_window = Counter(int((t - started) // WINDOW) for t in times)
        assert max(per_window.values()) <= LIMIT
    # nor did any window of any other phase (ledger times are taken a moment after arrival)
    assert most_in_any_span(times, WINDOW - 0.02) <= LIMIT

    # the combined rate, away from the ramp-up and the tail, is at least 95 % of the quota
    lo, hi = times[0] + 1.0, times[-1] - 1.0
    steady = sum(lo <= t < hi for t in times) / (hi - lo)
    assert steady >= 0.95 * LIMIT / WINDOW, f"{steady:.1f} requests/s"

    # every unique recipient arrived exactly once across the shards
    run.check_every_recipient_arrived_once()

    # and the merged report counts match
    summaries = [tmp_path / f"shard-{i}.summary.json" for i in range(4)]
    reports = [tmp_path / f"shard-{i}.csv" for i in range(4)]
    total = tmp_path / "total.json"
    merged = run_cli(
        "report", "merge", *map(str, summaries + reports), "--summary-json", str(total)
    )
    assert merged.status == 0, merged.stderr
    data = orjson.loads(total.read_bytes())
    assert data["read"] == len(run.rows)
    assert data["delivered"] == 9_000
    assert data["duplicates"] == len(run.rows) - 9_000
    assert data["requests"] == len(times)  # no retries: every request was accepted
    assert data["throttled"] == 0
    shard_counts = [orjson.loads(p.read_bytes())["delivered"] for p in summaries]
    assert all(c > 1_500 for c in shard_counts)  # every worker did its share


def test_redis_restarted_mid_send_pauses_the_workers_and_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    run = Run(tmp_path, n_unique=4_000, workers=3)
    run.start(redis_server.url)
    # let them send about a second's worth, then take Redis away (its data dies with it)
    assert wait_until(
        lambda: run.ledger.exists() and run.ledger.stat().st_size > 2_000 * 60, timeout=20
    )
    redis_server.kill()
    killed = time.time()
    time.sleep(1.5)
    redis_server.start()
    restarted = time.time()
    codes = run.wait()
    assert codes == [0, 0, 0], [err[-2000:] for _, err in run.outputs]

    times = run.requests()
    # nothing was sent while Redis was away (requests in flight at the kill aside)
    assert not [t for t in times if killed + 0.25 < t < restarted]
    assert any(t > restarted for t in times)
    # every worker noticed, paused and resumed; the empty Redis was reseeded
    for _, err in run.outputs:
        assert "limiter_unavailable" in err
        assert "limiter_restored" in err
    assert any("limiter_state_lost" in err for _, err in run.outputs)
    # nothing lost, nothing doubled
    run.check_every_recipient_arrived_once()
    assert run.sandbox_stats()["rate_limited"] == 0


def test_a_sandbox_send_through_the_shared_limiter_from_the_campaign_file(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`[send] limiter` in the campaign file; with --sandbox the throw-away key is fingerprinted."""
    rows = [(f"v{i}", f"u{i}") for i in range(300)]
    extra = f'limiter = "{redis_server.url}"'
    campaign = write_campaign(
        tmp_path, write_recipients(tmp_path / "r.csv", rows), batch_size=30, extra=extra
    )
    summary = tmp_path / "s.json"
    r = run_cli("send", str(campaign), "--sandbox", "--summary-json", str(summary))
    assert r.status == 0, r.stderr
    assert orjson.loads(summary.read_bytes())["delivered"] == 300
