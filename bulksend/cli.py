"""Command line: ``bulksend send|sandbox ...``. ``run(argv, env)`` returns an ``ExitStatus``.

The CLI is a function of (arguments, environment); ``main`` only adds the process around it
(uvloop when installed, ``sys.exit``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from bulksend import logs
from bulksend.errors import (
    AuthError,
    BulksendError,
    ConfigError,
    InputError,
    ProviderError,
    UnavailableError,
)


class ExitStatus(enum.IntEnum):
    """Exit statuses a CI job can act on (docs/operations.md)."""

    OK = 0  # every valid recipient was delivered
    FAILURES = 1  # some recipients failed, were skipped or have an unknown outcome
    USAGE = 2  # bad flag, campaign file, environment or recipient file; nothing was sent
    AUTH = 3  # the provider rejected the credentials; the send stopped
    UNAVAILABLE = 4  # the provider stayed unavailable or the endpoint is wrong
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


EXAMPLES = """\
examples:
  bulksend send samples/maxtraffic/campaign.toml --sandbox
  MAXTRAFFIC_API_KEY=... bulksend send campaign.toml --recipients list.csv --report out.csv
  bulksend sandbox maxtraffic --port 8765 --limit 50 --window 1
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit status 2
        self.exit(ExitStatus.USAGE, f"bulksend: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bulksend",
        description="Send large campaigns through rate-limited HTTP APIs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    send = sub.add_parser(
        "send",
        help="send a campaign",
        description="Send the campaign described by CAMPAIGN.toml. Flags override the file.",
        epilog="examples:\n  bulksend send samples/maxtraffic/campaign.toml --sandbox\n"
        "  bulksend send campaign.toml --recipients list.csv --report report.csv\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    send.add_argument("campaign", type=Path, metavar="CAMPAIGN.toml")
    send.add_argument("--recipients", metavar="PATH", help="recipient file ('-' for stdin)")
    send.add_argument("--base-url", metavar="URL", help="provider API base URL")
    send.add_argument("--report", metavar="PATH", help="per-recipient report (.csv or .jsonl)")
    send.add_argument("--batch-size", type=int, metavar="N")
    send.add_argument("--rate", metavar="N/UNIT", help="your own ceiling, e.g. 300/min")
    send.add_argument("--limit", metavar="N/UNIT", help="the provider's quota, e.g. 600/min")
    send.add_argument("--in-flight", type=int, metavar="N", help="concurrent requests")
    send.add_argument("--timeout", type=float, metavar="SECONDS", help="per-request timeout")
    send.add_argument("--max-attempts", type=int, metavar="N")
    send.add_argument("--format", choices=["auto", "csv", "tsv", "jsonl", "lines"])
    send.add_argument("--delimiter", metavar="CHAR")
    send.add_argument("--encoding", metavar="NAME")
    send.add_argument("--summary-json", type=Path, metavar="PATH")
    journal = send.add_argument_group(
        "journal and resume",
        "A journal records every batch so a send that died can be resumed without sending "
        "again what the provider confirmed. Default: .bulksend/CAMPAIGN.journal beside the "
        "campaign file; running the same send again resumes it.",
    )
    journal.add_argument("--journal", type=Path, metavar="PATH", help="journal file")
    journal.add_argument("--no-journal", action="store_true", help="do not keep a journal")
    journal.add_argument(
        "--resume", action="store_true", help="require an existing journal and continue it"
    )
    journal.add_argument(
        "--fresh", action="store_true", help="discard an existing journal and start over"
    )
    journal.add_argument(
        "--unknown",
        choices=["resend", "skip"],
        default="resend",
        help="batches in flight when an earlier run died: resend them (counted as possible "
        "duplicates; default) or mark them unknown for review",
    )
    journal.add_argument(
        "--dead-letter",
        type=Path,
        metavar="PATH",
        help="write failed/unknown/skipped recipients here as JSON Lines (default: beside "
        "the journal)",
    )
    send.add_argument(
        "--sandbox",
        action="store_true",
        help="send to a built-in sandbox of the provider instead of the real API",
    )
    _add_output_flags(send)

    sandbox = sub.add_parser(
        "sandbox",
        help="run a local server that behaves like a provider",
        description="Run a sandbox server faithful to a provider's API, with a ledger.",
    )
    from bulksend.sandbox import cli as sandbox_cli

    sandbox_cli.add_arguments(sandbox)
    return parser


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")


def _log_level(args: argparse.Namespace) -> int:
    verbose = getattr(args, "verbose", 0)
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    return logging.WARNING if getattr(args, "quiet", False) else logging.INFO


def run(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    loop_factory: Any = None,
) -> int:
    """Run the CLI; returns the exit status. Never raises for user errors."""
    env = os.environ if env is None else env
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    logs.configure(level=_log_level(args), fmt=getattr(args, "log_format", "auto"), stream=err)
    try:
        if args.command == "sandbox":
            from bulksend.sandbox import cli as sandbox_cli

            return int(sandbox_cli.run(args))
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_send(args, env, out, err))
    except AuthError as exc:
        print(f"bulksend: {logs.redactor.scrub(str(exc))}", file=err)
        return ExitStatus.AUTH
    except (ConfigError, InputError) as exc:
        print(f"bulksend: error: {logs.redactor.scrub(str(exc))}", file=err)
        return ExitStatus.USAGE
    except UnavailableError as exc:
        print(f"bulksend: {logs.redactor.scrub(str(exc))}", file=err)
        return ExitStatus.UNAVAILABLE
    except BulksendError as exc:
        print(f"bulksend: {logs.redactor.scrub(str(exc))}", file=err)
        return ExitStatus.UNAVAILABLE
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


async def _send(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from bulksend.campaign import JournalOptions, default_journal_path, send_campaign
    from bulksend.config import load_settings, resolve_secrets

    overrides = {
        "recipients": args.recipients,
        "base_url": args.base_url,
        "report": args.report,
        "batch_size": args.batch_size,
        "rate": args.rate,
        "limit": args.limit,
        "in_flight": args.in_flight,
        "timeout": args.timeout,
        "max_attempts": args.max_attempts,
        "format": args.format,
        "delimiter": args.delimiter,
        "encoding": args.encoding,
    }
    settings = load_settings(args.campaign, env=env, overrides=overrides)
    if args.resume and args.fresh:
        raise ConfigError("--resume and --fresh contradict each other; choose one")
    journal = None
    wanted = args.journal or args.resume or not args.sandbox  # a sandbox run keeps none
    if wanted and not args.no_journal and settings.recipients.path != "-":
        path = args.journal or default_journal_path(settings)
        journal = JournalOptions(path, args.resume, args.fresh, args.unknown)
    kwargs = {"journal": journal, "dead_letter": args.dead_letter}
    interrupted = _Interrupts()
    with interrupted.installed():
        try:
            if args.sandbox:
                result = await _send_to_sandbox(settings, kwargs, interrupted.attach)
            else:
                secret_values = resolve_secrets(settings, env)
                result = await send_campaign(
                    settings, secret_values, on_start=interrupted.attach, **kwargs
                )
        except asyncio.CancelledError:
            print(f"bulksend: stopped at once by a second {interrupted.name}", file=err)
            return interrupted.status
    status = _finish(result, args, out, err)
    return interrupted.status if interrupted.name else status


class _Interrupts:
    """SIGINT/SIGTERM: the first drains the send gracefully, a second cancels at once."""

    STATUS: Mapping[str, int] = {
        "SIGINT": ExitStatus.INTERRUPTED,
        "SIGTERM": ExitStatus.TERMINATED,
    }

    def __init__(self) -> None:
        self.name = ""
        self.engine: Any = None
        self._task: asyncio.Task[Any] | None = None

    @property
    def status(self) -> int:
        return self.STATUS.get(self.name, ExitStatus.INTERRUPTED)

    def attach(self, engine: Any) -> None:
        self.engine = engine

    def _handle(self, name: str) -> None:
        first = not self.name
        self.name = self.name or name
        if first and self.engine is not None:
            print(
                f"\nbulksend: {name}: finishing the requests in flight "
                "(again to stop at once; the send stays resumable)",
                file=sys.stderr,
            )
            self.engine.interrupt(name)
        elif self._task is not None:
            self._task.cancel()

    @contextlib.contextmanager
    def installed(self) -> Any:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        names = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._handle, sig.name)
                names.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
                pass
        try:
            yield self
        finally:
            for sig in names:
                loop.remove_signal_handler(sig)


async def _send_to_sandbox(settings: Any, kwargs: Mapping[str, Any], on_start: Any) -> Any:
    """Start the provider's sandbox in this process and send to it with a throw-away key."""
    from bulksend.campaign import send_campaign
    from bulksend.sandbox import SandboxConfig, running

    fake = {name: f"sandbox-{secrets.token_hex(8)}" for name in settings.secret_sources}
    fields = {f.name for f in dataclasses.fields(SandboxConfig)}
    config = SandboxConfig(
        provider=settings.provider, **{k: v for k, v in fake.items() if k in fields}
    )
    async with running(config) as sandbox:
        local = settings.with_overrides(base_url=sandbox.base_url)
        return await send_campaign(local, fake, on_start=on_start, **kwargs)


def _finish(result: Any, args: Any, out: TextIO, err: TextIO) -> int:
    summary, stopped = result.summary, result.stopped
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_bytes(summary.to_json())
    if not args.quiet:
        print(summary.render(), file=out)
        if result.dead_letter is not None:
            print(
                f"  to resend: bulksend send {args.campaign} --recipients "
                f"{result.dead_letter} --no-journal",
                file=out,
            )
    if isinstance(stopped, AuthError):
        print(f"bulksend: {logs.redactor.scrub(str(stopped))}", file=err)
        return ExitStatus.AUTH
    if isinstance(stopped, ProviderError):
        print(f"bulksend: {logs.redactor.scrub(str(stopped))}", file=err)
        return ExitStatus.UNAVAILABLE
    if summary.complete:
        return ExitStatus.OK
    if summary.delivered == 0 and summary.failed and not summary.invalid:
        return ExitStatus.UNAVAILABLE
    return ExitStatus.FAILURES


def main(argv: Sequence[str] | None = None) -> None:
    factory = None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        pass
    else:
        factory = uvloop.new_event_loop
    sys.exit(run(argv, loop_factory=factory))
