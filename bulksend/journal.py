"""The durable journal of a send, for resume without sending twice what the provider confirmed.

SQLite in WAL mode: embedded, crash-safe, one file, readable with any SQLite tool. Batches are a
deterministic function of (recipient file, campaign settings): the same file read with the same
settings is deduplicated and packed into the same numbered batches. So the journal stores the
campaign's identity and one row per batch (first and last source line, size, a digest of its
recipients, and its state) instead of one row per recipient; a resume re-plans from the file,
checks each planned batch against the journal, and skips what was delivered.

Batch states::

    in_flight ──► delivered | invalid | failed | unknown | skipped | split
        (a batch still ``in_flight`` when a run starts was in flight when the last run died:
         its outcome is unknown)

``split`` batches (422 bisection) keep per-part outcomes in ``parts``.

Writes are group-committed: everything queued in one turn of the event loop (``in_flight``
marks, final states) shares one commit on the next turn, and an ``in_flight`` mark is durable
before its request is sent. A final state lost in a crash leaves the batch ``in_flight``, which
the next run treats as unknown: it may resend it (counted as a possible duplicate) but never
loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson

from bulksend.errors import ConfigError
from bulksend.models import Batch, Recipient
from bulksend.recipients import Recipients

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    number INTEGER PRIMARY KEY,
    grp TEXT NOT NULL,
    first_line INTEGER NOT NULL,
    last_line INTEGER NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    http_status INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 1,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    batch INTEGER NOT NULL,
    line INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    http_status INTEGER,
    PRIMARY KEY (batch, line)
);
CREATE TABLE IF NOT EXISTS runs (
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT
);
"""

FINAL = frozenset({"delivered", "invalid", "failed", "unknown", "skipped", "split"})


def file_fingerprint(path: Path) -> str:
    """sha256 of the whole file plus its size: any change to the recipients is detected."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return f"sha256:{h.hexdigest()}:{size}"


def batch_digest(recipients: Iterable[Recipient]) -> str:
    """blake2b-96 of ``line US id US uid RS`` for every recipient, joined (journals keep it and
    a resumed run checks its batches by it: never change what is hashed)."""
    if isinstance(recipients, Recipients):  # the same text, from the columns, without format
        count = len(recipients)
        rows = zip(
            map(str, recipients.lines),
            _blanked(recipients.ids, count),
            _blanked(recipients.uids, count),
            strict=True,
        )
        text = "\x1e".join(map("\x1f".join, rows)) + "\x1e" if count else ""
    else:
        text = "".join([f"{r.line}\x1f{r.id or ''}\x1f{r.uid or ''}\x1e" for r in recipients])
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _blanked(values: list[str | None] | None, count: int) -> Iterable[str]:
    """The column with "" for None (as ``r.id or ""``)."""
    if values is None:
        return repeat("", count)
    if None in values:
        return [v or "" for v in values]
    return values  # type: ignore[return-value]  # no None in it


def first_and_last_line(recipients: Sequence[Recipient]) -> tuple[int, int]:
    if isinstance(recipients, Recipients):
        return recipients.lines[0], recipients.lines[-1]
    return recipients[0].line, recipients[-1].line


@dataclass(frozen=True, slots=True)
class Identity:
    """What a journal belongs to. ``plan`` covers every setting that changes the batches."""

    campaign: str  # sha256 of the campaign file
    recipients: str  # file_fingerprint of the recipient file
    plan: str  # digest of provider, operation, columns, batch size, message

    def as_rows(self) -> Mapping[str, str]:
        return {"campaign": self.campaign, "recipients": self.recipients, "plan": self.plan}


@dataclass(frozen=True, slots=True)
class BatchRecord:
    number: int
    digest: str
    state: str
    reason: str
    http_status: int | None
    attempts: int
    runs: int


@dataclass(frozen=True, slots=True)
class PartRecord:
    line: int
    state: str
    reason: str
    http_status: int | None


class Journal:
    """One campaign's journal. Create with ``Journal.open``; use from one event loop."""

    def __init__(self, path: Path, db: sqlite3.Connection, *, flush_interval: float) -> None:
        self.path = path
        self._db = db
        self._flush_interval = flush_interval
        self._soon = False  # a flush is scheduled for the loop's next turn
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.TimerHandle | None = None
        self._previous: dict[int, BatchRecord] = {
            row[0]: BatchRecord(*row)
            for row in db.execute(
                "SELECT number, digest, state, reason, http_status, attempts, runs FROM batches"
            )
        }
        self._run_id = db.execute("INSERT INTO runs (started) VALUES (?)", (time.time(),)).lastrowid
        db.commit()

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: Path,
        identity: Identity,
        *,
        resume: bool,
        fresh: bool = False,
        flush_interval: float = 0.0,
        meta: Mapping[str, Any] | None = None,
    ) -> Journal:
        """Open (``resume``) or create the journal at ``path``.

        An existing journal is never overwritten silently: without ``resume`` or ``fresh`` it is
        a ConfigError, and with ``resume`` its identity must match this campaign exactly.
        """
        exists = path.exists() and path.stat().st_size > 0
        if exists and fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            exists = False
        if exists and not resume:
            raise ConfigError(
                f"{path}: a journal of an earlier send exists; add --resume to continue it "
                "(delivered recipients are skipped) or --fresh to start over"
            )
        if resume and not exists:
            raise ConfigError(f"{path}: no journal to resume (run the send without --resume)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a bulksend journal ({exc})") from None
        stored = dict(db.execute("SELECT key, value FROM campaign").fetchall())
        if stored:
            for key, value in identity.as_rows().items():
                if stored.get(key) != value:
                    db.close()
                    what = {
                        "campaign": "the campaign file",
                        "recipients": "the recipient file",
                        "plan": "the settings that shape the batches (batch size, columns, ...)",
                    }[key]
                    raise ConfigError(
                        f"{path}: cannot resume: {what} changed since this journal was written; "
                        "restore it, or start over with --fresh"
                    )
        else:
            rows = dict(identity.as_rows())
            rows["meta"] = orjson.dumps(dict(meta or {})).decode()
            db.execute("BEGIN")
            db.executemany("INSERT INTO campaign (key, value) VALUES (?, ?)", rows.items())
            db.execute("COMMIT")
        return cls(path, db, flush_interval=flush_interval)

    @staticmethod
    def read_meta(path: Path) -> dict[str, Any]:
        """The meta a journal was created with (campaign file, flags), without opening a run."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT value FROM campaign WHERE key = 'meta'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a bulksend journal ({exc})") from None
        meta = orjson.loads(row[0]) if row else {}
        return meta if isinstance(meta, dict) else {}

    # -- what the last run left -----------------------------------------------------------------
    def previous(self, number: int) -> BatchRecord | None:
        return self._previous.get(number)

    def parts(self, number: int) -> list[PartRecord]:
        rows = self._db.execute(
            "SELECT line, state, reason, http_status FROM parts WHERE batch = ? ORDER BY line",
            (number,),
        )
        return [PartRecord(*row) for row in rows]

    @property
    def resumed(self) -> bool:
        return bool(self._previous)

    # -- writing ----------------------------------------------------------------------------
    def _queue(self, sql: str, params: tuple[Any, ...], *, urgent: bool = False) -> None:
        """Queue a write, committed on the loop's next turn with everything queued in this one
        (or, for a write nobody waits for, within ``flush_interval`` when that is set)."""
        self._pending.append((sql, params))
        if (urgent or not self._flush_interval) and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.flush)
        elif self._flusher is None and not self._soon:
            loop = asyncio.get_running_loop()
            self._flusher = loop.call_later(self._flush_interval, self.flush)

    async def in_flight(self, batch: Batch) -> None:
        """Record that ``batch`` is about to be sent; returns once that is durable."""
        recs = batch.recipients
        self._queue(
            "INSERT INTO batches (number, grp, first_line, last_line, size, digest, state, "
            "attempts, updated) VALUES (?, ?, ?, ?, ?, ?, 'in_flight', ?, ?) "
            "ON CONFLICT(number) DO UPDATE SET state='in_flight', attempts=excluded.attempts, "
            "runs=runs + (batches.state != 'in_flight'), updated=excluded.updated",
            (
                batch.number,
                batch.group,
                *first_and_last_line(recs),
                len(recs),
                batch_digest(recs),
                batch.attempts,
                time.time(),
            ),
            urgent=True,
        )
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
    ) -> None:
        """Record a batch's final state (committed within the flush interval)."""
        if state not in FINAL:
            raise ValueError(f"not a final state: {state}")
        self._queue(
            "UPDATE batches SET state=?, reason=?, http_status=?, attempts=?, updated=? "
            "WHERE number=?",
            (state, reason, http_status, batch.attempts, time.time(), batch.number),
        )
        for line, part_state, part_reason, status in parts:
            self._queue(
                "INSERT OR REPLACE INTO parts (batch, line, state, reason, http_status) "
                "VALUES (?, ?, ?, ?, ?)",
                (batch.number, line, part_state, part_reason, status),
            )

    def flush(self) -> None:
        """Commit everything pending in one transaction and wake the waiters."""
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._soon = False
        pending, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        if pending:
            db = self._db
            db.execute("BEGIN")
            for sql, params in pending:
                db.execute(sql, params)
            db.execute("COMMIT")
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def close(self, outcome: str = "finished") -> None:
        self.flush()
        self._db.execute(
            "UPDATE runs SET finished=?, outcome=? WHERE rowid=?",
            (time.time(), outcome, self._run_id),
        )
        self._db.close()

    # -- reading, for `bulksend retry` and reports ------------------------------------------------
    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, SUM(size) FROM batches GROUP BY state")
        return {state: int(total) for state, total in rows}
