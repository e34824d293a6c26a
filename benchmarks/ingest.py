"""Ingest speed and memory: open_source + Deduper + batching beside a bare ``csv.reader`` loop.

    python -m benchmarks.ingest --rows 1000000
    python -m benchmarks.ingest --rows 10000000 --repeat 1
    python -m benchmarks.ingest --rows 10000000 --repeat 1 --exclude-keys 10000000

Writes a synthetic recipient file into a temporary directory (removed afterwards), then, in
this one run and on the same file:

* ``bare``: ``for row in csv.reader(f): pass``;
* ``ingest``: what a send does before the network, with the same calls as the engine:
  ``open_source`` -> ``Deduper.filter_many`` per chunk -> MaxTraffic's ``NotificationBatcher``
  (``add_many``) -> batches of 1000;

and prints rows/s of each (best of ``--repeat``), their ratio (issue 6 asks for >= 0.50), and
the peak RSS of a separate process that runs the ingest once after importing what a send
imports (so the figure is that of a whole send process minus its network buffers).

``--exclude-keys K`` adds a suppression list (issue 18) of K uids, as ``--exclude`` reads it:
the uids of every other identity (0, 2, 4, ...), so it suppresses about half the recipients
when K is at least half of ``--rows`` and lists K - rows/2 uids no recipient has. The ingest
then reads the list and looks every row up in it before deduplicating, as a send does; the
list's time is counted in the ingest, and the peak RSS covers both.
"""

from __future__ import annotations

import argparse
import contextlib
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
from bulksend.dedup.suppress import ListSpec, SuppressionList
from bulksend.providers.maxtraffic import NotificationBatcher
from bulksend.sources import SourceSpec, open_source, write_synthetic_csv

BATCH = 1000


def bare(path: Path) -> int:
    count = 0
    with path.open(newline="", encoding="utf-8") as f:
        for _ in csv.reader(f):
            count += 1
    return count


def ingest(
    path: Path, *, keep_attrs: bool, estimate: bool = True, exclude: Path | None = None
) -> dict[str, int]:
    """The library's part of a send: read, validate, (suppress,) dedup, batch. Returns counters.

    ``estimate=False`` sizes the deduplicator from nothing (as for gzip or stdin), so its
    table grows on the way. ``exclude``: a suppression list, read first as a send reads it.
    """
    batches = kept_total = suppressed = 0
    spec = SourceSpec(path=str(path), keep_attrs=keep_attrs)
    lists = SuppressionList.load(ListSpec((str(exclude),))) if exclude else None
    with lists or contextlib.nullcontext(), open_source(spec) as rows:
        expected = rows.estimated_rows if estimate else 0
        chunks = lists.screen(rows.chunks()) if lists else rows.chunks()
        with Deduper(("id", "uid"), expected=expected) as dedup, DedupAhead(dedup) as ahead:
            batcher = NotificationBatcher(BATCH)
            for chunk, (kept, _duplicates) in ahead.chunks(chunks):
                suppressed += len(chunk.rejected)
                kept_total += len(kept)
                batches += len(batcher.add_many(kept))
            batches += len(list(batcher.flush()))
            return {
                "rows": rows.recipients + rows.rejected,
                "kept": kept_total,
                "duplicates": dedup.duplicates,
                "partial": dedup.partial,
                "suppressed": suppressed,
                "batches": batches,
                "table_mb": dedup.memory_bytes // 1_000_000,
                "list_keys": lists.keys if lists else 0,
                "list_mb": lists.memory_bytes // 1_000_000 if lists else 0,
            }


def write_exclusions(path: Path, keys: int) -> Path:
    """A suppression list of ``keys`` uids: those of identities 0, 2, 4, ... (see the module
    docstring); the uids are written as ``write_synthetic_csv`` writes them."""
    with path.open("w", encoding="utf-8") as out:
        out.write("uid\n")
        step = 65536
        for start in range(0, keys, step):
            out.writelines(f"u{2 * j:011d}\n" for j in range(start, min(keys, start + step)))
    return path


def timed(function: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def child(path: Path, keep_attrs: bool, estimate: bool, exclude: Path | None = None) -> None:
    """Run once in this process after the imports of a send; print counters and peak RSS."""
    for module in ("aiohttp", "orjson", "structlog", "bulksend.dispatch.engine", "bulksend.cli"):
        try:
            __import__(module)
        except Exception:  # best effort: the figure then lacks that module
            continue
    start = time.perf_counter()
    result = ingest(path, keep_attrs=keep_attrs, estimate=estimate, exclude=exclude)
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
    parser.add_argument(
        "--exclude-keys",
        type=int,
        default=0,
        metavar="K",
        help="also read a suppression list of K uids and look every row up in it (issue 18)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-exclude", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.keep_attrs, not args.no_estimate, args.child_exclude)
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
        exclude = None
        if args.exclude_keys:
            start = time.perf_counter()
            exclude = write_exclusions(Path(tmp) / "unsubscribed.csv", args.exclude_keys)
            print(
                f"suppression list: {args.exclude_keys:,} uids, "
                f"{exclude.stat().st_size / 1e6:,.0f} MB "
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
                lambda: ingest(path, keep_attrs=args.keep_attrs, estimate=estimate, exclude=exclude)
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
        if exclude is not None:
            command += ["--child-exclude", str(exclude)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(
            f"peak RSS of one ingest process: {measured['peak_rss_mb']:.0f} MB "
            f"(getrusage children: {children_kb / 1024:.0f} MB; "
            f"dedup table {measured['table_mb']} MB; run took {measured['seconds']:.1f} s)"
        )
        if exclude is not None:
            print(
                f"suppression list: {measured['list_keys']:,} keys, {measured['list_mb']} MB "
                f"held (key set table and line index); {measured['suppressed']:,} rows "
                "suppressed"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
