"""``bulksend --help`` start-up time beside a bare ``python -c pass`` (target < 0.3 s).

python -m benchmarks.startup [--runs 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import machine, median


def timed(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    help_ = timed([sys.executable, "-m", "bulksend", "--help"], args.runs)
    send_help = timed([sys.executable, "-m", "bulksend", "send", "--help"], args.runs)
    print(f"machine: {machine()}; median of {args.runs} runs")
    print(f"python -c pass        : {bare * 1000:6.0f} ms")
    print(f"bulksend --help       : {help_ * 1000:6.0f} ms (target < 300 ms)")
    print(f"bulksend send --help  : {send_help * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
