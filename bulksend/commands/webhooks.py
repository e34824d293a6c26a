"""``bulksend traitly-webhooks``: receive Traitly prediction webhooks into a recipient file."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from bulksend.commands.argtypes import positive_int
from bulksend.commands.common import Context, ExitStatus
from bulksend.errors import ConfigError
from bulksend.output.outputs import Output, check
from bulksend.output.printable import printable

HELP = "receive Traitly prediction webhooks into a recipient file"
DESCRIPTION = (
    "Listen for Traitly's goal-prediction (recommended-next-actions) and goal-propensity-change "
    "webhooks and append each valid payload as one flat JSON line to --out, a JSON Lines "
    "recipient file that `bulksend send` reads (id = the customer id). With --min-likelihood "
    "only customers at or above it are recorded, so the file is the audience of a follow-up "
    "campaign. Prints 'bulksend traitly-webhooks listening on http://HOST:PORT' once ready; "
    "SIGINT or SIGTERM stops it cleanly. Without a token it listens only on a loopback "
    "address (anyone who can reach it could add people to the audience): give --token-env to "
    "listen elsewhere, or --insecure-no-token."
)
EPILOG = """\
examples:
  bulksend traitly-webhooks --port 8089 --out audience.jsonl --min-likelihood 0.7
  TRAITLY_HOOK_TOKEN=s3cret bulksend traitly-webhooks --port 8089 --out hooks.jsonl \\
      --token-env TRAITLY_HOOK_TOKEN      # register http://HOST:8089/?token=s3cret in Traitly
  bulksend send follow-up.toml --recipients audience.jsonl

answers: 200 recorded or filtered, 400 wrong shape (with the reason), 401 missing token,
406 Accept without JSON, 413 body over --max-body, 415 body not application/json
"""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bulksend.providers.traitly_webhooks import MAX_BODY, OBJECTS

    parser.add_argument(
        "--port", metavar="PORT", type=int, required=True, help="port to listen on (0: any)"
    )
    parser.add_argument(
        "--host", metavar="ADDRESS", default="127.0.0.1", help="address to bind (127.0.0.1)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="PATH.jsonl", help="file to append to"
    )
    parser.add_argument(
        "--min-likelihood",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="record only payloads whose likelihood is at least P (0..1; default 0: all); "
        "payloads without a likelihood (next actions) are always recorded",
    )
    parser.add_argument(
        "--object",
        choices=[*OBJECTS, "all"],
        default="all",
        help="record only this kind of payload (default: all)",
    )
    parser.add_argument(
        "--path", metavar="/PATH", default="/", help="URL path that takes the POSTs (/)"
    )
    parser.add_argument(
        "--max-body",
        type=positive_int,
        default=MAX_BODY,
        metavar="BYTES",
        help=f"answer 413 to a payload larger than this (default {MAX_BODY}: 256 KiB)",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token-env",
        metavar="VAR",
        help="require the shared token held by environment variable VAR "
        "(Authorization: Token <t> or Bearer <t>, or ?token=<t> in the URL); needed to listen "
        "on an address other than loopback",
    )
    auth.add_argument(
        "--insecure-no-token",
        action="store_true",
        help="listen on a --host others can reach without a token (anyone who reaches it can "
        "add people to the audience)",
    )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    from bulksend.providers.traitly_webhooks import OBJECTS, ReceiverConfig, is_loopback, serving

    token = None
    if args.token_env:
        token = ctx.env.get(args.token_env, "").strip()
        if not token:
            raise ConfigError(f"--token-env: environment variable {args.token_env} is not set")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be between 0 and 65535, got {args.port}")
    check([Output("--out", args.out, "audience.jsonl")])
    objects = frozenset(OBJECTS if args.object == "all" else [args.object])
    config = ReceiverConfig(
        args.out,
        args.min_likelihood,
        token,
        objects,
        args.path,
        max_body=args.max_body,
        insecure_no_token=args.insecure_no_token,
    )
    try:
        config.validate(args.host)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if token is None and not is_loopback(args.host):
        print(
            f"bulksend traitly-webhooks: warning: no token on {args.host}: anyone who can reach "
            "it can add people to the audience (--insecure-no-token)",
            file=ctx.err,
        )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(name: str) -> None:
        received.append(name)
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        async with serving(config, args.host, args.port) as receiver:
            print(
                printable(f"bulksend traitly-webhooks listening on {receiver.base_url}"),
                file=ctx.out,
                flush=True,
            )
            await stop.wait()
            c = receiver.counts
        print(
            f"bulksend traitly-webhooks: stopped by {received[0]}; received {c.received}, "
            f"recorded {c.recorded}, filtered {c.filtered}, rejected {c.rejected} "
            f"(appended to {args.out})",
            file=ctx.err,
        )
    except OSError as exc:
        print(
            f"bulksend: error: cannot listen on {args.host}:{args.port} or write {args.out}: "
            f"{exc.strerror or exc}",
            file=ctx.err,
        )
        return ExitStatus.USAGE
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return ExitStatus.OK
