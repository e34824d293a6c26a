"""``bulksend bench``: measure a send end to end against a sandbox in a separate process.

The sandbox runs with a profile (latency, limit, faults, 429 storms); bulksend sends synthetic
recipients (for about ``--seconds``, or exactly ``--recipients``) or a recipient file to it and
reports requests/s, recipients/s, the share of the limit used and the CPU time per request of
the client and of the sandbox, then latency percentiles, 429s, retries and peak RSS.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bulksend.commands.argtypes import fraction, non_negative, positive, positive_int, rate
from bulksend.commands.common import Context, ExitStatus, add_output_flags
from bulksend.config import RecipientSettings
from bulksend.errors import BulksendError, ConfigError, InputError
from bulksend.output.outputs import Output, check
from bulksend.output.printable import for_people
from bulksend.output.private import write_private

if TYPE_CHECKING:
    from bulksend.commands.bench_stream import SyntheticStream

HELP = "measure throughput against a sandbox in a separate process"
DESCRIPTION = (
    "Measure a send end to end against a sandbox in a separate process: requests/s, "
    "recipients/s, the share of the limit used, CPU time per request of bulksend and of the "
    "sandbox, latency percentiles, 429s, retries and peak RSS. Without --recipients or --file "
    "it sends synthetic recipients for about --seconds (5)."
)
EPILOG = """\
examples:
  bulksend bench                                   # as fast as it goes, for about 5 s
  bulksend bench --recipients 20000 --batch-size 10 --limit 50/s --plot bench.png
  bulksend bench --seconds 3 --fail-rate 0.05 --latency-ms 20 --json bench.json
  bulksend bench --file my-visitors.csv --id-column visitor_id --uid-column user_id
  bulksend bench --campaign campaign.toml          # its recipient file, as it reads it
"""

#: seconds of synthetic recipients when neither --recipients nor --file is given
DEFAULT_SECONDS = 5.0
#: where no named pipe can stream them (Windows): this many synthetic recipients
FALLBACK_ROWS = 1_000_000

CAMPAIGN = """\
provider = "maxtraffic"
name = "bench"
[message]
campaign = "bench"
messages = [{{ title = "Benchmark", body = "hello" }}]
[recipients]
{recipients}
[send]
batch_size = {batch_size}
in_flight = {in_flight}
max_attempts = {max_attempts}
limit = "{limit}"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("what is sent (default: synthetic recipients for 5 s)")
    load.add_argument(
        "--seconds",
        type=positive,
        metavar="S",
        help="send synthetic recipients for about S seconds (5); with --limit, as many as the "
        "limit lets through in S seconds",
    )
    load.add_argument(
        "--recipients", type=positive_int, metavar="N", help="send exactly N synthetic recipients"
    )
    load.add_argument(
        "--duplicate-rate",
        type=fraction,
        default=0.0,
        metavar="FRACTION",
        help="fraction of synthetic rows that repeat an earlier one (0)",
    )
    load.add_argument(
        "--file",
        metavar="PATH",
        type=Path,
        help="send this recipient file instead (relative to the current directory)",
    )
    load.add_argument(
        "--campaign",
        metavar="CAMPAIGN.toml",
        type=Path,
        help="read the recipient file as this campaign does: its [recipients] path, format, "
        "delimiter, encoding and columns (--file and the column flags override them)",
    )
    for name, default in (("id", "id"), ("uid", "uid")):
        load.add_argument(
            f"--{name}-column",
            dest=f"{name}_column",
            metavar="COLUMN",
            help=f"the file's {name} column, as [recipients] {name} in a campaign "
            f"({default}; '' for none)",
        )
        load.add_argument(  # the earlier name, kept for scripts
            f"--{name}", dest=f"{name}_column", metavar="COLUMN", help=argparse.SUPPRESS
        )
    load.add_argument(
        "--batch-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="recipients per request (1000)",
    )
    load.add_argument(
        "--in-flight", type=positive_int, default=32, metavar="N", help="concurrent requests (32)"
    )
    load.add_argument(
        "--max-attempts", type=positive_int, default=6, metavar="N", help="per batch (6)"
    )
    _add_profile(parser.add_argument_group("sandbox profile"))
    out = parser.add_argument_group("results")
    out.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    out.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="chart requests/s over time against the limit (needs matplotlib: "
        "pip install 'bulksend[plot]')",
    )
    out.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="live progress line on stderr (auto: when stderr is a terminal)",
    )
    add_output_flags(parser)
    parser.set_defaults(info_logs=False)  # the table says what they would; -v shows them


def _add_profile(profile: argparse._ArgumentGroup) -> None:
    profile.add_argument(
        "--latency-ms",
        metavar="MS",
        type=non_negative,
        default=0.0,
        help="added to every answer (0)",
    )
    profile.add_argument(
        "--limit",
        metavar="N/UNIT",
        type=rate,
        help="the sandbox's limit, and the one bulksend is told, as send --limit takes it: "
        "50/s, 600/min, 100/15s (none)",
    )
    profile.add_argument(
        "--no-ratelimit-headers", action="store_true", help="the sandbox sends no X-RateLimit-*"
    )
    for flag, help_text in (
        ("--fail-rate", "fraction answered 500/503 (half each)"),
        ("--reset-rate", "fraction closed without an answer"),
        ("--drop-after-accept-rate", "fraction accepted, then closed without an answer"),
    ):
        profile.add_argument(
            flag, metavar="FRACTION", type=fraction, default=0.0, help=help_text + " (0)"
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


@dataclass
class Timings:
    """Per-request send times, latencies and statuses, recorded by a transport wrapper."""

    start: float = field(default_factory=time.perf_counter)
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # 0: no answer (reset, timeout)


class TimedTransport:
    def __init__(self, inner: Any, timings: Timings) -> None:
        self.inner = inner
        self.timings = timings

    async def send(self, request: Any) -> Any:
        t0 = time.perf_counter()
        status = 0
        try:
            response = await self.inner.send(request)
            status = response.status
            return response
        finally:  # all four together: the n-th of each is the same request's
            t1, timings = time.perf_counter(), self.timings
            timings.sent_at.append(t0 - timings.start)
            timings.latencies.append(t1 - t0)
            timings.done_at.append(t1 - timings.start)
            timings.statuses.append(status)


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
    requests, window = (args.limit.requests, args.limit.window) if args.limit else (10**9, 60.0)
    out = ["--api-key", key, "--limit", str(requests), "--window", str(window)]
    out += ["--max-batch", str(max(1000, args.batch_size)), "--seed", str(args.seed)]
    out += ["--latency-ms", str(args.latency_ms)]
    if args.no_ratelimit_headers:
        out.append("--no-ratelimit-headers")
    for flag in ("fail_rate", "reset_rate", "drop_after_accept_rate", "storm_every", "storm_for"):
        value = getattr(args, flag)
        if value:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out


# -- what is sent ------------------------------------------------------------------------------


@dataclass
class Load:
    """The recipients a bench sends: a file as a campaign reads it, or synthetic rows written
    into a named pipe (``stream``) while the send reads them."""

    recipients: RecipientSettings
    total: int | None  # rows, when known before the send (for the progress line)
    stream: SyntheticStream | None = None
    seconds: float | None = None  # synthetic rows for this long


def check_flags(args: argparse.Namespace) -> None:
    """Flags that contradict each other: one line, exit 2, before anything starts."""
    synthetic = [
        f for f, v in (("--recipients", args.recipients), ("--seconds", args.seconds)) if v
    ]
    if len(synthetic) == 2:
        raise ConfigError("--recipients and --seconds: give one (a count, or a time)")
    from_file = [f for f, v in (("--file", args.file), ("--campaign", args.campaign)) if v]
    if from_file and (synthetic or args.duplicate_rate):
        other = synthetic[0] if synthetic else "--duplicate-rate"
        raise ConfigError(
            f"{other} sets synthetic recipients and {from_file[0]} a file: give one or the other"
        )
    if args.file is not None and str(args.file) != "-" and not args.file.is_file():
        raise InputError(f"{args.file}: no such file (--file is relative to the current directory)")


def _column(flag: str | None, campaign: str | None) -> str | None:
    return (flag or None) if flag is not None else campaign


def file_recipients(args: argparse.Namespace, env: Mapping[str, str]) -> RecipientSettings:
    """``--file`` and the column flags over ``--campaign``'s ``[recipients]`` (its path is
    relative to the campaign file; ``--file`` to the current directory)."""
    from bulksend.config import load_settings

    base = RecipientSettings(path="")
    if args.campaign is not None:
        base = load_settings(args.campaign, env=env).recipients
    path = str(args.file) if args.file is not None else base.path
    if path != "-":  # the bench's own campaign file lives elsewhere: no path relative to here
        path = str(Path(path).resolve())
    return RecipientSettings(
        path=path,
        format=base.format,
        delimiter=base.delimiter,
        encoding=base.encoding,
        id_column=_column(args.id_column, base.id_column),
        uid_column=_column(args.uid_column, base.uid_column),
    )


def synthetic_size(args: argparse.Namespace) -> tuple[int | None, float | None]:
    """(rows, None) for a counted run, (None, seconds) for a timed one. Under a limit a timed
    run is counted: the rows the limit lets through in that time (a pipe read ahead of a paced
    send would overrun the time by whatever was read ahead)."""
    from bulksend.commands.bench_stream import can_stream

    if args.recipients:
        return args.recipients, None
    seconds = args.seconds or DEFAULT_SECONDS
    if args.limit:
        requests = max(1, math.ceil(args.limit.per_second * seconds))
        return math.ceil(requests * args.batch_size / (1 - min(args.duplicate_rate, 0.99))), None
    if not can_stream():  # pragma: no cover - Windows
        return FALLBACK_ROWS, None
    return None, seconds


def plan_load(args: argparse.Namespace, env: Mapping[str, str], tmp: Path) -> Load:
    from bulksend.commands.bench_stream import SyntheticStream, can_stream, write_rows

    if args.file is not None or args.campaign is not None:
        from bulksend.output.progress import count_rows

        recipients = file_recipients(args, env)
        return Load(recipients, count_rows(recipients.path))
    rows, seconds = synthetic_size(args)
    path = tmp / "recipients.csv"
    recipients = RecipientSettings(path=str(path), format="csv")
    if not can_stream():  # pragma: no cover - Windows
        with path.open("wb") as out:
            write_rows(out, rows or FALLBACK_ROWS, duplicate_rate=args.duplicate_rate)
        return Load(recipients, rows)
    stream = SyntheticStream(path, count=rows, seconds=seconds, duplicate_rate=args.duplicate_rate)
    return Load(recipients, rows, stream, seconds)


def _toml(value: str) -> str:
    """A TOML basic string (a path may hold quotes, backslashes, control characters)."""
    escaped = "".join(
        ch if ch not in '"\\' and 0x1F < ord(ch) != 0x7F else f"\\u{ord(ch):04x}" for ch in value
    )
    return f'"{escaped}"'


def campaign_text(load: Load, args: argparse.Namespace) -> str:
    rec = load.recipients
    lines = [
        f"path = {_toml(rec.path)}",
        f"format = {_toml(rec.format)}",
        f"encoding = {_toml(rec.encoding)}",
        f"id = {_toml(rec.id_column or '')}",
        f"uid = {_toml(rec.uid_column or '')}",
    ]
    if rec.delimiter is not None:
        lines.append(f"delimiter = {_toml(rec.delimiter)}")
    limit = args.limit
    return CAMPAIGN.format(
        recipients="\n".join(lines),
        batch_size=args.batch_size,
        in_flight=args.in_flight,
        max_attempts=args.max_attempts,
        limit=f"{limit.requests}/{limit.window:g}s" if limit else "1000000000/60s",
    )


# -- the run -------------------------------------------------------------------------------------


class _Watch:
    """What follows the engine once it starts: the live line of ``send`` on stderr
    (``--progress``), and the synthetic stream's view of the pace of the send."""

    def __init__(self, ctx: Context, args: argparse.Namespace, load: Load) -> None:
        from bulksend.output.progress import shows_progress

        self.ctx, self.load = ctx, load
        self.shows = shows_progress(args.progress, ctx.err)
        self.view: Any = None

    def start(self, engine: Any) -> None:
        from bulksend.output.progress import ProgressView

        if self.load.stream is not None:
            self.load.stream.sent = lambda: engine.summary.accounted
        if self.shows:
            total = self.load.total
            self.view = ProgressView(self.ctx.err, engine.summary, lambda: engine.scheduler, total)
            self.view.start()

    async def stop(self) -> None:
        if self.view is not None:
            await self.view.stop()


@dataclass
class Usage:
    """CPU seconds of this process and of the sandbox, taken before and after the send."""

    client: float
    sandbox: float | None

    @classmethod
    def now(cls, sandbox: Any) -> Usage:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return cls(ru.ru_utime + ru.ru_stime, sandbox.cpu_seconds())


def start_sandbox(args: argparse.Namespace, key: str) -> tuple[Any, str]:
    from bulksend.sandbox.testing import SandboxProcess

    sandbox = SandboxProcess("maxtraffic", *sandbox_args(args, key))
    try:
        return sandbox, sandbox.start()
    except RuntimeError as exc:  # its own stderr says why
        raise ConfigError(f"bench: {exc}") from None


async def measure(args: argparse.Namespace, load: Load, tmp: Path, ctx: Context) -> dict[str, Any]:
    from bulksend.campaign import send_campaign
    from bulksend.config import load_settings

    key = "bench-key"
    campaign = tmp / "bench.toml"
    campaign.write_text(campaign_text(load, args))
    sandbox, url = start_sandbox(args, key)
    ready = time.perf_counter()  # the sandbox's clock (its storms) started just before
    timings, watch = Timings(), _Watch(ctx, args, load)
    before = Usage.now(sandbox)
    try:
        settings = load_settings(campaign, env={}, overrides={"base_url": url})
        if load.stream is not None:
            load.stream.start()
        result = await send_campaign(
            settings,
            {"api_key": key},
            progress_every=3600,
            on_start=watch.start,
            wrap_transport=lambda t: TimedTransport(t, timings),
        )
        after = Usage.now(sandbox)
    finally:
        await watch.stop()
        if load.stream is not None:
            load.stream.close()
        sandbox.stop()
    if load.stream is not None and load.stream.error is not None:  # the send saw an early end
        raise BulksendError(f"bench: writing the synthetic recipients failed: {load.stream.error}")
    writer_cpu = load.stream.cpu_seconds if load.stream is not None else 0.0
    client_cpu = after.client - before.client - writer_cpu  # the send's alone
    sandbox_cpu = (
        None if before.sandbox is None or after.sandbox is None else after.sandbox - before.sandbox
    )
    figures = summarise(result.summary, timings, args, client_cpu, sandbox_cpu)
    figures["seconds"] = load.seconds
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["_sandbox_ahead"] = timings.start - ready
    return figures


def _per_request_ms(cpu: float | None, requests: int) -> float | None:
    return None if cpu is None or not requests else round(cpu / requests * 1000, 3)


def summarise(
    s: Any, timings: Timings, args: argparse.Namespace, client_cpu: float, sandbox_cpu: float | None
) -> dict[str, Any]:
    """The figures of a run (``--json`` writes them; ``_``-keys are for the plot only)."""
    from bulksend.output.progress import limit_text

    limit = args.limit
    used = utilisation(timings.sent_at, limit.per_second if limit else 0.0)
    return {
        "recipients": s.read,
        "delivered": s.delivered,
        "elapsed_s": round(s.elapsed, 3),
        "recipients_per_s": round(s.delivered / s.elapsed, 1) if s.elapsed else 0.0,
        "requests": s.requests,
        "requests_per_s": round(s.requests / s.elapsed, 1) if s.elapsed else 0.0,
        "latency_ms": {
            q: round(percentile(timings.latencies, p) * 1000, 2)
            for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "utilisation": None if used is None else round(used, 3),
        "throttled_429": s.throttled,
        "retries": s.retries,
        "failed": s.failed,
        "client_cpu_s": round(client_cpu, 3),
        "sandbox_cpu_s": None if sandbox_cpu is None else round(sandbox_cpu, 3),
        "client_cpu_ms_per_request": _per_request_ms(client_cpu, s.requests),
        "sandbox_cpu_ms_per_request": _per_request_ms(sandbox_cpu, s.requests),
        "limit": limit_text(limit.requests, limit.window) if limit else None,
        "batch_size": args.batch_size,
        "in_flight": args.in_flight,
        "_sent_at": timings.sent_at,
        "_statuses": timings.statuses,
        "_end": max(timings.done_at, default=0.0),
    }


# -- the results -------------------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> str:
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
    return "MaxTraffic in a separate process: " + ", ".join(profile)


def _quota(figures: Mapping[str, Any]) -> str:
    used, limit = figures["utilisation"], figures["limit"]
    if limit is None:
        return "no limit (give --limit N/UNIT to measure how much of one is used)"
    return f"{used:.1%} of {limit}" if used is not None else f"{limit} (too few requests to say)"


def _cpu_per_request(figures: Mapping[str, Any]) -> str:
    client, sandbox = figures["client_cpu_ms_per_request"], figures["sandbox_cpu_ms_per_request"]
    if client is None:
        return "no request sent"
    return f"client {client:.3f} ms" + ("" if sandbox is None else f", sandbox {sandbox:.3f} ms")


def render(figures: Mapping[str, Any], args: argparse.Namespace) -> str:
    """The figures as a table for people, the headline first (``--json`` keeps the raw values)."""
    latency = figures["latency_ms"]
    sandbox_cpu = figures["sandbox_cpu_s"]
    rows = [
        (
            "throughput",
            f"{figures['requests_per_s']:,.0f} requests/s, "
            f"{figures['recipients_per_s']:,.0f} recipients/s",
        ),
        ("quota used", _quota(figures)),
        ("CPU/request", _cpu_per_request(figures)),
        ("sandbox", _profile(args)),
        (
            "delivered",
            f"{figures['delivered']:,} of {figures['recipients']:,} recipients "
            f"(failed {figures['failed']:,})",
        ),
        (
            "requests",
            f"{figures['requests']:,}, up to {figures['batch_size']:,} recipients each, "
            f"{figures['in_flight']} in flight",
        ),
        ("elapsed", f"{figures['elapsed_s']:.3f} s"),
        (
            "latency",
            f"p50 {latency['p50']:.2f} ms, p95 {latency['p95']:.2f} ms, "
            f"p99 {latency['p99']:.2f} ms",
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


def plot(figures: Mapping[str, Any], args: argparse.Namespace, path: Path) -> None:
    from bulksend.commands import bench_plot

    end = max(figures["_end"], 1e-3)
    limit = args.limit
    title = (
        f"bulksend bench: {figures['requests_per_s']:,.0f} requests/s, "
        f"{figures['recipients_per_s']:,.0f} recipients/s, "
        f"{figures['throttled_429']:,} 429s, {figures['retries']:,} retries"
    )
    chart = bench_plot.Chart(
        title=title,
        bins=bench_plot.bins(figures["_sent_at"], figures["_statuses"], end),
        limit_per_s=limit.per_second if limit else None,
        limit_label=figures["limit"] or "",
        throttled_at=[
            t for t, s in zip(figures["_sent_at"], figures["_statuses"], strict=True) if s == 429
        ],
        storms=bench_plot.storm_spans(
            end, args.storm_every, args.storm_for, figures["_sandbox_ahead"]
        ),
    )
    bench_plot.draw(chart, path)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    check_flags(args)
    if args.plot:
        from bulksend.commands.bench_plot import check_matplotlib

        missing = check_matplotlib()
        if missing:
            raise ConfigError(missing)
    with tempfile.TemporaryDirectory() as tmp:
        load = plan_load(args, ctx.env, Path(tmp))
        outputs = [
            Output("--json", args.json, "bench.json"),
            Output("--plot", args.plot, "bench.png"),
        ]
        recipients = load.recipients.path if args.file or args.campaign else None
        check(outputs, {"the recipient file": recipients, "the campaign file": args.campaign})
        figures = await measure(args, load, Path(tmp), ctx)
    if args.plot:
        plot(figures, args, args.plot)
    for private in [k for k in figures if k.startswith("_")]:
        del figures[private]
    if args.json:
        write_private(args.json, orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    if not args.quiet:
        ctx.err.flush()  # a warning logged during the send lands before the table, not in it
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
