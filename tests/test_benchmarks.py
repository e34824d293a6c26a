"""The dispatch benchmark still runs against the engine as it is (a short null-transport run)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_dispatch_benchmark_runs() -> None:
    args = ["--requests", "60", "--repeat", "1", "--no-dedup"]
    cmd = [sys.executable, "-m", "benchmarks.dispatch", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "requests=60 " in out.stdout
    assert "overhead (encoded in advance - bare)" in out.stdout
