"""Resume at the engine level: what a dead run confirmed is never sent again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from bulksend.engine import Engine, EngineOptions
from bulksend.journal import Identity, Journal
from bulksend.models import Batch, HttpRequest, HttpResponse
from tests.test_engine import FakeTransport, SetDedup, make_engine, ok, rows

ID = Identity("c", "r", "p")


def with_journal(engine: Engine, path: Path, *, resume: bool, policy: str = "resend") -> Engine:
    engine.journal = Journal.open(path, ID, resume=resume)
    engine.options = EngineOptions(batch_size=10, workers=4, unknown_policy=policy)
    return engine


class Crash(Exception):
    pass


async def crashed_run(path: Path, crash_at: int) -> FakeTransport:
    """A run whose process 'dies' while request ``crash_at`` is in flight."""

    reached = asyncio.Event()

    class Dying(FakeTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            self.requests.append(request)
            if len(self.requests) >= crash_at:
                reached.set()
                await asyncio.sleep(3600)  # hangs in flight until the crash below
            return ok(request, len(self.requests))

    engine, _ = make_engine(ok)
    engine.transport = transport = Dying(ok)
    with_journal(engine, path, resume=False)
    task = asyncio.create_task(engine.run(rows(100)))
    await reached.wait()
    await asyncio.sleep(0.02)  # let the journal commit what was delivered
    assert engine.journal is not None
    engine.journal.flush()
    # a kill -9: nothing after this point runs (no journal close, no final states)
    task.cancel()
    engine.journal = None
    with pytest.raises(asyncio.CancelledError):
        await task
    return transport


def ids(transport: FakeTransport) -> list[str]:
    return [i for r in transport.requests for i in orjson.loads(r.body or b"")["to_ids"]]


async def test_resume_resends_only_what_was_not_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "j"
    first = await crashed_run(path, crash_at=5)
    engine, second = make_engine(ok)
    with_journal(engine, path, resume=True)
    engine.dedup = SetDedup()
    summary = await engine.run(rows(100))
    assert engine.journal is not None
    engine.journal.close()
    confirmed = set(ids(first)) - set(ids(second))
    assert set(ids(first)) | set(ids(second)) == {f"id{i}" for i in range(100)}
    # only batches in flight at the crash (at most the 4 workers) are sent twice
    twice = set(ids(first)) & set(ids(second))
    assert len(twice) <= 4 * 10
    assert summary.possible_duplicates == len(twice)
    assert summary.delivered == 100
    assert len(confirmed) >= 10
    # the rows the journal replayed count as delivered, but not as this run's deliveries
    assert summary.delivered_earlier == len(confirmed)
    assert summary.delivered - summary.delivered_earlier == len(set(ids(second)))
    summary.elapsed = 2.0
    assert summary.rate == (100 - len(confirmed)) / 2.0
    line = next(x for x in summary.render().splitlines() if x.startswith("  delivered "))
    assert line.split() == ["delivered", "100", f"({len(confirmed)}", "by", "an", "earlier", "run)"]


async def test_unknown_skip_policy_marks_in_flight_batches_for_review(tmp_path: Path) -> None:
    path = tmp_path / "j"
    first = await crashed_run(path, crash_at=3)
    engine, second = make_engine(ok)
    with_journal(engine, path, resume=True, policy="skip")
    summary = await engine.run(rows(100))
    assert engine.journal is not None
    engine.journal.close()
    assert not set(ids(first)) & set(ids(second))
    assert summary.unknown > 0
    assert summary.delivered + summary.unknown == 100
    assert summary.possible_duplicates == 0


async def test_a_batch_split_when_the_run_died_resends_only_its_unsettled_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    first = Journal.open(path, ID, resume=False)
    batch = Batch(1, "api", list(rows(10)))  # type: ignore[arg-type]
    await first.in_flight(batch)
    parts = [(2, "invalid", "to_ids: bad", 422)] + [(n, "delivered", "", 200) for n in (3, 4, 5, 6)]
    first.finished(batch, "split", parts=parts)  # lines 7..11 were never settled
    first.close("crashed")

    engine, transport = make_engine(ok)
    with_journal(engine, path, resume=True)
    summary = await engine.run(rows(10))
    assert engine.journal is not None
    engine.journal.close()
    assert ids(transport) == [f"id{i}" for i in range(5, 10)]  # only the unsettled rows
    assert (summary.delivered, summary.invalid) == (9, 1)
    assert summary.delivered_earlier == 4  # the parts the dead run had settled
    again = Journal.open(path, ID, resume=True)
    record = again.previous(1)
    assert record is not None
    assert record.state == "split"  # its earlier parts are kept
    assert {p.line for p in again.parts(1)} == set(range(2, 12))
    again.close()
