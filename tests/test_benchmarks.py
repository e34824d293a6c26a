"""The benchmarks still run against the engine as it is (short runs, checked for their output)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def run_benchmark(module: str, *args: str) -> str:
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dispatch_benchmark_runs() -> None:
    out = run_benchmark("dispatch", "--requests", "60", "--repeat", "1", "--no-dedup")
    assert "requests=60 " in out
    assert "overhead (encoded in advance - bare)" in out
    assert re.search(r"^metrics cost: [+-]\d+\.\d % CPU time per request", out, re.M), out


def test_dispatch_benchmark_runs_one_variant_for_valgrind() -> None:
    out = run_benchmark("dispatch", "--requests", "20", "--repeat", "1", "--variant", "metrics")
    assert out == "metrics: 1 runs of 20 requests\n"


def test_throughput_benchmark_runs_with_latency_and_reports_cpu_per_request() -> None:
    out = run_benchmark("throughput", "--recipients", "3000", "--repeat", "1", "--latency-ms", "2")
    assert "requests=30 latency_ms=2 repeat=1" in out
    cpu = re.findall(r"CPU µs/request: client +(\d+), sandbox +(\d+|-)\)", out)
    assert len(cpu) == 4, out  # raw, script, engine, engine + journal
    assert all(int(client) > 0 for client, _ in cpu), out
    ratios = re.findall(r"ratio engine / raw [^:]*: (\d+\.\d\d)", out)
    assert len(ratios) == 2, out
    assert all(float(r) > 0 for r in ratios), out


def test_throughput_benchmark_says_where_the_time_went_with_occupancy() -> None:
    out = run_benchmark(
        "throughput", "--recipients", "3000", "--repeat", "2", "--latency-ms", "2", "--occupancy"
    )
    assert "(per round: median " in out, out
    rows = re.findall(r"^(.+?) *: +\d+\.\d ms +\d+\.\d ms +[\d,]+ +\d+\.\d\d ms", out, re.M)
    assert [r.strip() for r in rows] == [
        "raw aiohttp, bodies ready",
        "raw aiohttp script (csv.reader)",
        "engine (whole send from the file)",
        "engine + journal",
    ], out


def test_occupancy_splits_a_run_into_its_phases() -> None:
    from benchmarks.throughput import occupancy

    # two tasks, in flight 2: each sends at once again, 10 ms round trips, the first alone
    spans = [(1, 1.000, 1.010)]
    spans += [(1, 1.010 + 0.010 * i, 1.020 + 0.010 * i) for i in range(9)]
    spans += [(2, 1.010 + 0.010 * i, 1.020 + 0.010 * i) for i in range(9)]
    used = occupancy(spans, start=0.995, end=1.105, in_flight=2)
    assert round(used.first, 6) == 0.005
    assert round(used.alone, 6) == 0.010
    assert round(used.round_trip, 6) == 0.010
    assert round(used.in_flight, 6) == 2.0
    assert round(used.rate) == 200
    assert used.next_request == 0.0
    assert round(used.tail, 6) == 0.005


def test_ratelimit_profiles_run_without_a_stated_limit() -> None:
    out = run_benchmark("ratelimit", "--seconds", "3", "--profiles", "ietf,bare429")
    assert "ietf 20/1s + 150/5s, refusal 429; believed " in out, out
    lines = re.findall(r"^ +(\S+): utilisation (\d\.\d+) +refusals (\d+)", out, re.MULTILINE)
    assert [name for name, _, _ in lines] == ["ietf", "bare429"], out
    assert all(float(u) > 0 for _, u, _ in lines), out


def test_state_cost_benchmark_runs_none_sqlite_and_redis() -> None:
    from bulksend.distributed.testing import RedisServer

    if not RedisServer.available():
        import pytest

        pytest.skip("REDIS UNAVAILABLE: the journal-cost benchmark did NOT run")
    out = run_benchmark(
        "state_cost", "--recipients", "2000", "--batch-size", "100", "--repeat", "1"
    )
    assert "batch_size=100 requests=20" in out
    ratios = re.findall(r"SQLite (\d+\.\d\d), Redis (\d+\.\d\d); Redis / SQLite (\d+\.\d\d)", out)
    assert len(ratios) == 1, out
    assert all(float(r) > 0 for r in ratios[0]), out


def test_workers_benchmark_runs_unthrottled_and_with_a_quota() -> None:
    from bulksend.distributed.testing import RedisServer

    if not RedisServer.available():
        import pytest

        pytest.skip("REDIS UNAVAILABLE: the workers benchmark did NOT run")
    out = run_benchmark(
        "workers", "--recipients", "1000", "--workers", "1", "--quota", "100",
        "--quota-seconds", "1",
    )  # fmt: skip
    assert re.search(r"planner \+ 1 worker\(s\): +[\d,]+ recipients/s", out), out
    assert re.search(r"utilisation \d\.\d{3} \(100 requests in .*; 429s 0;", out), out


def test_versus_script_benchmark_runs_both_and_reports_ratios(tmp_path: Path) -> None:
    out = run_benchmark(
        "versus_script",
        *("--rows", "3000", "--rounds", "1", "--formats", "quoted,jsonl"),
        *("--variants", "journal,no-journal", "--startup-runs", "1", "--read-rounds", "1"),
        *("--dir", str(tmp_path)),
    )
    lines = re.findall(r"^(quoted|jsonl) .*\| (\d+) / (\d+) / (\d+)$", out, re.MULTILINE)
    assert [name for name, *_ in lines] == ["quoted", "jsonl"], out
    assert all(int(rss) > 0 for _, *rss in lines for rss in rss), out
    ratios = re.findall(r" (\d+\.\d\d) \((\d+\.\d\d)\)", out)
    assert len(ratios) == 4, out  # two files, two variants, one round each
    assert "start-up on quoted.csv (1 alternating runs each)" in out, out
    assert re.search(r"a whole bulksend send +: +\d+ ms", out), out
    reading = re.findall(r"^  (quoted|jsonl) +[\d,]+ +[\d,]+$", out, re.MULTILINE)
    assert reading == ["quoted", "jsonl"], out
