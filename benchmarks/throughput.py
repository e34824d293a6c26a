"""Engine throughput vs a minimal raw aiohttp loop, side by side against one sandbox process.

    python -m benchmarks.throughput [--recipients 200000] [--batch-size 100] [--in-flight 32]

Both sides post the same bodies to the same sandbox (started with no effective limit) with the
same concurrency; the engine also reads the CSV, deduplicates, batches and encodes. A third run
is the engine with its SQLite journal on (issue 5: journaling must not halve throughput). Runs
alternate (engine, engine + journal, raw, ...) and the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.common import KEY, machine, median, sandbox_process, write_rows
from bulksend.campaign import JournalOptions, build_provider, send_campaign
from bulksend.config import load_settings
from bulksend.models import Recipient
from bulksend.report import Summary

CAMPAIGN = """
provider = "maxtraffic"
name = "bench"
[message]
campaign = "bench"
messages = [{{ title = "Benchmark", body = "hello" }}]
[recipients]
path = "{path}"
[send]
batch_size = {batch_size}
in_flight = {in_flight}
"""


async def engine_run(campaign: Path, url: str, journal: Path | None = None) -> Summary:
    settings = load_settings(campaign, env={}, overrides={"base_url": url})
    options = JournalOptions(journal, fresh=True) if journal else None
    result = await send_campaign(settings, {"api_key": KEY}, progress_every=3600, journal=options)
    summary, stopped = result.summary, result.stopped
    if stopped is not None or not summary.complete:
        raise RuntimeError(f"engine run incomplete: {stopped}\n{summary.render()}")
    return summary


async def raw_run(bodies: list[bytes], headers: dict[str, str], url: str, in_flight: int) -> float:
    """The baseline: post prepared bodies with ``in_flight`` workers; returns seconds."""
    queue = iter(bodies)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in queue:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - start


def prepare(campaign: Path, n: int, batch_size: int) -> tuple[list[bytes], dict[str, str], str]:
    settings = load_settings(campaign, env={})
    provider = build_provider(settings, {"api_key": KEY})
    batcher = provider.batcher(batch_size)
    batches = []
    for i in range(n):
        b = batcher.add(Recipient(i + 2, f"{i:032x}", f"u-{i:08d}-{i % 9973:04d}"))
        if b:
            batches.append(b)
    batches.extend(batcher.flush())
    requests = [provider.encode(b) for b in batches]
    return [r.body or b"" for r in requests], dict(requests[0].headers), requests[0].path


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_rows(Path(tmp) / "r.csv", args.recipients)
        campaign = Path(tmp) / "c.toml"
        campaign.write_text(
            CAMPAIGN.format(path=path, batch_size=args.batch_size, in_flight=args.in_flight)
        )
        bodies, headers, api_path = prepare(campaign, args.recipients, args.batch_size)
        sandbox_args = ("--limit", "1000000000", "--max-batch", str(max(1000, args.batch_size)))
        with sandbox_process("maxtraffic", *sandbox_args) as url:
            engine_times, journal_times, raw_times, requests = [], [], [], 0
            journal = Path(tmp) / "bench.journal"
            for _ in range(args.repeat):
                summary = await engine_run(campaign, url)
                engine_times.append(summary.elapsed)
                requests = summary.requests
                journal_times.append((await engine_run(campaign, url, journal)).elapsed)
                raw_times.append(await raw_run(bodies, headers, url + api_path, args.in_flight))
    n = args.recipients
    e, r, j = median(engine_times), median(raw_times), median(journal_times)
    print(f"machine: {machine()}; loop: {type(asyncio.get_running_loop()).__module__}")
    print(
        f"recipients={n:,} batch_size={args.batch_size} in_flight={args.in_flight} "
        f"requests={requests:,} repeat={args.repeat}"
    )
    print(f"engine: {n / e:,.0f} recipients/s, {requests / e:,.0f} requests/s (median {e:.3f} s)")
    print(f"raw aiohttp: {n / r:,.0f} recipients/s, {len(bodies) / r:,.0f} requests/s ({r:.3f} s)")
    print(f"engine + journal: {n / j:,.0f} recipients/s (median {j:.3f} s)")
    print(f"ratio engine/raw: {r / e:.2f}; journal cost: with/without = {e / j:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    factory = None
    if not args.no_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main_async(args))


if __name__ == "__main__":
    main()
