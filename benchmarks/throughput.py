"""Engine throughput vs minimal raw aiohttp loops, side by side against one sandbox process.

    python -m benchmarks.throughput [--recipients 200000] [--batch-size 100] [--in-flight 32]
                                    [--latency-ms 0] [--repeat 3] [--occupancy]

Every run posts the same bodies (the same recipients in the same batches) to the same sandbox
(started with no effective limit) with the same concurrency, and is timed from start to end:

* *raw aiohttp, bodies ready*: posts bodies encoded before the clock starts — what the network
  path alone costs, the ceiling for anything that must also read the file;
* *raw aiohttp script*: what a user would write by hand — ``csv.reader`` over the same file,
  batches of ``--batch-size``, ``orjson.dumps``, post (no validation, no dedup, no retries);
* *engine*: the whole ``send_campaign`` from the file (read, validate, exact dedup, batch,
  encode, schedule, send, classify), logging at INFO as the CLI does;
* *engine + journal*: the same with its SQLite journal (issue 5: must not halve throughput).

Every contender runs once before the rounds (not timed: the sandbox's and the client's first
requests, first connections and first imports); then the rounds alternate, in the reverse
order every other round, each run after a ``gc.collect()`` (outside its clock: no run pays for
the garbage of the one before), and the medians are compared; the ratios are also taken within
each round (the median of the per-round ratios, and their range), which the machine's drift
from one round to the next does not move. Each run also reports the CPU time per request of
this process (the client, all threads) and of the sandbox process (Linux only): with no
latency both are busy, and the client's CPU per request is what sets the pace. With
``--latency-ms`` the sandbox answers each request that much later: the network-bound case a
real provider presents, where in-flight requests and round trips set the pace.

The raw loops use aiohttp's defaults as a script would (one ``TCPConnector(limit=in_flight)``
session); the engine's session has the same pool size and its own timeouts and User-Agent,
which cost the same within 2-4 µs a request (measured: benchmarks/README.md).

``--occupancy`` records when each request was sent and answered, and says where the time of
each run went: from its start to the first request, the first request alone (the engine sends
one first and the others once it is answered), the steady state from request
``2 * in_flight`` to the last answer (requests/s, the mean round trip, the mean requests in
flight, the median time from an answer to the same task's next request) and the tail after
the last answer. The recording costs about a microsecond a request, in every contender.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


#: each request's (task, sent, answered): the task's id and ``time.perf_counter()`` readings
Spans = list[tuple[int, float, float]]


class Recording:
    """The engine's transport, recording every request in ``spans``."""

    def __init__(self, inner: Any, spans: Spans) -> None:
        self.inner = inner
        self.spans = spans
        self.base_url = inner.base_url

    async def send(self, request: Any) -> Any:
        sent = time.perf_counter()
        try:
            return await self.inner.send(request)
        finally:
            self.spans.append((id(asyncio.current_task()), sent, time.perf_counter()))


async def engine_run(
    campaign: Path, url: str, journal: Path | None = None, spans: Spans | None = None
) -> Summary:
    settings = load_settings(campaign, env={}, overrides={"base_url": url})
    options = JournalOptions(journal, fresh=True) if journal else None
    wrap = None if spans is None else (lambda t: Recording(t, spans))
    result = await send_campaign(settings, {"api_key": KEY}, journal=options, wrap_transport=wrap)
    summary, stopped = result.summary, result.stopped
    if stopped is not None or not summary.complete:
        raise RuntimeError(f"engine run incomplete: {stopped}\n{summary.render()}")
    return summary


@dataclass(frozen=True, slots=True)
class Occupancy:
    """Where a run's time went (``occupancy``); times in seconds."""

    first: float  # from the start of the run to its first request
    alone: float  # from the first request to the second
    rate: float  # answers a second in the steady state
    round_trip: float  # its mean round trip
    in_flight: float  # its mean requests in flight
    next_request: float  # its median time from an answer to the same task's next request
    tail: float  # from the last answer to the end of the run


def occupancy(spans: Spans, start: float, end: float, in_flight: int) -> Occupancy:
    """The phases of a run from its requests' (task, sent, answered) times: the steady state
    runs from the start of request ``2 * in_flight`` (the first two round trips ramp up) to
    the last answer; its rate counts the answers in it, its round trip the requests sent in
    it."""
    ordered = sorted(spans, key=lambda s: s[1])
    sent = [s for _, s, _ in ordered]
    last = max(a for _, _, a in ordered)
    k = min(2 * in_flight, len(ordered) - 1)
    steady = ordered[k:]
    begin = sent[k]
    span = last - begin
    busy = sum(a - max(s, begin) for _, s, a in ordered if a > begin)
    gaps = []
    answered: dict[int, float] = {}
    for task, s, a in ordered:
        if task in answered and s >= begin:
            gaps.append(s - answered[task])
        answered[task] = a
    return Occupancy(
        first=sent[0] - start,
        alone=sent[1] - sent[0] if len(sent) > 1 else 0.0,
        rate=sum(1 for _, _, a in ordered if a > begin) / span if span > 0 else 0.0,
        round_trip=sum(a - s for _, s, a in steady) / len(steady),
        in_flight=busy / span if span > 0 else 0.0,
        next_request=median(gaps) if gaps else 0.0,
        tail=end - last,
    )


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    client_cpu: float
    server_cpu: float | None
    occupancy: Occupancy | None = None


Contender = Callable[[Spans | None], Awaitable[object]]


async def measured(
    run: Contender, sandbox: SandboxProcess, in_flight: int, record: bool = False
) -> Run:
    """Wall time of ``run()`` with the CPU time this process and the sandbox spent in it (and
    with ``record``, its requests' occupancy)."""
    gc.collect()  # the garbage of the runs before is not this one's to collect
    spans: Spans | None = [] if record else None
    server_before = sandbox.cpu_seconds()
    cpu_before = time.process_time()
    start = time.perf_counter()
    await run(spans)
    end = time.perf_counter()
    client = time.process_time() - cpu_before
    server_after = sandbox.cpu_seconds()
    server = None if server_before is None or server_after is None else server_after - server_before
    used = occupancy(spans, start, end, in_flight) if spans else None
    return Run(end - start, client, server, used)


async def script_run(
    path: Path,
    message: dict[str, object],
    headers: dict[str, str],
    url: str,
    batch_size: int,
    in_flight: int,
    spans: Spans | None = None,
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

    await post_all(bodies(), headers, url, in_flight, spans)


async def post_all(
    bodies: Iterator[bytes],
    headers: dict[str, str],
    url: str,
    in_flight: int,
    spans: Spans | None = None,
) -> None:
    """The raw loop: ``in_flight`` workers posting ``bodies`` (shared) through one session
    (recording each request in ``spans`` when given)."""
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in bodies:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

        async def recording_worker(spans: Spans) -> None:
            task = id(asyncio.current_task())
            for body in bodies:
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                spans.append((task, sent, time.perf_counter()))

        workers = (worker() if spans is None else recording_worker(spans) for _ in range(in_flight))
        await asyncio.gather(*workers)


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
            contenders: dict[str, Contender] = {
                "engine": lambda spans: engine_run(campaign, url, spans=spans),
                "raw": lambda spans: post_all(iter(bodies), headers, target, args.in_flight, spans),
                "journal": lambda spans: engine_run(campaign, url, journal, spans),
                "script": lambda spans: script_run(
                    path, message, headers, target, args.batch_size, args.in_flight, spans
                ),
            }
            for run in contenders.values():  # warm-up, not timed
                await run(None)
            for i in range(args.repeat):
                order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
                for name in order:
                    run = contenders[name]
                    runs[name].append(await measured(run, sandbox, args.in_flight, args.occupancy))
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
    rounds = {name: [run.seconds for run in values] for name, values in runs.items()}
    print(
        "ratio engine / raw script (same file in, same requests out): "
        f"{s / e:.2f}{per_round(rounds['script'], rounds['engine'])}"
    )
    print(
        "ratio engine / raw with bodies ready (the network ceiling) : "
        f"{r / e:.2f}{per_round(rounds['raw'], rounds['engine'])}"
    )
    print(
        f"journal cost: engine with / without journal = {e / j:.2f}"
        f"{per_round(rounds['engine'], rounds['journal'])}"
    )
    if args.occupancy:
        report_occupancy(runs, args.in_flight)


def per_round(baseline: Sequence[float], seconds: Sequence[float]) -> str:
    """`` (per round: median M, L-H)``: ``baseline / seconds`` within each round."""
    ratios = [b / t for b, t in zip(baseline, seconds, strict=True)]
    if len(ratios) < 2:
        return ""
    return f" (per round: median {median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f})"


def report_occupancy(runs: dict[str, list[Run]], in_flight: int) -> None:
    print(
        f"occupancy (medians; steady state: from request {2 * in_flight} to the last answer):\n"
        f"{'':34}  start→1st  1st alone  steady req/s  round trip  in flight  "
        "answer→next  tail"
    )
    for name, label in RUNS.items():
        used = [r.occupancy for r in runs[name] if r.occupancy is not None]
        if not used:
            continue

        def m(field: str, used: list[Occupancy] = used) -> float:
            return median([getattr(o, field) for o in used])

        print(
            f"{label:<34}: {m('first') * 1e3:6.1f} ms {m('alone') * 1e3:6.1f} ms "
            f"{m('rate'):>12,.0f} {m('round_trip') * 1e3:8.2f} ms {m('in_flight'):>9.2f} "
            f"{m('next_request') * 1e6:8.0f} µs {m('tail') * 1e3:5.1f} ms"
        )


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
    parser.add_argument(
        "--occupancy",
        action="store_true",
        help="record every request and say where each run's time went (see the docstring)",
    )
    args = parser.parse_args(argv)
    factory = None
    if not args.no_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main_async(args))


if __name__ == "__main__":
    main()
