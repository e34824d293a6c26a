"""The library entry point: run one campaign from validated ``Settings``.

    result = await send_campaign(settings, secrets, journal=JournalOptions(path))

It builds the provider, the scheduler, the transport, the source, the deduper and the journal,
runs the engine and returns a ``SendResult``: the ``Summary`` and what stopped the send early.
"""

from __future__ import annotations

import contextlib
import hashlib
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

import orjson

from bulksend.config import Settings
from bulksend.dedup.deduper import Deduper
from bulksend.engine import Engine, EngineOptions
from bulksend.errors import ConfigError
from bulksend.journal import Identity, Journal, campaign_keys, file_fingerprint, masked_url
from bulksend.logs import redactor
from bulksend.models import Outcome, Status
from bulksend.net.transport import Transport
from bulksend.providers.answers import public_url
from bulksend.providers.base import Provider, Screening
from bulksend.report import ReportWriter, Summary
from bulksend.scheduler import GroupPolicy, Scheduler
from bulksend.shard import ALREADY_DEDUPLICATED, Shard
from bulksend.sources import Chunk, Columns, SourceSpec, open_source


@dataclass(frozen=True, slots=True)
class JournalOptions:
    path: Path
    resume: bool = False  # require an existing journal
    fresh: bool = False  # discard an existing journal
    unknown_policy: str = "resend"  # or "skip"
    meta: Mapping[str, Any] = field(default_factory=dict)  # what `bulksend retry` needs
    #: told one line when the journal is continued or started over ("resuming: ...")
    announce: Callable[[str], None] | None = None
    #: called once the send is ready to start, just before the journal is opened (``send
    #: --fresh`` moves the journals of another shard layout aside then)
    before_open: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    summary: Summary
    stopped: BaseException | None
    journal: Path | None = None
    dead_letter: Path | None = None


def default_journal_path(settings: Settings, shard: Shard | None = None) -> Path:
    """``<campaign dir>/.bulksend/<campaign stem>[.shard-I-of-N].journal`` (docs/operations.md)."""
    c = settings.campaign_file
    part = f".shard-{shard.index}-of-{shard.count}" if shard and shard.count > 1 else ""
    return c.parent / ".bulksend" / f"{c.stem}{part}.journal"


def build_provider(settings: Settings, secrets: Mapping[str, str]) -> Provider:
    provider: Provider = settings.provider_module().build(settings.options, secrets)
    return provider


def group_policies(settings: Settings, provider: Provider) -> dict[str, GroupPolicy]:
    """The provider's endpoint groups with the campaign's limits, ceiling and in-flight cap."""
    ceiling = settings.rate.per_second if settings.rate else None
    return {
        name: GroupPolicy(
            limit=limit,
            stated=settings.limit,
            in_flight=settings.in_flight,
            ceiling=ceiling,
            headers_expected=provider.sends_rate_headers,
        )
        for name, limit in provider.groups.items()
    }


def build_scheduler(settings: Settings, provider: Provider, **kwargs: Any) -> Scheduler:
    return Scheduler(group_policies(settings, provider), **kwargs)


def screened(provider: Provider, chunks: Iterable[Chunk]) -> Iterable[Chunk]:
    """Chunks with the rows the provider can refuse up front moved to ``rejected``."""
    return provider.screen(chunks) if isinstance(provider, Screening) else chunks


def source_spec(settings: Settings) -> SourceSpec:
    rec = settings.recipients
    return SourceSpec(
        path=rec.path,
        format=rec.format,  # type: ignore[arg-type]  # checked by load_settings
        delimiter=rec.delimiter,
        encoding=rec.encoding,
        columns=Columns(id=rec.id_column, uid=rec.uid_column),
    )


def identity(settings: Settings, shard: Shard | None = None) -> Identity:
    """The campaign's identity for the journal; a changed file or plan refuses a resume."""
    if settings.recipients.path == "-":
        raise ConfigError("a send from stdin cannot be journaled; use --no-journal or a file")
    try:
        text = settings.campaign_file.read_bytes()
        recipients = file_fingerprint(Path(settings.recipients.path))
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    campaign = hashlib.sha256(text).hexdigest()
    try:
        keys = orjson.dumps(campaign_keys(tomllib.loads(text.decode("utf-8", "replace"))))
    except tomllib.TOMLDecodeError:  # (load_settings read it: only if it changed meanwhile)
        keys = b""
    plan = {
        "provider": settings.provider,
        "operation": settings.operation,
        "options": settings.options,
        "recipients": [
            settings.recipients.format,
            settings.recipients.delimiter,
            settings.recipients.encoding,
            settings.recipients.id_column,
            settings.recipients.uid_column,
        ],
        "batch_size": settings.batch_size,
        "shard": str(shard) if shard else None,
    }
    digest = hashlib.sha256(orjson.dumps(plan, option=orjson.OPT_SORT_KEYS)).hexdigest()
    details = {
        "campaign_keys": keys.decode(),
        "recipients_path": str(Path(settings.recipients.path).resolve()),
        "settings": orjson.dumps(named_plan(settings, shard)).decode(),
        "how": orjson.dumps(how_settings(settings), default=str).decode(),
    }
    return Identity(campaign=campaign, recipients=recipients, plan=digest, details=details)


def how_settings(settings: Settings) -> dict[str, Any]:
    """The settings in effect that change how a send goes, not what it sends, by their
    campaign-file keys (``journal.RESUMABLE_KEYS``; not the report, which often changes from
    run to run): a resume names the ones that changed. No secret: the base URL as messages
    show it (no credentials, no query), the limiter without its password, ``[auth]`` as the
    variables or files named."""
    limits = {
        key: None if limit is None else f"{limit.requests}/{limit.window:g}s"
        for key, limit in (("rate", settings.rate), ("limit", settings.limit))
    }
    send = {
        "base_url": public_url(settings.base_url),
        **limits,
        "in_flight": settings.in_flight,
        "timeout": settings.timeout,
        "max_attempts": settings.max_attempts,
        "max_unexpected": settings.max_unexpected,
        "limiter": masked_url(settings.limiter) if settings.limiter else None,
    }
    return {
        "name": settings.name,
        "[recipients].path": str(Path(settings.recipients.path).resolve()),
        **{f"[send].{key}": value for key, value in send.items()},
        "[api].paths": settings.options.get("paths"),
        "[api].auth": settings.options.get("auth"),
        "[auth]": dict(settings.secret_sources),
    }


def named_plan(settings: Settings, shard: Shard | None = None) -> dict[str, Any]:
    """The settings that shape the batches, by the names an error message gives them."""
    rec = settings.recipients
    api = {
        f"[api] {k}": v
        for k, v in settings.options.items()
        if k not in {"operation", "message", "campaign_name", "columns"}
    }
    return {
        "provider": settings.provider,
        "operation": settings.operation,
        "message": settings.options.get("message"),
        "campaign name": settings.options.get("campaign_name"),
        **api,
        "recipient file format": rec.format,
        "delimiter": rec.delimiter,
        "encoding": rec.encoding,
        "id column": rec.id_column,
        "uid column": rec.uid_column,
        "batch size": settings.batch_size,
        "shard": str(shard) if shard else None,
    }


class DeadLetter:
    """Failed, unknown and skipped recipients as JSON Lines that ``bulksend send`` reads back.

    Keys are the campaign's own column names, so the same campaign file maps them again.
    """

    RESEND = frozenset({Status.FAILED, Status.UNKNOWN, Status.SKIPPED})

    def __init__(self, path: Path, id_column: str | None, uid_column: str | None) -> None:
        self.path = path
        self._id, self._uid = id_column or "id", uid_column or "uid"
        self._file: IO[bytes] | None = None
        self.count = 0

    def __enter__(self) -> DeadLetter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
        elif self.path.exists():  # nothing to resend this time: no stale file either
            self.path.unlink()

    def __call__(self, outcomes: Sequence[Outcome]) -> None:
        rows = [o for o in outcomes if o.status in self.RESEND]
        if not rows:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")
        for o in rows:
            r = o.recipient
            row: dict[str, Any] = dict(r.attrs)
            if r.id is not None:
                row[self._id] = r.id
            if r.uid is not None:
                row[self._uid] = r.uid
            self._file.write(orjson.dumps(row) + b"\n")
        self.count += len(rows)


async def send_campaign(
    settings: Settings,
    secrets: Mapping[str, str],
    *,
    journal: JournalOptions | None = None,
    dead_letter: Path | None = None,
    progress_every: float = 5.0,
    on_start: Callable[[Engine], None] | None = None,
    shard: Shard | None = None,
    scheduler: Scheduler | None = None,
    wrap_transport: Callable[[Transport], Any] | None = None,
    audience_check: bool = False,
    stdout: TextIO | None = None,
) -> SendResult:
    """Send the campaign; returns the summary and what stopped it early (None if nothing).

    ``shard`` sends only this worker's slice of the file; ``scheduler`` replaces the
    in-process one (e.g. a scheduler whose buckets live in Redis, shared by several workers);
    ``wrap_transport`` wraps the transport (``bulksend bench`` times every request with it);
    ``stdout`` takes a report whose path is ``-`` (default: ``sys.stdout``).
    """
    redactor.register(secrets.values())
    provider = build_provider(settings, secrets)
    if audience_check and provider.name != "maxtraffic":
        raise ConfigError("--audience-check looks visitors up in MaxTraffic; this is not")
    scheduler = scheduler or build_scheduler(settings, provider)
    summary = Summary(
        provider=provider.name, campaign=settings.name, dedup_keys=list(provider.dedup_keys)
    )
    options = EngineOptions(
        batch_size=settings.batch_size,
        workers=settings.in_flight,
        max_attempts=settings.max_attempts,
        max_unexpected=settings.max_unexpected,
        progress_every=progress_every,
        unknown_policy=journal.unknown_policy if journal else "resend",
    )
    spec = source_spec(settings)
    book = None
    if journal is not None:
        if journal.before_open is not None:
            journal.before_open()
        book = Journal.open(
            journal.path,
            identity(settings, shard),
            resume=journal.resume,
            fresh=journal.fresh,
            meta=journal.meta,
        )
        note = book.opening_note()
        if note and journal.announce is not None:
            journal.announce(note)
    if dead_letter is None and journal is not None:
        dead_letter = journal.path.with_suffix(".dead-letter.jsonl")
    columns = (settings.recipients.id_column, settings.recipients.uid_column)
    letters = DeadLetter(dead_letter, *columns) if dead_letter else None
    sharding = shard if shard is not None and shard.count > 1 else None
    outcome = "finished"
    try:
        with (
            open_source(spec) as rows,
            ReportWriter(settings.report, stdout) as report,
            Deduper(keys=provider.dedup_keys, expected=rows.estimated_rows) as dedup,
        ):
            async with Transport(
                settings.base_url, connections=settings.in_flight, timeout=settings.timeout
            ) as transport:
                engine = Engine(
                    provider,
                    wrap_transport(transport) if wrap_transport else transport,
                    scheduler,
                    ALREADY_DEDUPLICATED if sharding else dedup,  # a shard dedups every row
                    options,
                    report=report,
                    summary=summary,
                    journal=book,
                    on_outcomes=letters,
                    hook_statuses=DeadLetter.RESEND,
                    source_name=spec.path,
                )
                if on_start is not None:
                    on_start(engine)
                with letters or contextlib.nullcontext(), contextlib.ExitStack() as stack:
                    chunks = screened(provider, rows.chunks())
                    if sharding:  # closed before the deduper, even on a crash
                        chunks = stack.enter_context(
                            contextlib.closing(sharding.select(chunks, dedup))
                        )
                    if audience_check:
                        from bulksend.providers.maxtraffic_audience import AudienceCheck

                        check = AudienceCheck.for_provider(
                            provider,  # type: ignore[arg-type]  # MaxTraffic, checked above
                            transport,
                            scheduler,
                            concurrency=settings.in_flight,
                        )
                        await engine.run(check.filter(chunks))
                    else:
                        await engine.run(chunks)
        if engine.stopped_by is not None:
            outcome = f"stopped: {engine.stopped_by}"
        elif book is not None:  # every batch was planned: the next run can say "N of M"
            book.set_planned(summary.batches)
    except BaseException as exc:
        outcome = f"crashed: {type(exc).__name__}"
        raise
    finally:
        summary.limits = scheduler.beliefs()
        if book is not None:
            book.close(outcome)
    return SendResult(
        summary,
        engine.stopped_by,
        journal.path if journal else None,
        dead_letter if letters and letters.count else None,
    )
