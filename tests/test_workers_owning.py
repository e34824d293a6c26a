"""A worker that held a batch longer than ``--idle`` (stalled, not dead) and lost it to another
worker (``XAUTOCLAIM``) writes nothing of it any more (bulksend.workers.owning), against a real
``redis-server``: its in-flight mark is refused (so it does not send), its final outcome is kept
apart instead of overwriting the other's record, its refresh does not take the batch back, and
it does not add the batch to the stream again. Nothing is sent twice unless reported."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis.asyncio as aioredis

from bulksend.distributed.testing import RedisServer
from bulksend.errors import TakenOver
from bulksend.models import Batch, Recipient
from bulksend.recipients import Recipients
from bulksend.sandbox.testing import wait_until
from bulksend.state.redis_journal import StateKeys
from bulksend.workers.owning import GIVE_BACK, REFRESH
from bulksend.workers.queue import GROUP, WorkQueue
from bulksend.workers.worker import StreamJournal
from tests.test_workers_redis import Campaign, _no_process_left  # noqa: F401

KEYS = StateKeys("maxtraffic", "own", "f00d:beef")
#: stream entries, and an XREADGROUP reply, as a client that does not decode reads them (bytes:
#: redis-py's own types say only ``bytes | str``)
Entries = list[tuple[bytes, dict[bytes, bytes]]]
StreamRead = list[tuple[bytes, Entries]]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


def _batch(number: int) -> Batch:
    rows = [Recipient(number * 10 + i, f"v{number}-{i}", None, {}) for i in range(3)]
    return Batch(number, "api", Recipients.of(rows))


async def _queued(client: aioredis.Redis, *numbers: int) -> dict[int, Batch]:
    work = WorkQueue(client, KEYS)
    await work.start("own", "maxtraffic")
    batches = {n: _batch(n) for n in numbers}
    for b in batches.values():
        await work.add(b)
    return batches


class Holder:
    """One worker's hold on batches and its journal (no engine: the writes only)."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        self.client, self.name = client, name
        self.held: dict[int, tuple[str, dict[bytes, bytes]]] = {}
        self.said: list[str] = []
        self.journal = StreamJournal(
            client, KEYS, "redis://test", ttl=60.0, rows={}, parts={}, stored={}, run_id=1,
            say=self.said.append, held=self.held, consumer=name,
        )  # fmt: skip

    async def take(self, batch: Batch, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        entry, fields = entries[0]
        self.held[batch.number] = (entry.decode(), fields)
        raw = await self.client.hget(KEYS.batches, str(batch.number))
        assert raw is not None
        self.journal.take(batch, orjson.loads(raw), {})

    async def read(self, batch: Batch) -> None:
        got = cast(
            StreamRead, await self.client.xreadgroup(GROUP, self.name, {KEYS.stream: ">"}, count=1)
        )
        await self.take(batch, got[0][1])

    async def claim(self, batch: Batch) -> None:
        """Take over what is idle (min idle 0: as XAUTOCLAIM does after --idle)."""
        _, entries, *_ = await self.client.xautoclaim(KEYS.stream, GROUP, self.name, 0, "0-0")
        await self.take(batch, cast(Entries, entries))

    async def written(self) -> None:
        self.journal.flush()
        if self.journal._writer is not None:
            await self.journal._writer


async def _record(client: aioredis.Redis, number: int) -> dict[str, object]:
    raw = await client.hget(KEYS.batches, str(number))
    assert raw is not None
    result: dict[str, object] = orjson.loads(raw)
    return result


async def test_a_stalled_worker_s_late_outcome_does_not_overwrite_the_takeover(
    client: aioredis.Redis,
) -> None:
    batch = (await _queued(client, 1))[1]
    a, b = Holder(client, "a"), Holder(client, "b")
    await a.read(batch)
    await a.journal.in_flight(batch)  # a holds it: recorded, then sent ... and a stalls
    await b.claim(batch)  # past --idle: b takes it over and finds it in flight
    previous = b.journal.previous(1)
    assert previous is not None
    assert previous.state == "in_flight"
    a.journal.finished(batch, "delivered")  # a wakes up: its outcome is refused
    await a.written()
    assert 1 in a.journal.lost
    assert not a.held
    assert (await _record(client, 1))["state"] == "in_flight"
    late_raw = await client.hget(KEYS.late, "1")
    assert late_raw is not None
    late = orjson.loads(late_raw)
    assert late["worker"] == "a"
    assert late["record"]["state"] == "delivered"
    assert any("taken over by another worker" in s for s in a.said)
    b_batch = _batch(1)
    await b.journal.in_flight(b_batch)
    b.journal.finished(b_batch, "delivered", "may have arrived twice: ...", doubt="resent")
    await b.written()
    record = await _record(client, 1)
    assert record["state"] == "delivered"
    assert record["doubt"] == "resent"
    assert await client.xlen(KEYS.stream) == 0  # b acknowledged it
    assert not (await client.xpending(KEYS.stream, GROUP))["pending"]


async def test_a_worker_that_lost_a_batch_before_sending_it_does_not_send_it(
    client: aioredis.Redis,
) -> None:
    batch = (await _queued(client, 2))[2]
    a, b = Holder(client, "a"), Holder(client, "b")
    await a.read(batch)  # taken, waiting for the quota ... stalled
    await b.claim(batch)  # found queued: b sends it, no doubt (a never did)
    with pytest.raises(TakenOver, match="taken over by another worker"):
        await a.journal.in_flight(batch)
    assert (await _record(client, 2))["state"] == "queued"
    assert await client.hget(KEYS.late, "2") is None


async def test_a_refresh_and_a_give_back_leave_another_worker_s_batch_alone(
    client: aioredis.Redis,
) -> None:
    await _queued(client, 3)
    got = cast(StreamRead, await client.xreadgroup(GROUP, "a", {KEYS.stream: ">"}, count=1))
    entry = got[0][1][0][0]
    fields = [x for item in got[0][1][0][1].items() for x in item]
    assert await client.eval(REFRESH, 1, KEYS.stream, GROUP, "a", entry) == []
    await client.xautoclaim(KEYS.stream, GROUP, "b", 0, "0-0")
    assert await client.eval(REFRESH, 1, KEYS.stream, GROUP, "a", entry) == [entry]
    assert await client.eval(GIVE_BACK, 1, KEYS.stream, GROUP, "a", entry, *fields) == 0
    pending = await client.xpending_range(KEYS.stream, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry, b"b")]
    assert await client.xlen(KEYS.stream) == 1  # not added again
    assert await client.eval(GIVE_BACK, 1, KEYS.stream, GROUP, "b", entry, *fields) == 1
    assert await client.xlen(KEYS.stream) == 1  # added again, the old entry gone
    assert not (await client.xpending(KEYS.stream, GROUP))["pending"]


def test_a_worker_paused_past_idle_sends_nothing_twice_unreported(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Real processes: w0 is stopped (SIGSTOP) with batches in hand for longer than --idle,
    the others take them over, then w0 goes on (SIGCONT)."""
    run = Campaign(tmp_path, n_unique=2_000)
    run.plan(redis_server.url)
    for i in range(3):
        run.worker(redis_server.url, f"w{i}", "--idle", "1")
    wait_until(lambda: run.delivered() > 400, timeout=20, interval=0.1)
    os.kill(run.workers["w0"].pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)
    finally:
        os.kill(run.workers["w0"].pid, signal.SIGCONT)
    status, err, codes = run.finish()
    assert status == 0, err[-3000:]
    assert codes == {"w0": 0, "w1": 0, "w2": 0}
    run.check()


async def test_a_batch_taken_over_on_a_worker_s_first_look_is_handed_once(
    client: aioredis.Redis,
) -> None:
    """A worker's first look reads its own pending entries (those it held before a restart)
    after taking over idle ones: an entry just taken over is among them and must not be
    handed to the engine twice (it was sent twice)."""
    import asyncio
    from types import SimpleNamespace

    from bulksend.output.report import Summary
    from bulksend.workers.worker import Feed

    batch = (await _queued(client, 4))[4]
    await Holder(client, "a").read(batch)  # a holds it ... and dies
    planned: list[int] = []

    async def plan(b: Batch) -> None:
        planned.append(b.number)

    engine = SimpleNamespace(
        _queue=asyncio.Queue(maxsize=8), stopped_by=None, summary=Summary(), _plan=plan
    )
    b = Holder(client, "b")
    feed = Feed(client, KEYS, "b", b.journal, b.held, idle=0.0)
    await feed._turn(engine, own=True)  # type: ignore[arg-type]
    assert planned == [4]
