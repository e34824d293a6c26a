"""The journal in Redis (``--state redis://...``): a send that resumes from any machine.

The SQLite journal (``bulksend.state.journal``) lives beside the campaign file, so a send that dies
on a CI runner that is thrown away starts over on the next one. ``RedisJournal`` keeps the same
records, with the same guarantees, in Redis: running the same command on a fresh machine (the
campaign and the recipient file, nothing else) finds the state and resumes.

Keys. One campaign's state is named by its identity, the provider, a fingerprint of the API key
(``bulksend.distributed.keys.key_fingerprint``: it cannot give the key back), the campaign name and
the recipient file's digest, all in one Redis Cluster hash tag::

    bulksend:state:{maxtraffic:6f1c0d2e9a7b3c45:welcome:9c1e...}:campaign
                  HASH  identity, meta, planned
    ...:batches   HASH  batch number -> JSON record (group, first/last line, size, digest of
                        its recipients, state, reason, http status, attempts, runs, run, doubt)
    ...:parts     HASH  "batch:line" -> JSON (state, reason, http status): a 422 bisection's parts
    ...:runs      HASH  run id -> JSON (started, finished, outcome)
    ...:run       STRING the last run id (INCR)
    ...:late      HASH  batch number -> JSON: the outcome of a worker that lost the batch to
                        another (``bulksend.workers.owning``), kept apart, never the record;
                        ``open`` joins it to the record (``bulksend.workers.late.reconcile``:
                        rows it delivered and the takeover did not are delivered)

    ...:owner     STRING the lease value of the send that opened the state last: every write
                        of the records is checked against it in the same step

and ``bulksend:state:{maxtraffic:welcome}:current`` names the state the campaign uses now (its key
fingerprint and file digest); ``...{maxtraffic:welcome}:lease`` is the campaign's lease, taken
by ``open`` before anything else: one send of a campaign at a time (``bulksend.state.lease``).
A send whose ``current`` names another state (the recipient file or the API key changed) is
refused, naming what changed, when that state records a batch the provider
may have kept; ``--fresh`` deletes it and starts over; otherwise it is deleted and the send starts
over, saying why -- as the SQLite journal does for a changed file. Within one state the identity
is compared as the SQLite journal's (``Identity.changes``: a changed message or batch size is
refused, a changed rate or base URL resumes, named).

Guarantees, as SQLite's. A batch's ``in_flight`` record is acknowledged by Redis before its request
is sent (``in_flight`` returns then; when Redis cannot take it, ``UnavailableError`` and the batch
is not sent); its final state is written after. A resumed send skips what an earlier run settled
and resends what was in flight or unknown, marked as possible duplicates. Redis acknowledges a write
once it is in memory: what survives a crash of Redis itself depends on its persistence, so ``open``
reads ``CONFIG GET appendonly/appendfsync`` and ``persistence_warning`` gives the one line to print
when they can lose acknowledged writes (no AOF, or ``appendfsync no``): a batch whose records were
lost is sent again without being counted as a possible duplicate.

Speed. Writes are pipelined: everything queued in one turn of the event loop (in-flight marks,
final states) goes in one pipeline, one round trip, written by one task in order; the in-flight
callers wait for that reply. The records of the batches are kept in memory too (single writer), so
no write needs a read first.

Expiry. While a run goes, the keys do not expire (``open`` PERSISTs them); a run that finishes
(not stopped, not crashed) sets them to expire after ``ttl`` seconds (``[send] state_ttl``, 30 days
by default). A send of the same campaign after that finds no state and sends everything again.

Towards many workers (a planner that queues batches on a Redis Stream, workers that take them with
a consumer group): the state is already what they need. The planner writes ``campaign`` and each
batch's record (``planned``) in the same hash tag and adds the stream beside it; a worker owns a
batch while it holds it in the group, so the per-batch records stay single-writer (the record a
worker writes is the whole JSON value, no read first); a batch taken over with ``XAUTOCLAIM`` is
found ``in_flight`` and resent as a possible duplicate, exactly as a resume does here; ``runs``
gains one entry per worker. Only ``current`` and ``campaign`` are written by the planner alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from bulksend.distributed.gate import DOWN, client_from_url, reached
from bulksend.distributed.keys import checked_url, redact_url, url_password
from bulksend.errors import ConfigError, UnavailableError
from bulksend.models import Batch
from bulksend.output.logs import get_logger, redactor
from bulksend.state.journal import (
    FINAL,
    KEPT_NOTHING,
    BatchRecord,
    Identity,
    PartRecord,
    fast_digest,
    first_and_last_line,
    opening_note,
    refusal,
)
from bulksend.state.lease import HSET_HELD, Lease, held_args

__all__ = ["PREFIX", "RedisJournal", "StateKeys", "persistence_warning", "state_keys"]

PREFIX = "bulksend:state"
#: what a write can fail with: Redis out of reach, or a refusal (out of memory, an ACL)
_FAILED: tuple[type[BaseException], ...] = (*DOWN, rex.RedisError)
#: how often a command is tried again when the connection drops (a Redis restarting, a failover)
RETRIES = 3


@dataclass(frozen=True, slots=True)
class StateKeys:
    """The key names of one campaign's state, and of the campaign's ``current`` pointer."""

    provider: str
    name: str  # the campaign name, quoted (no braces, colons or spaces)
    state_id: str  # "fingerprint:digest": what ``current`` holds while this state is in use
    prefix: str = PREFIX

    @property
    def fingerprint(self) -> str:
        return self.state_id.partition(":")[0]

    @property
    def base(self) -> str:
        digest = self.state_id.partition(":")[2]
        return f"{self.prefix}:{{{self.provider}:{self.fingerprint}:{self.name}:{digest}}}"

    @property
    def current(self) -> str:
        return f"{self.prefix}:{{{self.provider}:{self.name}}}:current"

    @property
    def campaign(self) -> str:
        return f"{self.base}:campaign"

    @property
    def batches(self) -> str:
        return f"{self.base}:batches"

    @property
    def parts(self) -> str:
        return f"{self.base}:parts"

    @property
    def runs(self) -> str:
        return f"{self.base}:runs"

    @property
    def run(self) -> str:
        return f"{self.base}:run"

    @property
    def stream(self) -> str:
        """The batches a planner queued for workers (``bulksend.workers``)."""
        return f"{self.base}:stream"

    @property
    def work(self) -> str:
        """The planner's progress and a stop the workers share (``bulksend.workers``)."""
        return f"{self.base}:work"

    @property
    def late(self) -> str:
        """Outcomes of batches a worker settled after another took them over (by number)."""
        return f"{self.base}:late"

    @property
    def workers(self) -> str:
        """Each worker's counts, by its name (``bulksend.workers``)."""
        return f"{self.base}:workers"

    @property
    def owner(self) -> str:
        """The lease value of the send that opened this state last (``bulksend.state.lease``):
        a write of the records is made only while it is the writer's."""
        return f"{self.base}:owner"

    @property
    def lease(self) -> str:
        """The campaign's lease: one send of it at a time (``bulksend.state.lease``)."""
        return f"{self.prefix}:{{{self.provider}:{self.name}}}:lease"

    def every(self) -> list[str]:
        """The state's keys (not ``current``)."""
        return [
            self.campaign,
            self.batches,
            self.parts,
            self.runs,
            self.run,
            self.stream,
            self.work,
            self.workers,
            self.late,
            self.owner,
        ]

    def other(self, state_id: str) -> StateKeys:
        """The keys of another state of the same campaign (what ``current`` named)."""
        return replace(self, state_id=state_id)


def state_keys(
    provider: str, fingerprint: str, name: str, recipients: str, prefix: str = PREFIX
) -> StateKeys:
    """The keys of the state of campaign ``name`` sent to ``provider`` with the key of
    ``fingerprint``, of the recipient file whose ``file_fingerprint`` is ``recipients``."""
    digest = hashlib.sha256(recipients.encode()).hexdigest()[:16]
    return StateKeys(provider, quote(name, safe=""), f"{fingerprint}:{digest}", prefix)


def persistence_problem(appendonly: str | None, appendfsync: str | None, where: str) -> str:
    """The one-line warning for Redis persistence settings that can lose acknowledged writes
    ("" when AOF is on with ``appendfsync`` always or everysec)."""
    if appendonly != "yes":
        problem = f"runs without an append-only file (appendonly {appendonly or 'no'})"
    elif appendfsync not in ("always", "everysec"):
        problem = (
            f"leaves the syncing of its append-only file to the OS (appendfsync {appendfsync})"
        )
    else:
        return ""
    return (
        f"warning: state {where} {problem}: a crash or restart of Redis can lose records it "
        "acknowledged, and a resume would send those batches again without counting them as "
        "possible duplicates; set appendonly yes and appendfsync everysec (or always)"
    )


async def persistence_warning(client: aioredis.Redis, where: str) -> str:
    """``persistence_problem`` of the Redis ``client`` talks to, or the one line saying it cannot
    be checked (``CONFIG GET`` refused: an ACL user without ``+config|get``, or a renamed
    command)."""
    try:
        got = await client.config_get("append*")
    except rex.ResponseError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"note: cannot check whether state {where} keeps what it acknowledges: CONFIG GET "
            f"is not allowed ({reason}); make sure it runs with appendonly yes and appendfsync "
            "everysec (or always), else a Redis crash can lose records and a resume would send "
            "those batches again without counting them as possible duplicates"
        )
    values = {_text(k): _text(v) for k, v in got.items()}
    return persistence_problem(values.get("appendonly"), values.get("appendfsync"), where)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(number: int, row: Mapping[str, Any]) -> BatchRecord:
    return BatchRecord(
        number,
        str(row["digest"]),
        str(row["state"]),
        str(row.get("reason", "")),
        row.get("http"),
        int(row.get("attempts", 0)),
        int(row.get("runs", 1)),
        row.get("run"),
        str(row.get("doubt", "")),
    )


def _may_have_kept(rows: Iterable[Mapping[str, Any]], parts: Iterable[Mapping[str, Any]]) -> bool:
    """Whether batch records (and part records) name anything the provider may have kept."""
    if any(r.get("state") not in KEPT_NOTHING | {"split"} or r.get("doubt") for r in rows):
        return True
    return any(p.get("state") not in KEPT_NOTHING for p in parts)


class RedisJournal:
    """One campaign's journal in Redis. Create with ``RedisJournal.open``; use from one event
    loop; ``aclose`` at the end."""

    path: Path | None = None
    #: whether a write is one MULTI/EXEC (a reader sees a batch's record and its parts at once)
    atomic = False

    def __init__(
        self,
        client: aioredis.Redis,
        keys: StateKeys,
        where: str,
        *,
        ttl: float,
        rows: dict[int, dict[str, Any]],
        parts: dict[int, dict[int, PartRecord]],
        stored: Mapping[str, str],
        run_id: int,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self.keys = keys
        self._where = where
        self._ttl = ttl
        self._rows = rows  # the records as written last (this run's writes included)
        self._parts = parts
        self._previous = {n: _record(n, row) for n, row in rows.items()}
        self.planned = int(stored.get("planned", 0) or 0)
        self.restarted = ""
        self.adjusted: list[str] = []
        self.run_id = run_id
        self._started = time.time()
        self._say = say
        self._log = get_logger()
        #: the writes not yet sent: hash key -> field -> value (a later write of a field
        #: replaces an earlier one not yet sent), then the keys' expiry in seconds
        self._pending: dict[str, dict[str, bytes | str]] = {}
        self._expire: int | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._soon = False
        self._writer: asyncio.Task[None] | None = None
        self._failed = ""  # why the last write failed ("" when it went through)
        #: the campaign's lease (``open``): the records are written only while it is held
        self.lease: Lease | None = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        url: str,
        identity: Identity,
        *,
        provider: str,
        fingerprint: str,
        name: str,
        resume: bool = False,
        fresh: bool = False,
        meta: Mapping[str, Any] | None = None,
        ttl: float = 30 * 86400.0,
        connect_timeout: float = 3.0,
        say: Callable[[str], None] | None = None,
    ) -> RedisJournal:
        """Continue the campaign's state in the Redis at ``url``, or start it.

        As ``Journal.open``: a state whose identity differs in what is sent is refused (a
        ``ConfigError`` naming what changed) unless it records nothing the provider can have
        kept and ``resume`` is False (then it starts over: ``restarted`` says why); ``resume``
        requires a state; ``fresh`` deletes it. ``say`` is told the one-line persistence
        warning (and, at the end, what could not be written). Raises ``UnavailableError`` when
        Redis does not answer within ``connect_timeout`` seconds; no message holds the URL's
        password.
        """
        checked_url(url, "--state")
        password = url_password(url)
        if password:
            redactor.register([password])
        where = redact_url(url)
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES)
        client = client_from_url(url, timeout=connect_timeout, flag="--state", retry=retry)
        keys = state_keys(provider, fingerprint, name, identity.recipients)
        lease = Lease(client, keys.lease, keys.owner, f"state {where}", name)
        try:
            await _unavailable(client.ping(), where, "is unreachable")
            warning = await _unavailable(persistence_warning(client, where), where)
            if warning and say is not None:
                say(warning)
            await _unavailable(lease.take(say), where)
            journal = await _opened(
                client, keys, where, identity, resume, fresh, meta, ttl, lease.value
            )
        except BaseException:
            with contextlib.suppress(*DOWN, rex.RedisError):  # (the error said is the first)
                await lease.release()
            with contextlib.suppress(*DOWN, rex.RedisError):
                await client.aclose()
            raise
        journal._say = say
        journal.lease = lease
        lease.keep(journal._lost)
        return journal

    def on_lost(self, callback: Callable[[UnavailableError], object]) -> None:
        """Tell ``callback`` when this send loses the campaign's lease (it must stop)."""
        if self.lease is not None:
            self.lease.on_lost(callback)

    def _lost(self, error: UnavailableError) -> None:
        """The lease is lost: nothing more is written; whoever waits for a write is told."""
        self._pending.clear()
        self._expire = None
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_exception(error)

    @property
    def where(self) -> str:
        return f"state {self._where}"

    @property
    def client(self) -> aioredis.Redis:
        """The connection (a planner queues its batches on it: ``bulksend.workers``)."""
        return self._client

    def opening_note(self) -> str:
        unsettled = {
            n
            for n, parts in self._parts.items()
            if any(p.state not in ("delivered", "invalid") for p in parts.values())
        }
        return opening_note(
            self._previous, unsettled, self.planned, self.adjusted, self.restarted, self.where
        )

    # -- what the last run left -----------------------------------------------------------------
    def previous(self, number: int) -> BatchRecord | None:
        return self._previous.get(number)

    def parts(self, number: int) -> list[PartRecord]:
        return sorted(self._parts.get(number, {}).values(), key=lambda p: p.line)

    @property
    def resumed(self) -> bool:
        return bool(self._previous)

    # -- writing ----------------------------------------------------------------------------
    def set_planned(self, batches: int) -> None:
        self.planned = batches
        self._queue(self.keys.campaign, {"planned": str(batches)})

    async def in_flight(self, batch: Batch) -> None:
        recs = batch.recipients
        old = self._rows.get(batch.number)
        first, last = first_and_last_line(recs)
        row = {
            "group": batch.group,
            "first": first,
            "last": last,
            "size": len(recs),
            "digest": fast_digest(recs),
            "state": "in_flight",
            "reason": old.get("reason", "") if old else "",
            "http": old.get("http") if old else None,
            "attempts": batch.attempts,
            "runs": (old["runs"] + (old["state"] != "in_flight")) if old else 1,
            "updated": time.time(),
            "run": self.run_id,
            "doubt": old.get("doubt", "") if old else "",
        }
        if old:  # (as SQLite's upsert: what the batch is stays as first recorded)
            row.update({k: old[k] for k in ("group", "first", "last", "size", "digest")})
        self._write_row(batch.number, row)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def finished(
        self,
        batch: Batch,
        state: str,
        reason: str = "",
        http_status: int | None = None,
        parts: Iterable[tuple[int, str, str, int | None]] = (),
        doubt: str = "",
    ) -> None:
        if state not in FINAL:
            raise ValueError(f"not a final state: {state}")
        old = self._rows.get(batch.number)
        if old is not None:  # (as SQLite's UPDATE: a batch never recorded stays unrecorded)
            row = {
                **old,
                "state": state,
                "reason": reason,
                "http": http_status,
                "attempts": batch.attempts,
                "updated": time.time(),
                "run": self.run_id,
                "doubt": doubt or old.get("doubt", ""),
            }
            self._write_row(batch.number, row)
        written: dict[str, bytes | str] = {}
        for line, part_state, part_reason, status in parts:
            record = PartRecord(line, part_state, part_reason, status)
            self._parts.setdefault(batch.number, {})[line] = record
            written[f"{batch.number}:{line}"] = orjson.dumps(
                {"state": part_state, "reason": part_reason, "http": status}
            )
        if written:
            self._queue(self.keys.parts, written)

    def _write_row(self, number: int, row: dict[str, Any]) -> None:
        self._rows[number] = row
        self._queue(self.keys.batches, {str(number): orjson.dumps(row)})

    def _queue(self, key: str, fields: Mapping[str, bytes | str]) -> None:
        """Queue fields of the hash ``key`` for the pipeline sent on the loop's next turn."""
        self._pending.setdefault(key, {}).update(fields)
        self._kick()

    def _kick(self) -> None:
        """Write what is queued on the loop's next turn."""
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Start writing what is queued (one task writes, in order; ``aclose`` waits)."""
        self._soon = False
        waiting = self._pending or self._expire is not None or self._owed()
        if waiting and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending or self._expire is not None or self._owed():
            pending, self._pending = self._pending, {}
            expire, self._expire = self._expire, None
            waiters, self._waiters = self._waiters, []
            lease = self.lease
            if lease is not None and lease.lost:  # (another send's now: write nothing)
                self._lost(UnavailableError(lease.lost))
                return
            pipe = self._client.pipeline(transaction=self.atomic)
            fenced = lease is not None and bool(pending)
            if lease is not None and pending:  # only while the state is still this send's
                pipe.eval(HSET_HELD, *held_args(self.keys.owner, lease.value, pending))
            else:
                for key, fields in pending.items():  # one HSET a hash, whatever was queued
                    pipe.hset(key, items=[x for field in fields.items() for x in field])
            extra = self._more(pipe)
            if expire is not None:
                for key in [*self.keys.every(), self.keys.current]:
                    pipe.expire(key, expire)
            try:
                replies = await pipe.execute()
            except _FAILED as exc:
                self._requeue(pending, expire)  # tried again with the next write
                self._less(extra)
                self._failed = f"{type(exc).__name__}: {exc}".rstrip(": ")
                self._log.warning("state_unavailable", state=self._where, error=self._failed)
                error = UnavailableError(
                    f"{self.where} cannot record the batches ({self._failed}): the send stopped; "
                    "run the same command again once Redis is back to resume"
                )
                for w in waiters:
                    if not w.done():
                        w.set_exception(error)
                return
            self._failed = ""
            if fenced and lease is not None and replies[0] == 0:
                lease.refused()
                self._lost(UnavailableError(lease.lost))
                for w in waiters:
                    if not w.done():
                        w.set_exception(UnavailableError(lease.lost))
                return
            self._done(extra, replies)
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def _more(self, pipe: Any) -> Any:
        """Add commands to a write after its records (a subclass: a worker's XACKs); returns
        what ``_less`` puts back when the write fails."""
        return None

    def _less(self, extra: Any) -> None:
        """Put back what ``_more`` added to a write that failed."""

    def _done(self, extra: Any, replies: list[Any]) -> None:
        """What ``_more`` added to a write went through (``replies``: the write's)."""

    def _owed(self) -> bool:
        """Whether a subclass has writes of its own waiting (for ``_more``)."""
        return False

    def _requeue(self, pending: dict[str, dict[str, bytes | str]], expire: int | None) -> None:
        """Put writes that failed back, under what was queued since (which is newer)."""
        for key, fields in pending.items():
            newer = self._pending.get(key, {})
            self._pending[key] = {**fields, **newer}
        if self._expire is None:
            self._expire = expire

    async def aclose(self, outcome: str = "finished") -> None:
        """Write what is queued and the run's end; with ``outcome == "finished"`` the keys
        expire after ``ttl`` seconds. What cannot be written is said in one line."""
        if self.lease is not None and self.lease.lost:  # (the state is another send's now)
            await self.lease.release()
            with contextlib.suppress(*DOWN):
                await self._client.aclose()
            return
        run = orjson.dumps({"started": self._started, "finished": time.time(), "outcome": outcome})
        self._queue(self.keys.runs, {str(self.run_id): run})
        if outcome == "finished":
            self._expire = max(1, round(self._ttl))
        for _ in range(2):  # what failed mid-send is tried once more here
            self.flush()
            if self._writer is not None:
                await asyncio.gather(self._writer, return_exceptions=True)
            if not self._pending and self._expire is None:
                break
        unwritten = len(self._pending.get(self.keys.batches, {}))
        if (self._pending or self._expire is not None) and self._say is not None:
            self._say(
                f"warning: {self.where} could not record the last {unwritten:,} batch "
                f"state(s) ({self._failed}): the next run resends those batches as possible "
                "duplicates"
            )
        if self.lease is not None:
            await self.lease.release()
        with contextlib.suppress(*DOWN):
            await self._client.aclose()


async def _unavailable(coro: Any, where: str, what: str = "stopped answering") -> Any:
    """``await coro``, Redis out of reach as a one-line ``UnavailableError`` (a refusal, such
    as a wrong password or an ACL, as one too)."""
    return await reached(
        coro,
        f"state {where}",
        down=what,
        otherwise="start Redis or drop --state",
        refused="refused the state ({}); check the URL (its database number) and the user's rights",
    )


async def _opened(
    client: aioredis.Redis,
    keys: StateKeys,
    where: str,
    identity: Identity,
    resume: bool,
    fresh: bool,
    meta: Mapping[str, Any] | None,
    ttl: float,
    owner: bytes,
) -> RedisJournal:
    """The checks and writes of ``RedisJournal.open`` (Redis errors as ``UnavailableError``);
    ``owner``: the lease's value, which fences every later write of the records."""
    shown = f"state {where}"
    restarted = await _other_state(client, keys, shown, identity, resume=resume, fresh=fresh)
    if fresh:
        await _unavailable(client.delete(*keys.every()), where)
    stored = await _hash(client, keys.campaign, where)
    if resume and not stored:
        raise ConfigError(f"{shown}: no state of this campaign to resume (run without --resume)")
    changes = identity.changes(stored) if stored else []
    adjusted = identity.adjustments(stored) if stored and not changes else []
    if changes and (resume or await _kept(client, keys, where)):
        raise ConfigError(refusal(shown, changes))
    if changes:  # nothing in it can have reached the provider: start over
        await _unavailable(client.delete(*keys.every()), where)
        restarted = restarted or _joined(changes)
        stored = {}
    rows: dict[str, str | bytes] = {
        **identity.details,
        **identity.as_rows(),
        "meta": orjson.dumps(dict(meta or {})),
    }
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.owner, owner)  # (before the records are read: a stalled send's writes stop)
    pipe.set(keys.current, keys.state_id)
    pipe.hset(keys.campaign, items=[x for row in rows.items() for x in row])
    for key in [*keys.every(), keys.current]:
        pipe.persist(key)
    pipe.incr(keys.run)
    replies = await _unavailable(pipe.execute(), where)
    run_id = int(replies[-1])
    await _unavailable(
        client.hset(keys.runs, str(run_id), orjson.dumps({"started": time.time()})), where
    )
    batches = await _batches(client, keys, where)
    parts = await _part_records(client, keys, where)
    _apply_late(batches, parts, await _hash(client, keys.late, where))
    journal = RedisJournal(
        client,
        keys,
        where,
        ttl=ttl,
        rows=batches,
        parts=parts,
        stored={**stored, **{k: _text(v) for k, v in rows.items()}},
        run_id=run_id,
    )
    journal.planned = int(stored.get("planned", 0) or 0)
    journal.restarted = restarted
    journal.adjusted = adjusted
    return journal


async def _other_state(
    client: aioredis.Redis,
    keys: StateKeys,
    shown: str,
    identity: Identity,
    *,
    resume: bool,
    fresh: bool,
) -> str:
    """Check the state the campaign used before when it is not this one (another recipient
    file, another API key): refuse when it may have reached the provider, else (or with
    ``fresh``) delete it. Returns why the send starts over ("" when it does not)."""
    where = shown.removeprefix("state ")
    current = await _unavailable(client.get(keys.current), where)
    if current is None or _text(current) == keys.state_id:
        return ""
    other = keys.other(_text(current))
    stored = await _hash(client, other.campaign, where)
    kept = await _kept(client, other, where)
    if not stored and not kept:  # (gone: expired or deleted by hand)
        return ""
    changes = identity.changes(stored) if stored else []
    if other.fingerprint != keys.fingerprint:
        changes.append("the API key changed")
    changes = changes or ["the recipient file changed"]
    if not fresh and (resume or kept):
        raise ConfigError(refusal(shown, changes))
    await _unavailable(client.delete(*other.every()), where)
    return "" if fresh else _joined(changes)


async def _hash(client: aioredis.Redis, key: str, where: str) -> dict[str, str]:
    got = await _unavailable(client.hgetall(key), where)
    return {_text(k): _text(v) for k, v in got.items()}


async def _batches(
    client: aioredis.Redis, keys: StateKeys, where: str
) -> dict[int, dict[str, Any]]:
    async def scan() -> dict[int, dict[str, Any]]:
        return {
            int(field): orjson.loads(value)
            async for field, value in client.hscan_iter(keys.batches, count=5000)
        }

    result: dict[int, dict[str, Any]] = await _unavailable(scan(), where)
    return result


async def _part_records(
    client: aioredis.Redis, keys: StateKeys, where: str
) -> dict[int, dict[int, PartRecord]]:
    got = await _hash(client, keys.parts, where)
    out: dict[int, dict[int, PartRecord]] = {}
    for field, value in got.items():
        batch, _, line = field.partition(":")
        row = orjson.loads(value)
        record = PartRecord(int(line), row["state"], row.get("reason", ""), row.get("http"))
        out.setdefault(int(batch), {})[int(line)] = record
    return out


def _apply_late(
    rows: dict[int, dict[str, Any]],
    parts: dict[int, dict[int, PartRecord]],
    late: Mapping[str, str],
) -> None:
    """Make the records say what batches really ended in where a worker that lost one got its
    answer (``bulksend.workers.late.reconcile``): a resume reports those rows as settled
    earlier and never sends them again."""
    from bulksend.workers.late import reconcile

    for field, value in late.items():
        number = int(field)
        record = rows.get(number)
        if record is None:
            continue
        mine = {
            p.line: {"state": p.state, "reason": p.reason, "http": p.http_status}
            for p in parts.get(number, {}).values()
        }
        rows[number], merged = reconcile(record, mine, orjson.loads(value))
        if rows[number].get("state") == "split":
            parts[number] = {
                line: PartRecord(line, str(p["state"]), str(p.get("reason") or ""), p.get("http"))
                for line, p in merged.items()
            }


async def _kept(client: aioredis.Redis, keys: StateKeys, where: str) -> bool:
    """Whether the state records a batch the provider may have kept."""
    rows = await _batches(client, keys, where)
    parts = await _hash(client, keys.parts, where)
    return _may_have_kept(rows.values(), (orjson.loads(v) for v in parts.values()))


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
