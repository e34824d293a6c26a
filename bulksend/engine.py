"""Wires the stages: source -> dedup -> batcher -> scheduler -> transport -> classify -> report.

The reader runs in the event loop and feeds a bounded queue, so it never races ahead of the
quota; ``workers`` tasks take batches from it. Every row read ends in exactly one ``Status`` in
the report and the summary (``Summary.accounted == Summary.read``).

With a ``Journal`` each batch is recorded ``in_flight`` (durably) before it is sent and with its
final state after; on a resumed run the batches the journal shows delivered (or invalid) are
reported from the journal and not sent again, and batches left ``in_flight`` by a dead run are
resent and counted as possible duplicates (``unknown_policy="resend"``) or reported ``unknown``
for review (``"skip"``).

``interrupt()`` stops taking new batches and lets the ones in flight finish (bounded by
``drain_timeout``); queued batches are reported ``skipped`` and stay resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from bulksend.ahead import Dedup, DedupAhead, Kept
from bulksend.core.circuit import Circuit
from bulksend.core.circuit import State as CircuitState
from bulksend.errors import AuthError, BulksendError, ProviderError, UnavailableError
from bulksend.journal import Journal, batch_digest
from bulksend.logs import get_logger
from bulksend.models import Batch, Outcome, Recipient, Rejected, Status
from bulksend.providers.base import Batcher, Provider, Verdict, add_all
from bulksend.report import ReportWriter, Summary
from bulksend.scheduler import Deferred, Feedback, FeedbackKind, Scheduler
from bulksend.sources.spec import Chunk
from bulksend.transport import NoResponse

_CHUNK = 4096  # rows deduplicated together (the deduper works a chunk at a time)

#: what one send attempt (or a bisected part of a batch) ended in
Result = tuple[Sequence[Recipient], Status, str, int | None, int]


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


class Interrupted(BulksendError):
    """The send was interrupted by a signal; what was queued is skipped and resumable."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


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
    #: consecutive 5xx/timeouts that pause a group, and the first pause (doubling to 60 s)
    circuit_threshold: int = 5
    circuit_cooldown: float = 2.0


#: what each verdict tells the scheduler about the quota
_FEEDBACK_KINDS: dict[Verdict, FeedbackKind] = {
    **{v: FeedbackKind.OK for v in Verdict},
    Verdict.THROTTLED: FeedbackKind.THROTTLED,
    Verdict.RETRY: FeedbackKind.ERROR,
}
# members looked up once (an enum attribute costs a dictionary walk each time)
_DELIVERED, _RETRY, _OK = Verdict.DELIVERED, Verdict.RETRY, FeedbackKind.OK
_STATUS_DELIVERED = Status.DELIVERED
_CLOSED = CircuitState.CLOSED


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
        journal: Journal | None = None,
        on_outcomes: Callable[[Sequence[Outcome]], None] | None = None,
        hook_statuses: frozenset[Status] = frozenset(Status),
        source_name: str = "",
    ) -> None:
        self.provider = provider
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
        self._stop: BaseException | None = None
        self._interrupted = False
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=options.workers * 2)
        # The first request goes out alone: a 401 then stops the send after one request, and
        # the rate-limit headers are known before the workers open up.
        self._probed = asyncio.Event()
        self._probing = False
        self._warned: set[str] = set()
        self._circuits: dict[str, Circuit] = {}
        self._answered: set[str] = set()  # groups that gave at least one good answer
        self._base = getattr(transport, "base_url", "")
        self._circuit_changed: dict[str, asyncio.Event] = {}

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
        to_report = self.report.active
        to_hook = self._on_outcomes is not None and status in self._hook_statuses
        if not (to_report or to_hook) or not rows:
            return  # nobody reads per-recipient outcomes: don't build them
        if attempts is None:
            attempts = batch.attempts if batch else 0
        number = batch.number if batch else None
        outcomes = [Outcome(r, status, reason, http_status, attempts, number) for r in rows]
        if to_report:
            self.report.write(outcomes)
        if to_hook and self._on_outcomes is not None:
            self._on_outcomes(outcomes)

    def _record(self, batch: Batch, results: list[Result]) -> None:
        """Report a batch's results and journal its final state."""
        for recipients, status, reason, http_status, attempts in results:
            self._finish(batch, recipients, status, reason, http_status, attempts)
        if self.journal is None:
            return
        if len(results) == 1 and not batch.resumed_split:
            _, status, reason, http_status, _ = results[0]
            self.journal.finished(batch, status.value, reason, http_status)
        else:
            parts = [
                (r.line, status.value, reason, http_status)
                for recipients, status, reason, http_status, _ in results
                for r in recipients
            ]
            self.journal.finished(batch, "split", "", None, parts)

    def stop(self, error: BaseException) -> None:
        """Stop taking batches: nothing more is sent once this is called."""
        if self._stop is None:
            self._stop = error
            self.summary.stopped = str(error)
            self._probed.set()
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
        pending: Future[Kept] | None = None
        with DedupAhead(self.dedup) as ahead:
            try:
                if isinstance(chunks, AsyncIterable):  # e.g. behind an audience check
                    async for chunk in chunks:
                        pending = await self._chunk(chunk, ahead, pending, batcher)
                else:
                    for chunk in chunks:
                        pending = await self._chunk(chunk, ahead, pending, batcher)
            except ProviderError as exc:  # a source that talks to the provider (audience)
                self.stop(exc)
            if pending is not None:
                await self._take(pending, batcher)
        for batch in batcher.flush():
            await self._plan(batch)

    async def _chunk(
        self,
        chunk: Chunk,
        ahead: DedupAhead,
        pending: Future[Kept] | None,
        batcher: Batcher,
    ) -> Future[Kept] | None:
        """Count and report the chunk's rejected rows, start its deduplication, and settle
        the chunk before it; returns this chunk's deduplication, still running."""
        recipients, rejected = chunk
        self.summary.read += len(recipients) + len(rejected)
        for item in rejected:
            rec = Recipient(item.line, item.id, item.uid)
            self._finish(None, [rec], Status.INVALID, self._where(item))
        future = ahead.submit(recipients) if len(recipients) else None
        if pending is not None:
            await self._take(pending, batcher)
        return future

    def _where(self, item: Rejected) -> str:
        """``file:line: reason`` for a row the source rejected."""
        if self.source_name and not item.reason.startswith("audience check:"):
            return f"{self.source_name}:{item.line}: {item.reason}"
        return item.reason

    async def _take(self, deduplicated: Future[Kept], batcher: Batcher) -> None:
        """Batch what a chunk's deduplication kept (after a stop: account for it, unsent)."""
        kept, duplicates = await asyncio.wrap_future(deduplicated)
        self._finish(None, duplicates, Status.DUPLICATE, "already in this campaign")
        if self._stop is not None:  # after a stop the rest of the file is accounted for
            self._finish(None, kept, Status.SKIPPED, f"not sent: {self._stop}")
            return
        for batch in add_all(batcher, kept):
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
            if previous.digest != batch_digest(batch.recipients):
                raise ProviderError(
                    f"journal {journal.path}: batch {batch.number} differs from the earlier "
                    "run's; the recipients or settings changed — start over with --fresh"
                )
            batch.attempts = previous.attempts
            if previous.state in ("delivered", "invalid"):
                status = Status(previous.state)
                reason = previous.reason or f"{previous.state} in an earlier run"
                self._finish(batch, batch.recipients, status, reason, previous.http_status)
                if status is _STATUS_DELIVERED:
                    self.summary.delivered_earlier += len(batch.recipients)
                return
            if previous.state == "split":
                remaining = self._replay_parts(batch, journal)
                if not remaining:
                    return
                batch.recipients, batch.resumed_split = remaining, True
            if previous.state == "in_flight":
                if self.options.unknown_policy == "skip":
                    reason = "in flight when an earlier run stopped; outcome unknown (review)"
                    self._finish(batch, batch.recipients, Status.UNKNOWN, reason)
                    journal.finished(batch, "unknown", reason)
                    return
                batch.possibly_sent = True
        await self._queue.put(batch)

    def _replay_parts(self, batch: Batch, journal: Journal) -> list[Recipient]:
        """Report a split batch's settled parts from the journal; return the rows still to send.

        (A run that died in the middle of isolating a 422 leaves some parts unsettled.)
        """
        parts = {p.line: p for p in journal.parts(batch.number)}
        settled = {"delivered", "invalid"}
        remaining = []
        for r in batch.recipients:
            p = parts.get(r.line)
            if p is not None and p.state in settled:
                self._finish(batch, [r], Status(p.state), p.reason, p.http_status)
                if p.state == "delivered":
                    self.summary.delivered_earlier += 1
            else:
                remaining.append(r)
        return remaining

    # -- sending ----------------------------------------------------------------------------
    async def _worker(self) -> None:
        queue = self._queue
        self._debug = _debug_enabled(self._log)
        while True:
            try:
                batch = queue.get_nowait()  # what queue.get() does when a batch is waiting
            except asyncio.QueueEmpty:
                batch = await queue.get()
            if batch is None:
                return
            if self._stop is not None:
                self._skip(batch)
                continue
            try:
                results = await self._send(batch, batch.recipients, [self.options.split_budget])
            except asyncio.CancelledError:
                self._record(
                    batch,
                    [(batch.recipients, Status.UNKNOWN, "interrupted while in flight", None, 0)],
                )
                raise
            self._record(batch, results)

    def _skip(self, batch: Batch) -> None:
        status = Status.UNKNOWN if batch.possibly_sent else Status.SKIPPED
        self._record(batch, [(batch.recipients, status, f"not sent: {self._stop}", None, 0)])

    async def _send(
        self, batch: Batch, recipients: Sequence[Recipient], budget: list[int]
    ) -> list[Result]:
        """Send ``recipients`` (all or part of ``batch``) until a final result.

        On 422 with more than one recipient, split in halves and send each (bisection), while
        ``budget`` (shared by the whole batch) allows extra requests.
        """
        sched, provider, opts, summary = self.scheduler, self.provider, self.options, self.summary
        part = (
            batch
            if recipients is batch.recipients
            else Batch(batch.number, batch.group, list(recipients))
        )
        request = provider.encode(part)
        unknown_sent = batch.possibly_sent
        group = batch.group
        circuits = self._circuits
        attempts = 0
        while True:
            if self._stop is not None:
                status = Status.UNKNOWN if unknown_sent else Status.SKIPPED
                return [(recipients, status, f"not sent: {self._stop}", None, attempts)]
            if not self._opened and not self._probed.is_set():
                if self._probing:
                    await self._probed.wait()
                    continue
                self._probing = True
            circuit = circuits.get(group)
            # a closed circuit (or none yet: it starts closed) lets the send go as it is
            if (circuit is None or circuit.state is not _CLOSED) and not await self._circuit_ready(
                group
            ):
                continue
            try:
                permit = await sched.acquire(group, retry=attempts > 0)
            except Deferred as exc:
                self._probed.set()
                return [(recipients, Status.SKIPPED, f"deferred: {exc}", None, attempts)]
            if self._stop is not None:
                sched.cancel(permit)
                continue
            if self.journal is not None and attempts == 0 and part is batch:
                await self.journal.in_flight(batch)
            attempts += 1
            batch.attempts += 1
            summary.requests += 1
            if attempts > 1:
                summary.retries += 1
            try:
                response = await self.transport.send(request)
            except asyncio.CancelledError:
                sched.complete(permit, Feedback(FeedbackKind.NO_RESPONSE))
                raise
            except NoResponse as exc:
                self._probed.set()
                sched.complete(permit, Feedback(FeedbackKind.NO_RESPONSE))
                self._circuit_result(batch.group, failure=True)
                unknown_sent = unknown_sent or exc.sent
                self._log.debug("batch_no_response", batch=batch.number, error=str(exc))
                if attempts >= opts.max_attempts:
                    status = Status.UNKNOWN if unknown_sent else Status.FAILED
                    return [(recipients, status, str(exc), None, attempts)]
                await asyncio.sleep(sched.backoff(batch.group, attempts))
                continue
            if not self._opened:
                self._opened = True
                self._probed.set()
            verdict = provider.classify(response)
            kind = verdict.verdict
            failure = kind is _RETRY
            circuit = circuits.get(group)
            if (
                failure
                or circuit is None
                or circuit.state is not _CLOSED
                or circuit.failures
                or group not in self._answered
            ):  # else the circuit stays closed and clean: nothing to record
                self._circuit_result(group, failure=failure)
            if verdict.warning and verdict.warning not in self._warned:
                self._warned.add(verdict.warning)
                summary.warnings.append(verdict.warning)
                self._log.warning("provider_warning", warning=verdict.warning)
            sched.complete(permit, Feedback(_FEEDBACK_KINDS.get(kind, _OK), response.headers))
            http = response.status
            if self._debug:
                self._log.debug(
                    "batch_response",
                    batch=batch.number,
                    size=len(recipients),
                    status=http,
                    verdict=kind.value,
                    attempt=attempts,
                )
            if kind is _DELIVERED:
                if unknown_sent:
                    summary.possible_duplicates += len(recipients)
                return [(recipients, _STATUS_DELIVERED, "", http, attempts)]
            match kind:
                case Verdict.INVALID:
                    named = verdict.rejected or {}
                    bad = [r for i, r in enumerate(recipients) if i in named]
                    if bad and len(bad) < len(recipients) and budget[0] >= 1:
                        budget[0] -= 1
                        invalid = [
                            ([r], Status.INVALID, named[i], http, attempts)
                            for i, r in enumerate(recipients)
                            if i in named
                        ]
                        rest = [r for i, r in enumerate(recipients) if i not in named]
                        return invalid + await self._send(batch, rest, budget)
                    if bad and len(bad) == len(recipients):
                        return [
                            ([r], Status.INVALID, named[i], http, attempts)
                            for i, r in enumerate(recipients)
                        ]
                    if len(recipients) > 1 and budget[0] >= 2:
                        budget[0] -= 2
                        mid = len(recipients) // 2
                        self._log.info(
                            "batch_split",
                            batch=batch.number,
                            size=len(recipients),
                            reason=verdict.message,
                        )
                        left = await self._send(batch, recipients[:mid], budget)
                        return left + await self._send(batch, recipients[mid:], budget)
                    return [(recipients, Status.INVALID, verdict.message, http, attempts)]
                case Verdict.AUTH:
                    message = f"provider rejected the credentials ({http}): {verdict.message}"
                    self.stop(AuthError(message, status=http))
                    return [(recipients, Status.FAILED, verdict.message, http, attempts)]
                case Verdict.FATAL:
                    self.stop(ProviderError(verdict.message, status=http))
                    return [(recipients, Status.FAILED, verdict.message, http, attempts)]
                case Verdict.THROTTLED | Verdict.RETRY:
                    if verdict.verdict is Verdict.THROTTLED:
                        summary.throttled += 1
                    if attempts >= opts.max_attempts:
                        reason = f"{verdict.message} (gave up after {attempts} attempts)"
                        return [(recipients, Status.FAILED, reason, http, attempts)]
                    if verdict.verdict is Verdict.RETRY:
                        delay = sched.backoff(batch.group, attempts)
                        await asyncio.sleep(max(delay, verdict.retry_after or 0.0))

    # -- circuit breaker --------------------------------------------------------------------
    def _circuit(self, group: str) -> Circuit:
        circuit = self._circuits.get(group)
        if circuit is None:
            opts = self.options
            circuit = self._circuits[group] = Circuit(
                threshold=opts.circuit_threshold, cooldown=opts.circuit_cooldown
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

    def _circuit_result(self, group: str, *, failure: bool) -> None:
        circuit = self._circuit(group)
        if not failure:
            self._answered.add(group)
        state = circuit.on_result(asyncio.get_running_loop().time(), failure=failure)
        if state is None:
            return
        # an endpoint that never answered well (a wrong base URL, a provider down from the
        # start) is given up sooner than one that worked and then went away
        answered = group in self._answered
        give_up = self.options.max_attempts if answered else min(3, self.options.max_attempts)
        if state is CircuitState.OPEN and circuit.failed_probes >= give_up:
            hint = "" if answered else f" (it never answered: check the base URL {self._base})"
            self.stop(
                UnavailableError(
                    f"endpoint group {group!r} kept failing: {circuit.failures} failures in a "
                    f"row, {circuit.failed_probes} probes after pauses{hint}; the send stopped "
                    "(what was not sent is skipped and resumable)"
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
            )

    async def run(
        self, items: Iterable[Recipient | Rejected] | Iterable[Chunk] | AsyncIterable[Chunk]
    ) -> Summary:
        """Send everything ``items`` holds: rows, or chunks of rows (``Rows.chunks()``)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        workers = [asyncio.create_task(self._worker()) for _ in range(self.options.workers)]
        progress = asyncio.create_task(self._progress())
        try:
            await self._read(items if isinstance(items, AsyncIterable) else as_chunks(items))
            for _ in workers:
                await self._queue.put(None)
            if self._interrupted:
                _, pending = await asyncio.wait(workers, timeout=self.options.drain_timeout)
                for w in pending:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            else:
                await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._drain_queue()
            raise
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            self.summary.elapsed = loop.time() - started
            if self.journal is not None:
                self.journal.flush()
        self._drain_queue()
        self._log.info("send_finished", **self.summary.as_dict())
        return self.summary

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
