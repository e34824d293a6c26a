"""Deterministic sharding of a recipient file across workers (``--shard I/N``).

A row belongs to shard ``I`` of ``N`` when a stable hash of its dedup key (the id, or the uid
when there is no id) is ``I`` modulo ``N``; so every copy of a row, and every row sharing its
id, lands in the same shard and is deduplicated there. Rows rejected while reading carry no
trustworthy key and are assigned by line number instead, so each is reported by exactly one
shard. (Rows that share only a uid but have different ids can land in different shards; see
docs/scaling.md.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bulksend.errors import ConfigError
from bulksend.models import Recipient, Rejected

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

    def owns(self, item: Recipient | Rejected) -> bool:
        if self.count == 1:
            return True
        key = item.id if item.id is not None else item.uid
        if isinstance(item, Rejected) or key is None:
            return item.line % self.count == self.index
        return stable_hash(key) % self.count == self.index

    def select(self, chunks: Iterable[Any]) -> Iterator[Any]:
        """Keep this shard's rows of each ``(recipients, rejected)`` chunk."""
        for recipients, rejected in chunks:
            yield (
                [r for r in recipients if self.owns(r)],
                [r for r in rejected if self.owns(r)],
            )


def stable_hash(key: str) -> int:
    """The same on every machine and Python (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
