"""The synthetic recipients of ``bulksend bench``: rows through a named pipe."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import pytest

from bulksend.commands.bench_stream import (
    BLOCK_ROWS,
    SyntheticStream,
    block_template,
    can_stream,
    enough,
    write_rows,
)

needs_fifo = pytest.mark.skipif(not can_stream(), reason="no named pipes here")


def rows_of(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def test_rows_are_distinct_across_blocks_and_repeat_at_the_duplicate_rate() -> None:
    out = io.BytesIO()
    write_rows(out, 3 * BLOCK_ROWS + 5)
    rows = rows_of(out.getvalue())
    assert rows[0] == ["id", "uid"]
    body = rows[1:]
    assert len(body) == 3 * BLOCK_ROWS + 5
    assert len({r[0] for r in body}) == len(body) == len({r[1] for r in body})
    assert all(len(r[0]) == 32 and int(r[0], 16) >= 0 for r in body)
    out = io.BytesIO()
    write_rows(out, 2 * BLOCK_ROWS, duplicate_rate=0.25)
    body = rows_of(out.getvalue())[1:]
    repeated = 1 - len({tuple(r) for r in body}) / len(body)
    assert 0.2 < repeated < 0.3


def test_every_row_of_a_block_is_as_long() -> None:
    template = block_template(0.1, seed=3)
    lengths = {len(line) for line in template.splitlines()}
    assert len(lengths) == 1
    assert template.count(b"\n") == BLOCK_ROWS


@needs_fifo
def test_a_counted_stream_writes_exactly_its_rows_into_the_pipe(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    stream = SyntheticStream(path, count=BLOCK_ROWS + 10).start()
    try:
        data = path.read_bytes()  # opens the pipe: the writer starts; reads to its end
    finally:
        stream.close()
    assert stream.error is None
    assert stream.rows == BLOCK_ROWS + 10 == len(rows_of(data)) - 1
    assert stream.cpu_seconds >= 0


@needs_fifo
def test_a_timed_stream_ends_at_its_time(tmp_path: Path) -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.25  # every look at the clock: a quarter of a second later
        return now[0]

    path = tmp_path / "r.csv"
    stream = SyntheticStream(path, seconds=2.0, clock=clock).start()
    try:
        data = path.read_bytes()
    finally:
        stream.close()
    # the clock is read at the start, then before each block: 0.5, 0.75, ... 2.0 (up at 2.25)
    assert stream.rows == 7 * BLOCK_ROWS == len(rows_of(data)) - 1


@needs_fifo
def test_closing_a_stream_nobody_opened_stops_its_thread(tmp_path: Path) -> None:
    stream = SyntheticStream(tmp_path / "r.csv", count=10).start()
    stream.close()
    assert not any(t.name == "bench-rows" and t.is_alive() for t in threading.enumerate())
    assert stream.rows == 0


@needs_fifo
def test_a_reader_that_goes_away_ends_the_writes(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    stream = SyntheticStream(path, count=10**9).start()
    with path.open("rb") as pipe:
        pipe.read(1000)
    stream._thread.join(timeout=10)  # the writer met a closed pipe: it stopped by itself
    assert not stream._thread.is_alive()
    assert stream.error is None
    assert stream.rows < 10**9
    stream.close()


def test_a_timed_stream_stops_when_what_is_buffered_fills_the_time() -> None:
    # the time is up
    assert enough(10.0, 0.0, 10.0, buffered=0, sent=0)
    # a quarter of the time not yet gone: the pace of the first requests is not trusted
    assert not enough(2.0, 0.0, 10.0, buffered=10**9, sent=1)
    # 1,000 rows/s so far: 5,000 buffered rows take 5 s, from 4 s: past 8 s, stop
    assert enough(4.0, 0.0, 8.0, buffered=5000, sent=4000)
    assert not enough(4.0, 0.0, 10.0, buffered=5000, sent=4000)
    assert not enough(4.0, 0.0, 10.0, buffered=5000, sent=0)  # no pace yet
