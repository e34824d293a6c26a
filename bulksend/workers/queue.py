"""The Redis side of a planner: the bounded stream, the records, the registry (thin I/O).

Keys (in the campaign state's hash tag, ``bulksend.state.redis_journal.StateKeys``)::

    ...:stream    STREAM  one entry a batch to send (``logic.encode_batch``); group "workers"
    ...:work      HASH    started, all_enqueued (0/1), enqueued, batches, rows, stop (JSON),
                          halted (when the planner was interrupted: it queues no more)
    ...:workers   HASH    worker name -> JSON (pid, host, started, seen, counts)

and ``bulksend:work:campaigns`` HASH campaign name -> JSON (provider, state id): how a worker
finds the campaign it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rex

from bulksend.distributed.gate import DOWN
from bulksend.errors import UnavailableError
from bulksend.models import Batch
from bulksend.state.journal import fast_digest, first_and_last_line
from bulksend.state.lease import Lease
from bulksend.state.redis_journal import StateKeys
from bulksend.workers.late import reconcile
from bulksend.workers.logic import UNSETTLED, encode_batch

#: KEYS: owner, stream, batches, work. ARGV: the lease's value, batch number, its record, the
#: stream entry's fields. Queues the batch (0: not, the state is another planner's now).
ADD_HELD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[4], 'enqueued', 1)
return 1
"""

GROUP = "workers"
REGISTRY = "bulksend:work:campaigns"
#: batches the stream holds at most (unsettled ones); the planner waits while it is full
STREAM_BATCHES = 64
POLL = 0.05  # seconds between looks at the records of batches a planner waits for
#: seconds of Redis out of reach a planner waits out (a restart), as a worker does
OUTAGE = 60.0

T = TypeVar("T")


async def ensure_group(client: aioredis.Redis, keys: StateKeys) -> None:
    """The stream and its consumer group (made once; an existing group is kept)."""
    with contextlib.suppress(rex.ResponseError):  # BUSYGROUP: made by an earlier planner
        await client.xgroup_create(keys.stream, GROUP, id="0", mkstream=True)


@dataclass(eq=False)
class WorkQueue:
    """A planner's stream: ``add`` a batch (waiting for room), ``settled`` waits for its
    record to be final. One poller task reads the records of every batch waited for."""

    client: aioredis.Redis
    keys: StateKeys
    capacity: int = STREAM_BATCHES
    poll: float = POLL
    _waiting: dict[int, tuple[asyncio.Future[dict[str, Any]], list[int]]] = field(
        default_factory=dict
    )
    _poller: asyncio.Task[None] | None = None
    stop: dict[str, Any] | None = None  # what a worker stopped the campaign with
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _adding: asyncio.Lock = field(default_factory=asyncio.Lock)  # one add at a time, in order
    #: the campaign's lease (the planner's): a batch is queued only while it is held
    lease: Lease | None = None
    outage: float = OUTAGE
    clock: Callable[[], float] = time.monotonic
    retry: float = 0.2  # seconds between tries while Redis is out of reach
    #: set once Redis stayed out of reach longer than ``outage`` (the planner stops)
    down: UnavailableError | None = None
    #: the planner stopped: no batch is queued any more
    halted: bool = False

    async def _ride(self, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, tried again while Redis is out of reach for up to ``outage``
        seconds (a restart); longer, one ``UnavailableError`` that says how to resume."""
        down_since: float | None = None
        while True:
            if self.down is not None:
                raise self.down
            if self.lease is not None and self.lease.lost:  # (it stops the planner anyway)
                raise UnavailableError(self.lease.lost)
            try:
                return await call()
            except DOWN as exc:
                now = self.clock()
                down_since = now if down_since is None else down_since
                if now - down_since > self.outage:
                    self.down = UnavailableError(
                        f"Redis unreachable for over {self.outage:g} s ({exc}); the planner "
                        "stopped: run the same command again to resume"
                    )
                    raise self.down from None
                await asyncio.sleep(self.retry)

    async def start(self, name: str, provider: str) -> None:
        """Register the campaign for workers and (re)open the plan: not all enqueued yet."""
        await self._ride(lambda: ensure_group(self.client, self.keys))
        entry = orjson.dumps({"provider": provider, "state": self.keys.state_id})

        async def register() -> None:  # (a pipeline is emptied once it ran: made each try)
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(REGISTRY, name, entry)
            pipe.hset(self.keys.work, mapping={"all_enqueued": 0, "started": time.time()})
            pipe.hdel(self.keys.work, "stop", "halted")
            await pipe.execute()

        await self._ride(register)

    async def add(self, batch: Batch) -> bool:
        """Add ``batch`` to the stream once it has room, with its record ``queued`` (one
        step: a planner that dies after it finds the record and does not add it again).
        False when it was not added: the campaign stopped, or the planner lost its lease."""
        async with self._adding:
            return await self._add(batch)

    async def _add(self, batch: Batch) -> bool:
        while await self._ride(lambda: self.client.xlen(self.keys.stream)) >= self.capacity:
            if self.stop is not None or self.halted:
                return False
            await asyncio.sleep(self.poll)
        if self.halted:
            return False
        recs = batch.recipients
        first, last = first_and_last_line(recs)
        record = {
            "group": batch.group,
            "first": first,
            "last": last,
            "size": len(recs),
            "digest": fast_digest(recs),
            "state": "queued",
            "reason": "",
            "http": None,
            "attempts": batch.attempts,
            "runs": 0,
            "updated": time.time(),
            "run": None,
            "doubt": batch.doubt,
        }
        if self.lease is not None and self.lease.lost:
            return False
        return await self._ride(self._queuer(batch, orjson.dumps(record)))

    def _queuer(self, batch: Batch, record: bytes) -> Callable[[], Awaitable[bool]]:
        """One try at queuing ``batch`` with ``record``; a try after one cut off first looks
        whether it had been made (its very record is there), so no batch is queued twice."""
        tried = False

        async def queue() -> bool:
            nonlocal tried
            if tried and await self.client.hget(self.keys.batches, str(batch.number)) == record:
                return True
            tried = True
            if self.lease is not None:  # (only while the state is still this planner's)
                keys = (self.keys.owner, self.keys.stream, self.keys.batches, self.keys.work)
                fields = [x for item in encode_batch(batch).items() for x in item]
                args = [self.lease.value, batch.number, record, *fields]
                if await self.client.eval(ADD_HELD, len(keys), *keys, *args) == 1:
                    return True
                self.lease.refused()
                return False
            pipe = self.client.pipeline(transaction=True)
            pipe.xadd(self.keys.stream, encode_batch(batch))  # type: ignore[arg-type]
            pipe.hset(self.keys.batches, str(batch.number), record)
            pipe.hincrby(self.keys.work, "enqueued", 1)
            await pipe.execute()
            return True

        return queue

    async def all_enqueued(self, batches: int, rows: int) -> None:
        await self._ride(
            lambda: self.client.hset(
                self.keys.work, mapping={"all_enqueued": 1, "batches": batches, "rows": rows}
            )
        )

    async def settled(self, batch: Batch) -> dict[str, Any]:
        """The record of ``batch`` once a worker settled it, with ``parts`` (line -> part
        record) for a split one; after a stop, the record as it is then."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting[batch.number] = (future, list(batch_lines(batch)))
        if self._poller is None or self._poller.done():
            self._poller = loop.create_task(self._poll())
        return await future

    async def _poll(self) -> None:
        """Resolve the batches waited for as their records become final. Redis out of reach
        longer than ``outage``: every one waited for gets the ``UnavailableError``."""
        try:
            while self._waiting:
                for number, record in await self._ride(self._look):
                    future, _ = self._waiting.pop(number)
                    if not future.done():
                        future.set_result(record)
                await asyncio.sleep(self.poll)
        except Exception as exc:  # (to the waiters: never an unretrieved task exception)
            waiting, self._waiting = self._waiting, {}
            for future, _ in waiting.values():
                if not future.done():
                    future.set_exception(exc)

    async def _look(self) -> list[tuple[int, dict[str, Any]]]:
        """One look at the records waited for: those final (all, after a stop)."""
        numbers = list(self._waiting)
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.batches, [str(n) for n in numbers])
        pipe.hget(self.keys.work, "stop")
        pipe.hmget(self.keys.late, [str(n) for n in numbers])
        got, stop, lates = await pipe.execute()
        if stop and self.stop is None:
            self.stop = orjson.loads(stop)
            self._stopped.set()
        lost = self.lease is not None and bool(self.lease.lost)  # (it stops the planner)
        done = []
        for number, raw, late in zip(numbers, got, lates, strict=True):
            record = orjson.loads(raw) if raw else {"state": "queued"}
            if record.get("state") in UNSETTLED and self.stop is None and not lost:
                continue
            parts = {}
            if record.get("state") == "split":
                parts = await self._parts(number, self._waiting[number][1])
            if late:  # (a worker that lost the batch got its answer: late.reconcile)
                record, parts = reconcile(record, parts, orjson.loads(late))
            if record.get("state") == "split":
                record["parts"] = parts
            done.append((number, record))
        return done

    async def _parts(self, number: int, lines: list[int]) -> dict[int, dict[str, Any]]:
        got = await self.client.hmget(self.keys.parts, [f"{number}:{line}" for line in lines])
        return {line: orjson.loads(v) for line, v in zip(lines, got, strict=True) if v}

    async def halt(self) -> None:
        """The planner was interrupted: it queued its last batch, so workers exit once they
        settled what is in the stream (the same command run again queues the rest)."""
        await self._ride(lambda: self.client.hset(self.keys.work, "halted", time.time()))

    async def worker_counts(self) -> dict[str, dict[str, Any]]:
        got = await self._ride(lambda: self.client.hgetall(self.keys.workers))
        return {_text(k): orjson.loads(v) for k, v in got.items()}

    async def finish(self, name: str, ttl: float | None) -> None:
        """The campaign is over: workers are told (its registry entry goes); with ``ttl``
        (finished, not stopped) the stream and counts expire with the state."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if ttl is None:
            return

        async def expire() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(REGISTRY, name)
            for key in (self.keys.stream, self.keys.work, self.keys.workers):
                pipe.expire(key, max(1, round(ttl)))
            await pipe.execute()

        await self._ride(expire)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def batch_lines(batch: Batch) -> list[int]:
    recs = batch.recipients
    lines = getattr(recs, "lines", None)
    return list(lines) if lines is not None else [r.line for r in recs]


def stop_record(kind: str, message: str, worker: str) -> bytes:
    return orjson.dumps({"kind": kind, "message": message, "worker": worker})


def stop_kind(error: BaseException) -> str:
    from bulksend.errors import AuthError, Interrupted, ProviderError

    if isinstance(error, AuthError):
        return "auth"
    if isinstance(error, ProviderError):
        return "provider"
    if isinstance(error, Interrupted):
        return "interrupted"
    return "unavailable"


def stop_error(stop: Mapping[str, Any]) -> BaseException:
    """The error a planner stops with when a worker stopped the campaign."""
    from bulksend.errors import AuthError, ProviderError, UnavailableError

    message = f"worker {stop.get('worker', '?')}: {stop.get('message', 'stopped')}"
    kind = stop.get("kind")
    if kind == "auth":
        return AuthError(message, status=401)
    if kind == "provider":
        return ProviderError(message)
    return UnavailableError(message)
