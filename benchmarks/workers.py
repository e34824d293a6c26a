"""One planner and 1, 2, 4 workers (real processes, a private ``redis-server``): recipients/s
against an unthrottled sandbox, and utilisation of a shared quota.

    python -m benchmarks.workers [--recipients 20000] [--workers 1 2 4] [--quota 200]
                                 [--quota-seconds 10] [--batch-size 100] [--in-flight 8]

*Unthrottled*: ``--recipients`` rows in batches of ``--batch-size`` to a sandbox with no
effective limit; the rate is the rows over the wall time from the planner's start to its exit
(process start-up included), and over the span of the sandbox ledger (first to last request).
On a 2-core machine the planner, the workers, Redis and the sandbox share the cores: this shows
the overhead of the stream, not scale.

*Quota*: the sandbox allows ``--quota`` requests a second (fixed windows, its own limiter), the
planner gives ``--limit QUOTA/1s`` (shared by the workers through the Redis gate), batches of 10,
enough rows for about ``--quota-seconds`` seconds. Utilisation is the requests the sandbox
accepted over the ledger's span, divided by the quota; ``429s`` is how many it refused (the quota
exceeded: must be 0), ``max/window`` the most requests in one of its fixed windows.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.common import KEY, machine, write_rows
from benchmarks.throughput import CAMPAIGN
from bulksend.distributed.testing import RedisServer
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.testing import SandboxProcess

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Measured:
    workers: int
    recipients: int
    requests: int
    wall: float  # planner start to exit
    span: float  # first to last request in the sandbox's ledger
    rejected: int  # 429s
    busiest: int  # most requests in one 1 s window

    @property
    def rate(self) -> float:
        return self.recipients / self.wall

    @property
    def ledger_rate(self) -> float:
        return self.recipients / self.span if self.span > 0 else math.nan

    def utilisation(self, quota: int) -> float:
        # n requests spread over ``span``: (n - 1) intervals
        return (self.requests - 1) / self.span / quota if self.span > 0 else math.nan


def run_once(
    tmp: Path, rows: Path, n_rows: int, workers: int, *, batch_size: int, in_flight: int,
    quota: int | None, redis_url: str,
) -> Measured:  # fmt: skip
    """Plan ``rows`` and send them with ``workers`` worker processes; what the sandbox saw."""
    import redis

    with redis.Redis.from_url(redis_url) as client:  # each run starts from nothing
        client.flushall()
    run = tmp / f"run-{workers}-{quota or 0}-{time.monotonic_ns()}"
    run.mkdir()
    campaign = run / "campaign.toml"
    campaign.write_text(CAMPAIGN.format(path=rows, batch_size=batch_size, in_flight=in_flight))
    ledger, stats = run / "ledger.jsonl", run / "stats.json"
    limits = ["--limit", str(quota), "--window", "1"] if quota else ["--limit", "1000000000"]
    sandbox = SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(ledger), "--stats", str(stats), *limits
    )
    base_url = sandbox.start()
    env = {**os.environ, "MAXTRAFFIC_API_KEY": KEY, "PYTHONPATH": str(ROOT)}
    bulksend = [sys.executable, "-m", "bulksend"]
    procs = []
    try:
        for i in range(workers):
            argv = [*bulksend, "worker", redis_url, "--name", f"w{i}"]
            procs.append(subprocess.Popen(argv, env=env, cwd=run, stderr=subprocess.PIPE))
        plan = [*bulksend, "send", str(campaign), "--workers", redis_url, "--base-url", base_url]
        plan += ["--progress", "never", "--report", str(run / "report.csv")]
        plan += ["--limit", f"{quota}/1s"] if quota else []
        start = time.perf_counter()
        done = subprocess.run(plan, env=env, cwd=run, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"planner exited {done.returncode}: {done.stderr[-2000:]}")
        for p in procs:
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"worker exited {p.returncode}: {err.decode()[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        sandbox.stop()
    return measured(ledger, stats, workers, n_rows, wall)


def measured(ledger: Path, stats: Path, workers: int, n_rows: int, wall: float) -> Measured:
    entries = read_ledger(ledger)
    times = {e["request"]: float(e["ts"]) for e in entries}
    stamps = sorted(times.values())
    windows = Counter(math.floor(t) for t in stamps)
    rejected = int(orjson.loads(stats.read_bytes()).get("rate_limited", 0))
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    ids = sum(1 for e in entries if e["kind"] == "id")
    busiest = max(windows.values(), default=0)
    return Measured(workers, ids or n_rows, len(times), wall, span, rejected, busiest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--quota", type=int, default=200)
    parser.add_argument("--quota-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as d, RedisServer() as redis:
        tmp = Path(d)
        rows = write_rows(tmp / "rows.csv", args.recipients)
        print(f"unthrottled: recipients={args.recipients:,} batch_size={args.batch_size} "
              f"in_flight={args.in_flight}")  # fmt: skip
        for n in args.workers:
            m = run_once(
                tmp, rows, args.recipients, n, batch_size=args.batch_size,
                in_flight=args.in_flight, quota=None, redis_url=redis.url,
            )  # fmt: skip
            print(f"  planner + {n} worker(s): {m.rate:>8,.0f} recipients/s (wall {m.wall:.2f} s);"
                  f" {m.ledger_rate:,.0f} over the ledger span {m.span:.2f} s")  # fmt: skip
        n_quota = round(args.quota * args.quota_seconds) * 10
        quota_rows = write_rows(tmp / "quota.csv", n_quota)
        print(f"quota {args.quota} requests/s: recipients={n_quota:,} batch_size=10 "
              f"in_flight={args.in_flight}")  # fmt: skip
        for n in args.workers:
            m = run_once(
                tmp, quota_rows, n_quota, n, batch_size=10, in_flight=args.in_flight,
                quota=args.quota, redis_url=redis.url,
            )  # fmt: skip
            print(f"  planner + {n} worker(s): utilisation {m.utilisation(args.quota):.3f} "
                  f"({m.requests:,} requests in {m.span:.2f} s); 429s {m.rejected}; "
                  f"max/window {m.busiest}")  # fmt: skip


if __name__ == "__main__":
    main()
