"""The one request-with-retry path (``bulksend.net.fetch``) on a scripted transport.

The scheduler reads an injected clock that steps 100 s at every reading, so a pause the
provider asks for (shorter than that) is over by the next admission, and backoffs go to a
recording ``sleep``: nothing here waits in real time.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from typing import Any

import pytest

from bulksend.errors import AuthError, NoResponse, TransientError, UnavailableError
from bulksend.models import HttpRequest, HttpResponse
from bulksend.net.fetch import Fetcher, FirstRequest, Retry, Sender
from bulksend.providers.base import Limit
from bulksend.providers.reads import ReadRequest, get
from bulksend.ratelimit.scheduler import FeedbackKind, GroupPolicy, Scheduler

REQUEST = HttpRequest("GET", "/v1/thing", {"Accept": "application/json"})
Script = Sequence[HttpResponse | NoResponse]


class Scripted:
    """Answers from a script, one per request; records what was sent."""

    def __init__(self, script: Script) -> None:
        self.script = list(script)
        self.sent: list[HttpRequest] = []

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.sent.append(request)
        answer = self.script.pop(0)
        if isinstance(answer, NoResponse):
            raise answer
        return answer


class Hangs:
    """A transport whose request never comes back (until cancelled)."""

    async def send(self, request: HttpRequest) -> HttpResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def stepping_scheduler() -> Scheduler:
    clock = itertools.count(0.0, 100.0)
    return Scheduler(
        {"api": GroupPolicy(Limit(600, 60.0), in_flight=4)},
        clock=lambda: float(next(clock)),
        rng=random.Random(7),
    )


def lost() -> NoResponse:
    return NoResponse("connection lost: connection reset", sent=True, cause="connection reset")


def resp(status: int, body: bytes = b"{}", **headers: str) -> HttpResponse:
    return HttpResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


def read(response: HttpResponse) -> bytes | Retry:
    """Like the callers' readers: 2xx -> body, 429 throttled, 5xx retried, 401 ends it."""
    if response.status == 429:
        return Retry(FeedbackKind.THROTTLED, "429 Too Many Requests")
    if response.status >= 500:
        return Retry(FeedbackKind.ERROR, f"{response.status} server error")
    if response.status == 401:
        raise AuthError("the provider rejected the API key (401)", status=401)
    return response.body


class Sleeps(list[float]):
    """A ``sleep`` that records the delay and returns at once."""

    async def __call__(self, delay: float) -> None:
        self.append(delay)


def fetcher(transport: Sender, scheduler: Scheduler, **kwargs: Any) -> tuple[Fetcher, Sleeps]:
    sleeps = Sleeps()
    return Fetcher(transport, scheduler, group="api", what="test", sleep=sleeps, **kwargs), sleeps


async def test_throttled_then_ok_retries_without_a_backoff() -> None:
    transport = Scripted([resp(429), resp(200, b"done")])
    scheduler = stepping_scheduler()
    f, sleeps = fetcher(transport, scheduler)
    assert await f.fetch(REQUEST, read) == b"done"
    assert transport.sent == [REQUEST, REQUEST]
    assert sleeps == []  # the scheduler paces a throttled retry
    stats = scheduler.snapshot()["api"]
    assert (stats.sent, stats.throttled, stats.ok, stats.retries) == (2, 1, 1, 1)
    assert stats.in_flight == 0


async def test_server_errors_back_off_and_give_up_after_max_attempts() -> None:
    transport = Scripted([resp(503)] * 3)
    scheduler = stepping_scheduler()
    f, sleeps = fetcher(transport, scheduler, max_attempts=3)
    with pytest.raises(TransientError) as exc:
        await f.fetch(REQUEST, read)
    assert type(exc.value) is TransientError  # the last answer, as it was read
    assert str(exc.value) == "503 server error"
    assert exc.value.status == 503
    assert len(transport.sent) == 3
    assert len(sleeps) == 2  # between the attempts, not after
    assert scheduler.snapshot()["api"].errors == 3


async def test_gave_up_says_what_to_raise() -> None:
    seen: list[tuple[int, str]] = []

    def gave_up(attempts: int, last: TransientError) -> BaseException:
        seen.append((attempts, str(last)))
        return UnavailableError(f"test: no answer after {attempts} attempts: {last}")

    f, sleeps = fetcher(
        Scripted([resp(500), lost()]), stepping_scheduler(), max_attempts=2, gave_up=gave_up
    )
    with pytest.raises(UnavailableError, match="after 2 attempts: connection lost"):
        await f.fetch(REQUEST, read)
    assert seen == [(2, "connection lost: connection reset")]
    assert len(sleeps) == 1


async def test_no_response_is_retried_after_a_backoff() -> None:
    transport = Scripted([lost(), resp(200, b"late")])
    scheduler = stepping_scheduler()
    f, sleeps = fetcher(transport, scheduler)
    assert await f.fetch(REQUEST, read) == b"late"
    assert len(sleeps) == 1
    stats = scheduler.snapshot()["api"]
    assert (stats.no_response, stats.ok, stats.in_flight) == (1, 1, 0)


async def test_no_response_every_time_raises_the_last_no_response() -> None:
    f, sleeps = fetcher(Scripted([lost(), lost()]), stepping_scheduler(), max_attempts=2)
    with pytest.raises(NoResponse) as exc:
        await f.fetch(REQUEST, read)
    assert exc.value.reason == "connection reset"
    assert len(sleeps) == 1


async def test_401_raises_at_once_and_gives_the_permit_back() -> None:
    transport = Scripted([resp(401), resp(200)])
    scheduler = stepping_scheduler()
    f, sleeps = fetcher(transport, scheduler)
    with pytest.raises(AuthError):
        await f.fetch(REQUEST, read)
    assert len(transport.sent) == 1
    assert sleeps == []
    stats = scheduler.snapshot()["api"]
    assert (stats.ok, stats.in_flight) == (1, 0)  # (an answer: not a sign to slow down)


async def test_a_wait_longer_than_allowed_is_unavailable_naming_the_caller() -> None:
    transport = Scripted([resp(429, retry_after="100000"), resp(200)])
    f, sleeps = fetcher(transport, stepping_scheduler())
    with pytest.raises(UnavailableError) as exc:
        await f.fetch(REQUEST, read)
    assert str(exc.value).startswith("test: api: provider asked to wait ")
    assert len(transport.sent) == 1
    assert sleeps == []


async def test_cancelled_while_sending_gives_the_permit_back() -> None:
    scheduler = stepping_scheduler()
    task = asyncio.ensure_future(fetcher(Hangs(), scheduler)[0].fetch(REQUEST, read))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.snapshot()["api"].in_flight == 0


async def test_on_send_counts_every_request() -> None:
    count: list[int] = []
    f, sleeps = fetcher(
        Scripted([lost(), resp(429), resp(200)]),
        stepping_scheduler(),
        on_send=lambda: count.append(1),
    )
    await f.fetch(REQUEST, read)
    assert len(count) == 3
    assert len(sleeps) == 1  # after the lost connection only


async def test_the_first_request_goes_alone() -> None:
    first = FirstRequest()
    order: list[str] = []

    async def request(name: str) -> None:
        while await first.waited():
            pass
        order.append(name)

    a = asyncio.ensure_future(request("first"))
    b = asyncio.ensure_future(request("second"))
    await asyncio.sleep(0)
    assert order == ["first"]
    assert not b.done()
    first.done()
    await asyncio.gather(a, b)
    assert order == ["first", "second"]
    assert first.is_done()
    assert not await first.waited()


# ---------------------------------------------------------------------------- provider reads


def reader(response: HttpResponse) -> bytes:
    """Like the providers' readers: raises ``TransientError`` for 429/403-throttled/5xx."""
    if response.status in (403, 429) or response.status >= 500:
        raise TransientError(f"read: {response.status}", status=response.status)
    return response.body


def test_a_read_request_puts_its_params_in_the_path() -> None:
    read = ReadRequest("/api/v1/customer", {"name": "Ann & Bob+1", "plan": "Pro"}, {"A": "b"})
    assert read.http() == HttpRequest(
        "GET", "/api/v1/customer?name=Ann+%26+Bob%2B1&plan=Pro", {"A": "b"}
    )
    assert ReadRequest("/r?x=1", {"y": "2"}).http().path == "/r?x=1&y=2"
    assert ReadRequest("/r").http().path == "/r"


async def test_a_read_is_one_request_by_default() -> None:
    transport = Scripted([resp(429), resp(200)])
    with pytest.raises(TransientError) as exc:
        await get(transport, ReadRequest("/r"), reader)
    assert (str(exc.value), exc.value.status) == ("read: 429", 429)
    assert len(transport.sent) == 1


async def test_a_read_with_attempts_retries_through_the_callers_scheduler() -> None:
    spent = resp(403, x_ratelimit_remaining="0")  # a spent quota, not a refusal
    transport = Scripted([spent, resp(502), lost(), resp(200, b"[]")])
    scheduler = Scheduler(
        {"api": GroupPolicy(Limit(600, 60.0))},
        clock=itertools.count(0.0, 100.0).__next__,
        backoff_base=0.0,  # (the backoff sleeps 0 s)
        backoff_cap=0.0,
    )
    got = await get(
        transport, ReadRequest("/r"), reader, scheduler=scheduler, group="api", max_attempts=4
    )
    assert got == b"[]"
    stats = scheduler.snapshot()["api"]
    assert (stats.throttled, stats.errors, stats.no_response, stats.ok) == (1, 1, 1, 1)
