"""The pure decisions of a planner and its workers (bulksend.workers.logic, .worker.choose,
.status.render)."""

from __future__ import annotations

import pytest

from bulksend.errors import ConfigError
from bulksend.models import Batch, Recipient, Status
from bulksend.recipients import Recipients
from bulksend.state.journal import batch_digest
from bulksend.workers.logic import (
    Plan,
    Progress,
    decode_batch,
    encode_batch,
    may_finish,
    planned,
    settled_results,
)
from bulksend.workers.status import render
from bulksend.workers.worker import Found, choose


def _batch() -> Batch:
    rows = [Recipient(2, "a", "x", {"name": "A"}), Recipient(5, "b", None, {"name": "B"})]
    return Batch(7, "api", Recipients.of(rows))


def test_a_batch_goes_through_the_stream_unchanged() -> None:
    batch = _batch()
    back = decode_batch(encode_batch(batch))
    assert (back.number, back.group) == (7, "api")
    assert list(back.recipients) == list(batch.recipients)
    assert batch_digest(back.recipients) == batch_digest(batch.recipients)


def test_an_entry_that_is_not_a_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="not a batch"):
        decode_batch({b"other": b"1"})


@pytest.mark.parametrize(
    ("state", "plan"),
    [
        (None, Plan.ENQUEUE),
        ("queued", Plan.AWAIT),
        ("in_flight", Plan.AWAIT),
        ("delivered", Plan.RESUME),
        ("failed", Plan.RESUME),
        ("split", Plan.RESUME),
    ],
)
def test_what_a_restarted_planner_does_with_a_batch(state: str | None, plan: Plan) -> None:
    assert planned(state) is plan


def test_a_settled_batch_is_reported_as_recorded() -> None:
    batch = _batch()
    record = {"state": "delivered", "reason": "", "http": 200, "attempts": 1}
    [one] = settled_results(batch, record, {})
    assert (one.status, one.http_status, len(one.recipients)) == (Status.DELIVERED, 200, 2)


def test_a_split_batch_is_reported_by_its_parts() -> None:
    batch = _batch()
    parts = {2: {"state": "invalid", "reason": "bad id", "http": 422}}
    got = settled_results(batch, {"state": "split", "attempts": 2}, parts)
    assert [(r.recipients[0].line, r.status) for r in got] == [
        (2, Status.INVALID),
        (5, Status.UNKNOWN),
    ]


def test_a_worker_exits_only_when_the_campaign_is_over() -> None:
    assert not may_finish(all_enqueued=False, queued=0, stopped=False, gone=False)
    assert not may_finish(all_enqueued=True, queued=3, stopped=False, gone=False)
    assert may_finish(all_enqueued=True, queued=0, stopped=False, gone=False)
    assert may_finish(all_enqueued=False, queued=3, stopped=True, gone=False)
    assert may_finish(all_enqueued=False, queued=3, stopped=False, gone=True)


def test_rate_and_eta() -> None:
    p = Progress(rows=1000, settled=250, delivered=250, in_flight=2, queued=5, elapsed=5.0)
    assert p.rate == 50.0
    assert p.eta == 15.0
    assert Progress(10, 0, 0, 0, 0, 0.0).eta is None
    assert Progress(10, 10, 10, 0, 0, 1.0).eta == 0.0


def test_which_campaign_a_worker_serves() -> None:
    entry = {"provider": "maxtraffic", "state": "f:d"}
    assert choose({}, None) is None
    assert choose({"a": entry}, None) == Found("a", "maxtraffic", "f:d")
    assert choose({"a": entry}, "b") is None
    with pytest.raises(ConfigError, match="name one with --campaign"):
        choose({"a": entry, "b": entry}, None)


def test_status_for_people() -> None:
    status = {
        "work": {"all_enqueued": "1", "enqueued": "30", "started": "100", "rows": "300"},
        "queued": 4,
        "held": 2,
        "states": {},
        "rows": {"delivered": 150, "queued": 60, "in_flight": 20},
        "workers": {"w0": {"delivered": 150, "requests": 15, "held": 2, "seen": 109.0}},
    }
    text = render("E2E", status, now=110.0)
    assert "every batch queued" in text
    assert "settled 150 of 300 rows (150 delivered)" in text
    assert "in flight 2, waiting 4" in text
    assert "rate 15.0 rows/s, ETA 10 s" in text
    assert "worker w0: 150 delivered, 15 requests, holds 2 batches, seen 1 s ago" in text
