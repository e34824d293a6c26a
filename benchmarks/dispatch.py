"""The engine's own cost per request on the sending side: admission, feedback, classify, report.

    python -m benchmarks.dispatch [--requests 5000] [--batch-size 100] [--workers 32] [--repeat 7]
    python -m benchmarks.dispatch --sandbox [--requests 2000]     # against a sandbox process
    python -m benchmarks.dispatch --profile out/dispatch.prof      # cProfile of one engine run
    python -m benchmarks.dispatch --variant metrics --repeat 2     # one variant (for valgrind)

Null transport (the default): ``send`` returns at once a 200 with the sandbox's six headers
(Content-Type, X-RateLimit-Limit, X-RateLimit-Remaining counting down, Content-Length, Date,
Server) in a ``CIMultiDictProxy``, as aiohttp hands them over. Recipients are built before the
clock starts; logging is set up as the CLI does at INFO (JSON to a null stream). Runs alternate
and the medians of the CPU times are compared:

* ``bare``: 32 tasks doing nothing but ``await transport.send(request)`` on pre-encoded requests
  (the floor the null transport itself sets);
* ``engine, bodies encoded in advance``: ``Engine.run`` on ready-made chunks of already unique
  rows with a pass-through deduplicator, and the provider's ``encode`` answered from requests
  made before the clock (as the raw loop's are), so what is measured is the engine's own work:
  batching, queueing, scheduling, feedback, classifying, the circuit breaker, counting and
  logging. *overhead* is this minus bare, per request (issue 7's target: <= 10 µs);
* ``engine, encoding``: the same with the real ``encode`` (the JSON body of every batch); the
  encoding alone is timed on the same batches and reported beside it;
* ``engine + dedup``: the same with the real ``Deduper`` too (as ``bulksend send`` runs it);
  the deduplicator alone is timed on the same chunks;
* ``engine + metrics``: the engine with the bodies encoded in advance and the Prometheus metrics
  of ``--metrics-port`` on (``SendMetrics`` attached), side by side with the same run without
  them: *metrics cost* is the median of their per-round ratio (issue 18: under 5 % of
  throughput). One scrape of the registry after each such run is timed apart (Prometheus
  scrapes every 15 s or so, not once per run of a fraction of a second).

With ``--sandbox`` the engine (dispatch only, as above, real ``Transport``) and the raw aiohttp
loop of ``benchmarks.throughput`` post the same bodies to one sandbox process with no effective
limit; the ratio of their wall times is issue 7's figure. The engine with bodies in advance runs
there with metrics on too (*metrics cost*: the median per-round ratio of wall times).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy, istr

from benchmarks.common import KEY, cli_logging, machine, median, sandbox_process
from benchmarks.throughput import post_all
from bulksend.dedup.deduper import Deduper
from bulksend.dispatch.engine import Engine, EngineOptions
from bulksend.models import Batch, HttpRequest, HttpResponse, Recipient
from bulksend.net.transport import Transport
from bulksend.providers import maxtraffic
from bulksend.ratelimit.scheduler import GroupPolicy, Scheduler
from bulksend.recipients import Recipients
from bulksend.sources.spec import Chunk

#: what the sandbox is started with (and what the null transport announces): no effective limit
LIMIT = 1_000_000_000
CHUNK = 4096  # rows per chunk, as the readers hand them to the engine
MESSAGE = {"campaign": "bench", "messages": [{"title": "Benchmark", "body": "hello"}]}
OK_BODY = b'{"success":true}'
#: the sandbox's response headers, as aiohttp's parser names them
CONTENT_TYPE, CONTENT_LENGTH, DATE, SERVER = map(
    istr, ("Content-Type", "Content-Length", "Date", "Server")
)
LIMIT_HEADER, REMAINING_HEADER = istr("X-RateLimit-Limit"), istr("X-RateLimit-Remaining")


class NullTransport:
    """Answers every request at once with a 200 and the sandbox's rate-limit headers."""

    base_url = "http://null.invalid"

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = str(limit)
        self._remaining = limit

    async def send(self, request: HttpRequest) -> HttpResponse:
        self._remaining -= 1
        headers = CIMultiDict(
            (
                (CONTENT_TYPE, "application/json"),
                (LIMIT_HEADER, self._limit),
                (REMAINING_HEADER, str(self._remaining)),
                (CONTENT_LENGTH, "16"),
                (DATE, "Wed, 02 Dec 2026 02:45:19 GMT"),
                (SERVER, "Python/3.11 aiohttp/3.14.5"),
            )
        )
        return HttpResponse(200, CIMultiDictProxy(headers), OK_BODY)


class PassThrough:
    """A deduplicator for rows known to be unique: keeps them all."""

    def filter_many(self, recipients: Sequence[Recipient]) -> tuple[Sequence[Recipient], list[Any]]:
        return recipients, []  # as they are: the columns go on to the batcher


class PreEncoded:
    """The MaxTraffic adapter with every batch's request encoded in advance (by batch number),
    so the engine's figure leaves out the JSON encoding the raw loop did before its clock."""

    def __init__(self, inner: maxtraffic.MaxTraffic, requests: list[HttpRequest]) -> None:
        self._inner = inner
        self._requests = requests
        self.name = inner.name
        self.groups = inner.groups
        self.sends_rate_headers = inner.sends_rate_headers
        self.dedup_keys = inner.dedup_keys
        self.batcher = inner.batcher
        self.classify = inner.classify
        self.describe = inner.describe

    def encode(self, batch: Batch) -> HttpRequest:
        if batch.number <= len(self._requests):
            return self._requests[batch.number - 1]
        return self._inner.encode(batch)


def make_rows(n: int) -> list[Recipient]:
    return [Recipient(i + 2, f"{i:032x}", f"u-{i:08d}-{i % 9973:04d}") for i in range(n)]


def make_chunks(rows: list[Recipient]) -> list[Chunk]:
    """Chunks as the readers hand them over: columns (``Recipients``), no row objects."""
    parts = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
    chunks = [
        Chunk(Recipients([r.line for r in p], [r.id for r in p], [r.uid for r in p]), [])
        for p in parts
    ]
    # a real send streams its rows through; keep the collector from walking all of them
    gc.collect()
    gc.freeze()
    return chunks


def provider() -> maxtraffic.MaxTraffic:
    return maxtraffic.build({"message": MESSAGE}, {"api_key": KEY})


def scheduler(workers: int) -> Scheduler:
    """As ``bulksend send`` builds it for MaxTraffic (default limit, ``in_flight = workers``)."""
    p = provider()
    return Scheduler(
        {
            name: GroupPolicy(limit=limit, in_flight=workers, headers_expected=True)
            for name, limit in p.groups.items()
        }
    )


def options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(batch_size=args.batch_size, workers=args.workers)


def cpu(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


async def acpu(coro: Awaitable[Any]) -> tuple[float, float, Any]:
    """(CPU seconds, wall seconds, result) of awaiting ``coro``."""
    start, wall = time.process_time(), time.perf_counter()
    result = await coro
    return time.process_time() - start, time.perf_counter() - wall, result


async def engine_run(
    args: argparse.Namespace,
    chunks: list[Chunk],
    transport: Any,
    dedup: Any,
    requests: list[HttpRequest] | None = None,
    *,
    metrics: bool = False,
    scrapes: list[float] | None = None,
) -> tuple[float, float, int]:
    """One ``Engine.run``; with ``requests``, the bodies are encoded in advance; with
    ``metrics``, the send's Prometheus metrics are on (and with ``scrapes``, the CPU seconds of
    one scrape after the run are added to it)."""
    p: Any = provider() if requests is None else PreEncoded(provider(), requests)
    engine = Engine(p, transport, scheduler(args.workers), dedup, options(args))
    send_metrics = None
    if metrics:
        from bulksend.output.metrics import SendMetrics

        send_metrics = SendMetrics(provider="maxtraffic", campaign="bench")
        send_metrics.attach(engine)
    seconds, wall, summary = await acpu(engine.run(chunks))
    if send_metrics is not None and scrapes is not None:
        from prometheus_client import generate_latest

        scrapes.append(cpu(lambda: generate_latest(send_metrics.registry)))
    if not summary.complete or summary.delivered != sum(len(c.recipients) for c in chunks):
        raise RuntimeError(f"engine run incomplete\n{summary.render()}")
    return seconds, wall, summary.requests


async def bare_run(requests: list[HttpRequest], transport: Any, workers: int) -> float:
    """CPU seconds of ``workers`` tasks awaiting ``transport.send`` on every request."""
    queue = iter(requests)

    async def worker() -> None:
        for request in queue:
            await transport.send(request)

    seconds, _, _ = await acpu(asyncio.gather(*(worker() for _ in range(workers))))
    return seconds


def encoded(rows: list[Recipient], batch_size: int) -> tuple[list[HttpRequest], float]:
    """The requests of every batch, and the CPU seconds ``encode`` took for them."""
    p = provider()
    batches = p.batcher(batch_size).add_many(rows)
    out: list[HttpRequest] = []
    seconds = cpu(lambda: out.extend(p.encode(b) for b in batches))
    return out, seconds


def dedup_cpu(chunks: list[Chunk], n: int) -> float:
    with Deduper(keys=("id", "uid"), expected=n) as d:
        return cpu(lambda: [d.filter_many(c.recipients) for c in chunks])


def us(seconds: float, requests: int) -> float:
    return seconds / requests * 1e6


async def null_mode(args: argparse.Namespace) -> None:
    n = args.requests * args.batch_size
    rows = make_rows(n)
    chunks = make_chunks(rows)
    requests, _ = encoded(rows, args.batch_size)
    names = ("bare", "dispatch", "metrics", "engine", "encode", "engine + dedup", "dedup")
    runs: dict[str, list[float]] = {k: [] for k in names}
    await engine_run(args, chunks, NullTransport(), PassThrough(), requests)  # warm-up
    await engine_run(args, chunks, NullTransport(), PassThrough(), requests, metrics=True)
    count = 0
    scrapes: list[float] = []
    for _ in range(args.repeat):
        runs["bare"].append(await bare_run(requests, NullTransport(), args.workers))
        seconds, _, count = await engine_run(args, chunks, NullTransport(), PassThrough(), requests)
        runs["dispatch"].append(seconds)
        on = await engine_run(
            args, chunks, NullTransport(), PassThrough(), requests, metrics=True, scrapes=scrapes
        )
        runs["metrics"].append(on[0])
        runs["engine"].append((await engine_run(args, chunks, NullTransport(), PassThrough()))[0])
        runs["encode"].append(encoded(rows, args.batch_size)[1])
        if not args.no_dedup:
            with Deduper(keys=("id", "uid"), expected=n) as d:
                full = await engine_run(args, chunks, NullTransport(), d)
            runs["engine + dedup"].append(full[0])
            runs["dedup"].append(dedup_cpu(chunks, n))
    print(f"machine: {machine()}; loop: {type(asyncio.get_running_loop()).__module__}")
    print(
        f"null transport: requests={count:,} batch_size={args.batch_size} "
        f"workers={args.workers} repeat={args.repeat}; CPU µs per request"
    )
    print(f"{'':40} {'median':>7} {'best':>7}")
    fig: dict[str, tuple[float, float]] = {}
    for name, label in zip(
        names,
        (
            "bare send loop",
            "engine, bodies encoded in advance",
            "  the same + metrics (--metrics-port)",
            "engine, encoding",
            "  encode alone",
            "engine + dedup",
            "  dedup alone",
        ),
        strict=True,
    ):
        if runs[name]:
            fig[name] = (us(median(runs[name]), count), us(min(runs[name]), count))
            print(f"{label:40} {fig[name][0]:7.1f} {fig[name][1]:7.1f}")
    own = [d - b for d, b in zip(fig["dispatch"], fig["bare"], strict=True)]
    print(f"{'overhead (encoded in advance - bare)':40} {own[0]:7.1f} {own[1]:7.1f}")
    print(metrics_cost(runs["dispatch"], runs["metrics"], "CPU"))
    print(f"one scrape of the metrics: {median(scrapes) * 1000:.2f} ms CPU (median)")


def metrics_cost(off: list[float], on: list[float], what: str) -> str:
    """The metrics' cost: the median of the per-round ratios of ``on`` to ``off`` (the runs
    alternate: the machine's speed drifts between rounds more than they differ)."""
    ratio = median([m / o for m, o in zip(on, off, strict=True)])
    return (
        f"metrics cost: {100 * (ratio - 1):+.1f} % {what} time per request "
        f"(throughput x {1 / ratio:.3f}; issue 18: >= 0.95)"
    )


async def variant_mode(args: argparse.Namespace) -> None:
    """A warm-up run, then ``--repeat`` runs of one variant and nothing else: for counting
    instructions under valgrind, which no other load on the machine changes. The difference
    between two counts with different ``--repeat`` is what the runs themselves cost (the
    start-up, the warm-up and the imports cancel out)."""
    rows = make_rows(args.requests * args.batch_size)
    chunks = make_chunks(rows)
    requests, _ = encoded(rows, args.batch_size)
    on = args.variant == "metrics"
    for _ in range(1 + args.repeat):
        await engine_run(args, chunks, NullTransport(), PassThrough(), requests, metrics=on)
    print(f"{args.variant}: {args.repeat} runs of {args.requests:,} requests")


async def profile_mode(args: argparse.Namespace) -> None:
    """cProfile one engine run (bodies encoded in advance, after a warm-up), with the null
    transport or the sandbox."""
    rows = make_rows(args.requests * args.batch_size)
    chunks = make_chunks(rows)
    requests, _ = encoded(rows, args.batch_size)
    profiler = cProfile.Profile()
    if args.sandbox:
        sandbox_args = ("--limit", str(LIMIT), "--max-batch", str(max(1000, args.batch_size)))
        with sandbox_process("maxtraffic", *sandbox_args) as url:
            for profiled in (False, True):
                async with Transport(url, connections=args.workers) as transport:
                    if profiled:
                        profiler.enable()
                    await engine_run(args, chunks, transport, PassThrough(), requests)
                    profiler.disable()
    else:
        await engine_run(args, chunks, NullTransport(), PassThrough(), requests)  # warm up
        profiler.enable()
        await engine_run(args, chunks, NullTransport(), PassThrough(), requests)
        profiler.disable()
    Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(args.profile)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


class ProbeTimer:
    """Wraps a transport and notes when the first two requests went out: the engine sends its
    first request alone, and the second one waits for the GCRA slot the first one took at the
    configured limit (600/min for MaxTraffic: 0.1 s) before the headers raised it."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self.base_url = inner.base_url
        self.starts: list[float] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        if len(self.starts) < 2:
            self.starts.append(time.perf_counter())
        return await self._inner.send(request)

    @property
    def pause(self) -> float:
        return self.starts[1] - self.starts[0] if len(self.starts) == 2 else 0.0


async def sandbox_mode(args: argparse.Namespace) -> None:
    n = args.requests * args.batch_size
    rows = make_rows(n)
    chunks = make_chunks(rows)
    requests, _ = encoded(rows, args.batch_size)
    bodies = [r.body or b"" for r in requests]
    headers, path = dict(requests[0].headers), requests[0].path
    sandbox_args = ("--limit", str(LIMIT), "--max-batch", str(max(1000, args.batch_size)))
    runs: dict[str, list[tuple[float, float, float]]] = {
        "encoding": [],
        "advance": [],
        "metrics": [],
        "raw": [],
    }
    count = 0
    variants = (
        ("encoding", None, False),
        ("advance", requests, False),
        ("metrics", requests, True),
    )
    with sandbox_process("maxtraffic", *sandbox_args) as url:
        for _ in range(args.repeat):
            for name, pre, on in variants:
                async with Transport(url, connections=args.workers) as transport:
                    timed = ProbeTimer(transport)
                    seconds, wall, count = await engine_run(
                        args, chunks, timed, PassThrough(), pre, metrics=on
                    )
                runs[name].append((wall, seconds, timed.pause))
            seconds, wall, _ = await acpu(post_all(iter(bodies), headers, url + path, args.workers))
            runs["raw"].append((wall, seconds, 0.0))
    print(f"machine: {machine()}; loop: {type(asyncio.get_running_loop()).__module__}")
    print(
        f"sandbox: requests={count:,} batch_size={args.batch_size} workers={args.workers} "
        f"repeat={args.repeat} (medians)"
    )
    raws = [w for w, _, _ in runs["raw"]]
    print(f"{'':36} {'req/s':>7} {'wall s':>7} {'µs CPU/req':>10} {'ratio':>6} {'ratio*':>6}")
    for name, label in (
        ("raw", "raw aiohttp loop"),
        ("encoding", "engine, dispatch only"),
        ("advance", "engine, bodies encoded in advance"),
        ("metrics", "  the same + metrics (--metrics-port)"),
    ):
        wall = median([w for w, _, _ in runs[name]])
        cpu_s = median([c for _, c, _ in runs[name]])
        # ratios within each round (the runs alternate), then their median: the machine's
        # speed drifts between rounds more than the figures differ
        ratio = median([r / w for r, (w, _, _) in zip(raws, runs[name], strict=True)])
        steady = median([r / (w - p) for r, (w, _, p) in zip(raws, runs[name], strict=True)])
        print(
            f"{label:36} {count / wall:7,.0f} {wall:7.3f} {us(cpu_s, count):10.0f} "
            f"{ratio:6.2f} {steady:6.2f}"
        )
    pause = median([p for _, _, p in runs["encoding"]])
    print(
        "ratio = raw wall time / this one, per round (issue 7: >= 0.9); ratio* leaves out the "
        f"engine's pause after its first request ({pause * 1000:.0f} ms: the GCRA slot it "
        "took at the configured 600/min before the headers raised the limit)"
    )
    walls = {name: [w for w, _, _ in runs[name]] for name in ("advance", "metrics")}
    print(metrics_cost(walls["advance"], walls["metrics"], "wall"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="requests per run (5000; 2000 --sandbox)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=32, help="workers = in-flight cap (32)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sandbox", action="store_true", help="against a sandbox process")
    parser.add_argument("--profile", metavar="FILE", help="cProfile one engine run into FILE")
    parser.add_argument("--no-dedup", action="store_true", help="skip the runs with the Deduper")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--variant",
        choices=["dispatch", "metrics"],
        help="run only this variant (after a warm-up), for valgrind's instruction counts",
    )
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 2000 if args.sandbox else 5000
    factory = None
    if not args.no_uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    mode = profile_mode if args.profile else sandbox_mode if args.sandbox else null_mode
    if args.variant:
        mode = variant_mode
    try:
        with cli_logging(), asyncio.Runner(loop_factory=factory) as runner:
            runner.run(mode(args))
    finally:
        gc.unfreeze()


if __name__ == "__main__":
    main()
