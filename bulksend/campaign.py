"""The library entry point: run one campaign from validated ``Settings``.

    result = await send_campaign(settings, secrets, journal=JournalOptions(path))

It builds the provider, the scheduler, the transport, the source, the suppression lists, the
deduper and the journal, runs the engine and returns a ``SendResult``: the ``Summary`` and what
stopped the send early.
"""

from __future__ import annotations

import contextlib
import hashlib
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, TextIO, TypeVar

import orjson

from bulksend.config import Settings
from bulksend.control.pause import (
    JournalSwitch,
    MemorySwitch,
    PauseControl,
    PauseSetup,
    RedisSwitch,
    Switch,
)
from bulksend.dedup.deduper import Deduper
from bulksend.dispatch.engine import Engine, EngineOptions
from bulksend.errors import ConfigError
from bulksend.models import Outcome, Status
from bulksend.net.transport import Transport
from bulksend.output.logs import redactor
from bulksend.output.private import open_private
from bulksend.output.report import ReportWriter, Summary
from bulksend.providers.answers import public_url
from bulksend.providers.base import Provider, Screening
from bulksend.ratelimit.scheduler import GroupPolicy, Scheduler
from bulksend.sources import Chunk, Columns, SourceSpec, open_source
from bulksend.state.journal import (
    BatchJournal,
    FileDigest,
    Identity,
    Journal,
    campaign_keys,
    digest_in_background,
    file_fingerprint,
    masked_url,
)
from bulksend.state.shard import ALREADY_DEDUPLICATED, Shard

if TYPE_CHECKING:
    from bulksend.dedup.suppress import ListSpec, SuppressionList

T = TypeVar("T")


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
    #: keep the journal in this Redis (``--state redis://...``) instead of at ``path``, which
    #: then only names the files beside it (the dead letters)
    state: str | None = None
    #: the API key's fingerprint that names the state in Redis (default: of the secrets; a
    #: sandbox send, whose key is new each time, gives a fixed one)
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    summary: Summary
    stopped: BaseException | None
    journal: Path | None = None
    dead_letter: Path | None = None
    #: where the journal is when it is not a file (``state redis://host:6379/0``), else None
    state: str | None = None


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


def exclusion_spec(settings: Settings) -> ListSpec:
    """How the campaign's suppression lists are read: its own id and uid columns unless
    ``exclude_id``/``exclude_uid`` name others ("" for none), in its encoding."""
    from bulksend.dedup.suppress import ListSpec  # (numpy: only a send with lists needs it)

    rec = settings.recipients
    given = {"id": rec.exclude_id_column, "uid": rec.exclude_uid_column}
    own = {"id": rec.id_column, "uid": rec.uid_column}
    columns = {key: own[key] if name is None else name or None for key, name in given.items()}
    return ListSpec(
        paths=rec.exclude,
        id_column=columns["id"],
        uid_column=columns["uid"],
        required=frozenset(key for key, name in given.items() if name),
        encoding=rec.encoding,
    )


def open_exclusions(settings: Settings) -> SuppressionList | None:
    """The campaign's suppression lists, read in full (InputError, one line, for a bad one),
    or None when it has none."""
    if not settings.recipients.exclude:
        return None
    from bulksend.dedup.suppress import SuppressionList  # (numpy: only with lists)

    return SuppressionList.load(exclusion_spec(settings))


@contextlib.contextmanager
def exclusions(settings: Settings) -> Iterator[SuppressionList | None]:
    """The campaign's suppression lists, read in full (InputError, one line, for a bad one),
    or None when it has none; closed on exit."""
    lists = open_exclusions(settings)
    with lists or contextlib.nullcontext():
        yield lists


def suppressed(lists: SuppressionList | None, chunks: Iterable[Chunk]) -> Iterable[Chunk]:
    """Chunks with the rows the suppression lists hold moved to ``rejected``."""
    return chunks if lists is None else lists.screen(chunks)


def _exclusion_plan(settings: Settings, prints: Mapping[str, str]) -> dict[str, Any]:
    """What of the suppression lists shapes the batches: their contents (``prints``: each
    list's ``file_fingerprint``) and columns; nothing when there are none, so that the plans
    of sends without any stay what older journals hold."""
    if not prints:
        return {}
    spec = exclusion_spec(settings)
    return {"exclude": [sorted(prints.values()), spec.id_column, spec.uid_column]}


def identity(settings: Settings, shard: Shard | None = None) -> Identity:
    """The campaign's identity for the journal; a changed file or plan refuses a resume."""
    ident, digest = identity_and_digest(settings, shard)
    found = digest.result()
    if found is None:  # the file changed since its hash started: the file as it is now
        found = _read(lambda: file_fingerprint(digest.path))
    return ident.with_recipients(found)


def identity_and_digest(
    settings: Settings, shard: Shard | None = None
) -> tuple[Identity, FileDigest]:
    """The campaign's identity without the recipient file's fingerprint (``recipients`` is
    ""), and the digest computing it in a thread (``Journal.open(digest=)``)."""
    if settings.recipients.path == "-":
        raise ConfigError("a send from stdin cannot be journaled; use --no-journal or a file")
    path = Path(settings.recipients.path)
    text = _read(settings.campaign_file.read_bytes)
    digest = _read(lambda: digest_in_background(path))
    prints = _read(lambda: {p: file_fingerprint(Path(p)) for p in settings.recipients.exclude})
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
        **_exclusion_plan(settings, prints),
    }
    plan_digest = hashlib.sha256(orjson.dumps(plan, option=orjson.OPT_SORT_KEYS)).hexdigest()
    details = {
        "campaign_keys": keys.decode(),
        "recipients_path": str(path.resolve()),
        "recipients_stat": digest.provisional,
        "settings": orjson.dumps(named_plan(settings, shard, prints)).decode(),
        "how": orjson.dumps(how_settings(settings), default=str).decode(),
    }
    made = Identity(campaign=campaign, recipients="", plan=plan_digest, details=details)
    return made, digest


def _read(how: Callable[[], T]) -> T:
    """``how()``, an OSError as the one line ``PATH: cannot read (why)``."""
    try:
        return how()
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read ({exc.strerror})") from None


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
        "window": settings.windows.describe() if settings.windows else None,
    }
    return {
        "name": settings.name,
        "[recipients].path": str(Path(settings.recipients.path).resolve()),
        **_exclusion_paths(settings),
        **{f"[send].{key}": value for key, value in send.items()},
        "[api].paths": settings.options.get("paths"),
        "[api].auth": settings.options.get("auth"),
        "[auth]": dict(settings.secret_sources),
    }


def _exclusion_paths(settings: Settings) -> dict[str, Any]:
    """Where the suppression lists lie (their contents are in the plan), when there are any."""
    paths = [str(Path(p).resolve()) for p in settings.recipients.exclude]
    return {"[recipients].exclude": paths} if paths else {}


def named_plan(
    settings: Settings, shard: Shard | None = None, prints: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings that shape the batches, by the names an error message gives them
    (``prints``: the suppression lists' ``file_fingerprint``, by path)."""
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
        **_named_exclusions(settings, prints or {}),
    }


def _named_exclusions(settings: Settings, prints: Mapping[str, str]) -> dict[str, Any]:
    """The suppression lists by name and contents, and their columns (when there are any)."""
    if not prints:
        return {}
    spec = exclusion_spec(settings)
    lists = sorted(f"{Path(p).name} ({print_[:19]})" for p, print_ in prints.items())
    columns = f"columns: id {spec.id_column}, uid {spec.uid_column}"
    return {"suppression lists": [*lists, columns]}


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
            self._file = open_private(self.path, "wb")
        for o in rows:
            r = o.recipient
            row: dict[str, Any] = dict(r.attrs)
            if r.id is not None:
                row[self._id] = r.id
            if r.uid is not None:
                row[self._uid] = r.uid
            self._file.write(orjson.dumps(row) + b"\n")
        self.count += len(rows)


def _own_switch(journal: JournalOptions | None, settings: Settings) -> Switch:
    """Where the send's own pause is kept: its journal (SQLite row, or the campaign's Redis
    key with ``--state``, which ``bulksend pause redis://... --campaign NAME`` writes), or
    only in memory without one."""
    if journal is None:
        return MemorySwitch()
    if journal.state is not None:
        return RedisSwitch(journal.state, settings.name, flag="--state")
    return JournalSwitch(journal.path)


async def _open_lists_and_journal(
    settings: Settings,
    journal: JournalOptions | None,
    shard: Shard | None,
    provider: str,
    secrets: Mapping[str, str],
) -> tuple[SuppressionList | None, BatchJournal | None]:
    """The suppression lists (read in full first: a bad list stops the send before anything
    else) and the journal, announcing what it says of earlier runs."""
    lists = open_exclusions(settings)
    try:
        if journal is None:
            return lists, None
        if journal.before_open is not None:
            journal.before_open()
        book = await open_journal(journal, settings, shard, provider, secrets)
        note = book.opening_note()
        if note and journal.announce is not None:
            journal.announce(note)
    except BaseException:
        if lists is not None:
            lists.close()
        raise
    return lists, book


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
    pause: PauseSetup | None = None,
    make_engine: Callable[..., Engine] = Engine,
) -> SendResult:
    """Send the campaign; returns the summary and what stopped it early (None if nothing).

    ``shard`` sends only this worker's slice of the file; ``scheduler`` replaces the
    in-process one (e.g. a scheduler whose buckets live in Redis, shared by several workers);
    ``wrap_transport`` wraps the transport (``bulksend bench`` times every request with it);
    ``stdout`` takes a report whose path is ``-`` (default: ``sys.stdout``); ``pause`` adds
    switches, a clock and a listener to the send's ``PauseControl`` (``engine.pause``: its own
    switch is the journal, else memory; ``settings.windows`` close it too); ``make_engine``
    builds the engine (``bulksend.workers.planner``: one that queues batches for workers).
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
    lists, book = await _open_lists_and_journal(settings, journal, shard, provider.name, secrets)
    if dead_letter is None and journal is not None:
        dead_letter = journal.path.with_suffix(".dead-letter.jsonl")
    columns = (settings.recipients.id_column, settings.recipients.uid_column)
    letters = DeadLetter(dead_letter, *columns) if dead_letter else None
    sharding = shard if shard is not None and shard.count > 1 else None
    control = PauseControl.for_send(_own_switch(journal, settings), settings.windows, pause)
    outcome = "finished"
    made: Engine | None = None
    try:
        with (
            lists or contextlib.nullcontext(),
            open_source(spec) as rows,
            ReportWriter(settings.report, stdout) as report,
            Deduper(keys=provider.dedup_keys, expected=rows.estimated_rows) as dedup,
        ):
            async with Transport(
                settings.base_url, connections=settings.in_flight, timeout=settings.timeout
            ) as transport:
                engine = make_engine(
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
                    pause=control,
                )
                made = engine
                lost = getattr(book, "on_lost", None)
                if lost is not None:  # (state in Redis: a lost lease stops the send)
                    lost(engine.stop)
                if on_start is not None:
                    on_start(engine)
                with letters or contextlib.nullcontext(), contextlib.ExitStack() as stack:
                    chunks = screened(provider, suppressed(lists, rows.chunks()))
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
        await control.aclose()
        wrap_up = getattr(made, "wrap_up", None)
        if wrap_up is not None:  # a planner (bulksend.workers)
            await wrap_up(outcome, settings.state_ttl)
        if book is not None:
            await book.aclose(outcome)
    return SendResult(
        summary,
        engine.stopped_by,
        book.path if book else None,
        dead_letter if letters and letters.count else None,
        book.where if book and book.path is None else None,
    )


async def open_journal(
    options: JournalOptions,
    settings: Settings,
    shard: Shard | None,
    provider: str,
    secrets: Mapping[str, str],
) -> BatchJournal:
    """The send's journal: SQLite at ``options.path``, or in Redis with ``options.state``."""
    if options.state is None:  # the file's hash goes on while the send starts
        ident, digest = identity_and_digest(settings, shard)
        return Journal.open(
            options.path,
            ident,
            resume=options.resume,
            fresh=options.fresh,
            meta=options.meta,
            digest=digest,
        )
    ident = identity(settings, shard)  # Redis names the campaign's state by the file's hash
    try:
        from bulksend.state.redis_journal import RedisJournal
    except ImportError:
        raise ConfigError("--state needs the Redis client: pip install 'bulksend[redis]'") from None
    from bulksend.distributed.keys import key_fingerprint

    return await RedisJournal.open(
        options.state,
        ident,
        provider=provider,
        fingerprint=options.fingerprint or key_fingerprint(secrets),
        name=settings.name,
        resume=options.resume,
        fresh=options.fresh,
        meta=options.meta,
        ttl=settings.state_ttl,
        say=options.announce,
    )
