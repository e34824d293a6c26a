"""Resume at the engine level: what a dead run confirmed is never sent again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.dispatch.engine import Engine, EngineOptions
from bulksend.models import Batch, HttpRequest, HttpResponse
from bulksend.output.report import Summary
from bulksend.state.journal import Identity, Journal
from tests.test_engine import FakeTransport, SetDedup, make_engine, ok, rows

ID = Identity("c", "r", "p")


def with_journal(engine: Engine, path: Path, *, resume: bool, policy: str = "resend") -> Engine:
    engine.journal = Journal.open(path, ID, resume=resume)
    attempts = engine.options.max_attempts
    engine.options = EngineOptions(
        batch_size=10, workers=4, unknown_policy=policy, max_attempts=attempts
    )
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
    assert isinstance(engine.journal, Journal)
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
    assert isinstance(engine.journal, Journal)
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
    assert isinstance(engine.journal, Journal)
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


async def resumed_run(
    path: Path, tmp_path: Path, name: str
) -> tuple[Summary, list[dict[str, Any]]]:
    """Another run of the same send, with a report; returns its summary and report rows."""
    report = tmp_path / f"{name}.jsonl"
    engine, _ = make_engine(ok, report=report)
    with_journal(engine, path, resume=True)
    with engine.report:
        summary = await engine.run(rows(100))
    assert isinstance(engine.journal, Journal)
    engine.journal.close()
    return summary, [orjson.loads(x) for x in report.read_bytes().splitlines()]


def twice(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [x for x in lines if x["reason"].startswith("may have arrived twice")]


async def test_resent_batches_are_marked_and_counted_by_every_later_run(tmp_path: Path) -> None:
    path = tmp_path / "j"
    await crashed_run(path, crash_at=5)
    summary, lines = await resumed_run(path, tmp_path, "second")
    marked = twice(lines)
    assert 0 < len(marked) == summary.possible_duplicates <= 40
    assert {x["status"] for x in marked} == {"delivered"}
    assert {x["reason"] for x in marked} == {
        "may have arrived twice: resent after run 1 was interrupted with the request in flight"
    }
    assert summary.possible_duplicates_earlier == 0
    # a third run sends nothing, and still counts (and reports) the whole campaign's
    third, lines = await resumed_run(path, tmp_path, "third")
    assert third.requests == 0
    assert third.possible_duplicates == third.possible_duplicates_earlier == len(marked)
    assert twice(lines) == marked
    assert f"possible duplicates  {len(marked)} ({len(marked)} by an earlier run)" in third.render()


@pytest.mark.parametrize("policy", ["resend", "skip"])
async def test_batches_left_unknown_are_resent_as_possible_duplicates(
    tmp_path: Path, policy: str
) -> None:
    path = tmp_path / "j"
    first = Journal.open(path, ID)
    batch = Batch(1, "api", list(rows(10)))  # type: ignore[arg-type]
    await first.in_flight(batch)
    first.finished(batch, "unknown", "interrupted while in flight")  # a second Ctrl-C
    first.close("crashed")
    engine, transport = make_engine(ok, report=tmp_path / "r.jsonl")
    with_journal(engine, path, resume=True, policy=policy)
    with engine.report:
        summary = await engine.run(rows(100))
    assert isinstance(engine.journal, Journal)
    engine.journal.close()
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    if policy == "skip":  # for review: not sent
        assert (summary.unknown, summary.possible_duplicates, summary.delivered) == (10, 0, 90)
        assert "id0" not in ids(transport)
        return
    assert "id0" in ids(transport)
    assert (summary.delivered, summary.possible_duplicates) == (100, 10)
    assert {x["reason"] for x in twice(lines)} == {
        "may have arrived twice: resent after run 1 left its outcome unknown "
        "(interrupted while in flight)"
    }


async def test_a_doubt_outlives_a_failed_resend(tmp_path: Path) -> None:
    """Resent after a crash, failed this time: the run after still counts it when it lands."""
    path = tmp_path / "j"
    await crashed_run(path, crash_at=3)

    def down(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(503, {}, b'{"message": "maintenance"}')

    engine, _ = make_engine(down, max_attempts=1)
    with_journal(engine, path, resume=True)
    failing = await engine.run(rows(100))
    assert isinstance(engine.journal, Journal)
    engine.journal.close()
    assert failing.possible_duplicates == 0
    assert failing.failed > 0
    summary, lines = await resumed_run(path, tmp_path, "third")
    assert summary.delivered == 100
    assert 0 < summary.possible_duplicates == len(twice(lines))
    assert {x["reason"] for x in twice(lines)} == {
        "may have arrived twice: resent after run 1 was interrupted with the request in flight"
    }


async def test_a_journal_of_before_issue_16_resumes_by_its_own_digests(tmp_path: Path) -> None:
    """Journals written before issue 16 keep ``batch_digest``; a resume still knows them."""
    import sqlite3

    from bulksend.models import Recipient
    from bulksend.state.journal import batch_digest

    path = tmp_path / "j"
    first = await crashed_run(path, crash_at=5)
    with sqlite3.connect(path) as db:
        spans = db.execute("SELECT number, first_line, last_line FROM batches").fetchall()
        assert spans
        for number, low, high in spans:
            old = [Recipient(n, f"id{n - 2}", f"uid{n - 2}") for n in range(low, high + 1)]
            db.execute("UPDATE batches SET digest=? WHERE number=?", (batch_digest(old), number))
    engine, second = make_engine(ok)
    with_journal(engine, path, resume=True)
    engine.dedup = SetDedup()
    summary = await engine.run(rows(100))
    assert isinstance(engine.journal, Journal)
    engine.journal.close()
    assert set(ids(first)) | set(ids(second)) == {f"id{i}" for i in range(100)}
    assert len(set(ids(first)) & set(ids(second))) <= 4 * 10  # only what was in flight
    assert summary.delivered == 100
