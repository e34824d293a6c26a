"""A worker: ``bulksend worker redis://... [--campaign NAME]``.

It builds the campaign from what the planner stored (the campaign file's text and the settings
in effect; the provider's secrets read on this machine, ``shipped.locate_secrets``: the key
must be the planner's) and runs the single-process send's ``Engine``, fed from the campaign's
stream instead of the file:

* batches are taken with ``XREADGROUP`` (group ``workers``, this worker's name as consumer),
  as many as its engine has room for; the quota is taken through the shared Redis gate
  (``bulksend.distributed``), the pause through the campaign's Redis switch;
* each batch is recorded ``in_flight`` before it is sent and settled after, in the campaign's
  records (``RedisJournal``), and acknowledged (``XACK`` + ``XDEL``) in the same MULTI as its
  final record: a batch is never acknowledged unsettled, nor settled and left in the stream;
* the worker refreshes what it holds (``XCLAIM ... JUSTID``) every ``idle / 3`` seconds, and
  takes over (``XAUTOCLAIM``) batches idle longer than ``idle`` seconds: those of a worker that
  died. A batch taken over is found ``in_flight`` and resent as a possible duplicate, exactly
  as a resumed send resends it. Every write of a batch (record, refresh, give-back) is made
  only while the worker still holds it (``owning``): a worker stalled past ``idle`` that lost
  a batch does not send it, nor overwrite the record of the worker that took it over;
* a worker interrupted (SIGINT/SIGTERM) finishes the requests in flight and gives back what it
  has not started (added again to the stream); a stop that ends the campaign (credentials
  rejected, the provider failing) is shared: every worker and the planner stop;
* it exits once the campaign is complete (the planner queued every batch and the stream is
  empty), stopped, or gone (finished and expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from bulksend.config import Settings, load_settings
from bulksend.dispatch.engine import Engine, Result
from bulksend.distributed.gate import DOWN
from bulksend.errors import ConfigError, Interrupted, TakenOver, UnavailableError
from bulksend.models import Batch, Status
from bulksend.state.journal import (
    BatchJournal,
    BatchRecord,
    PartRecord,
    fast_digest,
    first_and_last_line,
)
from bulksend.state.redis_journal import RedisJournal, StateKeys
from bulksend.state.redis_journal import _record as record_of
from bulksend.workers.late import delivered_late
from bulksend.workers.logic import decode_batch, may_finish
from bulksend.workers.owning import GIVE_BACK, REFRESH, WRITE, Owed, write_args
from bulksend.workers.queue import GROUP, REGISTRY, _text, stop_error, stop_kind, stop_record

#: seconds a batch may sit with a worker that does not refresh it before another takes it
IDLE = 30.0
#: the recorded settings a worker applies (not the recipient file nor the outputs: the
#: planner's)
_APPLIED = (
    "base_url",
    "batch_size",
    "rate",
    "limit",
    "in_flight",
    "timeout",
    "max_attempts",
    "max_unexpected",
)


@dataclass(frozen=True, slots=True)
class Found:
    """The campaign a worker serves: its name, provider and state."""

    name: str
    provider: str
    state_id: str


def choose(registry: Mapping[str, Mapping[str, Any]], wanted: str | None) -> Found | None:
    """The campaign to serve among those ``registry`` names (pure): ``wanted``, else the only
    one; None when it is not there (yet). Several and none wanted: a ``ConfigError``."""
    if wanted is not None:
        entry = registry.get(wanted)
        return Found(wanted, entry["provider"], entry["state"]) if entry else None
    if len(registry) > 1:
        names = ", ".join(sorted(registry))
        raise ConfigError(f"several campaigns are being sent ({names}): name one with --campaign")
    for name, entry in registry.items():
        return Found(name, entry["provider"], entry["state"])
    return None


def settings_of(
    meta: Mapping[str, Any], directory: Path, env: Mapping[str, str], cwd: Path | None = None
) -> Settings:
    """The campaign's ``Settings`` as the planner had them, from its stored ``meta``: the
    campaign file is written to ``directory``; a secret file it names (``[auth]
    api_key_file``) is looked for beside the planner's campaign file, then in ``cwd`` (the
    current directory), else the provider's variable in ``env`` is used (``shipped``)."""
    from bulksend.workers.shipped import locate_secrets

    text = meta.get("campaign_text")
    if not text:
        raise ConfigError(
            "the campaign's state holds no campaign file: was it planned with --workers?"
        )
    planner_file = Path(str(meta.get("campaign_file") or "campaign.toml"))
    path = directory / f"{planner_file.stem}.toml"
    path.write_text(str(text), encoding="utf-8")
    recorded = meta.get("settings") or {}
    overrides = {k: recorded[k] for k in _APPLIED if recorded.get(k) is not None}
    settings = load_settings(path, env=env, overrides=overrides)
    return locate_secrets(settings, directory, planner_file, cwd or Path.cwd(), env)


class StreamJournal(RedisJournal):
    """A worker's view of the campaign's records: each batch's record read when the batch is
    taken; its writes (record, parts, acknowledgement) made only while this worker still holds
    the batch, checked and written in one step (``owning.WRITE``)."""

    atomic = True

    def __init__(
        self,
        *args: Any,
        held: dict[int, tuple[str, dict[bytes, bytes]]],
        consumer: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._held = held  # batch number -> (stream entry id, fields)
        self.consumer = consumer
        self._owing: dict[int, Owed] = {}
        #: batches another worker took over from this one (not written, not sent again)
        self.lost: set[int] = set()
        #: the worker's name and its counts, written with each acknowledgement
        self.counts: tuple[str, Callable[[], dict[str, Any]]] | None = None

    def take(
        self, batch: Batch, record: dict[str, Any] | None, parts: dict[int, PartRecord]
    ) -> None:
        """What the records say of a batch just taken (``previous`` answers from it)."""
        if record is None:  # (lost: a Redis that lost writes) as queued, never sent
            first, last = first_and_last_line(batch.recipients)
            record = {
                "group": batch.group,
                "first": first,
                "last": last,
                "size": len(batch.recipients),
                "digest": fast_digest(batch.recipients),
                "state": "queued",
                "runs": 0,
            }
        self.lost.discard(batch.number)
        self._owing.pop(batch.number, None)
        self._rows[batch.number] = record
        self._parts[batch.number] = parts
        self._previous[batch.number] = record_of(batch.number, record)

    def previous(self, number: int) -> BatchRecord | None:
        return self._previous.get(number)

    async def in_flight(self, batch: Batch) -> None:
        await super().in_flight(batch)
        if batch.number in self.lost:
            raise TakenOver(
                f"batch {batch.number} was taken over by another worker while this one held it"
            )

    def finished(
        self,
        batch: Batch,
        state: str,
        reason: str = "",
        http_status: int | None = None,
        parts: Iterable[tuple[int, str, str, int | None]] = (),
        doubt: str = "",
    ) -> None:
        if batch.number not in self._held:
            super().finished(batch, state, reason, http_status, parts, doubt)
            return
        super().finished(batch, state, reason, http_status, (), doubt)  # the row: _write_row
        item = self._owing.setdefault(batch.number, Owed())
        for line, part_state, part_reason, status in parts:
            self._parts.setdefault(batch.number, {})[line] = PartRecord(
                line, part_state, part_reason, status
            )
            item.parts[f"{batch.number}:{line}"] = orjson.dumps(
                {"state": part_state, "reason": part_reason, "http": status}
            )
        self.ack(batch.number)

    def _write_row(self, number: int, row: dict[str, Any]) -> None:
        if number not in self._held:
            super()._write_row(number, row)
            return
        self._rows[number] = row
        self._owing.setdefault(number, Owed()).row = orjson.dumps(row)
        self._kick()

    def ack(self, number: int) -> None:
        """Acknowledge the batch with the next write (with its record, if one is owed)."""
        if number in self._held:
            self._owing.setdefault(number, Owed()).ack = True
            self._kick()

    def forget(self, number: int) -> None:
        """Drop a batch lost to another worker without writing anything of it."""
        self._held.pop(number, None)
        self._owing.pop(number, None)

    def _owed_now(self) -> dict[int, tuple[str, Owed, bytes]]:
        owed, self._owing = self._owing, {}
        out = {}
        for number, item in owed.items():
            if number not in self._held:
                continue
            late = b""
            if item.ack:
                late = orjson.dumps(
                    {
                        "worker": self.consumer,
                        "record": self._rows.get(number),
                        "parts": {k: orjson.loads(v) for k, v in item.parts.items()},
                    }
                )
            out[number] = (self._held[number][0], item, late)
        return out

    def _owed(self) -> bool:
        return bool(self._owing)

    def _more(self, pipe: Any) -> Any:
        owed = self._owed_now()
        if not owed:
            return None
        keys = self.keys
        args = write_args(GROUP, self.consumer, owed)
        index = len(pipe.command_stack)
        pipe.eval(WRITE, 4, keys.stream, keys.batches, keys.parts, keys.late, *args)
        acked = [n for n, (_, item, _) in owed.items() if item.ack]
        if acked and self.counts is not None:  # the worker's counts, as of these batches
            pipe.hset(keys.workers, self.counts[0], orjson.dumps(self.counts[1]()))
        return index, owed

    def _less(self, extra: Any) -> None:
        if extra is None:
            return
        _, owed = extra
        for number, (_, item, _) in owed.items():
            newer = self._owing.get(number)
            self._owing[number] = item if newer is None else item.merged(newer)

    def _done(self, extra: Any, replies: list[Any]) -> None:
        if extra is None:
            return
        index, owed = extra
        lost = {int(n) for n in replies[index]}
        for number, (_, item, _) in owed.items():
            if number in lost:
                self._lose(number, "its outcome is kept apart (late)" if item.ack else "")
            if item.ack:
                self._held.pop(number, None)

    def _lose(self, number: int, what: str) -> None:
        if number in self.lost:
            return
        self.lost.add(number)
        if self._say is not None:
            more = f"; {what}" if what else ": this worker does not send it"
            self._say(
                f"warning: batch {number} was taken over by another worker (this one held it "
                f"longer than --idle){more}; the other resends it as a possible duplicate"
            )


class WorkerEngine(Engine):
    """The ``Engine`` fed from the campaign's stream (``Feed``), not from a file."""

    def __init__(self, *args: Any, feed: Feed, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feed = feed
        self._unanswered: set[int] = set()  # batches a request of this worker got no answer

    async def _read(self, chunks: Any) -> None:
        await self.feed.serve(self)

    def _resumed(self, batch: Batch, previous: BatchRecord, journal: BatchJournal) -> bool:
        done = super()._resumed(batch, previous, journal)
        if done:  # settled before this worker took it (its holder died before the ack)
            self.feed.journal.ack(batch.number)
        return done

    def _record(self, batch: Batch, results: list[Result], doubt: str = "") -> None:
        not_sent = all(r.reason.startswith("not sent:") for r in results)
        if not_sent and batch.number in self.feed.journal.lost:
            self.feed.journal.forget(batch.number)  # another worker's now: nothing to record
            return
        if self._stop is not None and not_sent:
            self.feed.give_back(batch.number)  # not started: another worker sends it
            return
        super()._record(batch, results, doubt)

    def _unrecorded(self, job: Any, part: Any, exc: UnavailableError) -> None:
        if isinstance(exc, TakenOver):  # only this batch is not sent (by this worker)
            self._settle(job, Status.SKIPPED, f"not sent: {exc}", None)
            return
        super()._unrecorded(job, part, exc)

    async def _admit(self, job: Any, part: Any) -> Any:
        """As the engine's, but a batch another worker took over meanwhile is not sent (again)
        by this one: the refresh (every ``idle / 3`` s) or a refused write told it."""
        permit = await super()._admit(job, part)
        if permit is not None and job.batch.possibly_sent:  # (a resend: was it answered late?)
            lines = [r.line for r in part.batch.recipients]
            unanswered = job.batch.number in self._unanswered
            reason = delivered_late(
                await self.feed.late(job.batch.number), lines, unanswered=unanswered
            )
            if reason:
                self.scheduler.cancel(permit)
                self._settle(job, Status.DELIVERED, reason, None)
                return None
        if permit is None or job.batch.number not in self.feed.journal.lost:
            return permit
        self.scheduler.cancel(permit)
        if part.attempts or part.unknown_sent or job.results:
            why = "not sent again: another worker took the batch over (outcome unknown)"
            self._settle(job, Status.UNKNOWN, why, None)
        else:
            self._settle(job, Status.SKIPPED, "not sent: another worker took it over", None)
        return None

    def _skip(self, batch: Batch) -> None:
        self.feed.give_back(batch.number)

    def _no_response(self, job: Any, part: Any, permit: Any, exc: Any) -> float | None:
        self._unanswered.add(job.batch.number)  # (its resend may have arrived: delivered_late)
        return super()._no_response(job, part, permit, exc)


@dataclass(eq=False)
class Feed:
    """Takes batches from the stream for one worker, takes over those of dead workers,
    refreshes what it holds, and tells when the campaign is over."""

    client: aioredis.Redis
    keys: StateKeys
    name: str
    journal: StreamJournal
    held: dict[int, tuple[str, dict[bytes, bytes]]]
    idle: float = IDLE
    block: float = 0.2
    clock: Callable[[], float] = time.monotonic
    started: float = field(default_factory=time.time)
    taken: int = 0
    claimed: int = 0
    outage: float = 60.0
    _given_back: list[int] = field(default_factory=list)
    _next_refresh: float = 0.0

    async def serve(self, engine: WorkerEngine) -> None:
        """Hand batches to ``engine`` until the campaign is over or the engine stopped. Redis
        out of reach for less than ``outage`` seconds (a restart) is waited out."""
        self._next_refresh = 0.0
        own = True  # first, what this name held before (a worker restarted under its name)
        down_since: float | None = None
        while engine.stopped_by is None:
            try:
                if await self._turn(engine, own):
                    break
                own, down_since = False, None
            except DOWN as exc:
                now = self.clock()
                down_since = now if down_since is None else down_since
                if now - down_since > self.outage:
                    engine.stop(
                        UnavailableError(f"Redis unreachable for {self.outage:g} s ({exc})")
                    )
                    break
                await asyncio.sleep(min(1.0, self.block))

    async def _turn(self, engine: WorkerEngine, own: bool) -> bool:
        """One look at the stream; True when the campaign is over for this worker."""
        entries = []
        now = self.clock()
        # only what the engine's queue has room for: handing more would wait for room, and a
        # worker paused (or held back longer than --idle) would stop refreshing what it holds
        room = engine._queue.maxsize - engine._queue.qsize()
        if now >= self._next_refresh:
            self._next_refresh = now + self.idle / 3
            await self._refresh(engine)
            if engine.stopped_by is not None:
                return True
            if room > 0:
                entries = await self._claim(room)
        if room > len(entries):
            entries += await self._read(room - len(entries), own)
        elif not entries:
            await asyncio.sleep(self.block)  # (full: look again, refreshing when due)
        if entries:
            await self._hand(engine, entries)
        elif not self.held and await self._over():
            return True
        await self.give_back_now()
        return False

    async def _read(self, count: int, own: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        got = await self.client.xreadgroup(
            GROUP,
            self.name,
            {self.keys.stream: "0" if own else ">"},
            count=count,
            block=None if own else max(1, round(self.block * 1000)),
        )
        found: Any = got or []
        return [(e, f) for _, entries in found for e, f in entries if f]

    async def _claim(self, room: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """At most ``room`` batches idle longer than ``idle`` (their worker died): this
        worker's now."""
        reply = await self.client.xautoclaim(
            self.keys.stream, GROUP, self.name, round(self.idle * 1000), "0-0", count=room
        )
        entries = [(e, f) for e, f in reply[1] if f]
        self.claimed += len(entries)
        return entries

    async def _refresh(self, engine: WorkerEngine) -> None:
        """Keep what this worker holds from being taken over; publish its counts; honour a
        stop another worker shared."""
        pipe = self.client.pipeline(transaction=False)
        ids = {entry: number for number, (entry, _) in self.held.items()}
        if ids:  # (only those still held: never taking back one another worker took)
            pipe.eval(REFRESH, 1, self.keys.stream, GROUP, self.name, *ids)
        pipe.hset(self.keys.workers, self.name, orjson.dumps(self.counts(engine)))
        pipe.hget(self.keys.work, "stop")
        replies = await pipe.execute()
        if ids:
            for entry in replies[0]:
                self.journal._lose(ids[_text(entry)], "")
        stop = replies[-1]
        if stop and engine.stopped_by is None:
            engine.stop(stop_error(orjson.loads(stop)))

    def counts(self, engine: Engine) -> dict[str, Any]:
        s = engine.summary
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "seen": time.time(),
            "taken": self.taken,
            "claimed": self.claimed,
            "held": len(self.held),
            "delivered": s.delivered,
            "failed": s.failed + s.invalid + s.unknown,
            "requests": s.requests,
            "throttled": s.throttled,
            "retries": s.retries,
        }

    async def _hand(
        self, engine: WorkerEngine, entries: list[tuple[bytes, dict[bytes, bytes]]]
    ) -> None:
        batches = []
        held = {e for e, _ in self.held.values()}
        for entry, fields in entries:
            if entry.decode() in held:  # (one just taken over is among its own entries too)
                continue
            held.add(entry.decode())
            try:
                batch = decode_batch(dict[Any, Any](fields))
            except ValueError:  # not ours: acknowledge it away
                await self.client.xack(self.keys.stream, GROUP, entry)
                continue
            self.held[batch.number] = (entry.decode(), fields)
            batches.append(batch)
        if not batches:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.batches, [str(b.number) for b in batches])
        for b in batches:
            pipe.hmget(self.keys.parts, [f"{b.number}:{r.line}" for r in b.recipients])
        records, *parts = await pipe.execute()
        for batch, raw, got in zip(batches, records, parts, strict=True):
            lines = [r.line for r in batch.recipients]
            found = {
                line: _part(line, orjson.loads(v)) for line, v in zip(lines, got, strict=True) if v
            }
            self.journal.take(batch, orjson.loads(raw) if raw else None, found)
            self.taken += 1
            if engine.stopped_by is not None:
                self.give_back(batch.number)
            else:
                await engine._plan(batch)

    async def _over(self) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self.keys.work, ["all_enqueued", "stop", "halted"])
        pipe.xlen(self.keys.stream)
        pipe.exists(self.keys.campaign)
        (all_enqueued, stop, halted), length, exists = await pipe.execute()
        # a planner interrupted while this worker served queues no more ("halted"); one
        # interrupted before is about to be run again: its new batches are waited for
        halted_now = halted is not None and float(halted) >= self.started
        return may_finish(
            all_enqueued=all_enqueued == b"1" or halted_now,
            queued=int(length),
            stopped=bool(stop),
            gone=not exists,
        )

    async def late(self, number: int) -> dict[str, Any] | None:
        """The outcome the worker that lost batch ``number`` got afterwards (``late``), if
        any (None too when Redis does not answer: the batch is sent as it would be)."""
        with contextlib.suppress(*DOWN):
            raw = await self.client.hget(self.keys.late, str(number))
            return orjson.loads(raw) if raw else None
        return None

    def give_back(self, number: int) -> None:
        if number in self.held and number not in self._given_back:
            self._given_back.append(number)

    async def give_back_now(self) -> None:
        """Add the batches given back to the stream again (and drop the entries held)."""
        if not self._given_back:
            return
        numbers, self._given_back = self._given_back, []
        pipe = self.client.pipeline(transaction=False)
        for number in numbers:  # (one another worker took over is its: not added again)
            entry, fields = self.held.pop(number)
            flat = [x for item in fields.items() for x in item]
            pipe.eval(GIVE_BACK, 1, self.keys.stream, GROUP, self.name, entry, *flat)
        await pipe.execute()


def _part(line: int, row: Mapping[str, Any]) -> PartRecord:
    return PartRecord(line, str(row["state"]), str(row.get("reason", "")), row.get("http"))


async def find_campaign(
    client: aioredis.Redis, wanted: str | None, wait: float, say: Callable[[str], None]
) -> Found | None:
    """The campaign to serve, waiting up to ``wait`` seconds for a planner to register it."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        got = await client.hgetall(REGISTRY)
        registry = {_text(k): orjson.loads(v) for k, v in got.items()}
        found = choose(registry, wanted)
        if found is not None or time.monotonic() >= deadline:
            return found
        if not told:
            what = f"campaign {wanted!r}" if wanted else "a campaign"
            say(f"waiting up to {wait:g} s for {what} to be planned (bulksend send ... --workers)")
            told = True
        await asyncio.sleep(0.2)


def state_keys_of(found: Found) -> StateKeys:
    from urllib.parse import quote

    return StateKeys(found.provider, quote(found.name, safe=""), found.state_id)


@contextlib.contextmanager
def campaign_dir() -> Any:
    with tempfile.TemporaryDirectory(prefix="bulksend-worker-") as d:
        yield Path(d)


def shared_stop(engine: Engine, name: str) -> bytes | None:
    """The stop record a worker shares (None: nothing to share, e.g. an interrupt)."""
    error = engine.stopped_by
    if error is None or isinstance(error, Interrupted) or str(error).startswith("worker "):
        return None
    return stop_record(stop_kind(error), str(error), name)


def exit_counts(engine: Engine) -> str:
    s = engine.summary
    parts = [f"{s.delivered:,} delivered"]
    for n, what in ((s.failed, "failed"), (s.invalid, "invalid"), (s.unknown, "unknown")):
        if n:
            parts.append(f"{n:,} {what}")
    return ", ".join(parts) + f" in {s.requests:,} requests"


async def run_worker(
    url: str,
    *,
    campaign: str | None,
    name: str,
    env: Mapping[str, str],
    idle: float = IDLE,
    wait: float = 60.0,
    say: Callable[[str], None],
    on_start: Callable[[Engine], None] | None = None,
) -> Engine | None:
    """Serve one campaign until it is over; the engine (its summary, what stopped it), or
    None when no campaign was there to serve."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    from bulksend.distributed.gate import client_from_url, reached
    from bulksend.distributed.keys import redact_url, url_password
    from bulksend.output.logs import redactor

    password = url_password(url)
    if password:
        redactor.register([password])
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), 5)
    client = client_from_url(url, flag="bulksend worker", retry=retry)
    try:
        found = await reached(
            find_campaign(client, campaign, wait, say),
            redact_url(url),
            down="is unreachable",
            otherwise="start Redis or check the URL",
            refused="refused the worker ({}); check the URL (its database number) and the "
            "user's rights",
        )
        stored = await client.hget(state_keys_of(found).campaign, "meta") if found else None
    except BaseException:
        with contextlib.suppress(*DOWN):
            await client.aclose()
        raise
    if found is None or stored is None:
        await client.aclose()
        return None
    keys = state_keys_of(found)
    try:
        return await _serve(client, keys, orjson.loads(stored), url, name, env, idle, say, on_start)
    except BaseException:  # (e.g. no key here: nothing taken, nothing to give back)
        with contextlib.suppress(*DOWN):
            await client.aclose()
        raise


async def _serve(
    client: aioredis.Redis,
    keys: StateKeys,
    meta: Mapping[str, Any],
    url: str,
    name: str,
    env: Mapping[str, str],
    idle: float,
    say: Callable[[str], None],
    on_start: Callable[[Engine], None] | None,
) -> Engine:
    from bulksend.campaign import build_provider
    from bulksend.config import resolve_secrets
    from bulksend.control.pause import MemorySwitch, PauseControl, PauseSetup, RedisSwitch
    from bulksend.dispatch.engine import EngineOptions
    from bulksend.distributed import shared_scheduler
    from bulksend.distributed.keys import key_fingerprint, redact_url
    from bulksend.net.transport import Transport
    from bulksend.output.logs import redactor
    from bulksend.output.report import Summary
    from bulksend.state.shard import ALREADY_DEDUPLICATED

    with campaign_dir() as directory:
        settings = settings_of(meta, directory, env)
        secrets = resolve_secrets(settings, env)
    redactor.register(secrets.values())
    if key_fingerprint(secrets) != keys.fingerprint:
        raise ConfigError(
            f"campaign {settings.name!r} is sent with another API key than this worker's: "
            "give the worker the planner's key"
        )
    say(f"worker {name} serves campaign {settings.name!r} ({redact_url(url)})")
    provider = build_provider(settings, secrets)
    scheduler = await shared_scheduler(url, settings, env, secrets=secrets)
    run_id = int(await client.incr(keys.run))
    held: dict[int, tuple[str, dict[bytes, bytes]]] = {}
    journal = StreamJournal(
        client, keys, redact_url(url), ttl=settings.state_ttl, rows={}, parts={}, stored={},
        run_id=run_id, say=say, held=held, consumer=name,
    )  # fmt: skip
    feed = Feed(client, keys, name, journal, held, idle=idle)
    setup = PauseSetup(
        switches=[RedisSwitch(url, settings.name, flag="bulksend worker")], on_change=say
    )
    control = PauseControl.for_send(MemorySwitch(), settings.windows, setup)
    options = EngineOptions(
        batch_size=settings.batch_size,
        workers=settings.in_flight,
        max_attempts=settings.max_attempts,
        max_unexpected=settings.max_unexpected,
    )
    summary = Summary(provider=provider.name, campaign=settings.name)
    try:
        async with Transport(
            settings.base_url, connections=settings.in_flight, timeout=settings.timeout
        ) as transport:
            engine = WorkerEngine(
                provider, transport, scheduler, ALREADY_DEDUPLICATED, options,
                summary=summary, journal=journal, pause=control, feed=feed,
            )  # fmt: skip
            journal.counts = (name, lambda: feed.counts(engine))
            if on_start is not None:
                on_start(engine)
            await engine.run([])
            await _sign_off(feed, engine, name)
    finally:
        await control.aclose()
        await scheduler.aclose()
        await journal.aclose("worker finished")
    return engine


async def _sign_off(feed: Feed, engine: Engine, name: str) -> None:
    """Give back what was not started, share a stop that ends the campaign, publish the
    counts (Redis out of reach: the batches wait for their idle time, then go to another)."""
    with contextlib.suppress(*DOWN):
        await feed.give_back_now()
        pipe = feed.client.pipeline(transaction=False)
        stop = shared_stop(engine, name)
        if stop is not None:
            pipe.hsetnx(feed.keys.work, "stop", stop)
        pipe.hset(feed.keys.workers, name, orjson.dumps({**feed.counts(engine), "held": 0}))
        await pipe.execute()


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


__all__ = [
    "IDLE",
    "Feed",
    "Found",
    "Status",
    "StreamJournal",
    "WorkerEngine",
    "choose",
    "default_name",
    "run_worker",
    "settings_of",
]
