from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
import pytest

from bulksend.commands import bench
from tests.conftest import run_cli


def test_bench_against_a_sandbox_process(tmp_path: Path) -> None:
    out, png = tmp_path / "b.json", tmp_path / "b.png"
    r = run_cli(
        "bench", "--recipients", "3000", "--batch-size", "50", "--limit", "40",
        "--window", "1", "--json", str(out), "--plot", str(png),
    )  # fmt: skip
    assert r.status == 0, r.stderr
    figures = orjson.loads(out.read_bytes())
    assert figures["delivered"] == 3000
    assert figures["requests"] == 60
    assert figures["throttled_429"] == 0
    assert 0.9 < figures["utilisation"] <= 1.0  # 60 requests at 40/s, evenly paced
    assert figures["latency_ms"]["p50"] > 0
    assert figures["peak_rss_mb"] > 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert figures["client_cpu_s"] > 0
    if sys.platform == "linux":  # read from /proc
        assert figures["sandbox_cpu_s"] > 0
    assert "  delivered      3,000 of 3,000 recipients (failed 0)\n" in r.stdout
    assert "  requests       60, up to 50 recipients each, 32 in flight\n" in r.stdout
    assert f"  quota          40/1s, {figures['utilisation']:.1%} used\n" in r.stdout
    assert f"  figures: {out}\n" in r.stdout
    assert f"  chart: {png}\n" in r.stdout


def test_the_table_names_the_profile_and_leaves_out_what_was_not_measured() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--latency-ms", "20", "--fail-rate", "0.05", "--storm-every", "30",
                              "--storm-for", "2", "--no-ratelimit-headers"])  # fmt: skip
    figures = {
        "recipients": 1000, "delivered": 990, "failed": 10, "elapsed_s": 2.5,
        "recipients_per_s": 396.0, "requests_per_s": 4.4, "requests": 11, "batch_size": 100,
        "in_flight": 32, "latency_ms": {"p50": 21.0, "p95": 24.5, "p99": 30.25},
        "utilisation": None, "limit": None, "throttled_429": 3, "retries": 4,
        "client_cpu_s": 0.5, "sandbox_cpu_s": None, "peak_rss_mb": 1234.5,
    }  # fmt: skip
    lines = bench.render(figures, args).splitlines()
    assert lines == [
        "  sandbox        MaxTraffic in a separate process: latency 20 ms, fail rate 0.05, "
        "429 storm every 30 s for 2 s, no rate-limit headers",
        "  delivered      990 of 1,000 recipients (failed 10)",
        "  elapsed        2.500 s",
        "  throughput     396 recipients/s, 4 requests/s",
        "  requests       11, up to 100 recipients each, 32 in flight",
        "  latency        p50 21.00 ms, p95 24.50 ms, p99 30.25 ms",
        "  quota          no limit",
        "  429s, retries  3, 4",
        "  CPU time       client 0.500 s",
        "  peak RSS       1,234.5 MB (client)",
    ]


def test_utilisation_is_the_pace_between_the_first_and_the_last_request() -> None:
    # 5 requests exactly at a 10/s limit span 0.4 s: 100 %, not 5 / 0.4 s = 125 %
    assert bench.utilisation([0.0, 0.1, 0.2, 0.3, 0.4], 10.0) == pytest.approx(1.0)
    assert bench.utilisation([0.4, 0.0, 0.2, 0.1, 0.3], 10.0) == pytest.approx(1.0)  # any order
    assert bench.utilisation([0.0, 0.2, 0.4], 10.0) == pytest.approx(0.5)
    assert bench.utilisation([0.0, 0.1], 0.0) is None  # no limit
    assert bench.utilisation([0.3], 10.0) is None  # one request has no pace
    assert bench.utilisation([0.3, 0.3], 10.0) is None
