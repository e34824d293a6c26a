"""Deterministic sharding of a recipient file across workers (``--shard I/N``).

Every worker reads the whole file (it must, to find its rows) and deduplicates *all* of it with
the campaign's own rules, exactly as an unsharded send would: the file and its order are the
same everywhere, so every shard takes the same decisions. Then it keeps the rows it owns: the
row that starts on line ``L`` belongs to shard ``L mod N``. So a sharded send delivers exactly
what an unsharded send delivers, split N ways: a uid shared by rows with different ids is sent
once, with its first row, whichever shard owns that row. Each row, sent, rejected or dropped as
a duplicate, is reported by the one shard that owns it.

The cost: each of the N workers deduplicates every row, not 1/N of them, and sizes its key
table for the whole file (docs/scaling.md has the figures).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from bulksend.dedup.ahead import Dedup, DedupAhead
from bulksend.errors import ConfigError
from bulksend.models import DUPLICATE_REASON, Duplicate, Recipient
from bulksend.recipients import Recipients
from bulksend.sources.spec import Chunk

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    index: int  # 0-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` with 0 <= I < N, e.g. ``"0/4"`` .. ``"3/4"``."""
        m = _SHARD.match(text)
        if not m:
            raise ConfigError(f"--shard: expected I/N such as 0/4, got {text!r}")
        index, count = int(m.group(1)), int(m.group(2))
        if count < 1 or not 0 <= index < count:
            raise ConfigError(f"--shard: I must be in 0..N-1 and N >= 1, got {text!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, line: int) -> bool:
        """Whether the row that starts on ``line`` is this shard's."""
        return line % self.count == self.index

    def select(self, chunks: Iterable[Chunk], dedup: Dedup) -> Generator[Chunk, None, None]:
        """This shard's rows of each chunk, after deduplicating every row with ``dedup``
        (one chunk ahead, in a helper thread). The duplicates it owns come as
        :class:`~bulksend.models.Duplicate` items among the chunk's ``rejected``; what it
        keeps needs no more deduplication (give the engine ``ALREADY_DEDUPLICATED``)."""
        with DedupAhead(dedup) as ahead:
            for (_, rejected), (kept, duplicates) in ahead.chunks(chunks):
                mine = [r for r in rejected if self.owns(r.line)]
                mine += [
                    Duplicate(r.line, DUPLICATE_REASON, r.id, r.uid)
                    for r in duplicates
                    if self.owns(r.line)
                ]
                yield Chunk(self._mine(kept), mine)

    def _mine(self, rows: Sequence[Recipient]) -> Recipients:
        rows = Recipients.of(rows)
        count, index = self.count, self.index
        return rows.select([line % count == index for line in rows.lines])


class _AlreadyDeduplicated:
    """The engine's deduplicator for a shard whose rows were deduplicated by ``select``."""

    def filter_many(
        self, recipients: Sequence[Recipient]
    ) -> tuple[Sequence[Recipient], Sequence[Recipient]]:
        return recipients, Recipients(range(0))


ALREADY_DEDUPLICATED = _AlreadyDeduplicated()
