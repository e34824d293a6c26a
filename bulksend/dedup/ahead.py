"""Deduplication in a helper thread, one chunk ahead of the reader (both cores at work).

The compiled key set lets go of the GIL while it hashes, probes its table and reads or writes
its spill file (``bulksend.dedup._keyset``), which is most of a chunk's deduplication. Run in a
helper thread, that work overlaps with reading and checking the next chunk in the caller's
thread, or with the event loop's network work in a send::

    with DedupAhead(dedup) as ahead:
        for chunk, (kept, duplicates) in ahead.chunks(rows.chunks()):
            ...

One thread, one chunk at a time and in order: the answers are exactly those of calling
``dedup.filter_many`` on each chunk in turn, and nothing else may use ``dedup`` meanwhile (the
key set refuses a second caller). With the numpy key set it still works, with less overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Protocol

from bulksend.models import Recipient
from bulksend.sources.spec import Chunk

Kept = tuple[Sequence[Recipient], Sequence[Recipient]]


class Dedup(Protocol):
    def filter_many(
        self, recipients: Sequence[Recipient]
    ) -> tuple[Sequence[Recipient], Sequence[Recipient]]:
        """(kept with already-seen identifiers cleared, whole-row duplicates)"""


class DedupAhead:
    """``dedup.filter_many`` in one helper thread; see the module docstring."""

    def __init__(self, dedup: Dedup) -> None:
        self.dedup = dedup
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulksend-dedup")

    def submit(self, recipients: Sequence[Recipient]) -> Future[Kept]:
        """Deduplicate after everything submitted before; the future holds (kept, dups)."""
        return self._pool.submit(self.dedup.filter_many, recipients)

    def chunks(self, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, Kept]]:
        """Each chunk with its answer, in order; the next chunk is read while one is
        deduplicated."""
        pending: tuple[Chunk, Future[Kept]] | None = None
        for chunk in chunks:
            future = self.submit(chunk.recipients)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (chunk, future)
        if pending is not None:
            yield pending[0], pending[1].result()

    def close(self) -> None:
        """Wait for the work submitted, then stop the thread (the key set is free again)."""
        self._pool.shutdown(wait=True, cancel_futures=False)

    def __enter__(self) -> DedupAhead:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
