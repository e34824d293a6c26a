"""Pause a running send and resume it, from outside or by its send windows.

Design
------
One ``PauseControl`` per send, and one question the engine asks it: before a worker takes a
new batch from the queue, is the send ``paused`` (an attribute: nothing is computed on the hot
path)? While it is, the worker waits (``wait_open``; a stop ends the wait). Nothing else
changes: batches already taken -- in flight, or waiting to retry -- finish; the scheduler's
buckets keep their quota state; the reader stops once the bounded queue is full; no task is
cancelled or restarted. Resuming opens the gate and the workers take batches where they were.

What holds the gate shut:

* **Switches**: places a pause is kept (``Switch``: ``read`` and ``write`` one ``Pause`` or
  None). A send's own switch is its journal's ``control`` row (``JournalSwitch``; in memory,
  ``MemorySwitch``, for a send without a journal). SIGUSR1 and SIGUSR2 write it in the process
  (``PauseSignals``); ``bulksend pause JOURNAL`` / ``bulksend resume JOURNAL`` write the same
  row from another process, no server needed (SQLite in WAL mode: the send polls it with one
  indexed read). A pause kept in the journal outlives the process: a send started on a paused
  journal waits too, and says so. ``RedisSwitch`` keeps a pause at
  ``bulksend:{campaign:NAME}:pause`` in a Redis: every send of campaign NAME sharing its quota
  through that Redis (``--limiter``; the Redis workers of issue 17 when they come) polls it, so
  ``bulksend pause redis://HOST/DB --campaign NAME`` pauses them all. Signals write only the
  process's own switch: SIGUSR2 does not resume a pause another switch holds.
* **Send windows** (``bulksend.control.windows``): outside them the send is paused until the
  next opening, which it works out with the injected ``clock`` (UTC, aware).

The send is paused while any switch holds a pause or the windows are closed. ``watch`` polls
every ``interval`` (0.5 s): the switches (a switch that cannot be read keeps its last state,
with one warning), and the windows when the moment they change has come. Each change is
logged (``send_paused`` with ``reason`` and ``until``, ``send_resumed`` with ``paused_for``)
and told to ``on_change`` (one line on stderr for people); ``status()`` is what the progress
line and the ``progress`` events show: ``paused by SIGUSR1``, ``paused until 09:00
Europe/Berlin``. Pausing changes no count and no exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shlex
import signal
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from bulksend.control.windows import SendWindows, WindowState, moment_text
from bulksend.errors import ConfigError
from bulksend.output.logs import get_logger

#: the journal's table of controls (one row, ``pause``, while a pause is asked for)
CONTROL_TABLE = "CREATE TABLE IF NOT EXISTS control (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
POLL_SECONDS = 0.5

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class Pause:
    """A pause asked for: by whom (``SIGUSR1``, ``bulksend pause``) and since when (epoch s)."""

    by: str
    since: float

    def dumps(self) -> str:
        return orjson.dumps({"by": self.by, "since": self.since}).decode()

    @classmethod
    def loads(cls, text: str | bytes | None) -> Pause | None:
        if not text:
            return None
        try:
            data = orjson.loads(text)
            return cls(str(data["by"]), float(data["since"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return cls("an unreadable pause entry", 0.0)  # paused still: it was asked for


class Switch(Protocol):
    """Where a pause is kept; ``name`` says where and ``undo`` how to resume it, for people."""

    name: str
    undo: str

    async def read(self) -> Pause | None: ...

    async def write(self, pause: Pause | None) -> None: ...

    async def aclose(self) -> None: ...


class MemorySwitch:
    """The pause of a send without a journal: only its own signals reach it."""

    name = "this process"
    undo = "SIGUSR2"

    def __init__(self) -> None:
        self.pause: Pause | None = None

    async def read(self) -> Pause | None:
        return self.pause

    async def write(self, pause: Pause | None) -> None:
        self.pause = pause

    async def aclose(self) -> None:
        return None


class JournalSwitch:
    """The ``pause`` row of a journal's ``control`` table (SQLite; any process may write it)."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = path
        self.name = str(path)
        self.undo = f"SIGUSR2 or `bulksend resume {shlex.quote(str(path))}`"
        self._timeout = timeout
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if not self.path.is_file():
                raise ConfigError(f"{self.path}: no such journal")
            try:
                db = sqlite3.connect(
                    f"file:{self.path}?mode=rw", uri=True, isolation_level=None,
                    timeout=self._timeout,
                )  # fmt: skip
                db.execute("SELECT 1 FROM campaign LIMIT 1")
                db.execute(CONTROL_TABLE)
            except sqlite3.DatabaseError as exc:
                raise ConfigError(f"{self.path}: not a bulksend journal ({exc})") from None
            self._db = db
        return self._db

    def read_now(self) -> Pause | None:
        row = self._connect().execute("SELECT value FROM control WHERE key = 'pause'").fetchone()
        return Pause.loads(row[0]) if row else None

    def write_now(self, pause: Pause | None) -> None:
        db = self._connect()
        if pause is None:
            db.execute("DELETE FROM control WHERE key = 'pause'")
        else:
            db.execute(
                "INSERT OR REPLACE INTO control (key, value) VALUES ('pause', ?)", (pause.dumps(),)
            )

    async def read(self) -> Pause | None:
        return self.read_now()

    async def write(self, pause: Pause | None) -> None:
        self.write_now(pause)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def aclose(self) -> None:
        self.close()


def redis_pause_key(campaign: str) -> str:
    """``bulksend:{campaign:NAME}:pause``: the key a campaign's workers poll."""
    return f"bulksend:{{campaign:{campaign}}}:pause"


class RedisSwitch:
    """The pause of every worker of one campaign, in a Redis key (``redis_pause_key``); the
    connection is made at the first read or write (``client_from_url``: a URL it refuses is a
    one-line ``ConfigError`` naming ``flag``)."""

    def __init__(
        self, url: str, campaign: str, *, timeout: float = 3.0, flag: str = "--limiter"
    ) -> None:
        from bulksend.distributed.keys import redact_url

        self.url, self.key, self._timeout = url, redis_pause_key(campaign), timeout
        self.flag = flag
        self.name = f"{redact_url(url)} (campaign {campaign!r})"
        self.undo = f"`bulksend resume {redact_url(url)} --campaign {shlex.quote(campaign)}`"
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            try:
                from bulksend.distributed.gate import client_from_url
            except ImportError:
                raise ConfigError(
                    "a redis:// pause needs the Redis client: pip install 'bulksend[redis]'"
                ) from None
            self._client = client_from_url(self.url, timeout=self._timeout, flag=self.flag)
        return self._client

    async def read(self) -> Pause | None:
        return Pause.loads(await self._connect().get(self.key))

    async def write(self, pause: Pause | None) -> None:
        client = self._connect()
        if pause is None:
            await client.delete(self.key)
        else:
            await client.set(self.key, pause.dumps())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass(slots=True)
class PauseSetup:
    """How a send's ``PauseControl`` is built (``send_campaign(pause=...)``): more
    ``switches`` than its own, the ``clock`` windows are read with, the poll ``interval``,
    and who is told each change in one line."""

    switches: Sequence[Switch] = ()
    clock: Clock = utc_now
    interval: float = POLL_SECONDS
    on_change: Callable[[str], None] | None = None
    log: Any = None


def since_text(seconds: float) -> str:
    """``45 s``, ``3 min 5 s``, ``2 h 7 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class PauseControl:
    """The gate: paused while a switch holds a pause or the send windows are closed."""

    def __init__(
        self,
        switches: Sequence[Switch],
        windows: SendWindows | None = None,
        *,
        clock: Clock = utc_now,
        interval: float = POLL_SECONDS,
        on_change: Callable[[str], None] | None = None,
        log: Any = None,
    ) -> None:
        self.switches: list[Switch] = list(switches) or [MemorySwitch()]
        self.windows = windows
        self.clock = clock
        self.interval = interval
        self.on_change = on_change
        self._log = log if log is not None else get_logger()
        #: read by the engine before each batch: True while the gate is shut
        self.paused = False
        self._text = ""
        self._reason: tuple[str | None, bool] = (None, False)
        self._held: list[Pause | None] = [None] * len(self.switches)
        self._unreadable: set[int] = set()
        self._window: WindowState | None = None
        self._checked: dt.datetime | None = None
        self._paused_at: dt.datetime | None = None
        self._open = asyncio.Event()
        self._open.set()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_send(
        cls, own: Switch, windows: SendWindows | None, setup: PauseSetup | None
    ) -> PauseControl:
        setup = setup or PauseSetup()
        others = [s for s in setup.switches if s.name != own.name]  # (--limiter = --state)
        return cls(
            [own, *others],
            windows,
            clock=setup.clock,
            interval=setup.interval,
            on_change=setup.on_change,
            log=setup.log,
        )

    # -- what the engine asks ---------------------------------------------------------------
    def status(self) -> str:
        """``""`` while sending; ``paused by SIGUSR1``, ``paused until 09:00 Europe/Berlin``."""
        return self._text

    async def wait_open(self, stopping: asyncio.Event) -> None:
        """Return once the gate opens, or ``stopping`` is set."""
        if not self.paused or stopping.is_set():
            return
        opened = asyncio.ensure_future(self._open.wait())
        stopped = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait((opened, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            stopped.cancel()

    async def watch(self) -> None:
        """Poll every ``interval`` until cancelled (a failed poll is logged, never fatal)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception as exc:  # the send goes on as it was
                self._log.warning("pause_poll_failed", error=f"{type(exc).__name__}: {exc}")

    # -- what sets it -----------------------------------------------------------------------
    def request(self, paused: bool, by: str) -> None:
        """Pause (or resume) through the send's own switch (a signal handler calls this)."""
        task = asyncio.get_running_loop().create_task(self._request(paused, by))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(self, paused: bool, by: str) -> None:
        pause = Pause(by, self.clock().timestamp()) if paused else None
        try:
            await self.switches[0].write(pause)
        except Exception as exc:
            self._log.warning("pause_write_failed", error=f"{type(exc).__name__}: {exc}")
            return
        await self.poll()
        if not paused and self.paused:
            self._tell(f"{by}: still {self._text}{self._how_to_go_on()}")

    async def poll(self) -> None:
        """Read the switches and, when due, the windows; then open or shut the gate."""
        for i, switch in enumerate(self.switches):
            try:
                self._held[i] = await switch.read()
            except Exception as exc:
                if i not in self._unreadable:
                    self._unreadable.add(i)
                    self._log.warning(
                        "pause_unreadable", where=switch.name, error=f"{type(exc).__name__}: {exc}"
                    )
            else:
                self._unreadable.discard(i)
        now = self.clock()
        self._update_window(now)
        self._apply(now)

    def _update_window(self, now: dt.datetime) -> None:
        if self.windows is None:
            return
        state, checked = self._window, self._checked
        stale = state is None or checked is None or now < checked
        if stale or (state is not None and state.until is not None and now >= state.until):
            self._window = self.windows.state(now)
        self._checked = now

    def _holder(self) -> int | None:
        """The first switch that holds a pause, if one does."""
        return next((i for i, p in enumerate(self._held) if p is not None), None)

    def _apply(self, now: dt.datetime) -> None:
        holder = self._holder()
        held = self._held[holder] if holder is not None else None
        window = self._window if self._window is not None and not self._window.open else None
        reason = (held.by if held else None, window is not None)
        was, was_reason = self.paused, self._reason
        self._text = self._describe(held, window, now)
        self.paused, self._reason = bool(self._text), reason
        if self.paused and (not was or reason != was_reason):
            if not was:
                self._open.clear()
                self._paused_at = now
            until = window.until if window is not None else None
            self._log.info(
                "send_paused", reason=self._text, until=until.isoformat() if until else None
            )
            self._tell(
                f"{self._text}: no new batch starts, the requests in flight finish"
                + self._how_to_go_on()
            )
        elif was and not self.paused:
            self._open.set()
            seconds = (now - self._paused_at).total_seconds() if self._paused_at else 0.0
            self._log.info("send_resumed", paused_for=round(seconds, 3))
            self._tell(f"resumed after {since_text(seconds)} paused")

    def _describe(self, held: Pause | None, window: WindowState | None, now: dt.datetime) -> str:
        """``paused by SIGUSR1``, ``paused until 09:00 Europe/Berlin``, both, or ""."""
        when = ""
        if window is not None and self.windows is not None:
            until = window.until
            when = moment_text(until, now, self.windows.zone) if until else "never"
        if held is not None:
            return f"paused by {held.by}" + (f"; the window opens {when}" if when else "")
        return f"paused until {when}" if when else ""

    def _how_to_go_on(self) -> str:
        """``; to go on: SIGUSR2 or `bulksend resume J``` or the send window it waits for."""
        holder = self._holder()
        if holder is not None:
            return f"; to go on: {self.switches[holder].undo}"
        if self.windows is not None:
            return f" (send window {self.windows.describe()})"
        return ""

    def _tell(self, line: str) -> None:
        if self.on_change is not None:
            self.on_change(line)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for switch in self.switches:
            with contextlib.suppress(Exception):
                await switch.aclose()


@dataclass(slots=True)
class PauseSignals:
    """SIGUSR1 pauses, SIGUSR2 resumes the send ``attach``-ed (its own switch)."""

    control: PauseControl | None = None
    _installed: list[signal.Signals] = field(default_factory=list)

    def attach(self, control: PauseControl | None) -> None:
        self.control = control

    def _handle(self, paused: bool, name: str) -> None:
        if self.control is not None:
            self.control.request(paused, name)

    @contextlib.contextmanager
    def installed(self) -> Iterator[PauseSignals]:
        loop = asyncio.get_running_loop()
        for sig, paused in ((signal.SIGUSR1, True), (signal.SIGUSR2, False)):
            try:
                loop.add_signal_handler(sig, self._handle, paused, sig.name)
                self._installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            yield self
        finally:
            for sig in self._installed:
                loop.remove_signal_handler(sig)
            self._installed.clear()
