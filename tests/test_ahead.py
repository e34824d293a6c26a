"""Deduplication one chunk ahead, in a helper thread: the same answers, in order."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bulksend.dedup.ahead import DedupAhead
from bulksend.dedup.deduper import Deduper
from bulksend.models import Recipient
from bulksend.recipients import Recipients
from bulksend.sources import SourceSpec, open_source, write_synthetic_csv
from bulksend.sources.spec import Chunk


def test_the_answers_are_those_of_filter_many_in_turn(tmp_path: Path) -> None:
    path = write_synthetic_csv(tmp_path / "r.csv", 30_000, duplicate_rate=0.2, seed=3)
    with open_source(SourceSpec(path=str(path))) as rows, Deduper() as plain:
        expected = [plain.filter_many(chunk.recipients) for chunk in rows.chunks()]
    with open_source(SourceSpec(path=str(path))) as rows, Deduper() as d, DedupAhead(d) as ahead:
        got = [(list(kept), list(dups)) for _, (kept, dups) in ahead.chunks(rows.chunks())]
    assert got == [(list(kept), list(dups)) for kept, dups in expected]
    assert sum(len(dups) for _, dups in got) == plain.duplicates == d.duplicates > 5000


class Recording:
    """A deduplicator that notes which thread called it and when, and may fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.fail_at = fail_at

    def filter_many(
        self, recipients: Sequence[Recipient]
    ) -> tuple[Sequence[Recipient], Sequence[Recipient]]:
        number = recipients[0].line
        self.calls.append((number, threading.current_thread().name))
        if number == self.fail_at:
            raise OSError("spill file lost")
        return recipients, []


def chunk(line: int) -> Chunk:
    return Chunk(Recipients([line], [f"id{line}"]), [])


def test_the_next_chunk_is_read_while_one_is_deduplicated() -> None:
    dedup = Recording()
    read: list[int] = []

    def source() -> Iterator[Chunk]:
        for line in (1, 2, 3):
            read.append(line)
            yield chunk(line)

    with DedupAhead(dedup) as ahead:
        seen = []
        for c, (kept, _) in ahead.chunks(source()):
            seen.append(c.recipients[0].line)
            # when chunk k is handed out, chunk k+1 has been read already (but the last)
            assert read[-1] == min(seen[-1] + 1, 3)
            assert kept[0].line == seen[-1]
    assert seen == [1, 2, 3]
    assert [n for n, _ in dedup.calls] == [1, 2, 3]
    assert all(name.startswith("bulksend-dedup") for _, name in dedup.calls)


def test_a_failure_in_the_thread_reaches_the_reader() -> None:
    with DedupAhead(Recording(fail_at=2)) as ahead:
        results = ahead.chunks([chunk(1), chunk(2), chunk(3)])
        next(results)
        with pytest.raises(OSError, match="spill file lost"):
            next(results)


def test_close_waits_for_the_work_submitted() -> None:
    dedup = Recording()
    ahead = DedupAhead(dedup)
    futures = [ahead.submit(chunk(n).recipients) for n in range(1, 20)]
    ahead.close()
    assert all(f.done() for f in futures)
    assert [n for n, _ in dedup.calls] == list(range(1, 20))
