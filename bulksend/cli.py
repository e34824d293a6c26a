"""Command line: ``bulksend COMMAND ...``. ``run(argv, env)`` returns an ``ExitStatus``.

The CLI is a function of (arguments, environment); ``main`` only adds the process around it
(uvloop when installed, ``sys.exit``). Commands live in ``bulksend.commands``; their modules are
imported only when used, so ``bulksend --help`` starts fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO, cast

from bulksend.commands.common import Context, ExitStatus, HelpFormatter
from bulksend.errors import (
    AuthError,
    BulksendError,
    ConfigError,
    InputError,
    UnavailableError,
)
from bulksend.output import logs
from bulksend.output.printable import for_people
from bulksend.output.streams import SafeStream

__all__ = ["ExitStatus", "build_parser", "main", "run"]

EXAMPLES = """\
examples:
  bulksend send samples/maxtraffic/campaign.toml --sandbox      # try it, no key needed
  bulksend validate campaign.toml                               # check before sending
  MAXTRAFFIC_API_KEY=... bulksend send campaign.toml --report out.csv
  bulksend retry .bulksend/campaign.journal                     # send again what failed
  bulksend sandbox maxtraffic --port 8765 --limit 50 --window 1

exit statuses: 0 all delivered, 1 some not delivered (validate: too many invalid rows),
2 usage/config/input error, 3 credentials rejected, 4 provider unavailable, 130/143
interrupted (docs/operations.md); NO_COLOR=1 turns colour off
"""

#: command name -> (module, add_arguments, run, help, description, epilog attribute names)
Command = tuple[str, str, str, str, str, str]


def _command(module: str) -> Command:
    return (module, "add_arguments", "run", "HELP", "DESCRIPTION", "EPILOG")


COMMANDS: Mapping[str, Command] = {
    "send": _command("bulksend.commands.send"),
    "validate": _command("bulksend.commands.validate"),
    "retry": (
        "bulksend.commands.send",
        "add_retry_arguments",
        "run_retry",
        "RETRY_HELP",
        "RETRY_DESCRIPTION",
        "RETRY_EPILOG",
    ),
    "pause": _command("bulksend.commands.pause"),
    "resume": (
        "bulksend.commands.pause",
        "add_arguments",
        "run_resume",
        "RESUME_HELP",
        "RESUME_DESCRIPTION",
        "RESUME_EPILOG",
    ),
    "worker": _command("bulksend.commands.worker"),
    "status": _command("bulksend.commands.status"),
    "sandbox": _command("bulksend.commands.sandbox"),
    "leads": _command("bulksend.commands.leads"),
    "traitly-webhooks": _command("bulksend.commands.webhooks"),
    "bench": _command("bulksend.commands.bench"),
    "report": _command("bulksend.commands.report"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit status 2
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {message}\n")


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("bulksend")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        from bulksend import __version__

        return __version__


class _Version(argparse.Action):
    """``--version``: looked up only when asked, so other commands do not pay for it."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"bulksend {version()}", file=sys.stdout)  # redirected to the given stdout
        parser.exit(0)


def build_parser(command: str | None = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (every one with ``full``)."""
    parser = _Parser(
        prog="bulksend",
        description="Send large campaigns through rate-limited HTTP APIs.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, add, _run, help_attr, desc_attr, epilog_attr) in COMMANDS.items():
        if not full and name != command:
            sub.add_parser(name, help=_SHORT_HELP.get(name), add_help=False)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=getattr(module, help_attr, None),
            description=getattr(module, desc_attr, None),
            epilog=getattr(module, epilog_attr, None),
            formatter_class=HelpFormatter,
        )
        getattr(module, add)(p)
    return parser


_SHORT_HELP = {
    "send": "send a campaign",
    "validate": "check a campaign and its recipient file without sending",
    "retry": "send again what a journaled send did not deliver",
    "pause": "pause a running send (no new batch starts; it goes on with `bulksend resume`)",
    "resume": "let a paused send go on",
    "worker": "send the batches a planner (`bulksend send ... --workers URL`) queued in Redis",
    "status": "show the progress of a campaign sent by workers",
    "sandbox": "run a local server that behaves like a provider",
    "leads": "export MaxTraffic leads to CSV or JSON Lines",
    "traitly-webhooks": "receive Traitly prediction webhooks into a recipient file",
    "bench": "measure throughput against a sandbox in a separate process",
    "report": "work with reports (merge shards)",
}


def _command_of(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-"):
            return None
    return None


def _log_level(args: argparse.Namespace, err: TextIO) -> int:
    """-vv debug, -v info, -q warnings. By default info, except on a terminal that shows the
    live progress line: the line and the final table say what the info events would."""
    verbose = getattr(args, "verbose", 0)
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    if getattr(args, "quiet", False) or not getattr(args, "info_logs", True):
        return logging.WARNING  # -q, or a command whose table says what the info events would
    if err.isatty():
        from bulksend.output.progress import shows_progress

        if shows_progress(getattr(args, "progress", None), err):
            return logging.WARNING
    return logging.INFO


def run(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    loop_factory: Any = None,
) -> int:
    """Run the CLI; returns the exit status. Never raises for user errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = SafeStream.wrap(stdout or sys.stdout)  # a closed pipe drops what is written to it
    safe_err = SafeStream.wrap(stderr or sys.stderr)
    err = cast(TextIO, safe_err)
    if err.isatty():  # a live progress line may share it: messages and logs scroll above it
        from bulksend.output.progress import TerminalLine

        err = cast(TextIO, TerminalLine(err))
    # everything on stderr is for people: what came from outside is escaped (output/printable)
    err = for_people(err)
    ctx = Context(os.environ if env is None else env, cast(TextIO, out), err)
    try:
        return _run(argv, ctx, loop_factory)
    finally:  # what is still buffered: flushed now, while a closed pipe is dropped quietly
        out.flush()
        safe_err.flush()


def _run(argv: list[str], ctx: Context, loop_factory: Any) -> int:
    parser = build_parser(_command_of(argv))
    try:  # usage errors and --help go to the streams given, not always sys.*
        with contextlib.redirect_stdout(ctx.out), contextlib.redirect_stderr(ctx.err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    level = _log_level(args, ctx.err)
    colors = ctx.err.isatty() and not ctx.env.get("NO_COLOR")  # https://no-color.org
    logs.configure(
        level=level, fmt=getattr(args, "log_format", "auto"), stream=ctx.err, colors=colors
    )
    module_name, _add, run_name, *_ = COMMANDS[args.command]
    command = getattr(importlib.import_module(module_name), run_name)
    try:
        if inspect.iscoroutinefunction(command):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                return int(runner.run(command(args, ctx)))
        return int(command(args, ctx))
    except AuthError as exc:
        print(f"bulksend: {logs.redactor.scrub(str(exc))}", file=ctx.err)
        return ExitStatus.AUTH
    except (ConfigError, InputError) as exc:
        print(f"bulksend: error: {logs.redactor.scrub(str(exc))}", file=ctx.err)
        return ExitStatus.USAGE
    except UnavailableError as exc:
        print(f"bulksend: {logs.redactor.scrub(str(exc))}", file=ctx.err)
        return ExitStatus.UNAVAILABLE
    except BulksendError as exc:
        print(f"bulksend: {logs.redactor.scrub(str(exc))}", file=ctx.err)
        return ExitStatus.UNAVAILABLE
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except OSError as exc:  # a file that failed after the checks (EIO, disk full): one line
        where = f"{exc.filename}: " if exc.filename else ""
        said = logs.redactor.scrub(f"{where}{exc.strerror or exc}")
        print(f"bulksend: error: {said} (a journaled send resumes when run again)", file=ctx.err)
        return ExitStatus.FAILURES


def standard_streams_open() -> None:
    """Give a process started with stdin, stdout or stderr closed (``<&-``, ``2>&-``)
    ``os.devnull`` there: otherwise the next file opened takes descriptor 0-2 (uvloop aborts on
    that, and a report would receive what was meant for the terminal), and ``sys.stderr`` is
    None."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)
            if null != fd:  # pragma: no cover - the lowest free descriptor is fd itself
                os.dup2(null, fd)
                os.close(null)
    for name, fd, write in (("stdin", 0, False), ("stdout", 1, True), ("stderr", 2, True)):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "w" if write else "r", closefd=False))  # noqa: SIM115


def main(argv: Sequence[str] | None = None) -> None:
    standard_streams_open()
    factory = None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        pass
    else:
        factory = uvloop.new_event_loop
    sys.exit(run(argv, loop_factory=factory))
