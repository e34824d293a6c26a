"""``bulksend send`` against the script a user would write instead (issue 16), as processes.

    python -m benchmarks.versus_script [--rows 400000,4000000] [--formats crlf,lf,quoted,gzip,jsonl]
                                       [--rounds 3] [--variants journal,report,no-journal]
                                       [--dir /tmp/bulksend-versus] [--startup-runs 5]

The script is ``benchmarks/plain_script.py``: ``csv.reader`` (``json.loads`` per line for JSON
Lines, ``gzip.open`` for gzip), two Python sets for ids and uids, batches of 1,000 encoded with
orjson, 64 aiohttp posts in flight, no limiter, no journal. ``bulksend send`` runs through its
CLI (``python -m bulksend send CAMPAIGN``) with its defaults (journal on, INFO logs as JSON on
stderr, written to a file) except ``--batch-size 1000 --in-flight 64``; the variants add
``--report report.csv`` or ``--no-journal``. Both post to one MaxTraffic sandbox in its own
process, unthrottled (a limit of 10^9 requests a minute). Each is a child process timed from its
start to its exit, with its peak RSS and CPU time from ``os.wait4``.

Files (generated once into ``--dir``, kept for the next run): ``--rows`` rows of a 32-hex id and
a uid, 10 % of them repeating an earlier row: ``crlf`` as Python's ``csv`` module writes it
(CRLF, minimal quoting), ``lf`` the same with LF line ends, ``quoted`` with ``QUOTE_ALL``
(CRLF), ``gzip`` the CRLF file gzipped, ``jsonl`` JSON Lines written by ``json.dumps``.

Rounds alternate (the order is reversed every other round); the figures are medians, and each
ratio (script seconds ÷ bulksend seconds: above 1 means bulksend is faster) is taken within a
round. Start-up: ``--startup-runs`` alternating runs against a second sandbox that writes a
ledger, timed from the process's start to the sandbox's timestamp of the first request it
accepted; then ``python -X importtime`` of the script's imports, of ``bulksend.cli``, and of a
whole ``bulksend send``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import orjson

from benchmarks.common import CAMPAIGN_HEAD, KEY, machine, median, sandbox_child

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "plain_script.py"
FORMATS = {
    "crlf": "crlf.csv",
    "lf": "lf.csv",
    "quoted": "quoted.csv",
    "gzip": "crlf.csv.gz",
    "jsonl": "rows.jsonl",
}
VARIANTS = {
    "journal": (),
    "report": ("--report", "report.csv"),
    "no-journal": ("--no-journal",),
}
CAMPAIGN = CAMPAIGN_HEAD + '[auth]\napi_key_env = "MAXTRAFFIC_API_KEY"\n'
SANDBOX_ARGS = ("--limit", "1000000000", "--max-batch", "1000")
_MULT = 0x9E3779B97F4A7C15F39CC0605CEDC835
_MASK = (1 << 128) - 1

# -- files --------------------------------------------------------------------------------------


def identities(n: int, duplicates: float, seed: int = 16) -> Iterator[tuple[str, str]]:
    """``n`` rows (id, uid); a fraction ``duplicates`` repeats an earlier row picked uniformly."""
    rnd = random.Random(seed)
    unique = 0
    for _ in range(n):
        if unique and rnd.random() < duplicates:
            j = rnd.randrange(unique)
        else:
            j = unique
            unique += 1
        yield f"{(j * _MULT + seed) & _MASK:032x}", f"u{j:011d}"


def _write_csv(
    path: Path,
    rows: Iterator[tuple[str, str]],
    opener: Callable[..., IO[str]],
    lineterminator: str = "\r\n",
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL,
) -> None:
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator=lineterminator, quoting=quoting)
        writer.writerow(("id", "uid"))
        writer.writerows(rows)


def _gzip_text(path: Path, mode: Literal["wt"], *, newline: str, encoding: str) -> IO[str]:
    return gzip.open(path, mode, compresslevel=6, newline=newline, encoding=encoding)


def _write_jsonl(path: Path, rows: Iterator[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.writelines(json.dumps({"id": i, "uid": u}) + "\n" for i, u in rows)


def make_file(folder: Path, fmt: str, n: int, duplicates: float) -> Path:
    """The ``fmt`` file of ``n`` rows in ``folder`` (written now unless already there)."""
    path = folder / FORMATS[fmt]
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    rows = identities(n, duplicates)
    if fmt == "crlf":
        _write_csv(partial, rows, open)
    elif fmt == "lf":
        _write_csv(partial, rows, open, lineterminator="\n")
    elif fmt == "quoted":
        _write_csv(partial, rows, open, quoting=csv.QUOTE_ALL)
    elif fmt == "gzip":
        _write_csv(partial, rows, _gzip_text)
    else:
        _write_jsonl(partial, rows)
    partial.rename(path)
    return path


# -- running the contenders ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    cpu: float  # user + system seconds of the child
    rss_mb: float  # its peak resident set
    sent: int  # recipients it says it sent
    started: float  # time.time() just before the child was started


class Contenders:
    """Runs the script and ``bulksend send`` as children against the sandbox at ``url``."""

    def __init__(
        self, work: Path, url: str, batch_size: int, in_flight: int, code: Path = ROOT
    ) -> None:
        self.work = work
        self.url = url
        self.batch_size = batch_size
        self.in_flight = in_flight
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env["MAXTRAFFIC_API_KEY"] = KEY
        self.env.pop("BULKSEND_NO_EXTENSIONS", None)
        # an installed package has its bytecode compiled: let the children cache theirs
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def script(self, path: Path) -> Run:
        argv = [sys.executable, str(SCRIPT), str(path), self.url, KEY]
        argv += [str(self.batch_size), str(self.in_flight)]
        return self._child(argv, r"sent (\d+) recipients")

    def bulksend(self, path: Path, variant: str, *python_flags: str) -> Run:
        campaign = self.work / "campaign.toml"
        campaign.write_text(CAMPAIGN.format(path=path.as_posix()))
        shutil.rmtree(self.work / ".bulksend", ignore_errors=True)  # a fresh journal each time
        (self.work / "report.csv").unlink(missing_ok=True)
        argv = [sys.executable, *python_flags, "-m", "bulksend", "send", str(campaign)]
        argv += ["--base-url", self.url, "--batch-size", str(self.batch_size)]
        argv += ["--in-flight", str(self.in_flight), *VARIANTS[variant]]
        return self._child(argv, r"delivered +([\d,]+)")

    def _child(self, argv: list[str], sent: str) -> Run:
        out_path, err_path = self.work / "stdout.txt", self.work / "stderr.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            started = time.time()
            t0 = time.perf_counter()
            process = subprocess.Popen(argv, stdout=out, stderr=err, env=self.env, cwd=self.work)
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - t0
        process.returncode = os.waitstatus_to_exitcode(status)
        said = out_path.read_text()
        found = re.search(sent, said)
        if process.returncode != 0 or found is None:
            why = err_path.read_text()[-2000:]
            raise RuntimeError(f"{argv} exited {process.returncode}:\n{said}\n{why}")
        cpu = usage.ru_utime + usage.ru_stime
        count = int(found.group(1).replace(",", ""))
        return Run(seconds, cpu, usage.ru_maxrss / 1024, count, started)


# -- throughput ---------------------------------------------------------------------------------


def contestants(variants: Sequence[str]) -> list[str]:
    return ["script", *variants]


def one_round(
    runner: Contenders, files: dict[str, Path], variants: Sequence[str], reverse: bool
) -> dict[tuple[str, str], Run]:
    out: dict[tuple[str, str], Run] = {}
    for fmt, path in files.items():
        order = contestants(variants)
        for who in reversed(order) if reverse else order:
            run = runner.script(path) if who == "script" else runner.bulksend(path, who)
            out[fmt, who] = run
    return out


def warm_up(runner: Contenders, args: argparse.Namespace) -> None:
    """One untimed run of each on a small file: bytecode compiled and cached."""
    path = make_file(args.dir / "warm-up", "crlf", 10_000, args.duplicates)
    runner.script(path)
    runner.bulksend(path, "journal")


def report_size(
    n: int,
    files: dict[str, Path],
    variants: Sequence[str],
    rounds: list[dict[tuple[str, str], Run]],
) -> None:
    print(f"\nrows={n:,} rounds={len(rounds)}; seconds are medians; ratio = script s / bulksend s")
    header = f"{'file':<8} {'MB':>5} {'script s':>9} {'rows/s':>10}"
    for who in variants:
        header += f" | {who + ' s':>14} {'ratio (per round)':>26}"
    header += " | peak RSS MB script / " + " / ".join(variants)
    print(header)
    for fmt, path in files.items():
        script = [r[fmt, "script"] for r in rounds]
        t_script = median([r.seconds for r in script])
        line = f"{fmt:<8} {path.stat().st_size / 1e6:>5.0f} {t_script:>9.2f} {n / t_script:>10,.0f}"
        rss = [median([r.rss_mb for r in script])]
        for who in variants:
            runs = [r[fmt, who] for r in rounds]
            ratios = [r[fmt, "script"].seconds / r[fmt, who].seconds for r in rounds]
            each = ", ".join(f"{x:.2f}" for x in ratios)
            line += f" | {median([r.seconds for r in runs]):>14.2f} {median(ratios):>5.2f} ({each})"
            rss.append(median([r.rss_mb for r in runs]))
            sent = {r.sent for r in runs} | {r.sent for r in script}
            if len(sent) != 1:
                raise RuntimeError(f"{fmt}: the contenders sent different counts: {sent}")
        print(line.ljust(0) + " | " + " / ".join(f"{m:.0f}" for m in rss))
    cpu = " ".join(
        f"{fmt}: "
        + "/".join(f"{median([r[fmt, w].cpu for r in rounds]):.1f}" for w in ["script", *variants])
        for fmt in files
    )
    print(f"CPU s (script/{'/'.join(variants)}): {cpu}")
    if "journal" in variants and "no-journal" in variants:
        cost = {
            fmt: median([r[fmt, "no-journal"].seconds / r[fmt, "journal"].seconds for r in rounds])
            for fmt in files
        }
        shown = ", ".join(f"{fmt} {value:.2f}" for fmt, value in cost.items())
        print(f"journal: throughput with / without (no-journal s / journal s, median): {shown}")


# -- reading alone ------------------------------------------------------------------------------

READ = """
import sys, time
from bulksend.sources import SourceSpec, open_source
def read(path):
    rows = 0
    with open_source(SourceSpec(path=path)) as source:
        for chunk in source.chunks():
            rows += len(chunk.recipients)
    return rows
read(sys.argv[2])  # whatever the first chunk imports is imported
start, cpu = time.perf_counter(), time.process_time()
rows = read(sys.argv[1])
print(time.perf_counter() - start, time.process_time() - cpu, rows)
"""


def read_speed(runner: Contenders, files: dict[str, Path], rounds: int, warm: Path) -> None:
    """Rows/s of ``open_source`` alone over each file (a child each time, one thread),
    alternating, with each file's ratio to the LF file within the round (CPU time: less
    disturbed than wall time by whatever else the machine runs)."""
    wall: dict[str, list[float]] = {fmt: [] for fmt in files}
    cpu: dict[str, list[float]] = {fmt: [] for fmt in files}
    rows = 0
    for i in range(rounds):
        for fmt in reversed(files) if i % 2 else files:
            out = subprocess.run(
                [sys.executable, "-c", READ, str(files[fmt]), str(warm)],
                capture_output=True,
                text=True,
                check=True,
                env=runner.env,
                cwd=runner.work,  # (-c puts the current directory first: not a checkout's)
            ).stdout.split()
            wall[fmt].append(float(out[0]))
            cpu[fmt].append(float(out[1]))
            rows = int(out[2])
    print("reading alone (open_source, every chunk), median rows/s by wall and CPU time;")
    print("ratio to lf by CPU time, per round:")
    for fmt in files:
        line = f"  {fmt:<8} {rows / median(wall[fmt]):>12,.0f} {rows / median(cpu[fmt]):>12,.0f}"
        if "lf" in files and fmt != "lf":
            each = [lf / t for lf, t in zip(cpu["lf"], cpu[fmt], strict=True)]
            line += f"  {median(each):.2f} of lf (" + ", ".join(f"{r:.2f}" for r in each) + ")"
        print(line)


# -- start-up -----------------------------------------------------------------------------------


def first_request(ledger: Path, offset: int) -> tuple[float, int]:
    """The timestamp of the first ledger line after ``offset``, and the new end of the file."""
    with ledger.open("rb") as f:
        f.seek(offset)
        first = f.readline()
        f.seek(0, os.SEEK_END)
        end = f.tell()
    return float(orjson.loads(first)["ts"]), end


def startup(work: Path, path: Path, runs: int, args: argparse.Namespace) -> None:
    ledger = work / "ledger.jsonl"
    ledgered = (*SANDBOX_ARGS, "--ledger", str(ledger), "--ledger-format", "requests")
    with sandbox_child("maxtraffic", *ledgered) as sandbox:
        runner = Contenders(work, sandbox.base_url, args.batch_size, args.in_flight, args.code)
        times: dict[str, list[float]] = {"script": [], "bulksend": []}
        offset = 0
        for i in range(runs):
            order = ["script", "bulksend"] if i % 2 == 0 else ["bulksend", "script"]
            for who in order:
                run = runner.script(path) if who == "script" else runner.bulksend(path, "journal")
                ts, offset = first_request(ledger, offset)
                times[who].append(ts - run.started)
        runner.bulksend(path, "journal", "-X", "importtime")
        send_imports = importtime((work / "stderr.txt").read_text())
    script_s, bulk_s = median(times["script"]), median(times["bulksend"])
    print(f"\nstart-up on {path.name} ({runs} alternating runs each): process start to the first")
    print(
        f"request the sandbox accepted (ledger timestamp), median: script {script_s * 1000:.0f} ms,"
    )
    print(
        f"bulksend send {bulk_s * 1000:.0f} ms: "
        f"{1000 * (bulk_s - script_s):+.0f} ms (target <= +100 ms)"
    )
    print("  script  : " + ", ".join(f"{t * 1000:.0f}" for t in times["script"]))
    print("  bulksend: " + ", ".join(f"{t * 1000:.0f}" for t in times["bulksend"]))
    imports = (
        ("the script's imports", "import asyncio, csv, gzip, json, aiohttp, orjson, uvloop"),
        ("bulksend.cli", "import bulksend.cli"),
    )
    print("python -X importtime, the sum of top-level imports (cumulative):")
    for label, code in imports:
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=runner.env,
            cwd=runner.work,
        ).stderr
        total, _ = importtime(err)
        print(f"  {label:<22}: {total * 1000:6.0f} ms")
    total, top = send_imports
    print(
        f"  {'a whole bulksend send':<22}: {total * 1000:6.0f} ms; heaviest: "
        + ", ".join(f"{name} {us / 1000:.0f}" for name, us in top)
    )


IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime(stderr: str, top: int = 8) -> tuple[float, list[tuple[str, int]]]:
    """Seconds of top-level imports in ``-X importtime`` output, and the heaviest of them."""
    level: list[tuple[str, int]] = []
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match and len(match.group(3)) == 1:
            level.append((match.group(4), int(match.group(2))))
    total = sum(us for _, us in level) / 1e6
    return total, sorted(level, key=lambda item: -item[1])[:top]


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", default="400000,4000000", help="sizes, comma-separated")
    parser.add_argument("--formats", default=",".join(FORMATS), help="of " + ", ".join(FORMATS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of " + ", ".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duplicates", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "bulksend-versus")
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT,
        help="the checkout whose bulksend the children run (default: this one), for before/after",
    )
    parser.add_argument(
        "--read-rounds", type=int, default=3, help="rounds of reading alone (0: none)"
    )
    parser.add_argument("--startup-runs", type=int, default=5, help="0: no start-up figures")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.rows.split(",")]
    formats = [f for f in args.formats.split(",") if f]
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(formats) - set(FORMATS) | set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown format or variant: {', '.join(sorted(unknown))}")
    print(f"machine: {machine()}; bulksend from {args.code}")
    print(
        f"batch_size={args.batch_size} in_flight={args.in_flight} "
        f"duplicates={args.duplicates:.0%}; sandbox: maxtraffic {' '.join(SANDBOX_ARGS)}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with sandbox_child("maxtraffic", *SANDBOX_ARGS) as sandbox:
            runner = Contenders(work, sandbox.base_url, args.batch_size, args.in_flight, args.code)
            warm_up(runner, args)
            for n in sizes:
                folder = args.dir / f"rows{n}-dup{args.duplicates:g}"
                files = {fmt: make_file(folder, fmt, n, args.duplicates) for fmt in formats}
                rounds = [
                    one_round(runner, files, variants, i % 2 == 1) for i in range(args.rounds)
                ]
                if rounds:
                    report_size(n, files, variants, rounds)
                if args.read_rounds:
                    warm = make_file(args.dir / "warm-up", "crlf", 10_000, args.duplicates)
                    read_speed(runner, files, args.read_rounds, warm)
        if args.startup_runs:
            folder = args.dir / f"rows{sizes[0]}-dup{args.duplicates:g}"
            path = make_file(folder, formats[0], sizes[0], args.duplicates)
            startup(work, path, args.startup_runs, args)


if __name__ == "__main__":
    main()
