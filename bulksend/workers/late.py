"""What a batch really ended in when a worker that lost it still got its answer (pure).

A worker stalled longer than ``--idle`` loses its batches to another worker (``owning``). When
its request for one of them had been sent, the provider may well have answered it: the stalled
worker then writes that outcome apart, under the state's ``late`` key (``WRITE``, the first
outcome only), never over the record of the worker that took the batch over. The takeover
resent the batch as a possible duplicate; its own attempt may end delivered, or not.

``reconcile`` joins the two into what is true, row by row:

* the takeover delivered it: its record stands (it already says the rows may have arrived
  twice) -- unless it does not, because the batch changed hands twice (A, B, then A again: the
  record is A's, the late outcome B's) and both requests were answered: then the rows arrived
  twice and the record says so;
* the late outcome says delivered and the takeover's says anything else (failed, invalid, unknown,
  skipped): the rows are ``delivered``, with a reason naming the worker whose request delivered
  them and how the resend ended. They are counted as possible duplicates (the reason starts
  ``may have arrived twice``) only when the resend may itself have arrived: it ended ``unknown``
  (no answer), or the late outcome already was a possible duplicate. A resend that was refused
  (failed with an answer, invalid) or never went out (skipped) did not arrive;
* the late outcome says anything else: the takeover's record stands.

A record not settled yet (queued, in flight) is left as it is. Readers apply it where they read
records: the planner before it reports a batch, ``RedisJournal.open`` (so a planner or send run
again reports the rows delivered earlier and never sends them a third time), ``bulksend status``;
and a worker that took a batch over asks ``delivered_late`` before each attempt, so it does not
send again rows the late outcome says were delivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bulksend.output.report import POSSIBLY_TWICE

__all__ = ["delivered_late", "reconcile"]

_UNSETTLED = frozenset({"queued", "in_flight"})
Row = Mapping[str, Any]  # a row's outcome: state, reason, http


def _late_rows(late: Row) -> tuple[Row, dict[int, Row]]:
    """The late outcome's record and its parts by line."""
    record: Row = late.get("record") or {}
    parts: dict[int, Row] = {}
    for name, value in (late.get("parts") or {}).items():
        _, _, line = str(name).rpartition(":")
        if line.isdigit():
            parts[int(line)] = value
    return record, parts


def _row(record: Row, parts: Mapping[int, Row], line: int) -> Row | None:
    """What ``record`` (and its ``parts`` when split) says of the row on ``line``."""
    if record.get("state") == "split":
        return parts.get(line)
    return record


def _delivered_by(worker: str, late: Row, resend: Row) -> dict[str, Any]:
    """A row the stalled ``worker`` delivered (``late``) and the takeover did not (``resend``)."""
    ended = str(resend.get("state"))
    said = str(resend.get("reason") or "")
    twice = ended == "unknown" or str(late.get("reason") or "").startswith(POSSIBLY_TWICE)
    reason = (
        f"delivered by worker {worker}'s request (in flight when another worker took the batch "
        f"over); the resend ended {ended}" + (f": {said}" if said else "")
    )
    return {
        "state": "delivered",
        "reason": f"{POSSIBLY_TWICE}: {reason}" if twice else reason,
        "http": late.get("http"),
    }


def _sent(row: Row) -> bool:
    """Whether ``row`` says its own worker's request delivered it (not: reported delivered
    from another worker's outcome, ``delivered_late`` / ``_delivered_by``)."""
    reason = str(row.get("reason") or "").removeprefix(f"{POSSIBLY_TWICE}: ")
    return row.get("state") == "delivered" and not reason.startswith("delivered by worker ")


def _both(worker: str, late: Row, mine: Row) -> dict[str, Any]:
    """``mine`` (delivered) once the ``late`` outcome of ``worker`` says it delivered the rows
    too: when both requests really went out and were answered, they arrived twice -- the batch
    changed hands twice (A, B, then A again), so the record's writer resent nothing it knew of
    as a possible duplicate."""
    reason = str(mine.get("reason") or "")
    if reason.startswith(POSSIBLY_TWICE) or not (_sent(late) and _sent(mine)):
        return {"reason": reason}
    return {
        "reason": f"{POSSIBLY_TWICE}: delivered by two workers' requests (worker {worker}'s "
        "too: the batch was taken over while it was in flight)"
    }


def reconcile(
    record: Row, parts: Mapping[int, Row], late: Row | None
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The record and parts (line -> part) of a batch as they really ended, given the ``late``
    outcome of a worker that lost it (None: there is none). Unchanged when the late outcome
    delivered nothing the takeover did not."""
    same = dict(record), {line: dict(p) for line, p in parts.items()}
    state = record.get("state")
    if not late or state in _UNSETTLED:
        return same
    theirs, their_parts = _late_rows(late)
    if theirs.get("state") not in ("delivered", "split"):
        return same
    worker = str(late.get("worker") or "?")
    if state != "split" and theirs.get("state") == "delivered":
        if state == "delivered":
            return {**record, **_both(worker, theirs, record)}, {}
        return {**record, **_delivered_by(worker, theirs, record)}, {}
    lines = sorted(set(parts) | set(their_parts))
    merged: dict[int, dict[str, Any]] = {}
    changed = False
    for line in lines:
        mine, other = _row(record, parts, line), _row(theirs, their_parts, line)
        theirs_only = mine is None or mine.get("state") != "delivered"
        if other is not None and other.get("state") == "delivered" and theirs_only:
            merged[line] = _delivered_by(worker, other, mine or {"state": "unknown"})
            changed = True
            continue
        both_sent = other is not None and other.get("state") == "delivered"
        if both_sent and mine is not None and state == "split":  # (whole: lines unknown here)
            assert other is not None
            both = _both(worker, other, mine)
            changed = changed or both["reason"] != mine.get("reason")
            merged[line] = {
                "state": "delivered",
                "reason": both["reason"],
                "http": mine.get("http"),
            }
            continue
        if mine is not None:
            merged[line] = {k: mine.get(k) for k in ("state", "reason", "http")}
    if not changed:
        return same
    return {**record, "state": "split", "reason": "", "http": None}, merged


def delivered_late(late: Row | None, lines: Sequence[int], *, unanswered: bool = False) -> str:
    """The reason to report rows on ``lines`` delivered without sending them again, when the
    ``late`` outcome of the worker that lost the batch says it delivered every one ("" when
    it does not). ``unanswered``: a request of this worker for them got no answer (so it may
    have arrived too)."""
    if not late or not lines:
        return ""
    theirs, their_parts = _late_rows(late)
    rows = [_row(theirs, their_parts, line) for line in lines]
    if not all(r is not None and r.get("state") == "delivered" for r in rows):
        return ""
    worker = str(late.get("worker") or "?")
    first = rows[0] or {}
    twice = unanswered or str(first.get("reason") or "").startswith(POSSIBLY_TWICE)
    reason = (
        f"delivered by worker {worker}'s request (in flight when this batch was taken over "
        "from it); not sent again"
    )
    return f"{POSSIBLY_TWICE}: {reason}" if twice else reason
