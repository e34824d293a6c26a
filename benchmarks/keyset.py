"""Key set speed and memory: the C key set beside the numpy one, in ns per key.

    python -m benchmarks.keyset                                  # 1M and 20M keys, best of 3
    python -m benchmarks.keyset --keys 1000000 --repeat 5
    python -m benchmarks.keyset --keys 20000000 --workloads pairs --no-hint

Keys arrive as a reader hands them to the deduplicator: in chunks, each made just before it is
added (so the strings are fresh in the CPU caches, as after parsing a chunk of rows). Like
``write_synthetic_csv``, each row is a new identity or, with probability ``--repeat-rate``
(5 %), an earlier one picked uniformly (so a repeat is almost never in a recent write buffer:
its stored key must be read back from the spill file). An identity has a 32-hex-digit id and a
12-character uid (``u`` + 11 digits). Workloads:

* ``ids``: ``add_many`` of 8192 ids at a time;
* ``uids``: the same with uids;
* ``pairs``: ``add_kinds([(ids, 1), (uids, 2)])`` of 4096 rows at a time, as ``Deduper`` does;
  ``--keys`` counts both, so half as many rows.

The table is sized from the key count (``expected``, as the engine does from the file size)
unless ``--no-hint`` (or ``--both-hints``) asks for growth from nothing (gzip, stdin).

Every measurement runs in a fresh process (one key set, one workload), so its peak RSS is its
own and no run warms the memory of the next. The time is that of the key set's calls alone
(construction, every add, close; not making the keys), divided by the number of keys; the
best of ``--repeat`` runs is shown, and the slowest beside it, since these machines are shared.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import machine

WORKLOADS = ("ids", "uids", "pairs")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DIGITS = 11


def _ids(j: npt.NDArray[np.int64]) -> list[str]:
    """32 hex digits per identity, distinct and random-looking (two mixes of ``j``)."""
    x = (j.astype(np.uint64) + np.uint64(0x5EED)) * np.uint64(0x9E3779B97F4A7C15)
    y = (x ^ (x >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    raw = np.stack([x, y], axis=1).view(np.uint8)  # 16 bytes per identity
    text = np.empty((len(j), 32), dtype=np.uint8)
    text[:, 0::2] = _HEX[raw >> 4]
    text[:, 1::2] = _HEX[raw & 15]
    joined = text.tobytes().decode("ascii")
    return [joined[i : i + 32] for i in range(0, len(joined), 32)]


def _uids(j: npt.NDArray[np.int64]) -> list[str]:
    """``u`` and 11 digits of the identity's number."""
    text = np.empty((len(j), 1 + _DIGITS), dtype=np.uint8)
    text[:, 0] = ord("u")
    value = j.astype(np.int64)
    for column in range(_DIGITS, 0, -1):
        text[:, column] = 48 + value % 10
        value //= 10
    joined = text.tobytes().decode("ascii")
    width = 1 + _DIGITS
    return [joined[i : i + width] for i in range(0, len(joined), width)]


def identities(
    rows: int, chunk: int, rate: float, seed: int = 1
) -> Iterator[npt.NDArray[np.int64]]:
    """Identity numbers, ``chunk`` rows at a time: new ones in order, repeats of earlier ones."""
    rng = np.random.default_rng(seed)
    unique = 0
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        repeat = rng.random(n) < rate
        if unique == 0:
            repeat[:] = False
        fresh = np.flatnonzero(~repeat)
        out = np.empty(n, dtype=np.int64)
        out[fresh] = unique + np.arange(len(fresh))
        old = np.flatnonzero(repeat)
        # repeats of earlier chunks only (the few within a chunk would change nothing measured)
        out[old] = rng.integers(0, unique, size=len(old))
        unique += len(fresh)
        yield out


def child(backend: str, workload: str, keys: int, hint: bool, rate: float) -> dict[str, Any]:
    """One measurement, in this process."""
    if backend == "c":
        from bulksend.dedup.keyset_c import KeySet
    else:
        from bulksend.dedup.keyset_numpy import KeySet  # type: ignore[assignment]
    pairs = workload == "pairs"
    rows = keys // 2 if pairs else keys
    chunk = 4096 if pairs else 8192
    spent = 0.0
    start = time.perf_counter()
    ks = KeySet(expected=keys if hint else 0)
    spent += time.perf_counter() - start
    added = 0
    for j in identities(rows, chunk, rate):
        if pairs:
            parts = [(_ids(j), 1), (_uids(j), 2)]
            start = time.perf_counter()
            ks.add_kinds(parts)
        else:
            batch = _ids(j) if workload == "ids" else _uids(j)
            start = time.perf_counter()
            ks.add_many(batch)
        spent += time.perf_counter() - start
        added += 2 * len(j) if pairs else len(j)
    unique, table, spill = len(ks), ks.table_bytes, ks.spill_bytes
    start = time.perf_counter()
    ks.close()
    spent += time.perf_counter() - start
    return {
        "ns_per_key": spent / added * 1e9,
        "keys": added,
        "unique": unique,
        "table_mb": table / 1e6,
        "bytes_per_key": table / unique,
        "spill_mb": spill / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(
    backend: str, workload: str, keys: int, hint: bool, rate: float, repeat: int
) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "benchmarks.keyset", "--child", backend, workload]
    command += ["--keys", str(keys), "--repeat-rate", str(rate)]
    if not hint:
        command.append("--no-hint")
    runs = []
    for _ in range(repeat):
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--backends", nargs="+", choices=("c", "numpy"), default=["c", "numpy"])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (best shown)")
    parser.add_argument("--repeat-rate", type=float, default=0.05, help="repeated rows")
    hints = parser.add_mutually_exclusive_group()
    hints.add_argument("--no-hint", action="store_true", help="no expected: the table grows")
    hints.add_argument("--both-hints", action="store_true", help="sized, then growing")
    parser.add_argument("--child", nargs=2, metavar=("BACKEND", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        backend, workload = args.child
        result = child(backend, workload, args.keys[0], not args.no_hint, args.repeat_rate)
        print(json.dumps(result))
        return 0
    if "c" in args.backends:
        try:
            from bulksend.dedup import keyset_c  # noqa: F401
        except ImportError:
            print("the C extension is not built: pip install -e . (needs a C compiler)")
            return 1
    hint_values = [True, False] if args.both_hints else [not args.no_hint]
    print(f"machine: {machine()}; best of {args.repeat} runs, each in its own process")
    print(f"repeated rows: {args.repeat_rate:.0%}, picked uniformly among the earlier ones")
    header = (
        f"{'keys':>11} {'workload':<6} {'sized':<5} "
        + "".join(f"{b + ' ns/key':>15} {b + ' RSS':>10} " for b in args.backends)
        + (f"{'speed-up':>9} {'C table B/key':>13}" if len(args.backends) == 2 else "")
    )
    print(header)
    for keys in args.keys:
        for workload in args.workloads:
            for hint in hint_values:
                line = f"{keys:>11,} {workload:<6} {'yes' if hint else 'no':<5} "
                best: dict[str, dict[str, Any]] = {}
                for backend in args.backends:
                    runs = measure(backend, workload, keys, hint, args.repeat_rate, args.repeat)
                    times = sorted(run["ns_per_key"] for run in runs)
                    best[backend] = min(runs, key=lambda run: run["ns_per_key"])
                    spread = (
                        f"{times[0]:.0f}-{times[-1]:.0f}" if len(times) > 1 else f"{times[0]:.0f}"
                    )
                    rss = max(run["peak_rss_mb"] for run in runs)
                    line += f"{spread:>15} {rss:>7.0f} MB "
                if len(best) == 2:
                    speedup = best["numpy"]["ns_per_key"] / best["c"]["ns_per_key"]
                    line += f"{speedup:>8.1f}x {best['c']['bytes_per_key']:>13.1f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
