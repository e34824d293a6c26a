"""Wires the stages: source -> dedup -> batcher -> scheduler -> transport -> classify -> report.

The reader runs in the event loop and feeds a bounded queue, so it never races ahead of the
quota; ``in_flight`` workers take batches from it. Every recipient read ends in exactly one
``Status`` in the report and the summary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bulksend.errors import AuthError, ProviderError
from bulksend.logs import get_logger
from bulksend.models import Batch, Outcome, Recipient, Rejected, Status
from bulksend.providers.base import Classification, Provider, Verdict
from bulksend.report import ReportWriter, Summary
from bulksend.scheduler import Deferred, Feedback, FeedbackKind, Scheduler
from bulksend.transport import NoResponse, Transport

_YIELD_EVERY = 256


class Dedup(Protocol):
    def filter(self, recipient: Recipient) -> Recipient | None: ...


class Sender(Protocol):
    async def send(self, request: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class EngineOptions:
    batch_size: int
    workers: int = 16
    max_attempts: int = 6
    progress_every: float = 5.0


def _feedback_kind(c: Classification) -> FeedbackKind:
    if c.verdict is Verdict.THROTTLED:
        return FeedbackKind.THROTTLED
    if c.verdict is Verdict.RETRY:
        return FeedbackKind.ERROR
    return FeedbackKind.OK


class Engine:
    """One send. ``run`` consumes the source and returns the filled-in ``Summary``."""

    def __init__(
        self,
        provider: Provider,
        transport: Transport | Sender,
        scheduler: Scheduler,
        dedup: Dedup,
        options: EngineOptions,
        *,
        report: ReportWriter | None = None,
        summary: Summary | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.provider = provider
        self.transport = transport
        self.scheduler = scheduler
        self.dedup = dedup
        self.options = options
        self.report = report or ReportWriter(None)
        self.summary = summary or Summary(provider=provider.name)
        self._clock = clock
        self._log = get_logger(provider=provider.name)
        self._stop: BaseException | None = None
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=options.workers * 2)
        # The first request goes out alone: a 401 then stops the send after one request, and
        # the rate-limit headers are known before the workers open up.
        self._probed = asyncio.Event()
        self._probing = False

    # -- outcomes ---------------------------------------------------------------------------
    def _finish(
        self,
        batch: Batch | None,
        recipients: Iterable[Recipient],
        status: Status,
        reason: str = "",
        http_status: int | None = None,
    ) -> None:
        attempts = batch.attempts if batch else 0
        number = batch.number if batch else None
        outcomes = [Outcome(r, status, reason, http_status, attempts, number) for r in recipients]
        self.summary.count(status, len(outcomes))
        self.report.write(outcomes)

    def stop(self, error: BaseException) -> None:
        """Stop taking batches: nothing more is sent once this is called."""
        if self._stop is None:
            self._stop = error
            self.summary.stopped = str(error)
            self._log.error("send_stopped", reason=str(error))

    # -- reading ----------------------------------------------------------------------------
    async def _read(self, items: Iterable[Recipient | Rejected]) -> None:
        batcher = self.provider.batcher(self.options.batch_size)
        summary, dedup, queue = self.summary, self.dedup, self._queue
        n = 0
        for item in items:
            if self._stop is not None:
                break
            summary.read += 1
            if isinstance(item, Rejected):
                rec = Recipient(item.line, item.id, item.uid)
                self._finish(None, [rec], Status.INVALID, item.reason)
                continue
            kept = dedup.filter(item)
            if kept is None:
                self._finish(None, [item], Status.DUPLICATE, "already in this campaign")
                continue
            batch = batcher.add(kept)
            if batch is not None:
                summary.batches += 1
                await queue.put(batch)
            n += 1
            if n % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        for batch in batcher.flush():
            if self._stop is None:
                summary.batches += 1
                await queue.put(batch)
            else:  # rows read but never batched still get a final state
                self._finish(None, batch.recipients, Status.SKIPPED, f"not sent: {self._stop}")

    # -- sending ----------------------------------------------------------------------------
    async def _worker(self) -> None:
        queue = self._queue
        while True:
            batch = await queue.get()
            if batch is None:
                return
            if self._stop is not None:
                self._finish(batch, batch.recipients, Status.SKIPPED, f"not sent: {self._stop}")
                continue
            try:
                await self._deliver(batch)
            except asyncio.CancelledError:
                self._finish(batch, batch.recipients, Status.UNKNOWN, "interrupted while in flight")
                raise

    async def _deliver(self, batch: Batch) -> None:
        sched, provider, opts, summary = self.scheduler, self.provider, self.options, self.summary
        request = provider.encode(batch)
        unknown_sent = False
        last_error = ""
        last_status: int | None = None
        while True:
            if self._stop is not None:
                status = Status.UNKNOWN if unknown_sent else Status.SKIPPED
                self._finish(batch, batch.recipients, status, f"not sent: {self._stop}")
                return
            if not self._probed.is_set():
                if self._probing:
                    await self._probed.wait()
                    continue
                self._probing = True
            try:
                permit = await sched.acquire(batch.group, retry=batch.attempts > 0)
            except Deferred as exc:
                self._probed.set()
                self._finish(batch, batch.recipients, Status.SKIPPED, f"deferred: {exc}")
                return
            if self._stop is not None:
                sched.complete(permit, Feedback(FeedbackKind.OK))
                continue
            batch.attempts += 1
            summary.requests += 1
            if batch.attempts > 1:
                summary.retries += 1
            try:
                response = await self.transport.send(request)
            except NoResponse as exc:
                self._probed.set()
                sched.complete(permit, Feedback(FeedbackKind.NO_RESPONSE))
                unknown_sent = unknown_sent or exc.sent
                last_error, last_status = str(exc), None
                self._log.debug("batch_no_response", batch=batch.number, error=last_error)
                if batch.attempts >= opts.max_attempts:
                    status = Status.UNKNOWN if unknown_sent else Status.FAILED
                    self._finish(batch, batch.recipients, status, last_error)
                    return
                await asyncio.sleep(sched.backoff(batch.group, batch.attempts))
                continue
            self._probed.set()
            verdict = provider.classify(response)
            sched.complete(permit, Feedback(_feedback_kind(verdict), response.headers))
            last_error, last_status = verdict.message, response.status
            self._log.debug(
                "batch_response",
                batch=batch.number,
                size=len(batch),
                status=response.status,
                verdict=verdict.verdict.value,
                attempt=batch.attempts,
            )
            match verdict.verdict:
                case Verdict.DELIVERED:
                    if unknown_sent:
                        summary.possible_duplicates += len(batch)
                    self._finish(batch, batch.recipients, Status.DELIVERED, "", response.status)
                    return
                case Verdict.INVALID:
                    self._finish(
                        batch, batch.recipients, Status.INVALID, verdict.message, response.status
                    )
                    return
                case Verdict.AUTH:
                    self.stop(
                        AuthError(
                            f"provider rejected the credentials ({response.status}): "
                            f"{verdict.message}",
                            status=response.status,
                        )
                    )
                    self._finish(
                        batch, batch.recipients, Status.FAILED, verdict.message, response.status
                    )
                    return
                case Verdict.FATAL:
                    self.stop(ProviderError(verdict.message, status=response.status))
                    self._finish(
                        batch, batch.recipients, Status.FAILED, verdict.message, response.status
                    )
                    return
                case Verdict.THROTTLED | Verdict.RETRY:
                    if verdict.verdict is Verdict.THROTTLED:
                        summary.throttled += 1
                    if batch.attempts >= opts.max_attempts:
                        reason = f"{last_error} (gave up after {batch.attempts} attempts)"
                        self._finish(batch, batch.recipients, Status.FAILED, reason, last_status)
                        return
                    if verdict.verdict is Verdict.RETRY:
                        delay = sched.backoff(batch.group, batch.attempts)
                        await asyncio.sleep(max(delay, verdict.retry_after or 0.0))

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

    async def run(self, items: Iterable[Recipient | Rejected]) -> Summary:
        loop = asyncio.get_running_loop()
        started = loop.time()
        workers = [asyncio.create_task(self._worker()) for _ in range(self.options.workers)]
        progress = asyncio.create_task(self._progress())
        try:
            await self._read(items)
            for _ in workers:
                await self._queue.put(None)
            await asyncio.gather(*workers)
        except BaseException:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            self.summary.elapsed = loop.time() - started
        self._log.info("send_finished", **self.summary.as_dict())
        return self.summary

    @property
    def stopped_by(self) -> BaseException | None:
        return self._stop
