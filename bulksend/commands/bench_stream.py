"""Synthetic recipients for ``bulksend bench``, streamed through a named pipe.

The send reads the pipe as it would read a file (the same reader, the same fast path). A thread
writes CSV rows into it: ``count`` rows, or rows for about ``seconds``. Nothing is written to
disk, so a run of minutes needs no gigabytes, and rows cost next to nothing to make: a block of
rows is made once, and block ``k`` is that block with ``k`` written into every id and uid
(``bytes.replace``, at C speed). The thread's CPU time is kept apart (``cpu_seconds``), so the
client's figure can be the send's alone.

A send reads ahead of what it sends (the pipe, a block of text, a chunk being deduplicated, the
queue of batches): when the provider slows it, what was read ahead takes long to send. So a
timed stream stops writing once what is buffered, sent at the pace seen so far, would take the
send to the end of the time: a slow send ends near ``seconds`` too, not long after.

Row ``i`` of a block repeats an earlier row of the same block with probability
``duplicate_rate``; other rows are new: a 32-hex-digit id and a ``u``-prefixed uid, both
holding the block number, so no two blocks share one.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK_ROWS = 4096
HEADER = b"id,uid\n"
_MARK = b"ZZZZZZZZ"  # not a hex digit: replaced by the block number, 8 hex digits
_MULT = 0x9E3779B97F4A7C15F39CC061  # odd: i -> i * _MULT mod 2^96 is one-to-one
_MASK = (1 << 96) - 1


def can_stream() -> bool:
    """Named pipes exist here (not on Windows)."""
    return hasattr(os, "mkfifo")


def block_template(duplicate_rate: float, seed: int) -> bytes:
    """``BLOCK_ROWS`` rows of equal length, the block number marked in each id and uid."""
    rnd = random.Random(seed)
    rows: list[bytes] = []
    for i in range(BLOCK_ROWS):
        if rows and duplicate_rate and rnd.random() < duplicate_rate:
            rows.append(rows[rnd.randrange(len(rows))])
        else:
            tail = (i * _MULT) & _MASK
            rows.append(b"%s%024x,u%s%05d\n" % (_MARK, tail, _MARK, i))
    return b"".join(rows)


def write_rows(out: BinaryIO, count: int, *, duplicate_rate: float = 0.0, seed: int = 1) -> None:
    """``HEADER`` and the ``count`` rows a stream of ``count`` writes, into a file (where no
    named pipe can be made)."""
    template = block_template(duplicate_rate, seed)
    out.write(HEADER)
    for block, first in enumerate(range(0, count, BLOCK_ROWS)):
        rows = min(BLOCK_ROWS, count - first)
        out.write(_block(template, block, rows))


def _block(template: bytes, number: int, rows: int) -> bytes:
    data = template.replace(_MARK, b"%08x" % number)
    return data if rows == BLOCK_ROWS else data[: rows * (len(template) // BLOCK_ROWS)]


def enough(now: float, start: float, deadline: float, buffered: int, sent: int) -> bool:
    """Whether a stream timed from ``start`` to ``deadline`` should stop writing: the time is
    up, or the rows ``buffered`` (written, not yet settled) would take the send there at the
    pace of the ``sent`` rows settled so far. The pace is trusted from a quarter of the time
    on: before, it is that of the first requests (connections opening, the sandbox warming
    up), well below the send's."""
    if now >= deadline:
        return True
    if now - start < (deadline - start) / 4 or sent <= 0:
        return False
    return now + buffered * (now - start) / sent >= deadline


class SyntheticStream:
    """A named pipe at ``path`` that a thread fills with synthetic rows (see the module).

    ``sent`` says how many rows the send has settled so far (the pace of a timed stream);
    ``clock`` is ``time.monotonic`` unless a test gives its own.
    """

    def __init__(
        self,
        path: Path,
        *,
        count: int | None = None,
        seconds: float | None = None,
        duplicate_rate: float = 0.0,
        seed: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (count is None) == (seconds is None):
            raise ValueError("give count or seconds")
        self.path = path
        self.count = count
        self.seconds = seconds
        self.template = block_template(duplicate_rate, seed)
        self.clock = clock
        self.sent: Callable[[], int] = lambda: 0
        self.rows = 0  # written so far
        self.cpu_seconds = 0.0  # the writing thread's
        self.error: Exception | None = None
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rows", daemon=True)

    def start(self) -> SyntheticStream:
        os.mkfifo(self.path)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop writing (a reader that went away ends the writes; one that never came, the
        wait for it) and wait for the thread."""
        self._cancel.set()
        self._thread.join(timeout=10)

    def _open(self) -> int | None:
        """The pipe's write end once a reader has opened it; None when cancelled first."""
        while not self._cancel.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                self._cancel.wait(0.005)
                continue
            os.set_blocking(fd, True)
            return fd
        return None

    def _run(self) -> None:
        started = time.thread_time()
        try:
            fd = self._open()
            if fd is not None:
                try:
                    _write_all(fd, HEADER)
                    for data in self._blocks():
                        _write_all(fd, data)
                finally:
                    os.close(fd)
        except BrokenPipeError:  # the send stopped reading: it has ended
            pass
        except Exception as exc:  # the send reads an early end: the bench reports this instead
            self.error = exc
        finally:
            self.cpu_seconds = time.thread_time() - started

    def _blocks(self) -> Iterator[bytes]:
        first = self.clock()
        deadline = None if self.seconds is None else first + self.seconds
        number = 0
        while not self._cancel.is_set():
            rows = BLOCK_ROWS if self.count is None else min(BLOCK_ROWS, self.count - self.rows)
            if rows <= 0 or (deadline is not None and self._enough(first, deadline)):
                return
            yield _block(self.template, number, rows)
            self.rows += rows
            number += 1

    def _enough(self, first: float, deadline: float) -> bool:
        sent = self.sent()
        return enough(self.clock(), first, deadline, self.rows - sent, sent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
