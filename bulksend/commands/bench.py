"""``bulksend bench``: measure a send end to end against a sandbox in a separate process.

The sandbox runs with a profile (latency, limit and window, faults); bulksend sends N synthetic
recipients (or a given file) to it and reports recipients/s, requests/s, latency percentiles,
quota utilisation, 429s, retries, the client's and the sandbox's CPU time and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bulksend.commands.argtypes import (
    fraction,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
)
from bulksend.commands.common import Context, ExitStatus, add_output_flags
from bulksend.errors import ConfigError
from bulksend.output.outputs import Output, check
from bulksend.output.printable import for_people
from bulksend.output.private import open_private, write_private

HELP = "measure throughput against a sandbox in a separate process"
DESCRIPTION = (
    "Measure a send end to end against a sandbox in a separate process: recipients/s, "
    "requests/s, latency percentiles, quota use, 429s, retries, CPU time and peak RSS."
)
EPILOG = """\
examples:
  bulksend bench --recipients 200000 --batch-size 100
  bulksend bench --recipients 20000 --batch-size 10 --limit 50 --window 1 --plot bench.png
  bulksend bench --recipients 50000 --fail-rate 0.05 --latency-ms 20 --json bench.json
"""

CAMPAIGN = """
provider = "maxtraffic"
name = "bench"
[message]
campaign = "bench"
messages = [{{ title = "Benchmark", body = "hello" }}]
[recipients]
path = "{path}"
id = "{id}"
uid = "{uid}"
[send]
batch_size = {batch_size}
in_flight = {in_flight}
max_attempts = {max_attempts}
limit = "{limit}/{window:g}s"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("load")
    load.add_argument(
        "--recipients",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="synthetic recipients to send (100,000)",
    )
    load.add_argument("--file", metavar="PATH", type=Path, help="send this recipient file instead")
    load.add_argument("--id", default="id", metavar="COLUMN", help="with --file: id column (id)")
    load.add_argument(
        "--uid", default="uid", metavar="COLUMN", help="with --file: uid column (uid)"
    )
    load.add_argument(
        "--duplicate-rate",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="fraction of synthetic rows that repeat an earlier one (0)",
    )
    load.add_argument(
        "--batch-size", type=positive_int, default=1000, metavar="N", help="recipients per request"
    )
    load.add_argument(
        "--in-flight", type=positive_int, default=32, metavar="N", help="concurrent requests (32)"
    )
    load.add_argument(
        "--max-attempts", type=positive_int, default=6, metavar="N", help="per batch (6)"
    )
    profile = parser.add_argument_group("sandbox profile")
    profile.add_argument(
        "--latency-ms",
        metavar="MS",
        type=non_negative,
        default=0.0,
        help="added to every answer (0)",
    )
    profile.add_argument(
        "--limit",
        metavar="N",
        type=non_negative_int,
        default=0,
        help="requests per window (0: none)",
    )
    profile.add_argument(
        "--window", metavar="SECONDS", type=positive, default=60.0, help="window seconds (60)"
    )
    profile.add_argument(
        "--no-ratelimit-headers", action="store_true", help="the sandbox sends no X-RateLimit-*"
    )
    profile.add_argument(
        "--fail-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="fraction answered 500/503 (half each)",
    )
    profile.add_argument(
        "--reset-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="fraction closed without an answer",
    )
    profile.add_argument(
        "--drop-after-accept-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="fraction accepted, then closed without an answer",
    )
    profile.add_argument(
        "--storm-every",
        metavar="SECONDS",
        type=non_negative,
        default=0.0,
        help="seconds between 429 storms",
    )
    profile.add_argument(
        "--storm-for",
        metavar="SECONDS",
        type=non_negative,
        default=0.0,
        help="seconds a 429 storm lasts",
    )
    profile.add_argument("--seed", metavar="N", type=int, default=0, help="seed for the faults (0)")
    out = parser.add_argument_group("results")
    out.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    out.add_argument("--plot", type=Path, metavar="PNG", help="throughput and limit over time")
    add_output_flags(parser)


@dataclass
class Timings:
    """Per-request latency and completion times, recorded by a transport wrapper."""

    start: float = field(default_factory=time.perf_counter)
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)


class TimedTransport:
    def __init__(self, inner: Any, timings: Timings) -> None:
        self.inner = inner
        self.timings = timings

    async def send(self, request: Any) -> Any:
        t0 = time.perf_counter()
        self.timings.sent_at.append(t0 - self.timings.start)
        try:
            return await self.inner.send(request)
        finally:
            t1 = time.perf_counter()
            self.timings.latencies.append(t1 - t0)
            self.timings.done_at.append(t1 - self.timings.start)


def utilisation(sent_at: Sequence[float], allowed_per_second: float) -> float | None:
    """The pace from the first request to the last, as a share of the limit: ``n`` requests
    span ``n - 1`` intervals (counting ``n`` over the span reads more than 100 % on a short run
    paced exactly at the limit). None without a limit or with fewer than two requests."""
    if allowed_per_second <= 0 or len(sent_at) < 2:
        return None
    span = max(sent_at) - min(sent_at)
    return (len(sent_at) - 1) / span / allowed_per_second if span > 0 else None


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sandbox_args(args: argparse.Namespace, key: str) -> list[str]:
    limit = args.limit or 1_000_000_000
    out = ["--api-key", key, "--limit", str(limit), "--window", str(args.window)]
    out += ["--max-batch", str(max(1000, args.batch_size)), "--seed", str(args.seed)]
    out += ["--latency-ms", str(args.latency_ms)]
    if args.no_ratelimit_headers:
        out.append("--no-ratelimit-headers")
    for flag in ("fail_rate", "reset_rate", "drop_after_accept_rate", "storm_every", "storm_for"):
        value = getattr(args, flag)
        if value:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out


async def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from bulksend.campaign import send_campaign
    from bulksend.config import load_settings
    from bulksend.sandbox.testing import SandboxProcess
    from bulksend.sources import write_synthetic_csv

    key = "bench-key"
    if args.file:
        path, id_col, uid_col = args.file.resolve(), args.id, args.uid
    else:
        path = tmp / "recipients.csv"
        write_synthetic_csv(path, args.recipients, duplicate_rate=args.duplicate_rate, seed=1)
        id_col, uid_col = "id", "uid"
    campaign = tmp / "bench.toml"
    limit = args.limit or 1_000_000_000
    campaign.write_text(
        CAMPAIGN.format(
            path=path,
            id=id_col,
            uid=uid_col,
            batch_size=args.batch_size,
            in_flight=args.in_flight,
            max_attempts=args.max_attempts,
            limit=limit,
            window=args.window,
        )
    )
    sandbox = SandboxProcess("maxtraffic", *sandbox_args(args, key))
    try:
        url = sandbox.start()
    except RuntimeError as exc:  # its own stderr says why
        raise ConfigError(f"bench: {exc}") from None
    timings = Timings()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    sandbox_cpu0 = sandbox.cpu_seconds()
    try:
        settings = load_settings(campaign, env={}, overrides={"base_url": url})
        result = await send_campaign(
            settings,
            {"api_key": key},
            progress_every=3600,
            wrap_transport=lambda t: TimedTransport(t, timings),
        )
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        sandbox_cpu1 = sandbox.cpu_seconds()
    finally:
        sandbox.stop()
    sandbox_cpu = (
        None if sandbox_cpu0 is None or sandbox_cpu1 is None else sandbox_cpu1 - sandbox_cpu0
    )
    s = result.summary
    allowed = (args.limit / args.window) if args.limit else 0.0
    req_rate = s.requests / s.elapsed if s.elapsed else 0.0
    used = utilisation(timings.sent_at, allowed)
    return {
        "recipients": s.read,
        "delivered": s.delivered,
        "elapsed_s": round(s.elapsed, 3),
        "recipients_per_s": round(s.delivered / s.elapsed, 1) if s.elapsed else 0.0,
        "requests": s.requests,
        "requests_per_s": round(req_rate, 1),
        "latency_ms": {
            q: round(percentile(timings.latencies, p) * 1000, 2)
            for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "utilisation": None if used is None else round(used, 3),
        "throttled_429": s.throttled,
        "retries": s.retries,
        "failed": s.failed,
        "client_cpu_s": round((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), 3),
        "sandbox_cpu_s": None if sandbox_cpu is None else round(sandbox_cpu, 3),
        "peak_rss_mb": round(cpu1.ru_maxrss / 1024, 1),
        "limit": f"{args.limit}/{args.window:g}s" if args.limit else None,
        "batch_size": args.batch_size,
        "in_flight": args.in_flight,
        "_done_at": timings.done_at,
    }


def render(figures: Mapping[str, Any], args: argparse.Namespace) -> str:
    """The figures as a table for people (``--json`` keeps the raw values)."""
    latency = figures["latency_ms"]
    used, limit = figures["utilisation"], figures["limit"]
    sandbox_cpu = figures["sandbox_cpu_s"]
    faults = [
        f"{flag.replace('_', ' ')} {getattr(args, flag):g}"
        for flag in ("fail_rate", "reset_rate", "drop_after_accept_rate")
        if getattr(args, flag)
    ]
    if args.storm_every:
        faults.append(f"429 storm every {args.storm_every:g} s for {args.storm_for:g} s")
    profile = [f"latency {args.latency_ms:g} ms", *faults]
    if args.no_ratelimit_headers:
        profile.append("no rate-limit headers")
    rows = [
        ("sandbox", "MaxTraffic in a separate process: " + ", ".join(profile)),
        (
            "delivered",
            f"{figures['delivered']:,} of {figures['recipients']:,} recipients "
            f"(failed {figures['failed']:,})",
        ),
        ("elapsed", f"{figures['elapsed_s']:.3f} s"),
        (
            "throughput",
            f"{figures['recipients_per_s']:,.0f} recipients/s, "
            f"{figures['requests_per_s']:,.0f} requests/s",
        ),
        (
            "requests",
            f"{figures['requests']:,}, up to {figures['batch_size']:,} recipients each, "
            f"{figures['in_flight']} in flight",
        ),
        (
            "latency",
            f"p50 {latency['p50']:.2f} ms, p95 {latency['p95']:.2f} ms, "
            f"p99 {latency['p99']:.2f} ms",
        ),
        (
            "quota",
            "no limit" if limit is None else limit + ("" if used is None else f", {used:.1%} used"),
        ),
        ("429s, retries", f"{figures['throttled_429']:,}, {figures['retries']:,}"),
        (
            "CPU time",
            f"client {figures['client_cpu_s']:.3f} s"
            + ("" if sandbox_cpu is None else f", sandbox {sandbox_cpu:.3f} s"),
        ),
        ("peak RSS", f"{figures['peak_rss_mb']:,.1f} MB (client)"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def plot(figures: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'bulksend[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = figures["_done_at"]
    width = max(0.1, args.window / 10 if args.limit else max(done or [1]) / 50)
    bins: dict[int, int] = {}
    for t in done:
        bins[int(t / width)] = bins.get(int(t / width), 0) + 1
    xs = sorted(bins)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.step(
        [x * width for x in xs], [bins[x] / width for x in xs], where="post", label="requests/s"
    )
    if args.limit:
        ax.axhline(args.limit / args.window, linestyle="--", label="limit")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/s")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"bulksend bench: {figures['recipients_per_s']:,.0f} recipients/s, "
        f"{figures['requests_per_s']:,.0f} requests/s, 429s {figures['throttled_429']}"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    with open_private(path, "wb") as f:
        fig.savefig(f, dpi=110, format=path.suffix.lstrip(".").lower() or "png")


async def run(args: argparse.Namespace, ctx: Context) -> int:
    outputs = [Output("--json", args.json, "bench.json"), Output("--plot", args.plot, "bench.png")]
    check(outputs, {"the recipient file": args.file})
    with tempfile.TemporaryDirectory() as tmp:
        figures = await measure(args, Path(tmp))
    if args.plot:
        plot(figures, args, args.plot)
    figures.pop("_done_at")
    if args.json:
        write_private(args.json, orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    if not args.quiet:
        out = for_people(ctx.out)
        print(render(figures, args), file=out)
        if args.json:
            print(f"  figures: {args.json}", file=out)
        if args.plot:
            print(f"  chart: {args.plot}", file=out)
    return ExitStatus.OK if figures["delivered"] else ExitStatus.FAILURES


if __name__ == "__main__":  # pragma: no cover
    from bulksend.cli import main

    main(["bench", *sys.argv[1:]])
