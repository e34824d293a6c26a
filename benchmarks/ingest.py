"""Ingest speed and memory: open_source + Deduper + batching beside a bare ``csv.reader`` loop.

    python -m benchmarks.ingest --rows 1000000
    python -m benchmarks.ingest --rows 10000000 --repeat 1

Writes a synthetic recipient file into a temporary directory (removed afterwards), then, in
this one run and on the same file:

* ``bare``: ``for row in csv.reader(f): pass``;
* ``ingest``: what a send does before the network, with the same calls as the engine:
  ``open_source`` -> ``Deduper.filter_many`` per chunk -> MaxTraffic's ``NotificationBatcher``
  (``add_many``) -> batches of 1000;

and prints rows/s of each (best of ``--repeat``), their ratio (issue 6 asks for >= 0.50), and
the peak RSS of a separate process that runs the ingest once after importing what a send
imports (so the figure is that of a whole send process minus its network buffers).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import median
from bulksend.dedup.ahead import DedupAhead
from bulksend.dedup.deduper import Deduper
from bulksend.providers.maxtraffic import NotificationBatcher
from bulksend.sources import SourceSpec, open_source, write_synthetic_csv

BATCH = 1000


def bare(path: Path) -> int:
    count = 0
    with path.open(newline="", encoding="utf-8") as f:
        for _ in csv.reader(f):
            count += 1
    return count


def ingest(path: Path, *, keep_attrs: bool, estimate: bool = True) -> dict[str, int]:
    """The library's part of a send: read, validate, dedup, batch. Returns counters.

    ``estimate=False`` sizes the deduplicator from nothing (as for gzip or stdin), so its
    table grows on the way.
    """
    batches = kept_total = 0
    spec = SourceSpec(path=str(path), keep_attrs=keep_attrs)
    with open_source(spec) as rows:
        expected = rows.estimated_rows if estimate else 0
        with Deduper(("id", "uid"), expected=expected) as dedup, DedupAhead(dedup) as ahead:
            batcher = NotificationBatcher(BATCH)
            for _chunk, (kept, _duplicates) in ahead.chunks(rows.chunks()):
                kept_total += len(kept)
                batches += len(batcher.add_many(kept))
            batches += len(list(batcher.flush()))
            return {
                "rows": rows.recipients + rows.rejected,
                "kept": kept_total,
                "duplicates": dedup.duplicates,
                "partial": dedup.partial,
                "batches": batches,
                "table_mb": dedup.memory_bytes // 1_000_000,
            }


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def child(path: Path, keep_attrs: bool, estimate: bool) -> None:
    """Run once in this process after the imports of a send; print counters and peak RSS."""
    for module in ("aiohttp", "orjson", "structlog", "bulksend.dispatch.engine", "bulksend.cli"):
        try:
            __import__(module)
        except Exception:  # best effort: the figure then lacks that module
            continue
    start = time.perf_counter()
    result = ingest(path, keep_attrs=keep_attrs, estimate=estimate)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**result, "seconds": elapsed, "peak_rss_mb": peak_kb / 1024}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--duplicate-rate", type=float, default=0.05)
    parser.add_argument("--extra-columns", default="", help="e.g. name,city (default: none)")
    parser.add_argument("--keep-attrs", action="store_true", help="keep extra columns as attrs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-estimate",
        action="store_true",
        help="do not size the dedup tables from the file size (as with gzip or stdin)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.keep_attrs, not args.no_estimate)
        return 0
    extra = [c for c in args.extra_columns.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="bulksend-ingest-") as tmp:
        path = Path(tmp) / "recipients.csv"
        start = time.perf_counter()
        write_synthetic_csv(
            path, args.rows, duplicate_rate=args.duplicate_rate, seed=1, extra_columns=extra
        )
        size_mb = path.stat().st_size / 1e6
        print(
            f"file: {args.rows:,} rows, columns id,uid{''.join(',' + c for c in extra)}, "
            f"{size_mb:,.0f} MB, duplicate rate {args.duplicate_rate:.0%} "
            f"(written in {time.perf_counter() - start:.1f} s)"
        )
        print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        estimate = not args.no_estimate
        # rounds alternate bare and ingest, and the ratio is taken within each round: this
        # machine's speed drifts by tens of percent between one minute and the next
        rounds: list[tuple[float, float]] = []
        result: object = None
        for _ in range(args.repeat):
            t_bare, _ = timed(lambda: bare(path))
            t_ingest, result = timed(
                lambda: ingest(path, keep_attrs=args.keep_attrs, estimate=estimate)
            )
            rounds.append((t_bare, t_ingest))
        rows = args.rows
        t_bare = min(b for b, _ in rounds)
        t_ingest = min(i for _, i in rounds)
        ratios = sorted(b / i for b, i in rounds)
        print(f"bare csv.reader loop      : {rows / t_bare:>12,.0f} rows/s ({t_bare:.2f} s, best)")
        print(
            f"open_source+dedup+batches: {rows / t_ingest:>12,.0f} rows/s ({t_ingest:.2f} s, best) "
            f"keep_attrs={args.keep_attrs}, dedup sized from the file: {estimate}"
        )
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"ratio per round: {shown}; median {median(ratios):.2f} (target >= 0.50)")
        print(f"counters: {result}")
        command = [sys.executable, "-m", "benchmarks.ingest", "--child", str(path)]
        if args.keep_attrs:
            command.append("--keep-attrs")
        if args.no_estimate:
            command.append("--no-estimate")
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(
            f"peak RSS of one ingest process: {measured['peak_rss_mb']:.0f} MB "
            f"(getrusage children: {children_kb / 1024:.0f} MB; "
            f"dedup table {measured['table_mb']} MB; run took {measured['seconds']:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
