"""One send of a campaign at a time with ``--state redis://`` (bulksend.state.lease): the pure
decision of a send that finds the lease held, the lease against a real ``redis-server`` (short
times), and real processes: two sends of one campaign started together, a send killed with
kill -9 and run again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen
from typing import Any

import orjson
import pytest

pytest.importorskip("redis", reason="REDIS CLIENT MISSING: pip install 'bulksend[redis]'")

import redis.asyncio as aioredis

from bulksend.distributed.testing import RedisServer
from bulksend.errors import UnavailableError
from bulksend.sandbox.testing import SandboxProcess
from bulksend.state import lease as leases
from bulksend.state.journal import Identity
from bulksend.state.lease import Lease, Look, Verdict, verdict
from bulksend.state.redis_journal import RedisJournal, state_keys
from tests.conftest import KEY
from tests.test_state_redis import (
    batch,
    campaign_in,
    kill_9,
    ledger_ids,
    lines_with,
    start_send,
    unique_name,
    wait_for_arrivals,
)
from tests.test_state_redis import redis_url as redis_url
from tests.test_workers_redis import Campaign, _no_process_left  # noqa: F401

V1, V2 = b'{"token":"1"}', b'{"token":"2"}'


# -- the pure decision (times are the waiting send's clock) ----------------------------------
@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (Look(None, 0.0), Verdict.TAKE),  # expired or let go
        (Look(V1, 15.0), Verdict.WAIT),  # as first seen: not renewed (yet)
        (Look(V1, 15.9), Verdict.WAIT),  # within the jitter of two looks
        (Look(V1, 18.0), Verdict.REFUSE),  # renewed 3 s later: its holder runs
        (Look(V2, 15.0), Verdict.REFUSE),  # another send took it meanwhile
    ],
)
def test_what_a_send_that_finds_the_lease_held_does(now: Look, expected: Verdict) -> None:
    assert verdict(Look(V1, 15.0), now) is expected


def test_the_documented_times_hold() -> None:
    """docs/operations.md: a re-run after a crash waits at most 15 s; the lease survives a
    stall of several renewals."""
    assert leases.TTL == 15.0
    assert leases.TTL / leases.RENEW >= 4


# -- against a real redis-server, with short times ------------------------------------------
@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


def _lease(client: aioredis.Redis, key: str, **kw: Any) -> Lease:
    times = {"ttl": 0.6, "renew": 0.1, "poll": 0.02, "moved": 0.05, **kw}
    return Lease(client, key, key + ":owner", "state redis://test", "c", **times)


async def test_a_second_send_is_refused_while_the_first_renews(client: aioredis.Redis) -> None:
    key = f"bulksend:test:{unique_name()}:lease"
    first, second = _lease(client, key), _lease(client, key)
    await first.take(None)
    first.keep()
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="is being sent by another send") as got:
        await second.take(said.append)
    assert time.monotonic() - started < 0.6  # told apart from a dead one by its renewal
    assert "pid" in str(got.value)
    assert len(said) == 1
    assert said[0].startswith("state redis://test: campaign 'c' is held by another send (host ")
    await first.release()
    assert await client.get(key) is None  # let go at the end: the next send goes at once
    await second.take(None)
    await second.release()


async def test_a_send_that_died_is_taken_over_once_its_lease_expires(
    client: aioredis.Redis,
) -> None:
    key = f"bulksend:test:{unique_name()}:lease"
    dead, again = _lease(client, key), _lease(client, key)
    await dead.take(None)  # taken, never renewed nor released: a kill -9
    said: list[str] = []
    started = time.monotonic()
    await again.take(said.append)
    waited = time.monotonic() - started
    assert 0.3 < waited < 0.6 + 0.3
    assert said[-1] == "state redis://test: the other send's lease ended; this send goes on"
    assert await client.get(key) == again.value
    await again.release()


@pytest.mark.parametrize(
    ("meanwhile", "why"),
    [
        ("delete", "Redis no longer holds it"),
        ("replace", "another send took it over"),
    ],
)
async def test_a_lost_lease_is_said_in_one_line_and_stops_the_send(
    client: aioredis.Redis, meanwhile: str, why: str
) -> None:
    key = f"bulksend:test:{unique_name()}:lease"
    lease = _lease(client, key)
    await lease.take(None)
    told: list[UnavailableError] = []
    lease.keep(told.append)
    if meanwhile == "delete":  # a Redis restarted without its data
        await client.delete(key)
    else:  # stalled past the TTL: another send took it
        await client.set(key, orjson.dumps({"host": "h", "pid": 7, "since": 0}))
    for _ in range(100):
        if told:
            break
        await asyncio.sleep(0.02)
    assert len(told) == 1
    line = str(told[0])
    assert line.startswith("state redis://test: this send lost the lease of campaign 'c' (")
    assert why in line
    assert line.endswith("run the same command again to resume")
    await lease.release()
    assert await client.exists(key) == (meanwhile == "replace")  # another's: left alone


async def test_a_send_whose_state_another_send_opened_writes_nothing(redis_url: str) -> None:
    """The stalled send's next write is refused in the same step as the check: its in-flight
    mark raises (the batch is not sent) and the record stays the other send's."""
    ident = Identity(campaign="c1", recipients=f"r-{unique_name()}", plan="p1")
    kw: dict[str, Any] = {"provider": "p", "fingerprint": "f", "name": unique_name()}
    journal = await RedisJournal.open(redis_url, ident, **kw)
    stops: list[UnavailableError] = []
    journal.on_lost(stops.append)
    await journal.in_flight(batch(1))
    keys = state_keys("p", "f", kw["name"], ident.recipients)
    other = aioredis.Redis.from_url(redis_url)
    try:
        await other.set(keys.owner, b"another send")  # another send opened the state
        with pytest.raises(UnavailableError, match="this send lost the lease of campaign"):
            await journal.in_flight(batch(2))
        assert await other.hget(keys.batches, "2") is None
        assert len(stops) == 1
        await journal.aclose()
        assert await other.get(keys.lease) is not None  # (not released: not its own)
        await other.delete(keys.lease)
    finally:
        await other.aclose()


# -- real processes ---------------------------------------------------------------------------
ROWS = [(f"v{i:05d}", f"u{i:05d}") for i in range(3_000)]


def _sandbox(ledger: Path) -> SandboxProcess:
    """300 requests at 50 a second: a send that lasts about 6 s."""
    return SandboxProcess(
        "maxtraffic", "--api-key", KEY, "--ledger", str(ledger), "--limit", "50",
        "--window", "1",
    )  # fmt: skip


@contextmanager
def _sends(tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, Callable[..., Popen[str]]]]:
    """A campaign of ``ROWS`` with its state on ``redis_url``, and its sandbox (``_sandbox``):
    yields the sandbox's ledger and what starts one send of it (``--limit 50/1s``, then the
    arguments it is given)."""
    campaign = campaign_in(tmp_path, ROWS, unique_name())
    ledger = tmp_path / "ledger.jsonl"
    with _sandbox(ledger) as sb:
        send = (str(campaign), "--base-url", sb.base_url, "--state", redis_url, "--limit", "50/1s")
        yield ledger, lambda *more: start_send(tmp_path, *send, *more)


def test_two_sends_of_one_campaign_at_once_send_every_recipient_once(
    tmp_path: Path,
    redis_url: str,
) -> None:
    with _sends(tmp_path, redis_url) as (ledger, start):
        sends = [start() for _ in range(2)]
        results = [(p.wait(timeout=120), p.communicate()[1]) for p in sends]
    assert sorted(code for code, _ in results) == [0, 4], results
    _, err = next(r for r in results if r[0] == 4)
    refused = lines_with(err, "bulksend:")
    assert refused[-1].startswith(f"bulksend: state {redis_url}: campaign ")
    assert "is being sent by another send (host " in refused[-1]
    assert refused[-1].endswith("run this again once that send has ended")
    assert len(lines_with(err, "waiting up to")) == 1
    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in ROWS}
    assert set(ids.values()) == {1}


def test_a_send_killed_with_kill_9_is_run_again_within_the_lease_s_time(
    tmp_path: Path,
    redis_url: str,
) -> None:
    with _sends(tmp_path, redis_url) as (ledger, start):
        first = start()
        wait_for_arrivals(ledger, 500, first)
        kill_9(first)
        killed = time.monotonic()
        again = start()
        assert again.stderr is not None
        said = []
        for line in again.stderr:  # (until the lease is taken, timed)
            said.append(line)
            if "this send goes on" in line:
                break
        waited = time.monotonic() - killed
        _, rest = again.communicate(timeout=120)
    err = "".join(said) + rest
    assert again.returncode == 0, err
    waiting = lines_with(err, "waiting up to")
    assert len(waiting) == 1, err
    assert "is held by another send (host " in waiting[0]
    assert "a send that died lets go within 15 s" in waiting[0]
    assert lines_with(err, "this send goes on") == [
        f"bulksend: state {redis_url}: the other send's lease ended; this send goes on"
    ]
    assert waited < leases.TTL + 5  # (start-up included)
    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in ROWS}


def test_a_send_stalled_past_its_lease_stops_once_it_goes_on(
    tmp_path: Path,
    redis_url: str,
) -> None:
    """Send 1 is stopped (SIGSTOP) mid-send; send 2 of the same campaign waits out its lease,
    takes over and resends what was in flight as possible duplicates. Send 1, continued, stops
    with one line and writes nothing more. Every recipient arrived; twice only when send 2's
    report says it may have."""
    report, summary = tmp_path / "report.jsonl", tmp_path / "summary.json"
    with _sends(tmp_path, redis_url) as (ledger, start):
        first = start()
        wait_for_arrivals(ledger, 500, first)
        first.send_signal(signal.SIGSTOP)
        try:
            second = start("--report", str(report), "--summary-json", str(summary))
            assert second.stderr is not None
            said = []
            for line in second.stderr:
                said.append(line)
                if "this send goes on" in line:
                    break
        finally:
            first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=60)
        _, rest = second.communicate(timeout=120)
    assert first.returncode == 4, first_err
    lost = lines_with(first_err, "lost the lease")
    assert len(lost) == 1, first_err
    assert lost[0].startswith(f"bulksend: state {redis_url}: this send lost the lease of ")
    assert second.returncode == 0, "".join(said) + rest
    ids = ledger_ids(ledger)
    assert set(ids) == {v for v, _ in ROWS}
    out = [orjson.loads(line) for line in report.read_bytes().splitlines()]
    assert len(out) == len(ROWS)
    marked = {x["id"] for x in out if x["reason"].startswith("may have arrived twice")}
    assert {i for i, n in ids.items() if n > 1} <= marked
    assert orjson.loads(summary.read_bytes())["delivered"] == len(ROWS)


def test_two_planners_of_one_campaign_at_once_queue_every_batch_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``send --workers`` twice at once: one planner is refused; the workers serve the
    other, and the campaign ends with every recipient once."""
    run = Campaign(tmp_path, n_unique=3_000, limit=50)
    planners = [run.plan(redis_server.url), run.plan(redis_server.url)]
    try:
        for i in range(2):
            run.worker(redis_server.url, f"w{i}")
        ended = [(p.wait(timeout=60), p.communicate()[1]) for p in planners]
        for name, worker in run.workers.items():
            _, werr = worker.communicate(timeout=60)
            assert worker.returncode == 0, (name, werr[-2000:])
    finally:
        for p in planners:
            if p.poll() is None:
                p.kill()
            p.communicate()
        run.stop()
    assert sorted(code for code, _ in ended) == [0, 4], ended
    refused = lines_with(next(err for code, err in ended if code == 4), "bulksend:")
    assert "is being sent by another send (host " in refused[-1]
    summary = run.check()
    assert summary["possible_duplicates"] == 0
