"""``bulksend send`` (and ``--dry-run``) and ``bulksend retry JOURNAL``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import glob
import secrets
import shlex
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bulksend.commands.common import (
    Context,
    ExitStatus,
    add_campaign_flags,
    add_ci_flags,
    add_output_flags,
    campaign_inputs,
    send_outputs,
    settings_from,
)
from bulksend.config import Settings, check_base_url, load_settings, resolve_secrets
from bulksend.errors import AuthError, ConfigError, InputError, ProviderError
from bulksend.output import logs
from bulksend.output.outputs import Output, check
from bulksend.output.printable import for_people, printable
from bulksend.output.private import open_private, write_private
from bulksend.state.shard import Shard

if TYPE_CHECKING:  # the send machinery (aiohttp, numpy, ...) is imported when a send runs
    from bulksend.campaign import JournalOptions, SendResult
    from bulksend.output.progress import ProgressView
    from bulksend.output.report import Summary

HELP = "send a campaign"
DEAD_LETTER_HELP = "failed/unknown/skipped recipients as JSON Lines (default: beside the journal)"
DESCRIPTION = "Send the campaign described by CAMPAIGN.toml. Flags override the file."
EPILOG = """\
examples:
  bulksend send samples/maxtraffic/campaign.toml --sandbox
  MAXTRAFFIC_API_KEY=... bulksend send campaign.toml --recipients list.csv --report out.csv
  bulksend send campaign.toml --dry-run --requests-out bodies.jsonl
  bulksend send samples/maxtraffic/campaign.toml --sandbox --exclude samples/maxtraffic/bounced.txt
  bulksend send campaign.toml                 # again after a crash or a stop: it resumes
  bulksend send campaign.toml --fresh         # start over, sending everything again
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_campaign_flags(parser)
    mode = parser.add_argument_group("mode")
    mode.add_argument(
        "--sandbox",
        action="store_true",
        help="send to a built-in sandbox of the provider instead of the real API",
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="do everything but the network: print the plan and the first request bodies",
    )
    mode.add_argument(
        "--requests-out",
        type=Path,
        metavar="PATH",
        help="with --dry-run: write every request that would go out to PATH (JSON Lines)",
    )
    mode.add_argument(
        "--show", type=int, default=2, metavar="N", help="with --dry-run: bodies to print (2)"
    )
    mode.add_argument(
        "--audience-check",
        action="store_true",
        help="MaxTraffic: look every visitor up first; unknown ones and non-subscribers are "
        "reported invalid instead of sent",
    )
    mode.add_argument(
        "--strict",
        action="store_true",
        help="check the whole recipient file first; any bad row stops the send before it starts",
    )
    journal = parser.add_argument_group(
        "journal and resume",
        "A journal records every batch so a send that died can be resumed without sending "
        "again what the provider confirmed. Default: .bulksend/CAMPAIGN.journal beside the "
        "campaign file; running the same send again resumes it (one line on stderr says so). "
        "A change of what is sent (recipient file, message, batch size, columns, ...) is "
        "refused, named, unless the earlier run sent nothing the provider kept; a change of how "
        "(base URL, limits, timeouts, ...) resumes, named. A campaign whose default journals "
        "are of another --shard layout is refused too (docs/operations.md).",
    )
    journal.add_argument("--journal", type=Path, metavar="PATH", help="journal file")
    journal.add_argument(
        "--state",
        metavar="URL",
        help="keep the journal in Redis instead of a file, e.g. redis://localhost:6379/0 (or "
        "BULKSEND_STATE, [send] state): the same send run on any machine resumes it "
        "(docs/operations.md, 'Resume anywhere'; pip install 'bulksend[redis]')",
    )
    journal.add_argument("--no-journal", action="store_true", help="do not keep a journal")
    journal.add_argument(
        "--resume", action="store_true", help="require an existing journal and continue it"
    )
    journal.add_argument(
        "--fresh",
        action="store_true",
        help="discard this send's journal and start over, sending everything again; default "
        "journals of another --shard layout are moved to .bulksend/superseded-TIME/",
    )
    journal.add_argument(
        "--unknown",
        choices=["resend", "skip"],
        default="resend",
        help="batches an earlier run sent without an answer (in flight when it died, or "
        "unknown): resend them (counted as possible duplicates; default) or mark them unknown "
        "for review",
    )
    journal.add_argument(
        "--dead-letter",
        type=Path,
        metavar="PATH",
        help=DEAD_LETTER_HELP,
    )
    scale = parser.add_argument_group("several workers (docs/scaling.md)")
    scale.add_argument(
        "--shard",
        metavar="I/N",
        help="send only slice I (0-based) of N of the recipient file: the rows on lines L with "
        "L mod N = I, after deduplicating the whole file as one send would; each shard keeps "
        "its own journal, and a campaign sent with another N (or none) is refused",
    )
    scale.add_argument(
        "--workers",
        metavar="URL",
        help="plan the send for `bulksend worker URL` processes: read, check and deduplicate "
        "the file once, queue its batches in the Redis at URL (its journal too, as --state "
        "URL), wait for workers to send them, then report as a send does (docs/scaling.md)",
    )
    scale.add_argument(
        "--limiter",
        metavar="URL",
        help="share the provider's quota with other workers through Redis, "
        "e.g. redis://localhost:6379/0 (pip install 'bulksend[redis]')",
    )
    add_ci_flags(parser)
    add_metrics_flags(parser)
    add_output_flags(parser)


def add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    """--metrics-port, --metrics-host and --metrics-push (send and retry)."""
    group = parser.add_argument_group(
        "metrics (Prometheus; pip install 'bulksend[metrics]'; docs/operations.md#metrics)"
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics while sending (0: a free "
        "port, printed); also [send] metrics_port, BULKSEND_METRICS_PORT",
    )
    group.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address --metrics-port listens on (127.0.0.1: this machine only)",
    )
    group.add_argument(
        "--metrics-push",
        metavar="URL",
        help="push the final metrics once, at the end, to this Prometheus Pushgateway "
        "(job bulksend, grouped by campaign); a failed push is a warning",
    )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    settings = settings_from(args, ctx)
    if not (args.dry_run or args.no_journal) and _hash_first(args, settings):
        from bulksend.state.journal import prefetch_fingerprint

        prefetch_fingerprint(Path(settings.recipients.path))  # while the rest loads
    from bulksend.campaign import JournalOptions, default_journal_path

    if args.strict:
        _strict_check(settings, ctx)
    if args.dry_run:
        return dry_run(settings, args, ctx)
    if args.resume and args.fresh:
        raise ConfigError("--resume and --fresh contradict each other; choose one")
    journal = None
    shard = Shard.parse(args.shard) if args.shard else None
    if getattr(args, "workers", None):
        _check_planner(args, settings)
    state = _state_url(args, settings, shard)
    wanted = args.journal or args.resume or state or not args.sandbox  # a sandbox run keeps none
    if wanted and not args.no_journal and settings.recipients.path != "-":
        path = args.journal or default_journal_path(settings, shard)
        meta = recorded_send(args, settings)
        if getattr(args, "workers", None):  # what a worker builds the campaign from
            from bulksend.workers.shipped import shipped_text

            meta["campaign_text"] = shipped_text(settings.campaign_file.read_text("utf-8"))
        if state:
            layouts = _local_aside(settings, args.fresh, ctx)
        else:
            layouts = None if args.journal else _other_layouts(settings, shard, args.fresh, ctx)
        journal = JournalOptions(
            path,
            args.resume,
            args.fresh,
            args.unknown,
            meta,
            announce=_announcer(ctx),
            before_open=layouts,
            state=state,
        )
    outputs = send_outputs(args, settings, ctx.env, journal.path if journal else None)
    check(outputs, campaign_inputs(settings))  # before the journal exists and anything is sent
    return await execute(settings, args, ctx, journal, shard=shard)


def _check_planner(args: argparse.Namespace, settings: Settings) -> None:
    """``--workers URL`` keeps the journal in that Redis (``--state URL``): refuse what
    cannot go with it."""
    from bulksend.distributed.keys import checked_url

    url: str = checked_url(args.workers, "--workers")
    state = getattr(args, "state", None) or settings.state
    if state and state != url:
        raise ConfigError("--workers keeps the journal in its own Redis: drop --state")
    for flag, given in (
        ("--sandbox", args.sandbox),
        ("--shard", args.shard),
        ("--journal", args.journal),
        ("--no-journal", args.no_journal),
        ("--audience-check", args.audience_check),
    ):
        if given:
            raise ConfigError(f"--workers and {flag} do not go together; drop {flag}")
    if settings.recipients.path == "-":
        raise ConfigError("--workers needs a recipient file, not stdin (-)")
    args.state = url


def _hash_first(args: argparse.Namespace, settings: Settings) -> bool:
    """Whether the send needs the recipient file's hash before its first request: to name its
    state in Redis, or to compare it with a journal of this campaign that may hold one. (A new
    journal takes it while the send goes on.)"""
    if settings.recipients.path == "-":
        return False
    if getattr(args, "state", None) or settings.state or getattr(args, "workers", None):
        return True
    if args.journal:
        return Path(args.journal).exists()
    folder = settings.campaign_file.parent / ".bulksend"
    return any(folder.glob(glob.escape(settings.campaign_file.stem) + "*.journal"))


def _state_url(args: argparse.Namespace, settings: Settings, shard: Shard | None) -> str | None:
    """The Redis URL of ``--state`` (flag, ``BULKSEND_STATE``, ``[send] state``), checked
    against the flags it cannot go with; None for the journal file."""
    state: str | None = getattr(args, "state", None) or settings.state
    if not state:
        return None
    from bulksend.campaign import default_journal_path
    from bulksend.distributed.keys import checked_url
    from bulksend.state.journal import Journal

    checked_url(state, "--state")
    for flag, given in (("--journal", args.journal), ("--no-journal", args.no_journal)):
        if given:
            raise ConfigError(f"--state and {flag} contradict each other; choose one")
    if shard is not None and shard.count > 1:
        raise ConfigError(
            "--state does not go with --shard yet (a change of the shard count could not be "
            "detected); send each campaign from one process, or shard with local journals"
        )
    local = default_journal_path(settings, shard)
    if not args.fresh and local.exists() and Journal.kept_anything(local):
        raise ConfigError(
            f"{local}: this campaign's journal file records batches the provider may have kept, "
            "which --state would not see (they would be sent again); finish the send without "
            "--state, or add --fresh to start over in Redis (sending everything again; the file "
            "is moved aside)"
        )
    return state


def _local_aside(settings: Settings, fresh: bool, ctx: Context) -> Callable[[], None] | None:
    """With ``--state --fresh``: the move of the campaign's journal file aside (it would refuse
    every later ``--state`` send), done just before the state is opened."""
    from bulksend.campaign import default_journal_path
    from bulksend.state import layouts
    from bulksend.state.journal import Journal

    local = default_journal_path(settings)
    if not fresh or not local.exists() or not Journal.kept_anything(local):
        return None
    announce = _announcer(ctx)

    def move_aside() -> None:
        line = layouts.move_aside([layouts.Layout(1, (local,))])
        if line:
            announce(line)

    return move_aside


def _other_layouts(
    settings: Settings, shard: Shard | None, fresh: bool, ctx: Context
) -> Callable[[], None] | None:
    """Refuse a send whose campaign was sent in another shard layout (its default journals
    would not be resumed: what they delivered would go again), unless ``--fresh``: then the
    move of those journals aside, done just before the send opens its own."""
    from bulksend.state import layouts

    found = layouts.other_layouts(settings.campaign_file, shard)
    if not found:
        return None
    if not fresh:
        raise ConfigError(layouts.refusal(settings.campaign_file, found, shard))
    announce = _announcer(ctx)

    def move_aside() -> None:
        line = layouts.move_aside(found)
        if line:
            announce(line)

    return move_aside


def _announcer(ctx: Context) -> Any:
    def announce(note: str) -> None:
        print(f"bulksend: {note}", file=ctx.err)

    return announce


def recorded_send(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """What ``bulksend retry JOURNAL`` needs to run this send again as it ran: the settings in
    effect (flags, ``BULKSEND_*`` and the campaign file resolved), the mode flags, no secret."""
    rec = settings.recipients
    values = {
        "recipients": str(Path(rec.path).resolve()),
        "format": rec.format,
        "delimiter": rec.delimiter,
        "encoding": rec.encoding,
        "base_url": settings.base_url,
        "batch_size": settings.batch_size,
        "rate": _limit_text(settings.rate),
        "limit": _limit_text(settings.limit),
        "in_flight": settings.in_flight,
        "timeout": settings.timeout,
        "max_attempts": settings.max_attempts,
        "max_unexpected": settings.max_unexpected,
        "report": _recorded_report(settings.report),
        "exclude_id_column": rec.exclude_id_column,
        "exclude_uid_column": rec.exclude_uid_column,
    }
    limiter, password = _without_password(getattr(args, "limiter", None) or settings.limiter)
    dead_letter = getattr(args, "dead_letter", None)
    return {
        "campaign_file": str(Path(args.campaign).resolve()),
        "settings": {k: v for k, v in values.items() if v is not None},
        "shard": getattr(args, "shard", None),
        "sandbox": bool(getattr(args, "sandbox", False)),
        "audience_check": bool(getattr(args, "audience_check", False)),
        "limiter": limiter,
        "limiter_password": password,
        "dead_letter": str(Path(dead_letter).resolve()) if dead_letter else None,
        # added to the campaign file's own lists, which a retry reads from it
        "exclude": [str(Path(p).resolve()) for p in getattr(args, "exclude", None) or []],
    }


def _recorded_report(report: Path | None) -> str | None:
    if report is None:
        return None
    return "-" if str(report) == "-" else str(report.resolve())


def _limit_text(limit: Any) -> str | None:
    """A ``Limit`` as ``parse_rate`` reads it back exactly (``"600/60.0s"``)."""
    return None if limit is None else f"{limit.requests}/{float(limit.window)!r}s"


def _without_password(url: str | None) -> tuple[str | None, bool]:
    """``url`` with its password (if any) replaced by ``***``, and whether it had one."""
    from bulksend.state.journal import masked_url

    if not url:
        return None, False
    masked = masked_url(url)
    return masked, masked != url


async def execute(
    settings: Settings,
    args: argparse.Namespace,
    ctx: Context,
    journal: JournalOptions | None,
    *,
    shard: Shard | None = None,
) -> int:
    from bulksend.campaign import send_campaign

    report_to_stdout = settings.report is not None and str(settings.report) == "-"
    kwargs: dict[str, Any] = {
        "journal": journal,
        "dead_letter": args.dead_letter,
        "shard": shard,
        "audience_check": getattr(args, "audience_check", False),
        "stdout": ctx.out,
    }
    limiter = getattr(args, "limiter", None) or settings.limiter  # flag, BULKSEND_LIMITER, file
    if getattr(args, "workers", None):  # the planner: worker processes send
        from bulksend.workers.planner import planner_factory

        kwargs["make_engine"] = planner_factory(args.workers)
        limiter = None
    kwargs["pause"] = _pause_setup(settings, ctx, limiter)
    interrupts = _Interrupts(ctx)
    from bulksend.control.pause import PauseSignals

    pause_signals = PauseSignals()
    progress = None
    from bulksend.output.progress import shows_progress

    metrics = _MetricsHook.wanted(settings, args, ctx, shard)  # before anything is sent
    if shows_progress(args.progress, ctx.err):
        progress = _ProgressHook(ctx, settings)
    with interrupts.installed(), pause_signals.installed():

        def started(engine: Any) -> None:
            interrupts.attach(engine)
            if metrics is not None:
                metrics.attach(engine)
            pause_signals.attach(engine.pause)
            if progress is not None:
                progress.start(engine)

        try:
            async with metrics.serving() if metrics else contextlib.nullcontext():
                if args.sandbox:
                    result = await _send_to_sandbox(settings, kwargs, started, limiter, ctx)
                else:
                    secret_values = resolve_secrets(settings, ctx.env)
                    async with _shared(limiter, settings, ctx, secret_values) as shared:
                        result = await send_campaign(
                            settings, secret_values, on_start=started, scheduler=shared, **kwargs
                        )
        except asyncio.CancelledError:
            print(f"bulksend: stopped at once by a second {interrupts.name}", file=ctx.err)
            return interrupts.status
        finally:
            if progress is not None:
                await progress.stop()
    if metrics is not None:
        await metrics.push()
    status = finish(result, args, ctx, report_to_stdout=report_to_stdout)
    return interrupts.status if interrupts.name else status


def _pause_setup(settings: Settings, ctx: Context, limiter: str | None) -> Any:
    """The send's pause: each change one line on stderr, and with a shared limiter the
    campaign's Redis pause too (``bulksend pause redis://... --campaign NAME``)."""
    from bulksend.control.pause import PauseSetup, RedisSwitch

    def tell(line: str) -> None:
        print(f"bulksend: {line}", file=ctx.err)

    switches = [RedisSwitch(limiter, settings.name)] if limiter else []
    return PauseSetup(switches=switches, on_change=tell)


class _ProgressHook:
    def __init__(self, ctx: Context, settings: Settings) -> None:
        from bulksend.output.progress import count_rows

        self.ctx = ctx
        self.total = count_rows(settings.recipients.path)
        self.view: ProgressView | None = None

    def start(self, engine: Any) -> None:
        from bulksend.output.progress import ProgressView

        self.view = ProgressView(
            self.ctx.err,
            engine.summary,
            lambda: engine.scheduler,
            self.total,
            paused=engine.pause.status if engine.pause is not None else None,
        )
        self.view.start()

    async def stop(self) -> None:
        if self.view is not None:
            await self.view.stop()


class _MetricsHook:
    """``--metrics-port`` and ``--metrics-push``: the send's Prometheus metrics, served while
    it runs and pushed once at its end (``bulksend.output.metrics``)."""

    def __init__(
        self, metrics: Any, args: argparse.Namespace, ctx: Context, port: int | None
    ) -> None:
        self.metrics = metrics
        self.args = args
        self.ctx = ctx
        self.port = port

    @classmethod
    def wanted(
        cls, settings: Settings, args: argparse.Namespace, ctx: Context, shard: Shard | None
    ) -> _MetricsHook | None:
        """The hook when metrics are asked for, else None. Without prometheus_client, or with
        a push URL that is not one, a ``ConfigError``: before anything is sent."""
        push = getattr(args, "metrics_push", None)
        if settings.metrics_port is None and not push:
            return None
        if push:
            args.metrics_push = check_base_url(push, "--metrics-push")
        try:
            from bulksend.output.metrics import SendMetrics
        except ImportError as exc:
            if not (exc.name or "").startswith("prometheus_client"):
                raise
            raise ConfigError(
                "Prometheus metrics need the prometheus-client library: "
                "pip install 'bulksend[metrics]'"
            ) from None
        metrics = SendMetrics(provider=settings.provider, campaign=settings.name)
        if shard is not None and shard.count > 1:
            metrics.grouping["shard"] = f"{shard.index}-of-{shard.count}"
        return cls(metrics, args, ctx, settings.metrics_port)

    def attach(self, engine: Any) -> None:
        self.metrics.attach(engine)

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Serve the metrics for the block (with a port), announcing where on stderr."""
        if self.port is None:
            yield
            return
        from bulksend.output.metrics import MetricsServer

        server = MetricsServer(self.metrics.registry, self.args.metrics_host, self.port)
        url = await server.start()
        print(f"bulksend: metrics at {url}", file=self.ctx.err)
        try:
            yield
        finally:
            await server.stop()

    async def push(self) -> None:
        """Push the final values (``--metrics-push``); a failure is one warning line."""
        gateway = getattr(self.args, "metrics_push", None)
        if not gateway:
            return
        from bulksend.output.metrics import push
        from bulksend.providers.answers import public_url

        failed = await push(self.metrics, gateway)
        if failed:
            where = public_url(gateway)
            print(
                f"bulksend: warning: could not push the metrics to {where}: {failed} "
                "(the send's outcome stands)",
                file=self.ctx.err,
            )


class _Interrupts:
    """SIGINT/SIGTERM: the first drains the send gracefully, a second cancels at once."""

    STATUS: Mapping[str, int] = {
        "SIGINT": ExitStatus.INTERRUPTED,
        "SIGTERM": ExitStatus.TERMINATED,
    }

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
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
                file=self.ctx.err,
            )
            self.engine.interrupt(name)
        elif self._task is not None:
            self._task.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._handle, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            yield self
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _shared(
    limiter: str | None, settings: Settings, ctx: Context, secret_values: Mapping[str, str]
) -> AsyncIterator[Any]:
    """The Redis-shared scheduler for ``--limiter`` (closed afterwards), or None."""
    if not limiter:
        yield None
        return
    from bulksend.distributed import shared_scheduler

    scheduler = await shared_scheduler(limiter, settings, ctx.env, secrets=secret_values)
    try:
        yield scheduler
    finally:
        await scheduler.aclose()


async def _send_to_sandbox(
    settings: Settings,
    kwargs: Mapping[str, Any],
    on_start: Any,
    limiter: str | None = None,
    ctx: Context | None = None,
) -> Any:
    """Start the provider's sandbox in this process and send to it with a throw-away key."""
    from bulksend.campaign import send_campaign
    from bulksend.sandbox import SandboxConfig, running

    fake: dict[str, Any] = {n: f"sandbox-{secrets.token_hex(8)}" for n in settings.secret_sources}
    fields = {f.name for f in dataclasses.fields(SandboxConfig)}
    config = dataclasses.replace(
        SandboxConfig(provider=settings.provider),
        **{k: v for k, v in fake.items() if k in fields},
    )
    journal = kwargs.get("journal")
    if journal is not None and journal.state:  # the key is new each time: name the state
        kwargs = {**kwargs, "journal": dataclasses.replace(journal, fingerprint="sandbox")}
    async with running(config) as sandbox:
        local = settings.with_overrides(base_url=sandbox.base_url)
        if limiter and ctx is not None:
            async with _shared(limiter, local, ctx, fake) as shared:
                return await send_campaign(
                    local, fake, on_start=on_start, scheduler=shared, **kwargs
                )
        return await send_campaign(local, fake, on_start=on_start, **kwargs)


def no_valid_rows(summary: Summary) -> bool:
    """Rows were read, none could be sent, and none was: the file, not the provider, is wrong."""
    settled_elsewhere = (
        summary.delivered + summary.failed + summary.unknown + summary.skipped + summary.suppressed
    )
    return bool(summary.read and summary.invalid and not summary.requests and not settled_elsewhere)


def _append(path: str, summary: Summary) -> None:
    with open_private(path, "a") as f:
        f.write(printable(summary.markdown()))  # rendered for people: no control characters


def _write_after(label: str, path: str | Path, write: Callable[[], object], ctx: Context) -> None:
    """Write an output once the send is over; a failure (disk full, a file that changed since
    the check before the send) is one line, and the send's exit status stays what it was."""
    try:
        write()
    except OSError as exc:
        print(f"bulksend: could not write {label} {path}: {exc.strerror or exc}", file=ctx.err)


def finish(
    result: SendResult, args: argparse.Namespace, ctx: Context, *, report_to_stdout: bool = False
) -> int:
    summary, stopped = result.summary, result.stopped
    # the summary table, escaped (output/printable); on stderr when stdout carries data
    people = for_people(ctx.out)
    if args.summary_json and str(args.summary_json) == "-":
        ctx.out.write(summary.to_json().decode() + "\n")
        people = ctx.err
    elif args.summary_json:
        path = args.summary_json
        _write_after("--summary-json", path, lambda: write_private(path, summary.to_json()), ctx)
    if report_to_stdout:
        people = ctx.err
    step_summary = ctx.env.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        _write_after(
            "$GITHUB_STEP_SUMMARY", step_summary, lambda: _append(step_summary, summary), ctx
        )
    if not args.quiet:
        print(summary.render(), file=people)
        for line in resend_hint(result):
            print(line, file=people)
    if no_valid_rows(summary):
        print(
            "bulksend: error: no valid recipient in the file (every row is invalid or a "
            "duplicate; the report and `bulksend validate` say why): nothing was sent",
            file=ctx.err,
        )
        return ExitStatus.USAGE
    if isinstance(stopped, AuthError):
        print(f"bulksend: {logs.redactor.scrub(str(stopped))}", file=ctx.err)
        return ExitStatus.AUTH
    if isinstance(stopped, ProviderError):
        print(f"bulksend: {logs.redactor.scrub(str(stopped))}", file=ctx.err)
        return ExitStatus.UNAVAILABLE
    if summary.complete or (not summary.stopped and summary.failure_rate <= args.max_failure_rate):
        return ExitStatus.OK
    if summary.delivered == 0 and summary.failed and not summary.unknown:
        return ExitStatus.UNAVAILABLE
    return ExitStatus.FAILURES


def resend_hint(result: SendResult) -> list[str]:
    """What was not delivered, by state, and the one command that sends it again exactly as
    this send ran (``bulksend retry JOURNAL``: same base URL, limits, flags), if there is one."""
    summary = result.summary
    counts = [
        (summary.failed, "failed"),
        (summary.skipped, "skipped"),
        (summary.unknown, "with an unknown outcome"),
    ]
    what = [f"{n:,} {state}" for n, state in counts if n]
    if not what:
        return []
    listed = f" (listed in {result.dead_letter})" if result.dead_letter else ""
    lines = [f"  not delivered: {', '.join(what)}{listed}"]
    if result.state is not None:
        lines.append(
            f"  to send them again: run the same send again (its journal is {result.state})"
        )
    elif result.journal is not None:
        lines.append(f"  to send them again: bulksend retry {shlex.quote(str(result.journal))}")
    else:
        lines.append(
            "  no journal was kept (--no-journal, --sandbox or stdin), so no command can send "
            "them again as this send ran"
        )
    return lines


def _strict_check(settings: Settings, ctx: Context) -> None:
    from bulksend.campaign import source_spec
    from bulksend.sources import collect_problems

    problems = collect_problems(source_spec(settings), limit=20)
    if problems:
        path = settings.recipients.path
        lines = [f"{path}:{p.line}: {p.reason}" for p in problems]
        raise InputError(
            f"{path}: --strict: bad rows, nothing sent (first {len(lines)}):\n  "
            + "\n  ".join(lines)
        )


def dry_run(settings: Settings, args: argparse.Namespace, ctx: Context) -> int:
    """Print the plan and the first request bodies; write them all with --requests-out."""
    from bulksend.campaign import build_provider
    from bulksend.commands.validate import print_plan, walk

    shown: list[bytes] = []
    requests_out = Output("--requests-out", args.requests_out, "requests.jsonl")
    check([requests_out], campaign_inputs(settings))
    out_file = None
    if args.requests_out:
        out_file = open_private(args.requests_out, "wb")
    provider = build_provider(settings, {n: "DRY-RUN" for n in settings.secret_sources})

    def on_request(batch: Any, request: Any) -> None:
        headers = {
            k: ("[redacted]" if k.lower() in {"authorization", "x-api-key"} else v)
            for k, v in request.headers.items()
        }
        line = orjson.dumps(
            {
                "batch": batch.number,
                "method": request.method,
                "url": settings.base_url + request.path,
                "headers": headers,
                "body": (request.body or b"").decode("utf-8", "replace"),
            }
        )
        if len(shown) < args.show:
            shown.append(line)
        if out_file is not None:
            out_file.write(line + b"\n")

    try:
        result = walk(settings, provider, on_request=on_request)
    finally:
        if out_file is not None:
            out_file.close()
    print_plan(settings, provider, result, ctx, title="dry run: nothing was sent")
    out = for_people(ctx.out)  # for people: request bodies come from the recipient file
    for line in shown:
        print(_readable_request(orjson.loads(line)), file=out)
    if args.requests_out:
        print(f"all {result.batches:,} requests written to {args.requests_out}", file=out)
    return ExitStatus.OK if result.valid or result.suppressed else ExitStatus.USAGE  # as validate


def _readable_request(request: dict[str, Any], keep: int = 3) -> str:
    """A request for people: a JSON body shown as JSON, long arrays cut to their first items."""

    def cut(value: Any) -> Any:
        if isinstance(value, list):
            head = [cut(v) for v in value[:keep]]
            return [*head, f"... {len(value):,} in all"] if len(value) > keep else head
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    shown = dict(request)
    with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
        shown["body"] = cut(orjson.loads(request["body"]))  # else (a form) shown as it is
    return orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode()


# -- bulksend retry JOURNAL ------------------------------------------------------------------

RETRY_HELP = "send again what a journaled send did not deliver"
RETRY_DESCRIPTION = (
    "Resume the send recorded in JOURNAL as it ran: the same campaign and recipient file, base "
    "URL (or sandbox), limits, batch size, in-flight, timeout, attempts, file format, shard, "
    "shared limiter and audience check. Recipients delivered (or invalid) are skipped; failed, "
    "unknown and skipped ones are sent again (the unknown count as possible duplicates). A "
    "value given now wins over the recorded one: a flag, then a BULKSEND_* variable, then a "
    "campaign-file key changed since the journal's last run (a corrected [send] base_url)."
)


RETRY_EPILOG = """\
examples:
  bulksend retry .bulksend/campaign.journal        # the journal `bulksend send` kept
  bulksend retry .bulksend/campaign.journal --report out/retry.csv --summary-json out/retry.json
  bulksend retry .bulksend/campaign.journal --base-url http://127.0.0.1:8765   # elsewhere

The campaign file, recipient file and the settings in effect (flags, BULKSEND_* variables, the
file) of the last run are read from the journal, so the retry sends where that run sent unless
a base URL is given now (--base-url, BULKSEND_BASE_URL, or [send] base_url corrected in the
campaign file); the provider's secrets come from the environment as for `bulksend send`.
A send kept in Redis (--state URL) has no journal file: run the same send again, with
--resume (`bulksend send CAMPAIGN_FILE --state URL --resume`).
"""


#: ``bulksend retry redis://...``: what sends again what a --state send did not deliver
STATE_RETRY = (
    "bulksend retry takes a journal file, and a send kept in Redis (--state) has none: run the "
    "same send again with --resume, bulksend send CAMPAIGN_FILE --state URL --resume (it sends "
    "again what was not delivered or invalid, and refuses when Redis holds no state of the "
    "campaign, so a wrong URL sends nothing)"
)


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "journal", type=Path, metavar="JOURNAL", help="the journal of an earlier `bulksend send`"
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="send to this provider API base URL, not the one the journal recorded",
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="per-recipient report of the whole campaign (.csv/.jsonl; '-': stdout, as CSV; "
        "default: the send's)",
    )
    parser.add_argument("--dead-letter", type=Path, metavar="PATH", help=DEAD_LETTER_HELP)
    parser.add_argument(
        "--limiter",
        metavar="URL",
        help="the shared limiter (Redis) to use; needed when the journal's had a password",
    )
    add_ci_flags(parser)
    add_metrics_flags(parser)
    add_output_flags(parser)


async def run_retry(args: argparse.Namespace, ctx: Context) -> int:
    from bulksend.campaign import JournalOptions
    from bulksend.state.journal import Journal

    if not args.journal.exists():
        if str(args.journal).startswith(("redis:/", "rediss:/", "unix:/")):  # (Path ate a /)
            raise ConfigError(STATE_RETRY)
        raise ConfigError(f"{args.journal}: no such journal")
    stored = Journal.read_campaign(args.journal)
    meta = Journal.read_meta(args.journal)
    campaign = meta.get("campaign_file")
    if not campaign:
        raise ConfigError(f"{args.journal}: the journal does not name its campaign file")
    flags, given_now = _retry_settings(meta, stored, Path(campaign), ctx.env)
    for key in ("base_url", "report"):
        if getattr(args, key):
            flags[key] = getattr(args, key)
    if args.metrics_port is not None:
        flags["metrics_port"] = args.metrics_port
    args.exclude = meta.get("exclude") or None  # (recorded again by this run)
    flags["exclude"] = args.exclude
    settings = load_settings(Path(campaign), env=ctx.env, overrides=flags)
    args.campaign = campaign
    args.sandbox = bool(meta.get("sandbox")) and not args.base_url
    args.audience_check = bool(meta.get("audience_check"))
    args.shard = meta.get("shard")
    args.limiter = _retry_limiter(args, meta, settings, given_now="limiter" in given_now)
    if args.dead_letter is None and meta.get("dead_letter"):
        args.dead_letter = Path(meta["dead_letter"])
    journal = JournalOptions(
        args.journal,
        True,
        False,
        "resend",
        recorded_send(args, settings),
        announce=_announcer(ctx),
    )
    shard = Shard.parse(args.shard) if args.shard else None
    _refuse_other_layouts(args.journal, settings, shard)
    outputs = send_outputs(args, settings, ctx.env, args.journal, retry=True)
    check(outputs, campaign_inputs(settings))
    return await execute(settings, args, ctx, journal, shard=shard)


def _campaign_key(setting: str) -> tuple[str, str]:
    """The campaign-file table and key of a recorded setting (``rate`` -> ``send``, ``rate``)."""
    if setting == "recipients":
        return "recipients", "path"
    if setting in ("format", "delimiter", "encoding"):
        return "recipients", setting
    if setting in ("exclude_id_column", "exclude_uid_column"):
        return "recipients", setting.removesuffix("_column")
    return "send", setting


def _retry_settings(
    meta: Mapping[str, Any], stored: Mapping[str, str], campaign: Path, env: Mapping[str, str]
) -> tuple[dict[str, Any], set[str]]:
    """The settings the journal recorded for ``bulksend retry``, less those given anew: set by
    a ``BULKSEND_*`` variable now, or changed in the campaign file since the journal's last run
    (a corrected ``[send].base_url``). Those come from the variable or the file, a flag wins
    over both (docs/operations.md). Also returns the names of the settings given anew."""
    from bulksend.config import ENV_OVERRIDES, read_campaign
    from bulksend.state.journal import campaign_keys, changed_keys, stored_campaign_keys

    recorded = dict(meta.get("settings") or meta.get("overrides") or {})  # (older journals)
    try:
        now = campaign_keys(read_campaign(campaign))
    except ConfigError:
        now = None  # load_settings says what is wrong with it
    edited = set(changed_keys(stored_campaign_keys(stored), now) or ())
    variables = {where: var for var, where in ENV_OVERRIDES.items()}
    given_now = set()
    for setting in [*recorded, "limiter"]:
        table, key = _campaign_key(setting)
        if env.get(variables.get((table, key), "")) or f"[{table}].{key}" in edited:
            given_now.add(setting)
    return {k: v for k, v in recorded.items() if k not in given_now}, given_now


def _refuse_other_layouts(journal: Path, settings: Settings, shard: Shard | None) -> None:
    """``bulksend retry`` of a default journal whose campaign was sent in another shard layout
    since: refused as ``bulksend send`` refuses it (it would send again what that delivered)."""
    from bulksend.campaign import default_journal_path
    from bulksend.state import layouts

    if journal.resolve() != default_journal_path(settings, shard).resolve():
        return
    found = layouts.other_layouts(settings.campaign_file, shard)
    if found:
        raise ConfigError(layouts.refusal(settings.campaign_file, found, shard, retry=True))


def _retry_limiter(
    args: argparse.Namespace, meta: Mapping[str, Any], settings: Settings, *, given_now: bool
) -> Any:
    """The shared limiter of the recorded send (its password from --limiter or the
    environment, as the journal does not keep it), or the one named now (``--limiter``,
    ``BULKSEND_LIMITER``, a changed ``[send].limiter``)."""
    recorded = meta.get("limiter")
    if args.limiter or not recorded or given_now:
        return args.limiter or settings.limiter
    if not meta.get("limiter_password"):
        return recorded
    if settings.limiter:
        return settings.limiter
    raise ConfigError(
        f"{args.journal}: the send shared its quota through {recorded}, whose password the "
        "journal does not keep; give it with --limiter URL or BULKSEND_LIMITER"
    )
