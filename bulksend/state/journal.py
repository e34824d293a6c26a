"""The durable journal of a send, for resume without sending twice what the provider confirmed.

SQLite in WAL mode: embedded, crash-safe, one file, readable with any SQLite tool. Batches are a
deterministic function of (recipient file, campaign settings): the same file read with the same
settings is deduplicated and packed into the same numbered batches. So the journal stores the
campaign's identity and one row per batch (first and last source line, size, a digest of its
recipients: ``fast_digest``, ``batch_digest`` in journals before issue 16; and its state)
instead of one row per recipient; a resume re-plans from the file, checks each planned batch
against the journal, and skips what was delivered.

Batch states::

    in_flight ──► delivered | invalid | failed | unknown | skipped | split
        (a batch still ``in_flight`` when a run starts was in flight when the last run died:
         its outcome is unknown)

Rows settled before batching (duplicates, rows a suppression list holds, rows the reader
rejected) are not journaled: a resume reads the same file and lists and settles them again.
``split`` batches (422 bisection) keep per-part outcomes in ``parts``. A batch's ``doubt`` says
why the provider may already have it (an earlier request got no answer); a batch delivered after
that has a reason starting ``may have arrived twice``, and later runs count it again as a
possible duplicate, so the summary covers the whole campaign.

Running the same send again continues its journal when what is sent is unchanged: the recipient
file, the settings that shape the batches and the campaign file's keys that say what is sent
(``Journal.open``); a changed one is refused, naming what changed, unless the journal records
nothing that can have reached the provider. Settings that change only how the send goes (the
base URL, limits, timeouts, ...: ``RESUMABLE_KEYS``) may change between runs; the resume names
them. The recipient file is known by its sha256 (``file_fingerprint``), computed in a thread
once the send has started: until it is written, the journal holds the file's size, times and
inode (``provisional_fingerprint``), which a resume after a crash in that time compares instead.

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
import os
import sqlite3
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Protocol

import orjson

from bulksend.config import SEND_KEYS
from bulksend.errors import ConfigError
from bulksend.models import Batch, Recipient
from bulksend.output import private
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
    updated REAL NOT NULL,
    run INTEGER,
    doubt TEXT NOT NULL DEFAULT ''
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
#: campaign-file keys that change how a send goes, not what it sends nor how its recipients are
#: cut into batches: a resume goes on when only they changed, and says so (docs/operations.md).
#: Every key of ``[auth]`` too (where the credentials are read from).
RESUMABLE_KEYS = frozenset(
    {
        "name",
        "[recipients].path",  # the file's contents are checked, wherever it lies
        "[recipients].exclude",  # so are the suppression lists' (in the plan)
        "[api].paths",
        "[api].auth",
        *(f"[send].{key}" for key in SEND_KEYS - {"batch_size"}),
    }
)
#: the same among the named settings of a plan (``Identity.details["settings"]``)
RESUMABLE_SETTINGS = frozenset({"campaign name", "[api] paths", "[api] auth"})
#: columns later versions added to ``batches`` (an older journal gets them when opened)
_ADDED_COLUMNS = {"run": "INTEGER", "doubt": "TEXT NOT NULL DEFAULT ''"}


def file_fingerprint(path: Path) -> str:
    """sha256 of the whole file plus its size: any change to the recipients is detected.

    When ``prefetch_fingerprint`` started on the same file (unchanged since), its result."""
    early = _prefetched.pop(os.path.abspath(path), None)
    if early is not None:
        found = early.result()
        if found is not None:
            return found
    return _fingerprint(path)


def _fingerprint(path: Path) -> str:
    """sha256 of the file and its size, read into one buffer (no new 1 MiB object a read)."""
    h = hashlib.sha256()
    size = 0
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while got := f.readinto(buffer):
            h.update(view[:got])
            size += got
    return f"sha256:{h.hexdigest()}:{size}"


#: what ``provisional_fingerprint`` gives: size, mtime and ctime in ns, inode number
FileStat = tuple[int, int, int, int]


def provisional_fingerprint(stat: FileStat) -> str:
    """What a journal keeps of the recipient file until its ``file_fingerprint`` is known (a
    fraction of a second for most files): ``stat:SIZE:MTIME_NS:CTIME_NS:INODE``. A resume
    after a crash in that time compares these instead of the hash: a file written since has
    another size, mtime or ctime (which no tool can set back), a file replaced another inode.
    No device number: it may change when the machine restarts (docs/operations.md)."""
    return "stat:" + ":".join(map(str, stat))


class FileDigest:
    """``file_fingerprint`` of a file, computed in a thread (sha256 and reads let go of the
    GIL) once started, and the file's ``provisional_fingerprint`` when it was made."""

    def __init__(self, path: Path, *, start: bool = True) -> None:
        self.path = path
        self.stat = _stat_of(path)
        self._done = threading.Event()
        self._value: str | None = None
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the hash (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, daemon=True, name="bulksend-fingerprint"
            )
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value = _fingerprint(self.path)
        except OSError:
            self._value = None  # said again, in full, when the send reads it itself
        finally:
            self._done.set()

    @property
    def provisional(self) -> str:
        """The file's ``provisional_fingerprint`` when the hash started ("" if it had none)."""
        return "" if self.stat is None else provisional_fingerprint(self.stat)

    def ready(self) -> bool:
        """Whether ``result`` returns at once."""
        return self._done.is_set()

    def result(self) -> str | None:
        """The fingerprint (starts the hash and waits for it), or None when it failed or the
        file changed since the digest was made."""
        self.start()
        self._done.wait()
        return self._value if _stat_of(self.path) == self.stat else None


def _stat_of(path: Path) -> FileStat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


_prefetched: dict[str, FileDigest] = {}


def prefetch_fingerprint(path: Path) -> None:
    """Start ``file_fingerprint(path)`` in a thread now, for a send that needs it before its
    first request: the hash of the recipient file (0.2 s for a 200 MB file here) then overlaps
    with loading the rest of the program."""
    _prefetched[os.path.abspath(path)] = FileDigest(path)


def digest_in_background(path: Path) -> FileDigest:
    """A ``FileDigest`` of ``path``: the one ``prefetch_fingerprint`` started when the file is
    unchanged since, else a new one, not started yet (``start``; ``result`` starts it).
    Raises OSError when the file cannot be read."""
    path.open("rb").close()
    early = _prefetched.pop(os.path.abspath(path), None)
    if early is not None and early.stat is not None and early.stat == _stat_of(path):
        return early
    return FileDigest(path, start=False)


#: the prefix of a ``fast_digest`` value (a ``batch_digest`` value is 24 hex digits, no colon)
FAST_DIGEST = "2:"


def fast_digest(recipients: Sequence[Recipient]) -> str:
    """What a journal keeps to know a batch again (since issue 16): ``2:`` and the first 24
    hex digits of sha256 over the row count, the first and last line, then the ids and the
    uids in order, each column joined by US ("" for none). ``batch_digest``'s text (a line
    number per row, joined row by row) cost more than the rest of the journal together; the
    ids and uids in order say which recipients a batch holds, the lines which rows of a file
    that the journal's fingerprint already pins. Never change what is hashed: resumed runs
    compare with it (``same_batch``)."""
    count = len(recipients)
    if isinstance(recipients, Recipients):
        ids, uids = _joined_column(recipients.ids, count), _joined_column(recipients.uids, count)
    else:
        ids = "\x1f".join([r.id or "" for r in recipients])
        uids = "\x1f".join([r.uid or "" for r in recipients])
    first, last = first_and_last_line(recipients) if count else (0, 0)
    text = f"{count}\x1f{first}\x1f{last}\x1e{ids}\x1e{uids}"
    return FAST_DIGEST + hashlib.sha256(text.encode()).hexdigest()[:24]


def _joined_column(values: list[str | None] | None, count: int) -> str:
    """The column joined by US, "" for None."""
    if values is None:
        return "\x1f" * (count - 1) if count else ""
    try:
        return "\x1f".join(values)  # type: ignore[arg-type]  # (join checks for None itself)
    except TypeError:
        return "\x1f".join([v or "" for v in values])


def same_batch(stored: str, recipients: Sequence[Recipient]) -> bool:
    """Whether ``recipients`` are the batch whose digest a journal stored (either kind)."""
    if stored.startswith(FAST_DIGEST):
        return stored == fast_digest(recipients)
    return stored == batch_digest(recipients)


def batch_digest(recipients: Iterable[Recipient]) -> str:
    """blake2b-96 of ``line US id US uid RS`` for every recipient, joined: what journals
    before issue 16 kept (a resumed run checks its batches by it: never change what is
    hashed). Journals now write ``fast_digest``; ``same_batch`` reads both."""
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
    #: file_fingerprint of the recipient file; "" while it is computed (``Journal.open``
    #: takes it from a ``FileDigest`` then)
    recipients: str
    plan: str  # digest of provider, operation, columns, batch size, message
    #: kept beside the identity to say what changed: ``campaign_keys`` (JSON: the campaign
    #: file's keys, see ``campaign_keys``; journals before it kept ``campaign_text``),
    #: ``recipients_path``, ``recipients_stat`` (the file's ``provisional_fingerprint``),
    #: ``settings`` (JSON: each setting of the plan by its name) and ``how`` (JSON: the
    #: settings of ``RESUMABLE_KEYS`` in effect, by key; no secret)
    details: Mapping[str, str] = field(default_factory=dict)

    def as_rows(self) -> Mapping[str, str]:
        """The identity's rows ("recipients" only once it is known)."""
        known = {"recipients": self.recipients} if self.recipients else {}
        return {"campaign": self.campaign, **known, "plan": self.plan}

    def with_recipients(self, fingerprint: str) -> Identity:
        return Identity(self.campaign, fingerprint, self.plan, self.details)

    def recipients_changed(self, stored: Mapping[str, str]) -> bool:
        """Whether the recipient file differs from the one of the identity ``stored``: by its
        ``file_fingerprint``, or, when that journal's run stopped before it knew it, by its
        ``provisional_fingerprint``."""
        if stored.get("recipients"):
            return stored["recipients"] != self.recipients
        was = stored.get("recipients_stat")
        return not was or was != self.details.get("recipients_stat")

    def changes(self, stored: Mapping[str, str]) -> list[str]:
        """What differs from the identity ``stored`` in a journal and changes what is sent,
        for people ([] if nothing: a resume may go on)."""
        out = []
        if self.recipients_changed(stored):
            was, now = stored.get("recipients_path"), self.details.get("recipients_path")
            if was and now and was != now:
                out.append(f"the recipient file changed (was {was}, now {now})")
            else:
                out.append("the recipient file changed" + (f" ({now})" if now else ""))
        if stored.get("plan") != self.plan:
            out += _setting_changes(stored.get("settings"), self.details.get("settings"))
        if stored.get("campaign") != self.campaign:
            keys = changed_keys(stored_campaign_keys(stored), stored_campaign_keys(self.details))
            blocking = None if keys is None else [k for k in keys if not resumable_key(k)]
            if blocking is None:
                out.append("the campaign file changed")
            elif blocking:  # (none: only how it is sent, or comments and layout, changed)
                out.append(f"the campaign file changed ({_at_most(blocking)})")
        return out

    def adjustments(self, stored: Mapping[str, str]) -> list[str]:
        """The settings that change only how the send goes and differ from the last run's,
        for people: ``["[send].base_url changed (was http://a, now http://b)"]``."""
        was, now = stored.get("how"), self.details.get("how")
        if not was or not now:
            return []
        before, after = orjson.loads(was), orjson.loads(now)
        names = [k for k in dict.fromkeys([*after, *before]) if before.get(k) != after.get(k)]
        return [_changed(name, before.get(name), after.get(name)) for name in names]


def resumable_key(key: str) -> bool:
    """Whether a change of this campaign-file key (``[send].rate``) lets a resume go on."""
    return key in RESUMABLE_KEYS or key.startswith("[auth].")


def _changed(name: str, old: Any, new: Any) -> str:
    """``the batch size changed (was 100, now 50)``; without the values when they are long."""
    shown = [orjson.dumps(v).decode() for v in (old, new)]
    if all(len(v) <= 40 for v in shown) and not isinstance(new, dict | list):
        return f"{name} changed (was {_plain(old)}, now {_plain(new)})"
    return f"{name} changed"


def _setting_changes(was: str | None, now: str | None) -> list[str]:
    """``["the batch size changed (was 100, now 50)"]`` from two ``settings`` rows (the
    settings of ``RESUMABLE_SETTINGS`` left out)."""
    if not was or not now:
        return ["the settings that shape the batches (batch size, columns, ...) changed"]
    before, after = orjson.loads(was), orjson.loads(now)
    names = [k for k in dict.fromkeys([*after, *before]) if before.get(k) != after.get(k)]
    if not names:
        return ["the settings that shape the batches changed"]
    return [
        _changed(f"the {name}", before.get(name), after.get(name))
        for name in names
        if name not in RESUMABLE_SETTINGS
    ]


def _plain(value: Any) -> str:
    return "none" if value is None else str(value)


def campaign_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """A campaign file's keys, dotted (``[send].rate``), as JSON gives them back, with any
    password in a URL (``[send].limiter``) replaced by ``***``: what a journal keeps."""
    flat = {k: masked_url(v) if isinstance(v, str) else v for k, v in _flat(data).items()}
    return dict(orjson.loads(orjson.dumps(flat, default=str)))


def masked_url(text: str) -> str:
    """``text`` with the password of a URL in it (``user:password@`` or ``?password=``)
    replaced by ``***``, anything else as is. A password holding an unencoded ``/``, ``?`` or
    ``#`` hides all of the userinfo (``redact_url``)."""
    if "://" not in text or ("@" not in text and "password=" not in text):
        return text
    from bulksend.distributed.keys import redact_url, url_password

    if url_password(text) is None and "password=" not in text:
        return text
    return redact_url(text)


def stored_campaign_keys(rows: Mapping[str, str]) -> dict[str, Any] | None:
    """The campaign file's keys a journal (or an identity's details) keeps, or None."""
    if rows.get("campaign_keys"):
        keys = orjson.loads(rows["campaign_keys"])
        return keys if isinstance(keys, dict) else None
    text = rows.get("campaign_text")  # (journals before campaign_keys)
    if text is None:
        return None
    try:
        return campaign_keys(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        return None


def changed_keys(was: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> list[str] | None:
    """The dotted keys whose values differ, or None when either side is unknown."""
    if was is None or now is None:
        return None
    return [k for k in dict.fromkeys([*now, *was]) if was.get(k) != now.get(k)]


def _at_most(keys: Sequence[str], most: int = 5) -> str:
    shown = list(keys[:most]) + ([f"{len(keys) - most} more"] if len(keys) > most else [])
    return ", ".join(shown)


def _flat(data: Mapping[str, Any], table: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not table:
            out.update(_flat(value, key))
        else:
            out[f"[{table}].{key}" if table else key] = value
    return out


@dataclass(frozen=True, slots=True)
class BatchRecord:
    number: int
    digest: str
    state: str
    reason: str
    http_status: int | None
    attempts: int
    runs: int
    run: int | None = None  # the run that wrote it last
    doubt: str = ""  # why the provider may already have it ("" if it cannot)


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
                "SELECT number, digest, state, reason, http_status, attempts, runs, run, doubt "
                "FROM batches"
            )
        }
        stored = dict(db.execute("SELECT key, value FROM campaign").fetchall())
        #: batches the whole campaign has, once a run planned them all (0: not known yet)
        self.planned = int(stored.get("planned", 0))
        #: why an earlier journal here was discarded when this one was opened ("" if not)
        self.restarted = ""
        #: the settings of how the send goes that changed since the last run (for people)
        self.adjusted: list[str] = []
        #: the last run stopped before it recorded the recipient file's fingerprint: this one
        #: was matched by its ``provisional_fingerprint`` (for people)
        self.by_stat = False
        #: the recipient file's fingerprint on its way, written by the first commit after it
        #: is known (None: written already, or at the open)
        self._digest: FileDigest | None = None
        self.run_id = int(
            db.execute("INSERT INTO runs (started) VALUES (?)", (time.time(),)).lastrowid or 0
        )
        db.commit()

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: Path,
        identity: Identity,
        *,
        resume: bool = False,
        fresh: bool = False,
        flush_interval: float = 0.0,
        meta: Mapping[str, Any] | None = None,
        digest: FileDigest | None = None,
    ) -> Journal:
        """Create the journal at ``path``, or continue the one there.

        An existing journal is continued when its identity matches this campaign in what is
        sent (``Identity.changes``; ``adjusted`` names the settings of how it is sent that
        changed). When it does not, the open is refused with a ConfigError naming what changed,
        unless the journal records nothing the provider can have kept and ``resume`` is False:
        then it starts over (``restarted`` says why). ``resume`` requires an existing journal;
        ``fresh`` discards it. ``meta`` (what ``bulksend retry`` needs) is replaced by each run's.

        An identity without its ``recipients`` fingerprint comes with the ``digest`` that
        computes it: the open waits for it only to compare it with a journal that holds one;
        else the journal keeps the file's ``provisional_fingerprint``, starts the digest after
        its first commit (unless it runs already) and writes the fingerprint with the first
        commit after it is known (``close`` waits for it): the first request waits neither for
        the hash of the whole file nor behind it for a CPU.
        """
        exists = path.exists() and path.stat().st_size > 0
        if exists and fresh:
            _discard(path)
            exists = False
        if resume and not exists:
            raise ConfigError(f"{path}: no journal to resume (run the send without --resume)")
        db = _connect(path)
        restarted = ""
        stored = dict(db.execute("SELECT key, value FROM campaign").fetchall())
        if not identity.recipients and stored.get("recipients"):
            identity = _with_digest(identity, digest)  # the journal has one to compare with
        changes = identity.changes(stored) if stored else []
        adjusted = identity.adjustments(stored) if stored and not changes else []
        if changes and (resume or _may_have_reached_the_provider(db)):
            db.close()
            raise ConfigError(refusal(str(path), changes))
        if changes:  # nothing in it can have reached the provider: start over
            db.close()
            _discard(path)
            db = _connect(path)
            restarted = _joined(changes)
        rows = {**identity.details, **identity.as_rows(), "meta": orjson.dumps(dict(meta or {}))}
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR REPLACE INTO campaign (key, value) VALUES (?, ?)",
            [(k, v.decode() if isinstance(v, bytes) else v) for k, v in rows.items()],
        )
        if "campaign_keys" in rows:  # the file's text, which older journals kept, may hold a
            db.execute("DELETE FROM campaign WHERE key = 'campaign_text'")  # limiter password
        if not identity.recipients:  # (written once known, for this file only)
            db.execute("DELETE FROM campaign WHERE key = 'recipients'")
        db.execute("COMMIT")
        journal = cls(path, db, flush_interval=flush_interval)
        journal.restarted = restarted
        journal.adjusted = adjusted
        journal.by_stat = bool(stored) and not changes and not stored.get("recipients")
        if not identity.recipients:
            journal._digest = _with_provisional(digest, identity)
        return journal

    @staticmethod
    def read_meta(path: Path) -> dict[str, Any]:
        """The meta of the journal's last run (campaign file, settings), without opening a run."""
        row = Journal.read_campaign(path).get("meta")
        meta = orjson.loads(row) if row else {}
        return meta if isinstance(meta, dict) else {}

    @staticmethod
    def read_campaign(path: Path) -> dict[str, str]:
        """The identity, its details and the meta of the journal's last run, without opening
        a run."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return dict(db.execute("SELECT key, value FROM campaign").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not a bulksend journal ({exc})") from None

    @staticmethod
    def kept_anything(path: Path) -> bool:
        """Whether the journal at ``path`` records a batch the provider may have kept (only
        read; a file that is not a readable journal counts as one that may). Not opened read
        only: such a connection would leave the WAL files behind."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as db:
                return _may_have_reached_the_provider(db)
        except sqlite3.DatabaseError:
            return True

    @property
    def where(self) -> str:
        """Where the journal is, for messages: its path."""
        return str(self.path)

    def opening_note(self) -> str:
        """One line on how this run uses the journal ("" when it is as good as new)."""
        unsettled = {
            row[0]
            for row in self._db.execute(
                "SELECT DISTINCT batch FROM parts WHERE state NOT IN ('delivered', 'invalid')"
            )
        }
        return opening_note(
            self._previous,
            unsettled,
            self.planned,
            self.adjusted,
            self.restarted,
            self.where,
            by_stat=self.by_stat,
        )

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
    def set_planned(self, batches: int) -> None:
        """Record how many batches the whole campaign has (a run planned them all)."""
        self.planned = batches
        self._queue(
            "INSERT OR REPLACE INTO campaign (key, value) VALUES ('planned', ?)", (str(batches),)
        )

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
            "attempts, updated, run) VALUES (?, ?, ?, ?, ?, ?, 'in_flight', ?, ?, ?) "
            "ON CONFLICT(number) DO UPDATE SET state='in_flight', attempts=excluded.attempts, "
            "runs=runs + (batches.state != 'in_flight'), updated=excluded.updated, "
            "run=excluded.run",
            (
                batch.number,
                batch.group,
                *first_and_last_line(recs),
                len(recs),
                fast_digest(recs),
                batch.attempts,
                time.time(),
                self.run_id,
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
        doubt: str = "",
    ) -> None:
        """Record a batch's final state (committed within the flush interval); ``doubt`` says
        why the provider may already have the batch, for the runs that send it again."""
        if state not in FINAL:
            raise ValueError(f"not a final state: {state}")
        self._queue(
            "UPDATE batches SET state=?, reason=?, http_status=?, attempts=?, updated=?, run=?, "
            "doubt=CASE WHEN ? = '' THEN doubt ELSE ? END WHERE number=?",
            (
                state,
                reason,
                http_status,
                batch.attempts,
                time.time(),
                self.run_id,
                doubt,
                doubt,
                batch.number,
            ),
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
        if self._digest is not None and self._digest.ready():
            self._record_digest(self._digest)
        pending, self._pending = self._pending, []
        waiters, self._waiters = self._waiters, []
        if pending:
            db = self._db
            db.execute("BEGIN")
            for sql, params in pending:
                db.execute(sql, params)
            db.execute("COMMIT")
        if self._digest is not None:  # after the first commit: the first request goes first
            self._digest.start()
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def aclose(self, outcome: str = "finished") -> None:
        self.close(outcome)

    def _record_digest(self, digest: FileDigest) -> None:
        """Queue the recipient file's fingerprint (waits for it), unless the file changed
        since the journal took its provisional fingerprint: a resume then refuses it."""
        self._digest = None
        found = digest.result()
        if found is not None:
            self._pending.append(
                ("INSERT OR REPLACE INTO campaign (key, value) VALUES ('recipients', ?)", (found,))
            )

    def close(self, outcome: str = "finished") -> None:
        if self._digest is not None:
            self._record_digest(self._digest)
        self.flush()
        self._db.execute(
            "UPDATE runs SET finished=?, outcome=? WHERE rowid=?",
            (time.time(), outcome, self.run_id),
        )
        self._db.close()

    # -- reading, for `bulksend retry` and reports ------------------------------------------------
    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, SUM(size) FROM batches GROUP BY state")
        return {state: int(total) for state, total in rows}


class BatchJournal(Protocol):
    """What the engine and ``send_campaign`` use of a journal: ``Journal`` (SQLite, beside the
    campaign) or ``bulksend.state.redis_journal.RedisJournal`` (``--state redis://...``). Both
    keep the same batch records with the same guarantees (the module docstring above)."""

    run_id: int
    planned: int

    @property
    def path(self) -> Path | None:
        """The journal file (None when the journal is not a file: Redis)."""

    @property
    def where(self) -> str:
        """Where the journal is, for messages (a path, or a URL without its password)."""

    @property
    def resumed(self) -> bool:
        """Whether an earlier run recorded any batch."""

    def opening_note(self) -> str: ...

    def previous(self, number: int) -> BatchRecord | None: ...

    def parts(self, number: int) -> list[PartRecord]: ...

    def set_planned(self, batches: int) -> None: ...

    async def in_flight(self, batch: Batch) -> None:
        """Record that ``batch`` is about to be sent; returns once that is durable (raises
        ``UnavailableError`` when it cannot be recorded: the batch must not be sent)."""

    def finished(
        self,
        batch: Batch,
        state: str,
        reason: str = "",
        http_status: int | None = None,
        parts: Iterable[tuple[int, str, str, int | None]] = (),
        doubt: str = "",
    ) -> None: ...

    def flush(self) -> None:
        """Write what is queued now (Redis: start writing it; ``aclose`` waits for it)."""

    async def aclose(self, outcome: str = "finished") -> None: ...


#: batch and part states the provider cannot have kept anything of
KEPT_NOTHING = frozenset({"failed", "skipped", "invalid"})


def opening_note(
    previous: Mapping[int, BatchRecord],
    unsettled_splits: set[int],
    planned: int,
    adjusted: Sequence[str],
    restarted: str,
    where: str,
    *,
    by_stat: bool = False,
) -> str:
    """One line on how a run uses its journal ("" when it is as good as new): ``previous``
    holds the batches an earlier run recorded, ``unsettled_splits`` the split batches with a
    part not delivered nor invalid; ``by_stat``: the recipient file was known again by its
    ``provisional_fingerprint``."""
    if restarted:
        return (
            f"starting over: {restarted}, and the provider kept nothing the earlier "
            f"run sent ({where})"
        )
    settled = sum(
        1
        for r in previous.values()
        if r.state in ("delivered", "invalid")
        or (r.state == "split" and r.number not in unsettled_splits)
    )
    doubtful = sum(1 for r in previous.values() if r.state in ("in_flight", "unknown"))
    if not settled and not doubtful and not (adjusted and previous):
        return ""
    total = f" of {planned:,}" if planned else ""
    noun = "batch" if (planned or settled) == 1 else "batches"
    changed = f" with {_at_most(adjusted, 4)}" if adjusted else ""
    note = f"resuming{changed}: {settled:,}{total} {noun} settled by an earlier run"
    if doubtful:
        note += f", {doubtful:,} with an unknown outcome"
    if by_stat:
        note += (
            "; it stopped before it had hashed the recipient file, which has the same size, "
            "times and inode"
        )
    return f"{note} ({where}; --fresh starts over)"


def refusal(where: str, changes: Sequence[str]) -> str:
    """The one line that refuses to continue a journal whose send changed what it sends."""
    return (
        f"{where}: cannot resume: {_joined(changes)} since this journal was written; "
        f"restore {'it' if len(changes) == 1 else 'them'}, or add --fresh to start "
        "over (sending everything again)"
    )


def _with_digest(identity: Identity, digest: FileDigest | None) -> Identity:
    """The identity with its recipient file's fingerprint, waited for."""
    if digest is None:
        raise ValueError("an identity without its recipients' fingerprint needs its digest")
    found = digest.result()
    if found is None:  # the file changed since the digest started: the file as it is now
        try:
            found = _fingerprint(digest.path)
        except OSError as exc:
            raise ConfigError(f"{exc.filename}: cannot read ({exc.strerror})") from None
    return identity.with_recipients(found)


def _with_provisional(digest: FileDigest | None, identity: Identity) -> FileDigest | None:
    """The digest to record once known: only one of the file the identity's provisional
    fingerprint describes."""
    if digest is None:
        raise ValueError("an identity without its recipients' fingerprint needs its digest")
    if digest.provisional != identity.details.get("recipients_stat"):
        return None
    return digest


def _connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the SQLite file with the journal's tables, older journals upgraded."""
    private.create(path)  # owner-only; SQLite gives -wal and -shm the journal's mode
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        have = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in have:
                db.execute(f"ALTER TABLE batches ADD COLUMN {name} {kind}")
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a bulksend journal ({exc})") from None
    return db


def _discard(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _may_have_reached_the_provider(db: sqlite3.Connection) -> bool:
    """Does the journal record a batch the provider may have kept (delivered, in flight, ...)?"""
    row = db.execute(
        "SELECT 1 FROM batches WHERE state NOT IN ('failed', 'skipped', 'invalid', 'split') "
        "OR doubt != '' UNION ALL "
        "SELECT 1 FROM parts WHERE state NOT IN ('failed', 'skipped', 'invalid') LIMIT 1"
    ).fetchone()
    return row is not None


def _joined(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
