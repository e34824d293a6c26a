"""The sandbox ledger: a JSON Lines file with one line per accepted recipient.

Each line is ``{"ts": epoch seconds, "request": n, "campaign": ..., "kind": ..., "value": ...}``
(plus provider keys such as ``event`` or ``channel`` before ``value``). With
``ledger_format="requests"`` a line carries a whole request's ``values`` instead; ``read_ledger``
reads both back as one dict per recipient.

Writes are group-committed: blobs of the requests accepted while a write is in flight are
gathered and handed to one writer thread in a single ``writev``, so the event loop never blocks on
the file and a burst of requests costs one system call. ``commit()`` returns once everything
written before it is in the operating system's hands; the pipeline awaits it before answering,
so a client killed right after an answer still finds its recipients in the file.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

_IOV_MAX = 512


def _write_all(fd: int, blobs: list[bytes]) -> None:
    """Write every blob to ``fd`` in order, however the kernel splits the writes."""
    for start in range(0, len(blobs), _IOV_MAX):
        chunk = blobs[start : start + _IOV_MAX]
        total = sum(map(len, chunk))
        written = os.writev(fd, chunk)
        if written < total:
            rest = b"".join(chunk)[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


class Ledger:
    """Append-only JSON Lines; ``path`` None keeps nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        if path is not None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # what it received is a list of people: owner-only, as bulksend's own files
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def write(self, blob: bytes) -> None:
        """Queue ``blob``; ``commit`` writes it."""
        if self._fd is not None and blob:
            self._pending.append(blob)

    async def commit(self) -> None:
        """Return once every blob queued so far has been written to the file."""
        if self._fd is None or (not self._pending and self._waiter is None):
            if self._inflight is not None:
                await asyncio.shield(self._inflight)
            return
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            if self._inflight is None:
                self._start()
        await asyncio.shield(waiter)

    def _start(self) -> None:
        assert self._fd is not None
        blobs, self._pending = self._pending, []
        waiter, self._waiter = self._waiter, None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="sandbox-ledger")
        loop = asyncio.get_running_loop()
        inflight = loop.run_in_executor(self._executor, _write_all, self._fd, blobs)
        self._inflight = inflight

        def done(future: asyncio.Future[None]) -> None:
            self._inflight = None
            if waiter is not None and not waiter.done():
                exc = future.exception()
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)
            if self._waiter is not None:
                self._start()

        inflight.add_done_callback(done)

    def flush_now(self) -> None:
        """Write what is queued, synchronously (for shutdown and ``entries``)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._fd is not None and self._pending:
            blobs, self._pending = self._pending, []
            _write_all(self._fd, blobs)

    def close(self) -> None:
        self.flush_now()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def entries(self) -> list[dict[str, Any]]:
        """Every line written so far, parsed."""
        if self.path is None or not self.path.exists():
            return []
        if self._fd is not None and self._pending:
            self.flush_now()
        return read_ledger(self.path)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """A ledger file as one dict per recipient, in either format (a ``values`` line expands).

    A last line without its newline is a write still in progress (the kernel may show a reader
    part of a ``writev``): it is left for the next read, not parsed half-written.
    """
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n") or not line.strip():
                continue
            entry = orjson.loads(line)
            values = entry.pop("values", None)
            if values is None:
                out.append(entry)
            else:
                out.extend({**entry, "value": v} for v in values)
    return out


def ledger_counts(path: Path, kind: str = "id") -> Counter[str]:
    """How many times each value of ``kind`` arrived; an absent file is an empty ledger."""
    if not path.exists():
        return Counter()
    return Counter(e["value"] for e in read_ledger(path) if e["kind"] == kind)
