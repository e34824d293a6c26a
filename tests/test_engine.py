"""Engine behaviour through the transport seam: a handler function stands in for the network."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from bulksend.dispatch.engine import Engine, EngineOptions
from bulksend.errors import NoResponse
from bulksend.models import HttpRequest, HttpResponse, Recipient, Rejected
from bulksend.output.report import ReportWriter
from bulksend.providers import maxtraffic
from bulksend.providers.base import Limit
from bulksend.ratelimit.pacing import BURST
from bulksend.ratelimit.scheduler import GroupPolicy, Permit, Scheduler

Handler = Callable[[HttpRequest, int], HttpResponse]


class SetDedup:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def filter(self, r: Recipient) -> Recipient | None:
        id_ = r.id if r.id is not None and ("id", r.id) not in self.seen else None
        uid = r.uid if r.uid is not None and ("uid", r.uid) not in self.seen else None
        if id_ is None and uid is None:
            return None
        if id_:
            self.seen.add(("id", id_))
        if uid:
            self.seen.add(("uid", uid))
        return Recipient(r.line, id_, uid, r.attrs)

    def filter_many(self, rs: Sequence[Recipient]) -> tuple[list[Recipient], list[Recipient]]:
        kept, dups = [], []
        for r in rs:
            k = self.filter(r)
            if k is None:
                dups.append(r)
            else:
                kept.append(k)
        return kept, dups


class FakeTransport:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        return self.handler(request, len(self.requests))


@pytest.fixture(autouse=True)
def _every_row_accounted(monkeypatch: pytest.MonkeyPatch) -> None:
    """After every run in this module, each row read has exactly one final state."""
    original = Engine.run

    async def checked(self: Engine, items: list[Recipient | Rejected]) -> object:
        summary = await original(self, items)
        assert summary.read == summary.accounted
        return summary

    monkeypatch.setattr(Engine, "run", checked)


class Classifying:
    """A provider whose classify is replaced (the real adapters are frozen and slotted)."""

    def __init__(self, inner: Any, classify: Callable[[HttpResponse], Any]) -> None:
        self._inner = inner
        self.classify = classify

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def ok(request: HttpRequest, n: int) -> HttpResponse:
    return HttpResponse(200, {"X-RateLimit-Limit": "100000"}, b'{"success": true}')


def make_engine(
    handler: Handler, *, report: Path | None = None, max_attempts: int = 6
) -> tuple[Engine, FakeTransport]:
    provider = maxtraffic.build({"message": {"messages": [{"t": "x"}]}}, {"api_key": "secret"})
    transport = FakeTransport(handler)
    sched = Scheduler(
        {"api": GroupPolicy(Limit(100_000, 1.0), in_flight=4)},
        backoff_base=0.001,
        backoff_cap=0.002,
    )
    engine = Engine(
        provider,
        transport,
        sched,
        SetDedup(),
        EngineOptions(batch_size=10, workers=4, max_attempts=max_attempts, circuit_cooldown=0.01),
        report=ReportWriter(report),
    )
    return engine, transport


def rows(n: int) -> list[Recipient | Rejected]:
    return [Recipient(i + 2, f"id{i}", f"uid{i}") for i in range(n)]


def sent_ids(transport: FakeTransport) -> list[str]:
    return [i for r in transport.requests for i in orjson.loads(r.body or b"").get("to_ids", [])]


async def test_every_unique_recipient_is_sent_once_and_reported(tmp_path: Path) -> None:
    items = rows(95) + rows(5) + [Rejected(200, "missing id and uid")]
    engine, transport = make_engine(ok, report=tmp_path / "r.jsonl")
    with engine.report:
        summary = await engine.run(items)
    assert summary.read == summary.accounted
    assert sorted(sent_ids(transport)) == sorted(f"id{i}" for i in range(95))
    assert (summary.read, summary.delivered, summary.duplicates, summary.invalid) == (101, 95, 5, 1)
    assert summary.requests == 10
    assert summary.complete
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert len(lines) == 101
    assert {x["status"] for x in lines} == {"delivered", "duplicate", "invalid"}
    assert [x["reason"] for x in lines if x["status"] == "invalid"] == ["missing id and uid"]


async def test_401_stops_after_the_first_request() -> None:
    def unauthorized(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(401, {}, b'{"message": "Wrong or empty Authorization header"}')

    engine, transport = make_engine(unauthorized)
    summary = await engine.run(rows(500))
    assert len(transport.requests) == 1
    assert summary.delivered == 0
    assert "Wrong or empty Authorization header" in summary.stopped
    assert summary.failed == 10  # the batch that got the 401
    assert summary.skipped > 0
    assert summary.skipped == 490  # the rest: not sent, reported, resumable


def reject(*bad: str) -> Handler:
    def handler(request: HttpRequest, n: int) -> HttpResponse:
        body = request.body or b""
        hit = [b for b in bad if f'"{b}"'.encode() in body]
        if hit:
            return HttpResponse(422, {}, b'{"message": "to_ids: bad value %s"}' % hit[0].encode())
        return ok(request, n)

    return handler


async def test_422_bisection_isolates_exactly_the_bad_recipients(tmp_path: Path) -> None:
    engine, transport = make_engine(reject("id13", "id17"), report=tmp_path / "r.jsonl")
    with engine.report:
        summary = await engine.run(rows(30))
    assert (summary.delivered, summary.invalid) == (28, 2)
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    invalid = {x["id"]: x["reason"] for x in lines if x["status"] == "invalid"}
    assert invalid == {"id13": "to_ids: bad value id13", "id17": "to_ids: bad value id17"}
    # two bad in a batch of 10: well under the 2*(n-1) requests of a full split
    assert len(transport.requests) <= 3 + 2 * 2 * 4


async def test_422_without_split_budget_reports_the_whole_batch_invalid() -> None:
    engine, transport = make_engine(reject("id13"))
    engine.options = EngineOptions(batch_size=10, workers=4, split_budget=0)
    summary = await engine.run(rows(30))
    assert (summary.delivered, summary.invalid) == (20, 10)
    assert len(transport.requests) == 3


async def test_5xx_is_retried_then_delivered() -> None:
    def flaky(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(500 if n <= 3 else 200, {}, b'{"success": true}')

    engine, transport = make_engine(flaky)
    summary = await engine.run(rows(10))
    assert summary.delivered == 10
    assert summary.retries == 3
    assert len(transport.requests) == 4


async def test_retries_are_bounded_and_recipients_failed_with_the_last_error() -> None:
    def down(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(503, {}, b'{"message": "maintenance"}')

    engine, transport = make_engine(down, max_attempts=3)
    summary = await engine.run(rows(20))
    assert summary.failed == 20
    assert len(transport.requests) == 6
    assert not summary.complete


async def test_no_response_then_success_counts_possible_duplicates() -> None:
    class Dropping(FakeTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            self.requests.append(request)
            if len(self.requests) == 1:
                raise NoResponse("connection lost", sent=True)
            return ok(request, len(self.requests))

    engine, _ = make_engine(ok)
    engine.transport = Dropping(ok)
    summary = await engine.run(rows(10))
    assert summary.delivered == 10
    assert summary.possible_duplicates == 10


async def test_no_response_every_time_leaves_the_outcome_unknown() -> None:
    class Dead(FakeTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            self.requests.append(request)
            raise NoResponse("timed out", sent=True)

    engine, _ = make_engine(ok, max_attempts=2)
    engine.transport = Dead(ok)
    summary = await engine.run(rows(10))
    assert summary.unknown == 10
    assert summary.delivered == 0


async def test_rejected_positions_are_reported_and_the_rest_resent_at_once() -> None:
    from bulksend.providers.base import Classification, Verdict

    engine, _ = make_engine(ok)
    original = engine.provider.classify

    def classify(response: HttpResponse) -> Classification:
        if response.status == 207:
            return Classification(Verdict.INVALID, "1 bad", rejected={3: "userID: empty"})
        return original(response)

    engine.provider = Classifying(engine.provider, classify)

    def first_partial(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(207 if n == 1 else 200, {}, b'{"success": true}')

    engine.transport = FakeTransport(first_partial)
    summary = await engine.run(rows(10))
    assert (summary.delivered, summary.invalid) == (9, 1)
    assert summary.requests == 2
    second = orjson.loads(engine.transport.requests[1].body or b"")
    assert "id3" not in second["to_ids"]
    assert len(second["to_ids"]) == 9


async def test_a_provider_warning_is_logged_once_and_kept_in_the_summary() -> None:
    from bulksend.providers.base import Classification, Verdict

    engine, _ = make_engine(ok)
    warning = "insertRecipient Deprecated: 100 Use list.addRecipient"
    engine.provider = Classifying(
        engine.provider, lambda r: Classification(Verdict.DELIVERED, warning=warning)
    )
    summary = await engine.run(rows(50))
    assert summary.warnings == ["insertRecipient Deprecated: 100 Use list.addRecipient"]


async def test_circuit_breaker_pauses_the_group_then_probes_one_request_at_a_time() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    class Unwell(FakeTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            starts.append(loop.time())
            self.requests.append(request)
            await asyncio.sleep(0.005)
            n = len(self.requests)  # the first answer is good, then 8 failures in a row
            status = 500 if 2 <= n <= 9 else 200
            return HttpResponse(status, {}, b'{"success": true}')

    engine, _ = make_engine(ok, max_attempts=10)
    engine.transport = transport = Unwell(ok)
    engine.options = EngineOptions(
        batch_size=10, workers=4, max_attempts=10, circuit_threshold=3, circuit_cooldown=0.05
    )
    summary = await engine.run(rows(100))
    assert summary.delivered == 100
    assert len(transport.requests) == 8 + 10  # 8 failures, then each batch once
    gaps = [b - a for a, b in itertools.pairwise(starts[6:11])]
    # requests 7..10 are lone half-open probes after pauses of 0.05, 0.1, 0.2 s (doubling)
    assert gaps[0] >= 0.05 * 0.9
    assert gaps[1] >= 0.1 * 0.9
    assert gaps[2] >= 0.2 * 0.9
    assert any("failed repeatedly" in w for w in summary.warnings)


async def test_an_endpoint_that_never_answered_is_given_up_after_three_probes() -> None:
    class Refused(FakeTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            self.requests.append(request)
            raise NoResponse("cannot connect", sent=False)

    engine, _ = make_engine(ok, max_attempts=6)
    engine.transport = transport = Refused(ok)
    engine.options = EngineOptions(
        batch_size=10, workers=4, max_attempts=6, circuit_threshold=3, circuit_cooldown=0.01
    )
    summary = await engine.run(rows(100))
    assert "never answered" in summary.stopped
    assert summary.delivered == 0
    assert summary.failed + summary.skipped == 100
    assert len(transport.requests) <= 3 + 4 + 3  # threshold, the in-flight ones, 3 probes


# -- retries park: a batch waiting to retry does not hold a worker ------------------------------


class Gated(Scheduler):
    """A scheduler whose retries wait until ``open`` is set (as if the budget held them), and
    whose backoff is ``delay``."""

    def __init__(self, *args: Any, delay: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open = asyncio.Event()
        self.delay = delay
        self.retries_waiting = 0

    async def acquire(self, group: str, retry: bool = False) -> Permit:
        if retry:
            self.retries_waiting += 1
            try:
                await self.open.wait()
            finally:
                self.retries_waiting -= 1
        return await super().acquire(group, retry)

    def backoff(self, group: str, attempt: int) -> float:
        return self.delay


def gated_engine(
    handler: Handler, *, workers: int = 1, delay: float = 0.0, **options: Any
) -> tuple[Engine, FakeTransport, Gated]:
    engine, transport = make_engine(handler)
    sched = Gated({"api": GroupPolicy(Limit(100_000, 1.0), in_flight=4)}, delay=delay)
    engine.scheduler = sched
    engine.options = EngineOptions(batch_size=10, workers=workers, **options)
    return engine, transport, sched


def batch_of(request: HttpRequest) -> int:
    """The batch a request carries (rows(n) puts id{10k}..id{10k+9} in batch k)."""
    first = orjson.loads(request.body or b"")["to_ids"][0]
    return int(first.removeprefix("id")) // 10


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` every millisecond, for 10 s at most."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


async def test_a_batch_waiting_to_retry_lets_the_worker_send_the_others() -> None:
    def first_fails_once(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(500, {}, b"{}") if n == 1 else ok(request, n)

    engine, transport, sched = gated_engine(first_fails_once, workers=1)
    run = asyncio.create_task(engine.run(rows(100)))
    # one worker: the other nine batches go out while the first waits for its retry
    await until(lambda: len(transport.requests) == 10)
    assert sched.retries_waiting == 1
    sched.open.set()
    summary = await asyncio.wait_for(run, 10)
    assert [batch_of(r) for r in transport.requests] == [0, *range(1, 10), 0]
    assert (summary.delivered, summary.retries, summary.requests) == (100, 1, 11)


async def test_a_batch_in_backoff_lets_the_worker_send_the_others() -> None:
    def first_fails_once(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(503, {}, b"{}") if n == 1 else ok(request, n)

    engine, transport, sched = gated_engine(first_fails_once, workers=1, delay=0.3)
    sched.open.set()
    summary = await asyncio.wait_for(engine.run(rows(100)), 10)
    assert [batch_of(r) for r in transport.requests] == [0, *range(1, 10), 0]
    assert summary.delivered == 100


async def test_parked_batches_are_bounded_then_the_worker_waits() -> None:
    def fail_first_attempts(request: HttpRequest, n: int) -> HttpResponse:
        first = batch_of(request) not in {batch_of(r) for r in seen[:-1]}
        return HttpResponse(500, {}, b"{}") if first else ok(request, n)

    engine, transport, sched = gated_engine(
        fail_first_attempts, workers=2, parked_per_worker=2, circuit_threshold=1000
    )
    seen = transport.requests
    run = asyncio.create_task(engine.run(rows(200)))
    await until(lambda: sched.retries_waiting == 4)
    for _ in range(20):
        await asyncio.sleep(0.005)  # the workers hold batches 5 and 6 and wait for room
    assert len(transport.requests) == 6  # 4 parked, and the one each worker keeps
    sched.open.set()
    summary = await asyncio.wait_for(run, 10)
    assert summary.delivered == 200
    assert summary.requests == 40  # every batch twice


async def test_an_interrupt_ends_parked_batches_at_once_skipped_or_unknown(tmp_path: Path) -> None:
    class Flaky(FakeTransport):
        async def send(self, request: HttpRequest) -> HttpResponse:
            self.requests.append(request)
            batch = batch_of(request)
            if batch == 0:
                raise NoResponse("timed out", sent=True)  # it may have been delivered
            if batch == 1:
                return HttpResponse(500, {}, b"{}")
            await asyncio.sleep(0.01)  # the send takes a while: it is interrupted midway
            return ok(request, len(self.requests))

    engine, _, _ = gated_engine(ok, workers=2, delay=3600.0)
    engine.transport = transport = Flaky(ok)
    engine.report = ReportWriter(tmp_path / "r.jsonl")
    with engine.report:
        run = asyncio.create_task(engine.run(rows(1000)))
        await until(lambda: len(engine._parked) == 2)
        engine.interrupt("SIGINT")
        summary = await asyncio.wait_for(run, 10)  # not after the hour of backoff
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    status = {x["id"]: x["status"] for x in lines}
    assert {status[f"id{i}"] for i in range(10)} == {"unknown"}  # possibly sent: unknown
    assert {status[f"id{i}"] for i in range(10, 20)} == {"skipped"}  # answered 500: skipped
    assert summary.unknown == 10
    assert summary.delivered + summary.skipped + summary.unknown == 1000
    assert len(transport.requests) < 1000 // 10


async def test_a_cancelled_send_reports_its_parked_batches_unknown(tmp_path: Path) -> None:
    def first_fails(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(500, {}, b"{}") if batch_of(request) == 0 else ok(request, n)

    engine, _, sched = gated_engine(first_fails, workers=1)
    engine.report = ReportWriter(tmp_path / "r.jsonl")
    with engine.report:
        run = asyncio.create_task(engine.run(rows(30)))
        await until(lambda: sched.retries_waiting == 1)
        await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    summary = engine.summary
    assert summary.read == summary.accounted == 30
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert {x["status"] for x in lines if x["id"] in {f"id{i}" for i in range(10)}} == {"unknown"}


async def test_a_part_of_a_split_batch_is_retried_while_parked(tmp_path: Path) -> None:
    failed: set[str] = set()

    def handler(request: HttpRequest, n: int) -> HttpResponse:
        ids = orjson.loads(request.body or b"")["to_ids"]
        if "id13" in ids:
            return HttpResponse(422, {}, b'{"message": "to_ids: bad value id13"}')
        if "id17" in ids and "id17" not in failed:  # the half without id13 fails once
            failed.add("id17")
            return HttpResponse(500, {}, b"{}")
        return ok(request, n)

    engine, transport, sched = gated_engine(handler, workers=2, delay=0.01)
    sched.open.set()
    engine.report = ReportWriter(tmp_path / "r.jsonl")
    with engine.report:
        summary = await asyncio.wait_for(engine.run(rows(30)), 10)
    assert (summary.delivered, summary.invalid, summary.retries) == (29, 1, 1)
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert [x["id"] for x in lines if x["status"] == "invalid"] == ["id13"]
    assert sent_ids(transport).count("id17") == 3  # in the batch, its half, the half again


async def test_random_failures_of_a_working_endpoint_do_not_open_the_circuit() -> None:
    def every_fifth_batch_fails(request: HttpRequest, n: int) -> HttpResponse:
        # 20 % of the requests fail, and 5 in a row at requests 101-105
        bad = n % 5 == 0 or 101 <= n <= 105
        return HttpResponse(500, {}, b"{}") if bad else ok(request, n)

    engine, _ = make_engine(every_fifth_batch_fails, max_attempts=10)
    summary = await engine.run(rows(3000))
    assert summary.delivered == 3000
    assert not summary.warnings  # the circuit never opened
    assert engine._circuits["api"].opened == 0


async def test_a_worker_that_dies_ends_the_send_instead_of_hanging_it() -> None:
    """A bug in a worker (here: the transport raising what it never should) used to leave the
    reader blocked for good on the full batch queue; the error now ends the send."""

    def broken(request: HttpRequest, n: int) -> HttpResponse:
        raise RuntimeError("a bug, not a network error")

    engine, _ = make_engine(broken)
    with pytest.raises(RuntimeError, match="a bug"):
        await asyncio.wait_for(engine.run(rows(20_000)), timeout=20)


@pytest.mark.parametrize("status", [404, 405, 410])
async def test_a_missing_endpoint_stops_with_the_url_the_answer_and_the_fix(
    tmp_path: Path, status: int
) -> None:
    def missing(request: HttpRequest, n: int) -> HttpResponse:
        return HttpResponse(status, {}, b"")

    engine, transport = make_engine(missing, report=tmp_path / "r.jsonl")
    with engine.report:
        summary = await engine.run(rows(30))
    assert len(transport.requests) == 1
    assert summary.stopped == (
        f"/v1/notifications answered {status} no content type, empty body: "
        "is --base-url right? the send stopped"
    )
    lines = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    failed = [x["reason"] for x in lines if x["status"] == "failed"]
    assert failed == [f"{status} no content type, empty body"] * 10


async def test_the_engine_prefers_classify_sent_and_hands_it_the_request() -> None:
    from bulksend.providers.base import Classification, Verdict

    engine, transport = make_engine(ok)
    seen: list[tuple[HttpRequest, int]] = []

    class Sending:
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def classify_sent(self, request: HttpRequest, response: HttpResponse) -> Classification:
            seen.append((request, response.status))
            return Classification(Verdict.DELIVERED)

    engine.provider = Sending(engine.provider)
    summary = await engine.run(rows(25))
    assert summary.delivered == 25
    assert [r for r, _ in seen] == transport.requests


# -- the reader lets the first request out ------------------------------------------------------


async def test_the_reader_lets_the_first_request_out_before_it_reads_on() -> None:
    """A chunk takes the loop a millisecond or more: right after the first request was handed
    to the transport (its connection being made) the reader waits a moment."""
    engine, _ = make_engine(ok)
    now = [100.0]
    engine._clock = lambda: now[0]  # (it stands still unless moved)

    async def still_waiting(first_out: asyncio.Task[None]) -> bool:
        for _ in range(10):
            await asyncio.sleep(0.002)
        return not first_out.done()

    await asyncio.wait_for(engine._first_out(), 1)  # nothing sent yet: nothing to wait for
    engine._sent_at = 100.0  # the first request went out just now
    first_out = asyncio.create_task(engine._first_out())
    assert await still_waiting(first_out)
    now[0] = 100.004  # out for a while
    await asyncio.wait_for(first_out, 1)

    engine._sent_at = 100.004  # (sent again: the first had no answer)
    first_out = asyncio.create_task(engine._first_out())
    assert await still_waiting(first_out)
    engine._first.done()  # answered: the others go too, and the reader reads on
    await asyncio.wait_for(first_out, 1)
    await asyncio.wait_for(engine._first_out(), 1)


# -- pacing -------------------------------------------------------------------------------------


async def test_requests_wait_their_turn_once_a_round_trip_is_known() -> None:
    """The engine asks its pacer before each request (``Engine._paced``): nothing waits before
    an answer came; then a bunch gets its burst out and the rest leave one after another."""
    engine, _ = make_engine(ok)
    now = [100.0]
    engine._clock = lambda: now[0]  # (it stands still unless moved)
    assert [await engine._paced() for _ in range(10)] == [False] * 10  # no round trip yet
    engine._pacer.observe(0.020)  # an answer came after 20 ms
    rate = engine._pacer.rate
    assert rate is not None
    assert rate == engine.options.workers / 0.020
    waited = [await engine._paced() for _ in range(BURST + 1)]
    assert waited == [False] * BURST + [True]  # (the clock stood still while it slept)
    now[0] += 1 / rate
    assert await engine._paced() is False  # its turn came
