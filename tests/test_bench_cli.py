from __future__ import annotations

from pathlib import Path

import orjson

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
    assert 0.5 < figures["utilisation"] <= 1.0  # 60 requests at 40/s: about 1.5 s
    assert figures["latency_ms"]["p50"] > 0
    assert figures["peak_rss_mb"] > 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "recipients_per_s" in r.stdout
