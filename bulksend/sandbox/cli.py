"""``bulksend sandbox NAME [flags]`` and ``python -m bulksend.sandbox.cli NAME [flags]``.

Prints exactly one line ``bulksend sandbox NAME listening on http://HOST:PORT`` to stdout once the
port is bound, serves until SIGINT or SIGTERM, flushes the ledger and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from bulksend.commands.argtypes import fraction, non_negative
from bulksend.sandbox.config import (
    LEDGER_FORMATS,
    PROFILES,
    FaultConfig,
    SandboxConfig,
    SandboxConfigError,
)
from bulksend.sandbox.server import PROVIDERS, running

DEFAULT_PORT = 8765


def _group_limit(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N >= 1, got {text!r}")
    return name, int(value)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


PROFILE_HELP = (
    "which rate limiter answers: fixed (default: the provider's own fixed windows and "
    "headers), leaky (nginx limit_req: limit/window per second, no headers, 503), "
    "limits-fixed / limits-moving (Flask-Limiter over the limits library), github (x-ratelimit-*, "
    "403), ietf (RateLimit and RateLimit-Policy, two policies), bare429 (429s, no headers)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's arguments (the provider name first) to ``parser``."""
    parser.add_argument("provider", choices=sorted(PROVIDERS), help="which provider to emulate")
    net = parser.add_argument_group("server")
    net.add_argument(
        "--host", metavar="ADDRESS", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    net.add_argument(
        "--port",
        metavar="PORT",
        type=int,
        default=DEFAULT_PORT,
        help=f"0 = a free port (default {DEFAULT_PORT})",
    )
    net.add_argument(
        "--api-key", metavar="KEY", default="sandbox-key", help="accepted API key (sandbox-key)"
    )
    net.add_argument(
        "--latency-ms", metavar="MS", type=non_negative, default=0.0, help="added to every request"
    )
    net.add_argument(
        "--ledger", metavar="PATH", type=Path, help="append accepted recipients here (JSON Lines)"
    )
    net.add_argument(
        "--ledger-format",
        choices=LEDGER_FORMATS,
        default="lines",
        help="lines: one per recipient (default); requests: one per accepted request",
    )
    net.add_argument(
        "--stats", metavar="PATH", type=Path, help="write the final counters here as JSON on exit"
    )
    net.add_argument(
        "--seed", metavar="N", type=int, help="seed for faults and synthetic data (default 0)"
    )
    net.add_argument(
        "--max-batch", metavar="N", type=int, help="records per request (provider default)"
    )
    lim = parser.add_argument_group("rate limit (one limiter per endpoint group, see --profile)")
    lim.add_argument("--profile", choices=PROFILES, default="fixed", help=PROFILE_HELP)
    lim.add_argument(
        "--limit",
        metavar="N",
        type=int,
        help="requests per window for every endpoint group (leaky: a rate of limit/window per s)",
    )
    lim.add_argument(
        "--window", metavar="SECONDS", type=float, default=60.0, help="window in seconds (60)"
    )
    lim.add_argument(
        "--group-limit",
        type=_group_limit,
        action="append",
        default=[],
        metavar="NAME=N",
        help="requests per window for one endpoint group (repeatable)",
    )
    lim.add_argument(
        "--burst",
        type=_count,
        default=0,
        metavar="N",
        help="leaky: nginx's burst=N, excess requests let through at once (0)",
    )
    lim.add_argument(
        "--reject-status",
        type=int,
        choices=(403, 429, 503),
        help="status of a refusal: leaky 503 (default, nginx's) or 429; github 403 (default) "
        "or 429; the others 429",
    )
    lim.add_argument(
        "--long-limit",
        type=int,
        metavar="N",
        help="ietf: quota of the long policy (default 30 x the limit)",
    )
    lim.add_argument(
        "--long-window",
        type=float,
        metavar="SECONDS",
        help="ietf: window of the long policy in seconds (default 60 x --window)",
    )
    lim.add_argument(
        "--no-ratelimit-headers",
        dest="ratelimit_headers",
        action="store_false",
        help="fixed profile: never send X-RateLimit-* headers",
    )
    lim.add_argument(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Retry-After on window refusals (default: the profile's habit: fixed, limits-* "
        "and ietf send it, github does not, leaky and bare429 never can)",
    )
    flt = parser.add_argument_group("faults (send endpoints only; drawn from --seed)")
    flt.add_argument(
        "--fail-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="answer 500/503 (half each)",
    )
    flt.add_argument(
        "--reset-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="close without answering",
    )
    flt.add_argument(
        "--slow-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="hold the answer --slow-ms",
    )
    flt.add_argument(
        "--slow-ms", metavar="MS", type=float, default=5000.0, help="delay of a slow answer"
    )
    flt.add_argument(
        "--storm-every",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="seconds between 429 storms",
    )
    flt.add_argument(
        "--storm-for", metavar="SECONDS", type=float, default=0.0, help="length of a 429 storm"
    )
    flt.add_argument(
        "--drop-after-accept-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="record in the ledger, then close without answering",
    )
    flt.add_argument(
        "--no-retry-after-503",
        dest="retry_after_503",
        action="store_false",
        help="injected 503s carry no Retry-After",
    )
    mt = parser.add_argument_group("maxtraffic")
    mt.add_argument("--strict-arrays", action="store_true", help="require both to_ids and to_uids")
    mt.add_argument(
        "--reject-marker",
        metavar="TEXT",
        help="answer 422 for a send whose to_ids/to_uids hold an entry containing TEXT",
    )
    mt.add_argument(
        "--visitors", metavar="PATH", type=Path, help="CSV/JSONL of id,user_id,web_push_subscriber"
    )
    mt.add_argument(
        "--unknown-visitor-rate",
        metavar="FRACTION",
        type=fraction,
        default=0.0,
        help="fraction of ids answered 404",
    )
    mt.add_argument("--leads", metavar="N", type=int, default=100, help="synthetic leads (100)")
    cred = parser.add_argument_group("credentials of the other providers")
    cred.add_argument(
        "--brand-id", metavar="ID", default="sandbox-brand", help="notifyvisitors x-brand-id"
    )
    cred.add_argument(
        "--token", metavar="TOKEN", help="notifyvisitors bearer / traitly token (the api key)"
    )
    cred.add_argument(
        "--username", metavar="NAME", default="sandbox@example.com", help="maxemail user"
    )
    cred.add_argument(
        "--password", metavar="PASSWORD", help="maxemail password (default: the api key)"
    )


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    faults = FaultConfig(
        fail_rate=args.fail_rate,
        reset_rate=args.reset_rate,
        slow_rate=args.slow_rate,
        slow_ms=args.slow_ms,
        storm_every=args.storm_every,
        storm_for=args.storm_for,
        drop_after_accept_rate=args.drop_after_accept_rate,
        retry_after_503=args.retry_after_503,
    )
    config = SandboxConfig(
        provider=args.provider,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        limit=args.limit,
        window=args.window,
        group_limits=dict(args.group_limit),
        ratelimit_headers=args.ratelimit_headers,
        retry_after=args.retry_after,
        profile=args.profile,
        burst=args.burst,
        reject_status=args.reject_status,
        long_limit=args.long_limit,
        long_window=args.long_window,
        latency_ms=args.latency_ms,
        ledger=args.ledger,
        ledger_format=args.ledger_format,
        max_batch=args.max_batch,
        seed=args.seed,
        faults=faults,
        strict_arrays=args.strict_arrays,
        reject_marker=args.reject_marker,
        visitors=args.visitors,
        unknown_visitor_rate=args.unknown_visitor_rate,
        leads=args.leads,
        brand_id=args.brand_id,
        token=args.token,
        username=args.username,
        password=args.password,
    )
    config.validate()
    return config


async def serve(args: argparse.Namespace) -> int:
    """Run the sandbox described by ``args`` until SIGINT/SIGTERM; the exit status."""
    try:
        config = config_from_args(args)
    except SandboxConfigError as exc:
        print(f"bulksend sandbox: error: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running(config) as sandbox:
            print(f"bulksend sandbox {config.provider} listening on {sandbox.base_url}", flush=True)
            await stop.wait()
            if args.stats is not None:
                counters = {**sandbox.stats.as_dict(), "started_at": sandbox.core.started_at}
                args.stats.write_bytes(orjson.dumps(counters) + b"\n")
    except SandboxConfigError as exc:
        print(f"bulksend sandbox: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bulksend sandbox: error: cannot serve: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run(args: argparse.Namespace) -> int:
    """Synchronous entry: a fresh event loop (uvloop when installed) running ``serve``."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(serve(args))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bulksend sandbox", description="Serve a local sandbox of a provider's API."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
