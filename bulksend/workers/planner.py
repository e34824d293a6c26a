"""The planner: ``bulksend send CAMPAIGN --workers redis://...``.

It is the single-process send's ``Engine`` with the sending replaced: it reads, validates and
deduplicates the whole file once (so no uid goes to two workers), reports invalid and
duplicate rows, and where a send would send a batch it adds the batch to the campaign's bounded
stream (``WorkQueue.add``: it waits while the stream is full) and waits for a worker to settle
it; then it reports the batch from the worker's record. So the summary, the report, the dead
letters and the exit status are those of a single-process send.

A planner that dies and is run again re-plans from the file (the batches come out the same,
numbered the same) and does what ``logic.planned`` says with each: a batch whose record says it
is queued or in flight is only waited for (it is in the stream, or a worker holds it); a settled
one is reported as a resumed send reports it (delivered earlier), and one that failed or was
skipped is queued again, as a resume sends it again.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from bulksend.dispatch.engine import Engine, Result
from bulksend.errors import Interrupted, UnavailableError
from bulksend.models import Batch, Status
from bulksend.state.journal import BatchJournal, BatchRecord
from bulksend.workers.logic import Plan, planned, settled_results
from bulksend.workers.queue import WorkQueue, stop_error

#: batches a planner waits for at once (in the stream, or held by workers)
WAITING = 1024


class Planner(Engine):
    """An ``Engine`` whose workers queue batches for worker processes and await them."""

    def __init__(self, *args: Any, work: WorkQueue, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work = work
        self._awaited: set[int] = set()  # queued by an earlier planner: only waited for
        self._ran = False  # to the end of ``run``: ``wrap_up`` logs ``send_finished``

    def stop(self, error: BaseException) -> None:
        """Stop taking batches: none is queued any more (one waiting for room is not)."""
        self.work.halted = True
        super().stop(error)

    async def run(self, items: Any) -> Any:
        await self.work.start(self.summary.campaign, self.provider.name)
        return await super().run(items)

    def _resumed(self, batch: Batch, previous: BatchRecord, journal: BatchJournal) -> bool:
        if planned(previous.state) is Plan.AWAIT:
            self._awaited.add(batch.number)
            return False
        return super()._resumed(batch, previous, journal)

    async def _read(self, chunks: Any) -> None:
        await super()._read(chunks)
        await self._queue.join()  # every batch read is in the stream (or skipped) now
        if self._stop is None:
            s = self.summary
            try:
                await self.work.all_enqueued(s.batches, s.read - s.invalid - s.duplicates)
            except UnavailableError as exc:  # (Redis out of reach past the outage bound)
                self.stop(exc)

    async def _worker(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            if self.work.stop is not None and self._stop is None:
                self.stop(stop_error(self.work.stop))
            if self._stop is not None and batch.number not in self._awaited:
                self._skip(batch)
                self._queue.task_done()
                continue
            if batch.number not in self._awaited and not await self._add(batch):
                if self.work.lease is not None and self.work.lease.lost and self._stop is None:
                    self.stop(UnavailableError(self.work.lease.lost))
                if self._stop is not None:  # (not queued: the send stopped meanwhile)
                    self._skip(batch)
                    self._queue.task_done()
                    continue
            self._queue.task_done()
            try:
                record = await self.work.settled(batch)
            except UnavailableError as exc:  # (its outcome is not known here)
                self.stop(exc)
                record = {"state": "in_flight"}
            if self.work.stop is not None and self._stop is None:
                self.stop(stop_error(self.work.stop))
            self._settle_from(batch, record)

    async def _add(self, batch: Batch) -> bool:
        """``work.add``; Redis out of reach past the outage bound stops the planner (the
        batch may be queued: a planner run again finds it so and waits for it)."""
        try:
            return await self.work.add(batch)
        except UnavailableError as exc:
            self.stop(exc)
            return False

    def _settle_from(self, batch: Batch, record: dict[str, Any]) -> None:
        """Report a batch as the worker's record says it ended (after a stop, one still
        unsettled as not sent: queued, or unknown when a worker held it)."""
        state = record.get("state")
        if state == "queued":
            self._skip(batch)
            return
        if state == "in_flight":
            why = f"in flight when the send stopped ({self._stop})"
            self._record(batch, [Result(batch.recipients, Status.UNKNOWN, why)])
            return
        parts = record.get("parts") or {}
        results = [
            Result(s.recipients, s.status, s.reason, s.http_status, s.attempts)
            for s in settled_results(batch, record, parts)
        ]
        self._record(batch, results)

    def log_finished(self) -> None:
        """Not yet at the end of ``run``: ``wrap_up`` logs the line once the workers' counts
        are in the summary."""
        self._ran = True

    # the workers keep the records: the planner only reports
    def _record(self, batch: Batch, results: list[Result], doubt: str = "") -> None:
        for res in results:
            self._finish(
                batch, res.recipients, res.status, res.reason, res.http_status, res.attempts
            )

    async def wrap_up(self, outcome: str, ttl: float) -> None:
        """At the end (``send_campaign``): add the workers' requests, throttles and retries
        to the summary; a finished campaign's stream and counts expire with its state. Redis
        out of reach past the outage bound: the send stopped on it, and these are left."""
        try:
            for counts in (await self.work.worker_counts()).values():
                self.summary.requests += int(counts.get("requests", 0))
                self.summary.throttled += int(counts.get("throttled", 0))
                self.summary.retries += int(counts.get("retries", 0))
            if isinstance(self._stop, Interrupted):  # (workers settle what is queued)
                await self.work.halt()
        except UnavailableError as exc:
            self.stop(exc)
        if self._ran:  # (the workers' requests counted)
            super().log_finished()
        with contextlib.suppress(UnavailableError):
            await self.work.finish(self.summary.campaign, ttl if outcome == "finished" else None)


def planner_factory(url: str) -> Any:
    """``send_campaign(make_engine=...)``: a ``Planner`` on the journal's Redis (the state
    of ``--workers URL`` is ``--state URL``)."""

    def make(*args: Any, **kwargs: Any) -> Planner:
        journal = kwargs["journal"]
        work = WorkQueue(journal.client, journal.keys, lease=journal.lease)
        options = replace(args[4], workers=WAITING)
        return Planner(
            *args[:4],
            options,
            work=work,
            pause=None,
            **{k: v for k, v in kwargs.items() if k != "pause"},
        )

    return make
