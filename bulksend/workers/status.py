"""``bulksend status redis://... CAMPAIGN``: a campaign's progress, read from Redis."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from bulksend.state.redis_journal import StateKeys
from bulksend.workers.late import reconcile
from bulksend.workers.logic import Progress, eta_text
from bulksend.workers.queue import GROUP


async def read_status(client: aioredis.Redis, keys: StateKeys) -> dict[str, Any]:
    """What ``render`` shows: the plan, the records by state, the stream, the workers."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.work)
    pipe.xlen(keys.stream)
    pipe.hgetall(keys.workers)
    work, length, workers = await pipe.execute()
    states: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    late = await client.hgetall(keys.late)  # (rare: batches a stalled worker still answered)
    async for field, value in client.hscan_iter(keys.batches, count=5000):
        record = orjson.loads(value)
        parts: dict[int, Any] = {}
        if field in late:
            record, parts = await _reconciled(client, keys, field, record, late[field])
        states[record.get("state", "?")] += 1
        if parts:
            rows.update(str(p.get("state")) for p in parts.values())
        else:
            rows[record.get("state", "?")] += int(record.get("size", 0))
    pending = 0
    if length:
        try:
            pending = int((await client.xpending(keys.stream, GROUP))["pending"])
        except Exception:  # (no group yet)
            pending = 0
    return {
        "work": {k.decode(): v.decode() for k, v in work.items()},
        "queued": int(length) - pending,
        "held": pending,
        "states": dict(states),
        "rows": dict(rows),
        "workers": {k.decode(): orjson.loads(v) for k, v in workers.items()},
    }


async def _reconciled(
    client: aioredis.Redis, keys: StateKeys, field: Any, record: Any, late: bytes | str
) -> tuple[dict[str, Any], dict[int, Any]]:
    """A batch's record joined with the late outcome of a worker that lost it (``late``)."""
    parts = {}
    if record.get("state") == "split":
        async for name, value in client.hscan_iter(keys.parts, match=f"{field.decode()}:*"):
            parts[int(name.rpartition(b":")[2])] = orjson.loads(value)
    return reconcile(record, parts, orjson.loads(late))


def progress(status: Mapping[str, Any], now: float) -> Progress:
    work, rows = status["work"], status["rows"]
    settled = sum(n for state, n in rows.items() if state not in ("queued", "in_flight"))
    started = float(work.get("started", now) or now)
    return Progress(
        rows=int(work.get("rows", 0) or 0) or sum(rows.values()),
        settled=settled,
        delivered=rows.get("delivered", 0),
        in_flight=int(status["held"]),
        queued=int(status["queued"]),
        elapsed=max(0.0, now - started),
    )


def render(name: str, status: Mapping[str, Any], now: float | None = None) -> str:
    """The status for people (pure: ``now`` given)."""
    now = time.time() if now is None else now
    p = progress(status, now)
    work = status["work"]
    planned = "every batch queued" if work.get("all_enqueued") == "1" else "still planning"
    lines = [
        f"campaign {name!r}: {planned}, {int(work.get('enqueued', 0) or 0):,} batches queued "
        "so far",
        f"  settled {p.settled:,} of {p.rows:,} rows ({p.delivered:,} delivered); batches in "
        f"flight {p.in_flight:,}, waiting {p.queued:,}",
        f"  rate {p.rate:,.1f} rows/s, ETA {eta_text(p.eta)}",
    ]
    if work.get("stop"):
        lines.append(f"  stopped: {orjson.loads(work['stop']).get('message', '')}")
    for worker, c in sorted(status["workers"].items()):
        ago = max(0.0, now - float(c.get("seen", now)))
        lines.append(
            f"  worker {worker}: {c.get('delivered', 0):,} delivered, {c.get('requests', 0):,} "
            f"requests, holds {c.get('held', 0)} batches, seen {ago:.0f} s ago"
        )
    return "\n".join(lines)
