"""What the journal costs a single process: none, SQLite, and Redis (``--state redis://``).

    python -m benchmarks.state_cost [--recipients 200000] [--batch-size 100 1000]
                                    [--in-flight 32] [--repeat 5] [--appendfsync everysec]

The whole ``send_campaign`` from the file (as ``benchmarks.throughput``'s *engine*) against one
sandbox process with no effective limit and no added latency (the case where the journal's cost
shows most), three ways, alternating: without a journal, with the SQLite journal, and with the
journal in a private ``redis-server`` on loopback (AOF on, ``appendfsync`` as given: the settings
``--state`` asks for). Each journaled run starts over (``fresh``). Medians of the wall times; the
figure is *throughput with the journal / without*, for each batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from benchmarks.common import KEY, cli_logging, machine, median, sandbox_child, write_rows
from benchmarks.throughput import CAMPAIGN
from bulksend.campaign import JournalOptions, send_campaign
from bulksend.config import load_settings
from bulksend.distributed.testing import RedisServer

RUNS = {"none": "no journal", "sqlite": "SQLite journal", "redis": "--state redis://"}


async def engine_run(campaign: Path, url: str, journal: JournalOptions | None) -> None:
    settings = load_settings(campaign, env={}, overrides={"base_url": url})
    result = await send_campaign(settings, {"api_key": KEY}, journal=journal)
    if result.stopped is not None or not result.summary.complete:
        raise RuntimeError(f"run incomplete: {result.stopped}\n{result.summary.render()}")


async def timed(run: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``run()``."""
    cpu, start = time.process_time(), time.perf_counter()
    await run()
    return time.perf_counter() - start, time.process_time() - cpu


async def one_size(
    tmp: Path, rows: Path, batch_size: int, args: argparse.Namespace, redis_url: str, url: str
) -> dict[str, list[tuple[float, float]]]:
    campaign = tmp / f"c{batch_size}.toml"
    campaign.write_text(CAMPAIGN.format(path=rows, batch_size=batch_size, in_flight=args.in_flight))
    sqlite = JournalOptions(tmp / f"b{batch_size}.journal", fresh=True)
    redis = JournalOptions(tmp / f"r{batch_size}.journal", fresh=True, state=redis_url)
    contenders: dict[str, JournalOptions | None] = {"none": None, "sqlite": sqlite, "redis": redis}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNS}
    for _ in range(args.repeat):
        for name, journal in contenders.items():
            runs[name].append(await timed(functools.partial(engine_run, campaign, url, journal)))
    return runs


def report(batch_size: int, runs: dict[str, list[tuple[float, float]]], n: int) -> None:
    requests = -(-n // batch_size)
    walls = {name: median([w for w, _ in values]) for name, values in runs.items()}
    print(f"batch_size={batch_size} requests={requests:,}")
    for name, label in RUNS.items():
        cpu = median([c for _, c in runs[name]]) / requests * 1e6
        print(
            f"  {label:<18}: {n / walls[name]:>9,.0f} recipients/s "
            f"(median {walls[name]:.3f} s; client CPU {cpu:,.0f} µs/request)"
        )
    base = walls["none"]
    print(
        f"  throughput with / without: SQLite {base / walls['sqlite']:.2f}, "
        f"Redis {base / walls['redis']:.2f}; Redis / SQLite {walls['sqlite'] / walls['redis']:.2f}"
    )


async def main_async(args: argparse.Namespace) -> None:
    extra = ("--appendonly", "yes", "--appendfsync", args.appendfsync)
    with tempfile.TemporaryDirectory() as tmp, cli_logging(), RedisServer(extra=extra) as redis:
        rows = write_rows(Path(tmp) / "r.csv", args.recipients)
        limit = ("--limit", "1000000000", "--max-batch", str(max(1000, *args.batch_size)))
        with sandbox_child("maxtraffic", *limit) as sandbox:
            print(f"machine: {machine()}; loop: {type(asyncio.get_running_loop()).__module__}")
            print(
                f"recipients={args.recipients:,} in_flight={args.in_flight} "
                f"repeat={args.repeat} redis: appendonly yes, appendfsync {args.appendfsync}"
            )
            for size in args.batch_size:
                runs = await one_size(Path(tmp), rows, size, args, redis.url, sandbox.base_url)
                report(size, runs, args.recipients)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="everysec")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    if args.no_uvloop:
        asyncio.run(main_async(args))
        return
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
