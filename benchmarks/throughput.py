"""Engine throughput vs minimal raw aiohttp loops, side by side against one sandbox process.

    python -m benchmarks.throughput [--recipients 200000] [--batch-size 100] [--in-flight 32]
                                    [--latency-ms 0] [--repeat 3]

Every run posts the same bodies (the same recipients in the same batches) to the same sandbox
(started with no effective limit) with the same concurrency, and is timed from start to end:

* *raw aiohttp, bodies ready*: posts bodies encoded before the clock starts — what the network
  path alone costs, the ceiling for anything that must also read the file;
* *raw aiohttp script*: what a user would write by hand — ``csv.reader`` over the same file,
  batches of ``--batch-size``, ``orjson.dumps``, post (no validation, no dedup, no retries);
* *engine*: the whole ``send_campaign`` from the file (read, validate, exact dedup, batch,
  encode, schedule, send, classify), logging at INFO as the CLI does;
* *engine + journal*: the same with its SQLite journal (issue 5: must not halve throughput).

Runs alternate and the medians are compared. Each run also reports the CPU time per request of
this process (the client, all threads) and of the sandbox process (Linux only): with no
latency both are busy, and the client's CPU per request is what sets the pace. With
``--latency-ms`` the sandbox answers each request that much later: the network-bound case a
real provider presents, where in-flight requests and round trips set the pace.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from benchmarks.common import (
    CAMPAIGN_HEAD,
    KEY,
    cli_logging,
    machine,
    median,
    sandbox_child,
    write_rows,
)
from bulksend.campaign import JournalOptions, build_provider, send_campaign
from bulksend.config import load_settings
from bulksend.models import Recipient
from bulksend.output.report import Summary
from bulksend.sandbox.testing import SandboxProcess

CAMPAIGN = CAMPAIGN_HEAD + "[send]\nbatch_size = {batch_size}\nin_flight = {in_flight}\n"


async def engine_run(campaign: Path, url: str, journal: Path | None = None) -> Summary:
    settings = load_settings(campaign, env={}, overrides={"base_url": url})
    options = JournalOptions(journal, fresh=True) if journal else None
    result = await send_campaign(settings, {"api_key": KEY}, journal=options)
    summary, stopped = result.summary, result.stopped
    if stopped is not None or not summary.complete:
        raise RuntimeError(f"engine run incomplete: {stopped}\n{summary.render()}")
    return summary


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    client_cpu: float
    server_cpu: float | None


async def measured(run: Callable[[], Awaitable[object]], sandbox: SandboxProcess) -> Run:
    """Wall time of ``run()`` with the CPU time this process and the sandbox spent in it."""
    server_before = sandbox.cpu_seconds()
    cpu_before = time.process_time()
    start = time.perf_counter()
    await run()
    seconds = time.perf_counter() - start
    client = time.process_time() - cpu_before
    server_after = sandbox.cpu_seconds()
    server = None if server_before is None or server_after is None else server_after - server_before
    return Run(seconds, client, server)


async def script_run(
    path: Path,
    message: dict[str, object],
    headers: dict[str, str],
    url: str,
    batch_size: int,
    in_flight: int,
) -> None:
    """The hand-written baseline: read the CSV, batch, encode and post."""

    def bodies() -> Iterator[bytes]:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            next(reader)  # the header
            ids: list[str] = []
            uids: list[str] = []
            for row in reader:
                ids.append(row[0])
                uids.append(row[1])
                if len(ids) == batch_size:
                    yield orjson.dumps({**message, "to_ids": ids, "to_uids": uids})
                    ids, uids = [], []
            if ids:
                yield orjson.dumps({**message, "to_ids": ids, "to_uids": uids})

    await post_all(bodies(), headers, url, in_flight)


async def post_all(
    bodies: Iterator[bytes], headers: dict[str, str], url: str, in_flight: int
) -> None:
    """The raw loop: ``in_flight`` workers posting ``bodies`` (shared) through one session."""
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in bodies:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        await asyncio.gather(*(worker() for _ in range(in_flight)))


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
    with tempfile.TemporaryDirectory() as tmp, cli_logging():
        path = write_rows(Path(tmp) / "r.csv", args.recipients)
        campaign = Path(tmp) / "c.toml"
        campaign.write_text(
            CAMPAIGN.format(path=path, batch_size=args.batch_size, in_flight=args.in_flight)
        )
        bodies, headers, api_path = prepare(campaign, args.recipients, args.batch_size)
        message = {k: v for k, v in orjson.loads(bodies[0]).items() if not k.startswith("to_")}
        sandbox_args = (
            *("--limit", "1000000000", "--max-batch", str(max(1000, args.batch_size))),
            *("--latency-ms", str(args.latency_ms)),
        )
        runs: dict[str, list[Run]] = {name: [] for name in RUNS}
        with sandbox_child("maxtraffic", *sandbox_args) as sandbox:
            url = sandbox.base_url
            journal = Path(tmp) / "bench.journal"
            target = url + api_path
            contenders: dict[str, Callable[[], Awaitable[object]]] = {
                "engine": lambda: engine_run(campaign, url),
                "raw": lambda: post_all(iter(bodies), headers, target, args.in_flight),
                "journal": lambda: engine_run(campaign, url, journal),
                "script": lambda: script_run(
                    path, message, headers, target, args.batch_size, args.in_flight
                ),
            }
            for _ in range(args.repeat):
                for name, run in contenders.items():
                    runs[name].append(await measured(run, sandbox))
    report(runs, args, len(bodies))


def report(runs: dict[str, list[Run]], args: argparse.Namespace, requests: int) -> None:
    n = args.recipients
    print(f"machine: {machine()}; loop: {type(asyncio.get_running_loop()).__module__}")
    print(
        f"recipients={n:,} batch_size={args.batch_size} in_flight={args.in_flight} "
        f"requests={requests:,} latency_ms={args.latency_ms:g} repeat={args.repeat}"
    )
    medians = {name: median([r.seconds for r in values]) for name, values in runs.items()}
    for name, label in RUNS.items():
        t = medians[name]
        client = median([r.client_cpu for r in runs[name]]) / requests * 1e6
        servers = [r.server_cpu for r in runs[name] if r.server_cpu is not None]
        server = f"{median(servers) / requests * 1e6:>5.0f}" if servers else "    -"
        print(
            f"{label:<34}: {n / t:>11,.0f} recipients/s {requests / t:>8,.0f} requests/s "
            f"(median {t:.3f} s; CPU µs/request: client {client:>5.0f}, sandbox {server})"
        )
    e, r, s, j = (medians[k] for k in ("engine", "raw", "script", "journal"))
    print(f"ratio engine / raw script (same file in, same requests out): {s / e:.2f}")
    print(f"ratio engine / raw with bodies ready (the network ceiling) : {r / e:.2f}")
    print(f"journal cost: engine with / without journal = {e / j:.2f}")


RUNS = {
    "raw": "raw aiohttp, bodies ready",
    "script": "raw aiohttp script (csv.reader)",
    "engine": "engine (whole send from the file)",
    "journal": "engine + journal",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="the sandbox's added latency per request"
    )
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
