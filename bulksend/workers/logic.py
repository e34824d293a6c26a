"""The decisions of a planner and its workers, apart from Redis (pure: no I/O, no clock).

* ``encode_batch`` / ``decode_batch``: a batch as the fields of one stream entry, and back;
* ``planned``: what a planner does with a batch, given the record an earlier life left;
* ``settled_results``: a batch's results, from the record (and parts) a worker wrote;
* ``may_finish``: whether a worker can stop (the campaign is complete, or stopped);
* ``Progress``: ``bulksend status``'s figures (settled, in flight, queued, rate, ETA).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bulksend.models import Batch, Recipient, Status
from bulksend.recipients import Recipients

__all__ = [
    "Plan",
    "Progress",
    "decode_batch",
    "encode_batch",
    "may_finish",
    "planned",
    "settled_results",
]

#: a batch's record states that say a worker has not settled it yet
UNSETTLED = frozenset({"queued", "in_flight"})
_STATUSES = frozenset(s.value for s in Status)


class Plan(enum.Enum):
    ENQUEUE = "enqueue"  # not in the stream: add it
    AWAIT = "await"  # in the stream or held by a worker (an earlier planner added it): wait
    RESUME = "resume"  # settled before: as a resumed single-process send does with it


def planned(state: str | None) -> Plan:
    """What a planner does with a batch whose record is in ``state`` (None: no record)."""
    if state is None:
        return Plan.ENQUEUE
    if state in UNSETTLED:
        return Plan.AWAIT
    return Plan.RESUME


def encode_batch(batch: Batch) -> dict[str, bytes]:
    """A batch as stream-entry fields: its number, group and rows (line, id, uid, attributes:
    a worker re-encodes the request, and can split it after a 422)."""
    recs = Recipients.of(batch.recipients)
    rows = {
        "lines": list(recs.lines),
        "ids": recs.ids,
        "uids": recs.uids,
        "attrs": [dict(a) for a in recs.attrs] if recs.attrs is not None else None,
    }
    return {
        "batch": str(batch.number).encode(),
        "group": batch.group.encode(),
        "rows": orjson.dumps(rows),
    }


def decode_batch(fields: Mapping[bytes, bytes | str] | Mapping[str, bytes | str]) -> Batch:
    """The batch ``encode_batch`` wrote (``ValueError`` for an entry that is not one)."""
    got = {_text(k): v for k, v in fields.items()}
    try:
        rows = orjson.loads(got["rows"])
        recipients = Recipients(rows["lines"], rows["ids"], rows["uids"], rows["attrs"])
        return Batch(int(got["batch"]), _text(got["group"]), recipients)
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a batch of bulksend's: {exc}") from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Settled:
    """One result of a settled batch: rows, final state, reason, HTTP status."""

    recipients: Sequence[Recipient]
    status: Status
    reason: str = ""
    http_status: int | None = None
    attempts: int = 0


def settled_results(
    batch: Batch, record: Mapping[str, Any], parts: Mapping[int, Mapping[str, Any]]
) -> list[Settled]:
    """What a worker's record of ``batch`` says each row ended in. A ``split`` batch (a 422
    bisection) by its parts (a row without a part record: unknown)."""
    state = str(record.get("state"))
    attempts = int(record.get("attempts", 0))
    if state != "split":
        status = Status(state) if state in _STATUSES else Status.UNKNOWN
        reason = str(record.get("reason", ""))
        return [Settled(batch.recipients, status, reason, record.get("http"), attempts)]
    out = []
    for r in batch.recipients:
        part = parts.get(r.line)
        if part is None:
            out.append(Settled([r], Status.UNKNOWN, "no outcome recorded", None, attempts))
        else:
            status = Status(str(part["state"]))
            out.append(
                Settled([r], status, str(part.get("reason", "")), part.get("http"), attempts)
            )
    return out


def may_finish(*, all_enqueued: bool, queued: int, stopped: bool, gone: bool) -> bool:
    """Whether a worker with nothing in hand can exit: the planner queued every batch and the
    stream is empty (every batch settled), or the campaign stopped, or its state is gone."""
    return gone or stopped or (all_enqueued and queued == 0)


@dataclass(frozen=True, slots=True)
class Progress:
    """A campaign's progress as ``bulksend status`` shows it."""

    rows: int  # rows in batches (every unique, valid recipient)
    settled: int  # of them, in batches a worker settled
    delivered: int
    in_flight: int  # batches a worker holds
    queued: int  # batches in the stream no worker took yet
    elapsed: float  # seconds since the planner started

    @property
    def rate(self) -> float:
        return self.settled / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every row is settled at the rate so far (None: no rate yet)."""
        left = max(0, self.rows - self.settled)
        if left == 0:
            return 0.0
        return left / self.rate if self.rate > 0 else None


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
