"""Wires the stages: source -> dedup -> batcher -> scheduler -> transport -> classify -> report.

The reader runs in the event loop and feeds a bounded queue, so it never races ahead of the
quota; ``workers`` tasks take batches from it. Every row read ends in exactly one ``Status`` in
the report and the summary (``Summary.accounted == Summary.read``).

With a ``Journal`` each batch is recorded ``in_flight`` (durably) before it is sent and with its
final state after; on a resumed run the batches the journal shows delivered (or invalid) are
reported from the journal and not sent again, and batches left ``in_flight`` (or ``unknown``) by
an earlier run are resent (``unknown_policy="resend"``) or reported ``unknown`` for review
(``"skip"``). A batch the provider may already have (an earlier request got no answer) is, once
delivered, reported with a reason starting ``may have arrived twice`` and counted as possible
duplicates; the journal keeps both, so later runs count it again (``Summary.possible_duplicates``
covers the whole campaign).

A batch whose request must be retried does not keep its worker while it waits: it is *parked*
in a task of its own, which sleeps the backoff, waits for the retry budget and the pacing
(``Scheduler.acquire(retry=True)``, served ahead of first attempts) and sends the retry, while
the worker goes on with other batches. At most ``parked_per_worker * workers`` batches are
parked; when that many are, a worker with one more waits for room. The requests actually in
flight stay capped by the scheduler (``GroupPolicy.in_flight``).

A ``PauseControl`` (``pause``; bulksend.control.pause) is asked before a worker takes a new
batch: while it says ``paused`` (SIGUSR1, ``bulksend pause``, outside the send windows) the
workers wait; what they hold finishes and the scheduler's state is kept.

``interrupt()`` stops taking new batches and lets the ones in flight finish (bounded by
``drain_timeout``); queued batches are reported ``skipped`` and stay resumable, and so are parked
ones (woken at once), or ``unknown`` when an earlier attempt may have reached the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bulksend.dedup.ahead import Dedup, DedupAhead, Kept
from bulksend.dispatch.decide import Action, Do, Stop, decide
from bulksend.dispatch.isolate import How, isolate
from bulksend.errors import (
    AuthError,
    BulksendError,
    Deferred,
    Interrupted,
    NoResponse,
    ProviderError,
    UnavailableError,
)
from bulksend.models import (
    DUPLICATE_REASON,
    Batch,
    Duplicate,
    Outcome,
    Recipient,
    Rejected,
    Status,
    Suppressed,
)
from bulksend.net.fetch import NO_ANSWER, FirstRequest
from bulksend.output.logs import get_logger
from bulksend.output.report import POSSIBLY_TWICE, ReportWriter, Summary
from bulksend.providers.answers import likely_fix, public_url, stop_line
from bulksend.providers.base import (
    Classification,
    ClassifiesSent,
    Provider,
    Verdict,
    adder,
)
from bulksend.ratelimit.circuit import Circuit
from bulksend.ratelimit.circuit import State as CircuitState
from bulksend.ratelimit.pacing import Pacer
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, Permit, Scheduler
from bulksend.recipients import Recipients
from bulksend.sources.spec import Chunk
from bulksend.state.journal import BatchJournal, BatchRecord, PartRecord, same_batch

if TYPE_CHECKING:
    from bulksend.control.pause import PauseControl

_CHUNK = 4096  # rows deduplicated together (the deduper works a chunk at a time)
#: seconds the reader leaves the loop (and the CPU) to the first request once it is handed to
#: the transport: its connection made, the request written and taken by the server
#: (``Engine._first_out``)
_FIRST_OUT = 0.003


@dataclass(frozen=True, slots=True)
class Result:
    """What one send attempt (or a bisected part of a batch) ended in."""

    recipients: Sequence[Recipient]
    status: Status
    reason: str = ""
    http_status: int | None = None
    attempts: int = 0


def as_chunks(items: Iterable[Any], size: int = _CHUNK) -> Iterator[Chunk]:
    """Chunks as they are, or plain rows gathered into chunks of ``size``."""
    recipients: list[Recipient] = []
    rejected: list[Rejected] = []
    for item in items:
        if isinstance(item, tuple):  # already a chunk
            yield Chunk(*item)
            continue
        if isinstance(item, Rejected):
            rejected.append(item)
        else:
            recipients.append(item)
        if len(recipients) + len(rejected) >= size:
            yield Chunk(recipients, rejected)
            recipients, rejected = [], []
    if recipients or rejected:
        yield Chunk(recipients, rejected)


class Sender(Protocol):
    async def send(self, request: Any) -> Any: ...


class RequestMetrics(Protocol):
    """Times and counts each request (``bulksend.output.metrics.SendMetrics``)."""

    async def timed(self, transport: Sender, group: str, request: Any, retry: bool) -> Any: ...


@dataclass(frozen=True, slots=True)
class EngineOptions:
    batch_size: int
    workers: int = 16
    max_attempts: int = 6
    progress_every: float = 5.0
    #: extra requests one batch may spend isolating invalid recipients after a 422
    split_budget: int = 64
    #: what to do with batches a dead run left in flight: "resend" or "skip"
    unknown_policy: str = "resend"
    drain_timeout: float = 30.0
    #: consecutive 5xx/timeouts that pause a group (when at least ``circuit_failure_rate`` of
    #: its last ``circuit_window`` outcomes failed too), and the first pause (doubling to 60 s)
    circuit_threshold: int = 5
    circuit_cooldown: float = 2.0
    circuit_window: int = 50
    circuit_failure_rate: float = 0.5
    #: batches waiting to retry, per worker, that do not hold a worker (see the module docstring)
    parked_per_worker: int = 4
    #: unexpected answers in a row (2xx that are not the provider's answer) that stop the send
    max_unexpected: int = 5


@dataclass(slots=True, eq=False)
class _Part:
    """Recipients of a batch sent in one request: the whole batch, or a part a 422 split off."""

    batch: Batch  # what is encoded: the batch itself, or a Batch of the part
    #: a request without an answer may have reached the provider (or an earlier run's did)
    unknown_sent: bool = False
    doubt: str = ""  # why it may have reached the provider already ("resent after ...")
    attempts: int = 0
    request: Any = None  # encoded at the first attempt


@dataclass(slots=True, eq=False)
class _Job:
    """A batch being sent: its parts still to send (the next one last) and its results so far."""

    batch: Batch
    parts: list[_Part]
    results: list[Result]
    split_budget: int  # extra requests left for isolating invalid recipients
    doubt: str = ""  # why the provider may have some of it already (kept in the journal)
    recorded: bool = False  # reported and journalled already (delivered whole at once)


#: what each verdict tells the scheduler about the quota
_FEEDBACK_KINDS: dict[Verdict, FeedbackKind] = {
    **{v: FeedbackKind.OK for v in Verdict},
    Verdict.THROTTLED: FeedbackKind.THROTTLED,
    Verdict.RETRY: FeedbackKind.ERROR,
}
# members looked up once (an enum attribute costs a dictionary walk each time)
_RETRY, _OK = Verdict.RETRY, FeedbackKind.OK
_UNEXPECTED, _THROTTLED = Verdict.UNEXPECTED, Verdict.THROTTLED
_STATUS_DELIVERED = Status.DELIVERED
_CLOSED = CircuitState.CLOSED
_DELIVERED = Verdict.DELIVERED
#: ``decide``'s action on a delivered answer, by ``unknown_sent`` (the only input it depends on
#: then): looked up, not decided, for the answer nearly every request gets
_ON_DELIVERED = {sent: decide(_DELIVERED, 1, 1, unknown_sent=sent) for sent in (False, True)}
_PLAIN = _ON_DELIVERED[False]
#: the common one, delivered with no doubt: done in ``_answered_with`` itself (``_perform``
#: does what the table says should it ever say something else)
_DELIVER = _PLAIN if _PLAIN.do is Do.DELIVER and not _PLAIN.twice else None


def _run_name(run: int | None) -> str:
    return f"run {run}" if run else "an earlier run"


def _left_unknown(run: int | None, reason: str) -> str:
    """Why a batch an earlier run left ``unknown`` may have reached the provider."""
    return f"resent after {_run_name(run)} left its outcome unknown ({reason or 'no answer'})"


def _debug_enabled(log: Any) -> bool:
    """Whether ``log.debug`` does anything (its arguments need building only then)."""
    enabled = getattr(log, "is_enabled_for", None)
    return True if enabled is None else bool(enabled(logging.DEBUG))


class Engine:
    """One send. ``run`` consumes the source and returns the filled-in ``Summary``."""

    # sending-side state the workers keep
    _opened = False  # a response came back: the first request's gate is open for good
    _debug = True  # the logger passes debug events (set when the workers start)

    def __init__(
        self,
        provider: Provider,
        transport: Sender,
        scheduler: Scheduler,
        dedup: Dedup,
        options: EngineOptions,
        *,
        report: ReportWriter | None = None,
        summary: Summary | None = None,
        journal: BatchJournal | None = None,
        on_outcomes: Callable[[Sequence[Outcome]], None] | None = None,
        hook_statuses: frozenset[Status] = frozenset(Status),
        source_name: str = "",
        pause: PauseControl | None = None,
    ) -> None:
        self.provider = provider
        self.pause = pause
        #: the provider's ``classify_sent`` when it has one (set by run), else None
        self._classify_sent: Callable[[Any, Any], Classification] | None = None
        self.transport = transport
        self.scheduler = scheduler
        self.dedup = dedup
        self.options = options
        self.report = report or ReportWriter(None)
        self.summary = summary or Summary(provider=provider.name)
        self.journal = journal
        self._on_outcomes = on_outcomes
        self._hook_statuses = hook_statuses
        self.source_name = source_name
        self._log = get_logger(provider=provider.name)
        #: when the latest request before the first answer was handed to the transport, by
        #: ``_clock`` (not the loop's: uvloop's reads whole milliseconds, as of the start of the
        #: loop's turn)
        self._clock: Callable[[], float] = time.monotonic
        self._sent_at = 0.0
        self._pacer = Pacer(options.workers)
        self._stop: BaseException | None = None
        self._interrupted = False
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=options.workers * 2)
        # The first request goes out alone: a 401 then stops the send after one request, and
        # the rate-limit headers are known before the workers open up.
        self._first = FirstRequest()
        self._warned: set[str] = set()
        self._circuits: dict[str, Circuit] = {}
        #: unexpected answers in a row, and whether any other answer came in this run
        self._unexpected_streak = 0
        self._recognised = False
        self._last_unexpected = ""  # "URL answered 200 text/html, not ..." (the latest)
        #: the latest failure of each group, for the stop line ("connection refused: host")
        self._last_failure: dict[str, str] = {}
        self._no_answer: NoResponse | None = None  # the latest request that got no answer
        self._base = getattr(transport, "base_url", "")
        self._circuit_changed: dict[str, asyncio.Event] = {}
        self._stopping = asyncio.Event()  # set by stop(): ends the waits of parked batches
        self._parked: set[asyncio.Task[None]] = set()
        self._parking = asyncio.Semaphore()  # room for parked batches: sized by run()
        #: the send's Prometheus metrics (``SendMetrics.attach``), None when not asked for
        self.metrics: RequestMetrics | None = None

    # -- outcomes ---------------------------------------------------------------------------
    def _finish(
        self,
        batch: Batch | None,
        recipients: Iterable[Recipient],
        status: Status,
        reason: str = "",
        http_status: int | None = None,
        attempts: int | None = None,
    ) -> None:
        rows = recipients if isinstance(recipients, Sequence) else list(recipients)
        self.summary.count(status, len(rows))
        if status is _STATUS_DELIVERED and reason and reason.startswith(POSSIBLY_TWICE):
            self.summary.possible_duplicates += len(rows)
        to_report = self.report.active
        to_hook = self._on_outcomes is not None and status in self._hook_statuses
        if not (to_report or to_hook) or not rows:
            return  # nobody reads per-recipient outcomes: don't build them
        if attempts is None:
            attempts = batch.attempts if batch else 0
        number = batch.number if batch else None
        if to_report and isinstance(rows, Recipients):  # columns: no object per row
            self.report.write_rows(rows, status, reason, http_status, attempts, number)
            if not to_hook:
                return
            to_report = False
        outcomes = [Outcome(r, status, reason, http_status, attempts, number) for r in rows]
        if to_report:
            self.report.write(outcomes)
        if to_hook and self._on_outcomes is not None:
            self._on_outcomes(outcomes)

    def _record(self, batch: Batch, results: list[Result], doubt: str = "") -> None:
        """Report a batch's results and journal its final state (and ``doubt``)."""
        if len(results) == 1 and not batch.resumed_split:
            one = results[0]
            self._record_one(
                batch, one.recipients, one.status, one.reason, one.http_status, one.attempts, doubt
            )
            return
        for res in results:
            self._finish(
                batch, res.recipients, res.status, res.reason, res.http_status, res.attempts
            )
        if self.journal is not None:
            parts = [
                (r.line, res.status.value, res.reason, res.http_status)
                for res in results
                for r in res.recipients
            ]
            self.journal.finished(batch, "split", "", None, parts, doubt=doubt)

    def _record_one(
        self,
        batch: Batch,
        rows: Sequence[Recipient],
        status: Status,
        reason: str,
        http_status: int | None,
        attempts: int,
        doubt: str,
    ) -> None:
        """``_record`` of a batch that ended in one result, not split (no ``Result`` needed)."""
        self._finish(batch, rows, status, reason, http_status, attempts)
        if self.journal is not None:
            self.journal.finished(batch, status.value, reason, http_status, doubt=doubt)

    def stop(self, error: BaseException) -> None:
        """Stop taking batches: nothing more is sent once this is called."""
        if self._stop is None:
            self._stop = error
            self.summary.stopped = str(error)
            self._first.done()
            self._stopping.set()
            for event in self._circuit_changed.values():
                event.set()
            self._circuit_changed.clear()
            self._log.error("send_stopped", reason=str(error))

    def interrupt(self, signal_name: str) -> None:
        """Graceful stop: no new batches; the ones in flight finish."""
        self._interrupted = True
        self.stop(Interrupted(signal_name))

    # -- reading ----------------------------------------------------------------------------
    async def _read(self, chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> None:
        """Read, deduplicate and batch. Deduplication runs in a helper thread one chunk ahead
        (``DedupAhead``): chunk k is deduplicated while chunk k+1 is read and the event loop
        sends; every chunk is settled in order."""
        batcher = self.provider.batcher(self.options.batch_size)
        add = adder(batcher)  # its kind looked up once, not once a chunk
        pending: Future[Kept] | None = None
        with DedupAhead(self.dedup) as ahead:
            try:
                if isinstance(chunks, AsyncIterable):  # e.g. behind an audience check
                    async for chunk in chunks:
                        pending = await self._chunk(chunk, ahead, pending, add)
                        await self._first_out()
                else:
                    for chunk in chunks:
                        pending = await self._chunk(chunk, ahead, pending, add)
                        await self._first_out()
            except ProviderError as exc:  # a source that talks to the provider (audience)
                self.stop(exc)
            if pending is not None:
                await self._take(pending, add)
        for batch in batcher.flush():
            await self._plan(batch)

    async def _chunk(
        self,
        chunk: Chunk,
        ahead: DedupAhead,
        pending: Future[Kept] | None,
        add: Callable[[Sequence[Recipient]], list[Batch]],
    ) -> Future[Kept] | None:
        """Count and report the chunk's rejected rows, start its deduplication, and settle
        the chunk before it; returns this chunk's deduplication, still running."""
        recipients, rejected = chunk
        self.summary.read += len(recipients) + len(rejected)
        for item in rejected:
            rec = Recipient(item.line, item.id, item.uid)
            if type(item) is Duplicate:  # deduplicated ahead (a shard: see bulksend.state.shard)
                self._finish(None, [rec], Status.DUPLICATE, item.reason)
            elif type(item) is Suppressed:  # a suppression list holds it (--exclude)
                self._finish(None, [rec], Status.SUPPRESSED, item.reason)
            else:
                self._finish(None, [rec], Status.INVALID, self._where(item))
        future = ahead.submit(recipients) if len(recipients) else None
        if pending is not None:
            await self._take(pending, add)
        elif future is not None and not self.summary.batches:
            await self._take(future, add)  # the first request need not wait for a block
            return None
        return future

    async def _first_out(self) -> None:
        """While the first request is out alone, let it go out: wait until ``_FIRST_OUT``
        seconds after it was handed to the transport before reading the next chunk. A chunk
        and its batches take the loop a millisecond or more (and the deduplication thread the
        other core), while the first request's connection is being made: the request was
        written once the reader was done, and its round trip grew by that much. The reader has
        the rest of the round trip to fill the queue before the other workers start."""
        while self._stop is None and self._sent_at and not self._first.is_done():
            wait = self._sent_at + _FIRST_OUT - self._clock()
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, _FIRST_OUT / 4))  # (an early answer ends the wait)

    def _where(self, item: Rejected) -> str:
        """``file:line: reason`` for a row the source rejected."""
        if self.source_name and not item.reason.startswith("audience check:"):
            return f"{self.source_name}:{item.line}: {item.reason}"
        return item.reason

    async def _take(
        self, deduplicated: Future[Kept], add: Callable[[Sequence[Recipient]], list[Batch]]
    ) -> None:
        """Batch what a chunk's deduplication kept (after a stop: account for it, unsent)."""
        kept, duplicates = await asyncio.wrap_future(deduplicated)
        self._finish(None, duplicates, Status.DUPLICATE, DUPLICATE_REASON)
        if self._stop is not None:  # after a stop the rest of the file is accounted for
            self._finish(None, kept, Status.SKIPPED, f"not sent: {self._stop}")
            return
        for batch in add(kept):
            await self._plan(batch)
        await asyncio.sleep(0)  # let the workers run between chunks

    async def _plan(self, batch: Batch) -> None:
        """Queue a batch, unless the journal says an earlier run settled it."""
        if self._stop is not None:  # rows read but never sent still get a final state
            self._finish(None, batch.recipients, Status.SKIPPED, f"not sent: {self._stop}")
            return
        self.summary.batches += 1
        journal = self.journal
        previous = journal.previous(batch.number) if journal else None
        if previous is not None and journal is not None:
            if not same_batch(previous.digest, batch.recipients):
                raise ProviderError(
                    f"journal {journal.where}: batch {batch.number} differs from the earlier "
                    "run's; the recipients or settings changed — start over with --fresh"
                )
            batch.attempts = previous.attempts
            if self._resumed(batch, previous, journal):
                return
        await self._queue.put(batch)

    def _resumed(self, batch: Batch, previous: BatchRecord, journal: BatchJournal) -> bool:
        """Report what an earlier run settled of ``batch``; True when nothing is left to send.

        What is left is marked possibly sent (with why) when an earlier request for it got no
        answer; with ``unknown_policy="skip"`` a batch whose outcome is unknown is reported
        ``unknown`` for review instead.
        """
        state = previous.state
        if state in ("delivered", "invalid"):
            reason = previous.reason or f"{state} in an earlier run"
            self._replay(batch, batch.recipients, Status(state), reason, previous.http_status)
            return True
        doubt = previous.doubt
        unsure = state in ("in_flight", "unknown")
        parts = journal.parts(batch.number) if unsure or state == "split" else []
        if parts:  # a 422 was being isolated: report the settled parts, send the rest
            remaining, no_answer = self._replay_parts(batch, parts)
            if not remaining:
                return True
            batch.recipients, batch.resumed_split = remaining, True
            if no_answer and not doubt:
                doubt = _left_unknown(previous.run, no_answer)
        if unsure and not doubt:
            doubt = (
                f"resent after {_run_name(previous.run)} was interrupted with the request in flight"
                if state == "in_flight"
                else _left_unknown(previous.run, previous.reason)
            )
        if unsure and self.options.unknown_policy == "skip":
            reason = (
                "in flight when an earlier run stopped; outcome unknown (review)"
                if state == "in_flight"
                else previous.reason or "outcome unknown (review)"
            )
            self._record(batch, [Result(batch.recipients, Status.UNKNOWN, reason)], doubt)
            return True
        batch.possibly_sent, batch.doubt = bool(doubt), doubt
        return False

    def _replay(
        self,
        batch: Batch,
        rows: Sequence[Recipient],
        status: Status,
        reason: str,
        http_status: int | None,
    ) -> None:
        """Report rows an earlier run settled (counted as settled earlier)."""
        self._finish(batch, rows, status, reason, http_status)
        if status is _STATUS_DELIVERED:
            self.summary.delivered_earlier += len(rows)
            if reason.startswith(POSSIBLY_TWICE):
                self.summary.possible_duplicates_earlier += len(rows)

    def _replay_parts(
        self, batch: Batch, parts: Sequence[PartRecord]
    ) -> tuple[list[Recipient], str]:
        """Report a split batch's settled parts from the journal; return the rows still to
        send, and the reason of one of them that got no answer ("" if none did).

        (A run that died in the middle of isolating a 422 leaves some parts unsettled.)
        """
        by_line = {p.line: p for p in parts}
        remaining: list[Recipient] = []
        no_answer = ""
        for r in batch.recipients:
            p = by_line.get(r.line)
            if p is not None and p.state in ("delivered", "invalid"):
                self._replay(batch, [r], Status(p.state), p.reason, p.http_status)
                continue
            remaining.append(r)
            if p is not None and p.state == "unknown":
                no_answer = no_answer or p.reason or "no answer"
        return remaining, no_answer

    # -- sending ----------------------------------------------------------------------------
    async def _worker(self) -> None:
        queue = self._queue
        self._debug = _debug_enabled(self._log)
        split_budget = self.options.split_budget
        while True:
            if self.pause is not None and self.pause.paused:
                await self.pause.wait_open(self._stopping)
            try:
                batch = queue.get_nowait()  # what queue.get() does when a batch is waiting
            except asyncio.QueueEmpty:
                batch = await queue.get()
            if batch is None:
                return
            if self._stop is not None:
                self._skip(batch)
                continue
            # (positional: keywords to a class cost a dictionary each)
            first = _Part(batch, batch.possibly_sent, batch.doubt)
            job = _Job(batch, [first], [], split_budget, batch.doubt)
            try:
                await self._work(job, parked=False)
            except asyncio.CancelledError:
                self._abandon(job)
                raise

    def _skip(self, batch: Batch) -> None:
        status = Status.UNKNOWN if batch.possibly_sent else Status.SKIPPED
        self._record(
            batch, [Result(batch.recipients, status, f"not sent: {self._stop}")], batch.doubt
        )

    def _abandon(self, job: _Job) -> None:
        """Record a job cancelled before its end: what is not settled is unknown."""
        rest = [r for part in reversed(job.parts) for r in part.batch.recipients]
        results = list(job.results)
        if rest:
            results.append(Result(rest, Status.UNKNOWN, "interrupted while in flight"))
        self._record(job.batch, results, job.doubt)

    async def _work(self, job: _Job, *, parked: bool) -> None:
        """Send the job's parts until each has a final result, then record them.

        A part that must wait before it is retried parks the job (``_park``): the worker goes on
        with other batches and the job goes on in a task of its own. A parked job waits out its
        later retries itself. A stop ends every wait (the next attempt reports the stop).
        """
        parts = job.parts
        while parts:
            delay = await self._attempt(job, parts[-1])
            if delay is None or self._stop is not None:
                continue  # settled, or stopped: the next attempt settles it
            if not parked:
                await self._park(job, delay)
                return
            await self._pause(delay)
        if not job.recorded:
            self._record(job.batch, job.results, job.doubt)

    async def _park(self, job: _Job, delay: float) -> None:
        """Hand a job waiting to retry to a task of its own (waiting while too many are)."""
        await self._parking.acquire()
        task = asyncio.create_task(self._parked_job(job, delay))
        self._parked.add(task)
        task.add_done_callback(self._unpark)

    def _unpark(self, task: asyncio.Task[None]) -> None:
        self._parked.discard(task)
        self._parking.release()

    async def _parked_job(self, job: _Job, delay: float) -> None:
        try:
            await self._pause(delay)
            await self._work(job, parked=True)
        except asyncio.CancelledError:
            self._abandon(job)
            raise

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the send stops meanwhile."""
        if delay <= 0.0 or self._stop is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    def _settle(self, job: _Job, status: Status, reason: str, http: int | None) -> None:
        """The job's current part (the last) ends in ``status``."""
        part = job.parts.pop()
        job.results.append(Result(part.batch.recipients, status, reason, http, part.attempts))

    async def _attempt(self, job: _Job, part: _Part) -> float | None:
        """Send ``part`` once. Returns None when it is settled (or split), else the delay
        before its next attempt."""
        batch = job.batch
        if part.request is None:
            part.request = self.provider.encode(part.batch)
        permit = await self._admit(job, part)
        if permit is None:
            return None
        if self.journal is not None and part.attempts == 0 and part.batch is batch:
            try:
                await self.journal.in_flight(batch)
            except UnavailableError as exc:  # not recorded: not sent
                self.scheduler.cancel(permit)
                self._unrecorded(job, part, exc)
                return None
        part.attempts += 1
        batch.attempts += 1
        summary = self.summary
        summary.requests += 1
        if part.attempts > 1:
            summary.retries += 1
        metrics = self.metrics
        sent = self._clock()
        if not self._opened:  # (only the first request's time is looked at: ``_first_out``)
            self._sent_at = sent
        try:
            if metrics is None:
                response = await self.transport.send(part.request)
            else:  # timed and counted by group and status (bulksend.output.metrics)
                retry = part.attempts > 1
                response = await metrics.timed(self.transport, batch.group, part.request, retry)
        except asyncio.CancelledError:
            self.scheduler.complete(permit, NO_ANSWER)
            raise
        except NoResponse as exc:
            return self._no_response(job, part, permit, exc)
        self._pacer.observe(self._clock() - sent)
        return self._answered_with(job, part, permit, response)

    def _unrecorded(self, job: _Job, part: _Part, exc: UnavailableError) -> None:
        """The journal could not record ``part`` in flight: it is not sent, nor is anything
        more (a worker's batch taken over by another worker: only it is not sent)."""
        self.stop(exc)
        status = Status.UNKNOWN if part.unknown_sent else Status.SKIPPED
        self._settle(job, status, f"not sent: {exc}", None)

    async def _admit(self, job: _Job, part: _Part) -> Permit | None:
        """Wait for the probe, the circuit and the scheduler; None when the part was settled
        instead (the send stopped, or the provider deferred it)."""
        group = job.batch.group
        while True:
            if self._stop is not None:
                status = Status.UNKNOWN if part.unknown_sent else Status.SKIPPED
                self._settle(job, status, f"not sent: {self._stop}", None)
                return None
            if not self._opened and await self._first.waited():
                continue
            if await self._paced():  # (its turn came: look at the stop and the probe again)
                continue
            circuit = self._circuits.get(group)
            # a closed circuit (or none yet: it starts closed) lets the send go as it is
            if (circuit is None or circuit.state is not _CLOSED) and not await self._circuit_ready(
                group
            ):
                continue
            try:
                if part.attempts:
                    permit = await self._acquire_retry(group)
                else:
                    permit = await self.scheduler.acquire(group, retry=False)
            except Deferred as exc:
                self._first.done()
                self._settle(job, Status.SKIPPED, f"deferred: {exc}", None)
                return None
            if permit is not None and self._stop is not None:
                self.scheduler.cancel(permit)
            elif permit is not None:
                return permit

    async def _paced(self) -> bool:
        """Wait for this request's turn to leave (``Pacer``: requests leave one after another,
        not in bunches); True when it waited."""
        wait = self._pacer.delay(self._clock())
        if wait <= 0.0:
            return False
        await asyncio.sleep(wait)
        return True

    async def _acquire_retry(self, group: str) -> Permit | None:
        """A retry's permit, or None when the send stops while it waits (for the pacing or the
        retry budget): a parked batch then ends at once instead of after the wait."""
        acquiring = asyncio.ensure_future(self.scheduler.acquire(group, retry=True))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((acquiring, stopping), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if acquiring.done() and not acquiring.cancelled() and acquiring.exception() is None:
                self.scheduler.cancel(acquiring.result())
            raise
        finally:
            stopping.cancel()
            # still waiting: cancelled, the scheduler takes back a permit granted meanwhile
            acquiring.cancel()
        if acquiring.cancelled() or not acquiring.done():
            return None
        return acquiring.result()  # (raises Deferred as acquire does)

    def _no_response(self, job: _Job, part: _Part, permit: Permit, exc: NoResponse) -> float | None:
        group = job.batch.group
        self._first.done()
        self.scheduler.complete(permit, NO_ANSWER)
        self._last_failure[group] = exc.reason
        self._no_answer = exc
        self._circuit_result(group, failure=True)
        part.unknown_sent = part.unknown_sent or exc.sent
        if exc.sent and not part.doubt:
            run = f" in run {self.journal.run_id}" if self.journal is not None else ""
            part.doubt = f"resent after a request{run} got no answer ({exc})"
            job.doubt = job.doubt or part.doubt
        self._log.debug("batch_no_response", batch=job.batch.number, error=str(exc))
        opts = self.options
        action = decide(None, part.attempts, opts.max_attempts, unknown_sent=part.unknown_sent)
        return self._perform(job, part, action, str(exc), None, None)

    def _answered_with(self, job: _Job, part: _Part, permit: Permit, response: Any) -> float | None:
        """Take a response: feedback to the scheduler and the circuit, then the verdict."""
        if not self._opened:
            self._opened = True
            self._first.done()
        # the provider's verdict, knowing the request when it asks (``classify_sent``)
        sent = self._classify_sent
        verdict = self.provider.classify(response) if sent is None else sent(part.request, response)
        kind = verdict.verdict
        group = job.batch.group
        failure = kind is _RETRY
        circuit = self._circuits.get(group)
        if kind is not _UNEXPECTED:
            self._unexpected_streak = 0
            self._recognised = True
        if failure:
            self._last_failure[group] = f"answered {response.status}"
        if failure or circuit is None or circuit.state is not _CLOSED or not circuit.answered:
            self._circuit_result(group, failure=failure, answered=kind is not _UNEXPECTED)
        else:  # closed, and stays closed: count the success cheaply
            circuit.succeeded()
        if verdict.warning and verdict.warning not in self._warned:
            self._warn(verdict.warning)
        feedback = Feedback(_FEEDBACK_KINDS.get(kind, _OK), response.headers, response.status)
        self.scheduler.complete(permit, feedback)
        http = response.status
        if self._debug:
            self._log.debug(
                "batch_response",
                batch=job.batch.number,
                size=len(part.batch.recipients),
                status=http,
                verdict=kind.value,
                attempt=part.attempts,
            )
        if kind is not _DELIVERED:
            return self._decide(job, part, verdict, http)
        action = _ON_DELIVERED[part.unknown_sent]
        if action is not _DELIVER:
            return self._perform(job, part, action, verdict.message, http, verdict)
        batch = job.batch
        if part.batch is not batch or batch.resumed_split:  # a part of a split batch
            self._settle(job, _STATUS_DELIVERED, "", http)
            return None
        # the whole batch delivered (nearly every answer): recorded now, as _work would
        job.parts.pop()
        job.recorded = True
        self._record_one(
            batch, batch.recipients, _STATUS_DELIVERED, "", http, part.attempts, job.doubt
        )
        return None

    def _decide(self, job: _Job, part: _Part, verdict: Classification, http: int) -> float | None:
        """Act on an answer that is not a delivery, as ``decide`` says."""
        kind = verdict.verdict
        if kind is _UNEXPECTED:
            self._unexpected(part, verdict)
        elif kind is _THROTTLED:
            self.summary.throttled += 1
        opts = self.options
        action = decide(
            kind,
            part.attempts,
            opts.max_attempts,
            unknown_sent=part.unknown_sent,
            retry_after=verdict.retry_after,
            maybe_provider=verdict.maybe_provider,
            unexpected_streak=self._unexpected_streak,
            max_unexpected=opts.max_unexpected,
        )
        return self._perform(job, part, action, verdict.message, http, verdict)

    def _warn(self, warning: str) -> None:
        self._warned.add(warning)
        self.summary.warnings.append(warning)
        self._log.warning("provider_warning", warning=warning)

    def _perform(
        self,
        job: _Job,
        part: _Part,
        action: Action,
        message: str,
        http: int | None,
        verdict: Classification | None,
    ) -> float | None:
        """Do what ``decide`` said about ``part`` (``verdict``: the answer, None when there was
        none; ``message``: what it said). Returns the delay before the next attempt when the
        part is to be sent again, else None (it is settled, or split)."""
        match action.do:
            case Do.DELIVER:
                reason = ""
                if action.twice:
                    doubt = part.doubt or "resent after a request got no answer"
                    reason = f"{POSSIBLY_TWICE}: {doubt}"
                self._settle(job, _STATUS_DELIVERED, reason, http)
            case Do.RETRY:
                return 0.0  # the scheduler's pause, quota and retry budget pace it
            case Do.BACKOFF:
                delay = self.scheduler.backoff(job.batch.group, part.attempts)
                return delay if action.floor is None else max(delay, action.floor)
            case Do.ISOLATE:
                # only answers are invalid
                assert verdict is not None
                assert http is not None
                self._invalid(job, part, verdict, http)
            case Do.SETTLE | Do.STOP:
                assert action.status is not None
                if action.gave_up:
                    message = f"{message} (gave up after {part.attempts} attempts)"
                self._settle(job, action.status, message, http)
                if action.stop is not None:
                    # only answers stop
                    assert verdict is not None
                    assert http is not None
                    self.stop(self._stop_error(action.stop, part, verdict, http))
        return None

    def _stop_error(
        self, stop: Stop, part: _Part, verdict: Classification, http: int
    ) -> BulksendError:
        """The error a STOP action stops the send with."""
        if stop is Stop.AUTH:
            message = f"provider rejected the credentials ({http}): {verdict.message}"
            return AuthError(message, status=http)
        if stop is Stop.FATAL:
            return ProviderError(self._fatal_stop(part, verdict, http), status=http)
        return self._unexpected_stop()

    def _unexpected(self, part: _Part, verdict: Classification) -> None:
        """A 2xx that is not the provider's answer: never delivered, and not retried here (a
        resume or ``bulksend retry`` sends it again). A page or other non-JSON answer is not
        the provider's API: the part ``failed``. JSON of another shape may be the provider's
        answer in a changed form: whether it acted cannot be told, so the part is ``unknown``
        (and a resend of it a possible duplicate). ``max_unexpected`` in a row stop the send.
        Here: count it in the streak and keep it for the stop line (``decide`` does the rest)."""
        self._unexpected_streak += 1
        url = public_url(self._base + part.request.path)
        self._last_unexpected = f"{url} answered {verdict.unexpected or verdict.message}"

    def _fatal_stop(self, part: _Part, verdict: Classification, http: int) -> str:
        """``URL answered 404 no content type, empty body: is --base-url right? the send
        stopped``: the URL, the answer (``answers.fatal``'s message) and the likely fix."""
        url = self._base + part.request.path
        fix = verdict.hint or likely_fix(http)
        hint = self._resume_hint(to_another_url="--base-url" in fix)
        return f"{stop_line(url, verdict.message, fix)} the send stopped{hint}"

    def _unexpected_stop(self) -> UnavailableError:
        """``URL answered 200 text/html, not MaxTraffic's JSON answer, 5 times in a row: ...``"""
        n = self._unexpected_streak
        times = "once" if n == 1 else f"{n} times in a row"
        return UnavailableError(
            f"{self._last_unexpected}, {times}: is --base-url right? the send stopped"
            + self._resume_hint()
        )

    def _resume_hint(self, *, to_another_url: bool = True) -> str:
        """How to send again what was not delivered (with a journal); when the base URL is
        the likely cause, to the right one (a base URL given to ``bulksend retry`` wins over
        the one the journal recorded)."""
        if self.journal is None:
            return ""
        if self.journal.path is None:  # (a journal in Redis: the same send resumes it)
            at = " at the right URL (--base-url URL)" if to_another_url else ""
            return f"; resume it{at} by running the same send again ({self.journal.where})"
        journal = shlex.quote(str(self.journal.path))
        if not to_another_url:
            return f"; resume it with: bulksend retry {journal}"
        return f"; resume it at the right URL with: bulksend retry {journal} --base-url URL"

    def _never_answered(self) -> None:
        """At the end of a run in which nothing but unexpected answers (or no answer at all)
        came back: stop with what was seen, as a stop in the middle of the send would."""
        if self._stop is not None:
            return
        if self._unexpected_streak and not self._recognised:
            self.stop(self._unexpected_stop())
        elif self._no_answer is not None and not self._opened:
            base = public_url(self._base)
            self.stop(
                UnavailableError(
                    f"{base} never answered ({self._no_answer.reason}): is --base-url right? "
                    "nothing was delivered" + self._resume_hint()
                )
            )

    def _invalid(self, job: _Job, part: _Part, verdict: Classification, http: int) -> None:
        """A 422 (or the like): report the recipients the provider named and send the rest
        again, or split the part in halves (bisection) while the job's split budget allows
        extra requests; else the whole part is invalid (``bulksend.dispatch.isolate`` decides)."""
        batch, recipients, attempts = job.batch, part.batch.recipients, part.attempts
        isolation = isolate(len(recipients), verdict.rejected, job.split_budget)
        if isolation.how is How.ALL:
            self._settle(job, Status.INVALID, verdict.message, http)
            return
        job.split_budget -= isolation.cost
        if isolation.how is How.BISECT:
            self._log.info(
                "batch_split", batch=batch.number, size=len(recipients), reason=verdict.message
            )
        job.parts.pop()
        job.results.extend(
            Result([recipients[i]], Status.INVALID, reason, http, attempts)
            for i, reason in isolation.invalid
        )
        # the parts are a stack (the next one last): push the first to send last
        for positions in reversed(isolation.resend):
            job.parts.append(self._part(batch, [recipients[i] for i in positions]))

    @staticmethod
    def _part(batch: Batch, recipients: Sequence[Recipient]) -> _Part:
        part = Batch(batch.number, batch.group, list(recipients))
        return _Part(part, batch.possibly_sent, batch.doubt)

    # -- circuit breaker --------------------------------------------------------------------
    def _circuit(self, group: str) -> Circuit:
        circuit = self._circuits.get(group)
        if circuit is None:
            opts = self.options
            circuit = self._circuits[group] = Circuit(
                threshold=opts.circuit_threshold,
                cooldown=opts.circuit_cooldown,
                window=opts.circuit_window,
                failure_rate=opts.circuit_failure_rate,
            )
        return circuit

    async def _circuit_ready(self, group: str) -> bool:
        """Wait while the group's circuit is open; False when the caller should look again."""
        circuit = self._circuit(group)
        loop = asyncio.get_running_loop()
        wait = circuit.wait_time(loop.time())
        if wait == 0.0:
            if circuit.on_send():
                self._log.info("circuit_half_open", group=group, probe=True)
            return True
        if self._stop is not None:
            return True  # the caller sees the stop
        changed = self._circuit_changed.setdefault(group, asyncio.Event())
        if wait is None:
            await changed.wait()  # the probe in flight decides
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)
        return False

    def _circuit_result(self, group: str, *, failure: bool, answered: bool = True) -> None:
        """Record an outcome; ``answered`` False: a success that is not the provider's answer
        (an unexpected 2xx) does not count as the group having answered well."""
        circuit = self._circuit(group)
        now = asyncio.get_running_loop().time()
        state = circuit.on_result(now, failure=failure, answered=answered)
        if state is None:
            return
        answered = circuit.answered
        if circuit.exhausted(self.options.max_attempts):
            hint = (
                ""
                if answered
                else f" (it never answered: check the base URL {public_url(self._base)})"
            )
            cause = self._last_failure.get(group, "")
            self.stop(
                UnavailableError(
                    f"endpoint group {group!r} kept failing"
                    + (f" ({cause})" if cause else "")
                    + f": {circuit.failures} failures in a row, {circuit.failed_probes} probes "
                    f"after pauses{hint}; the send stopped (what was not sent is skipped and "
                    "resumable)" + ("" if answered else self._resume_hint())
                )
            )
        if state is CircuitState.OPEN:
            self._log.warning(
                "circuit_open",
                group=group,
                pause=round(circuit.current_cooldown, 3),
                failures=circuit.failures,
            )
            note = f"endpoint group {group!r} failed repeatedly: paused and probed"
            if note not in self.summary.warnings:
                self.summary.warnings.append(note)
        else:
            self._log.info("circuit_" + state.value, group=group)
        event = self._circuit_changed.pop(group, None)
        if event is not None:
            event.set()

    async def _progress(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            await asyncio.sleep(self.options.progress_every)
            s = self.summary
            elapsed = loop.time() - start
            limits = {
                name: f"{g.limit}/{g.window:g}s" for name, g in self.scheduler.snapshot().items()
            }
            self._log.info(
                "progress",
                read=s.read,
                delivered=s.delivered,
                failed=s.failed,
                duplicates=s.duplicates,
                invalid=s.invalid,
                requests=s.requests,
                throttled=s.throttled,
                retries=s.retries,
                rate=round(s.delivered / elapsed, 1) if elapsed else 0.0,
                limits=limits,
                **({"paused": self.pause.status()} if self.pause and self.pause.paused else {}),
            )

    async def run(
        self, items: Iterable[Recipient | Rejected] | Iterable[Chunk] | AsyncIterable[Chunk]
    ) -> Summary:
        """Send everything ``items`` holds: rows, or chunks of rows (``Rows.chunks()``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        opts = self.options
        provider = self.provider
        if isinstance(provider, ClassifiesSent):  # looked up once, not once an answer
            self._classify_sent = provider.classify_sent
        self._parking = asyncio.Semaphore(max(1, opts.workers * opts.parked_per_worker))
        if self.pause is not None:
            await self.pause.poll()  # closed send windows hold even the first batch
        workers = [asyncio.create_task(self._worker()) for _ in range(opts.workers)]
        watchers = [asyncio.create_task(self._progress())]
        if self.pause is not None:
            watchers.append(asyncio.create_task(self.pause.watch()))
        try:
            chunks = items if isinstance(items, AsyncIterable) else as_chunks(items)
            await self._read_while_sending(chunks, workers)
            for _ in workers:
                await self._queue.put(None)
            if self._interrupted:
                await self._drain(workers, loop.time() + opts.drain_timeout)
            else:
                await asyncio.gather(*workers)
                while self._parked:  # no batch parks once the workers are done
                    await asyncio.gather(*self._parked)
                self._never_answered()
        except BaseException:
            tasks = [*workers, *self._parked]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._drain_queue()
            raise
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            self.summary.elapsed = loop.time() - started
            if self.journal is not None:
                self.journal.flush()
        self._drain_queue()
        self.summary.limits = self.scheduler.beliefs()
        self.log_finished()
        return self.summary

    def log_finished(self) -> None:
        """The ``send_finished`` log line, with the summary's counts."""
        self._log.info("send_finished", **self.summary.as_dict())

    async def _read_while_sending(
        self, chunks: Iterable[Chunk] | AsyncIterable[Chunk], workers: list[asyncio.Task[None]]
    ) -> None:
        """Read while the workers send. A worker ends only at the end of the input, so one
        that ends before is a bug or a failure nobody caught: its error ends the send at once,
        instead of leaving the reader blocked for good on a full queue."""
        reader = asyncio.create_task(self._read(chunks))
        try:
            done, _ = await asyncio.wait({reader, *workers}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            raise
        if reader in done:
            reader.result()  # the reader's own error, if it had one
            return
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for worker in done:
            worker.result()  # raises what killed it
        raise RuntimeError("a send worker stopped before the end of the input")

    async def _drain(self, workers: list[asyncio.Task[None]], deadline: float) -> None:
        """After an interrupt: let the workers, then the parked batches, finish until
        ``deadline``; cancel what is still running then (it is reported unknown)."""
        await self._finish_by(workers, deadline)
        await self._finish_by(list(self._parked), deadline)  # none parks after the workers end

    @staticmethod
    async def _finish_by(tasks: list[asyncio.Task[None]], deadline: float) -> None:
        if not tasks:
            return
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drain_queue(self) -> None:
        """Batches still queued (after a stop or a cancel) are reported skipped."""
        while not self._queue.empty():
            batch = self._queue.get_nowait()
            if batch is not None:
                if self._stop is None:
                    self._stop = BulksendError("send cancelled")
                self._skip(batch)

    @property
    def stopped_by(self) -> BaseException | None:
        return self._stop

    @property
    def backlog(self) -> tuple[int, int]:
        """Batches read and waiting for a worker, and batches waiting to retry (parked)."""
        return self._queue.qsize(), len(self._parked)
