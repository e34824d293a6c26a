"""MaxTraffic audience check: look every visitor up before sending, drop the ones who cannot
receive a web push.

``GET /v1/visitors/{id}`` (``maxtraffic.PATHS["visitor"]``) for each recipient's visitor id:

* 200 with ``web_push_subscriber`` true -> ``ok``;
* 200 with ``web_push_subscriber`` false -> ``unsubscribed``
  (reason ``"audience check: not a web push subscriber"``);
* 404 with a JSON body -> ``unknown`` (reason ``"audience check: unknown visitor"``);
* 422 -> ``refused`` with the server's message (``"audience check: <message>"``);
* 401/403 -> ``AuthError``; 429 and 5xx/timeouts are retried through the scheduler (the lookups
  share MaxTraffic's single ``api`` quota with the sends); a lookup that still fails, a 404 that is
  not JSON (a wrong base URL), any other 2xx (a page, an empty 204, JSON without
  ``web_push_subscriber``) or any other answer (405, a redirect, ...) -> ``UnavailableError``
  naming the URL, the answer and the likely fix: the check cannot vouch for anyone, so the pass
  stops rather than guessing.

A recipient without a visitor id (uid only) cannot be looked up and passes as ``unchecked``.
Each distinct id is looked up once: concurrent lookups of one id share the request and answers
are remembered (``cache_size`` ids, least recently used dropped first).

Two ways in: ``AudienceCheck.results(recipients)`` yields one ``AudienceResult`` per recipient in
input order; ``AudienceCheck.filter(chunks)`` takes the source's chunks (sync or async) and yields
chunks with the failed recipients moved to ``rejected`` (``Rejected(line, reason, id, uid)``), the
shape the engine reads. Order is kept, so batches (and the journal) stay deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from bulksend.errors import AuthError, ProviderError, TransientError, UnavailableError
from bulksend.models import HttpRequest, HttpResponse, Recipient, Rejected
from bulksend.net.fetch import Fetcher, FirstRequest, Retry, Sender
from bulksend.net.transport import Transport
from bulksend.providers import maxtraffic
from bulksend.providers.answers import (
    BASE_URL_HINT,
    answered,
    likely_fix,
    read_json,
    stop_line,
    unexpected_answer,
)
from bulksend.providers.base import Limit
from bulksend.providers.status import throttled
from bulksend.ratelimit.scheduler import FeedbackKind, GroupPolicy, Scheduler
from bulksend.sources.spec import Chunk


class Audience(enum.Enum):
    OK = "ok"
    UNKNOWN = "unknown"  # 404: no such visitor
    UNSUBSCRIBED = "unsubscribed"  # web_push_subscriber is false
    REFUSED = "refused"  # 422: the provider refused the id itself
    UNCHECKED = "unchecked"  # no visitor id to look up (uid only)


REASONS: Mapping[Audience, str] = {
    Audience.UNKNOWN: "audience check: unknown visitor",
    Audience.UNSUBSCRIBED: "audience check: not a web push subscriber",
}
#: the audiences that drop a recipient
DROPPED = frozenset({Audience.UNKNOWN, Audience.UNSUBSCRIBED, Audience.REFUSED})


@dataclass(frozen=True, slots=True)
class Answer:
    """What one lookup found (``reason`` is set for the dropped audiences)."""

    audience: Audience
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AudienceResult:
    recipient: Recipient
    audience: Audience
    reason: str = ""

    @property
    def dropped(self) -> bool:
        return self.audience in DROPPED


class LookupVerdict(enum.Enum):
    ANSWER = "answer"
    THROTTLED = "throttled"
    RETRY = "retry"
    AUTH = "auth"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class LookupResult:
    verdict: LookupVerdict
    answer: Answer | None = None
    message: str = ""


# ---------------------------------------------------------------------------- pure parts


def visitor_request(
    visitor_id: str, headers: Mapping[str, str], path: str = maxtraffic.PATHS["visitor"]
) -> HttpRequest:
    """``GET /v1/visitors/{id}`` with the id percent-encoded (a ``/`` in it stays one segment)."""
    get_headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    return HttpRequest("GET", path.replace("{id}", quote(visitor_id, safe="")), get_headers)


def _message(body: bytes) -> str:
    return maxtraffic.error_message(body) if body else ""


def _fatal(url: str, answer: str, fix: str) -> LookupResult:
    """``visitor lookup: URL answered 404 text/html; body: …: is --base-url right?``"""
    line = stop_line(url, answer, fix)
    return LookupResult(LookupVerdict.FATAL, message=f"visitor lookup: {line}")


def _visitor(response: HttpResponse, url: str) -> LookupResult:
    """A 2xx: the visitor's ``web_push_subscriber``, else an unexpected answer (fatal)."""
    data = read_json(response)  # NOT_JSON for a page (or any type that is not JSON)
    flag = data.get("web_push_subscriber") if isinstance(data, dict) else None
    if flag is True:
        return LookupResult(LookupVerdict.ANSWER, Answer(Audience.OK))
    if flag is False:
        reason = REASONS[Audience.UNSUBSCRIBED]
        return LookupResult(LookupVerdict.ANSWER, Answer(Audience.UNSUBSCRIBED, reason))
    shape = '{"web_push_subscriber": true or false}'
    return _fatal(url, unexpected_answer(response, "MaxTraffic's visitor", shape), BASE_URL_HINT)


def read_lookup(response: HttpResponse, url: str = "") -> LookupResult:
    """What a visitor lookup's response means (pure). ``url`` (the request's, without
    credentials or query) is named when the answer stops the check."""
    status = response.status
    if 200 <= status < 300:
        return _visitor(response, url)
    message = _message(response.body)
    if status == 404 and _json_body(response.body):  # the doc's "non existing Visitor id"
        return LookupResult(
            LookupVerdict.ANSWER, Answer(Audience.UNKNOWN, REASONS[Audience.UNKNOWN])
        )
    if status == 422:
        reason = f"audience check: {message or '422 invalid visitor id'}"
        return LookupResult(LookupVerdict.ANSWER, Answer(Audience.REFUSED, reason))
    throttle = throttled(status, response.headers, message)  # a 429, or a 403 with evidence
    if throttle is not None:
        return LookupResult(LookupVerdict.THROTTLED, message=throttle.message)
    if status in (401, 403):
        return LookupResult(LookupVerdict.AUTH, message=message or f"{status} Unauthorized")
    if status >= 500 or status == 408:
        return LookupResult(LookupVerdict.RETRY, message=message or f"{status} server error")
    # a 404 that is not JSON (a router's page, an empty body), 405, 410, a redirect, ...
    return _fatal(url, answered(response, message), likely_fix(status))


def _json_body(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


_RETRY_KINDS: Mapping[LookupVerdict, FeedbackKind] = {
    LookupVerdict.THROTTLED: FeedbackKind.THROTTLED,
    LookupVerdict.RETRY: FeedbackKind.ERROR,
}


def _answer_of(response: HttpResponse, url: str) -> Answer | Retry:
    """A lookup's answer, a ``Retry``, or the error that ends the check."""
    result = read_lookup(response, url)
    match result.verdict:
        case LookupVerdict.ANSWER:
            assert result.answer is not None
            return result.answer
        case LookupVerdict.AUTH:
            raise AuthError(
                f"audience check: the provider rejected the API key "
                f"({response.status}): {result.message}",
                status=response.status,
            )
        case LookupVerdict.FATAL:
            raise UnavailableError(result.message, status=response.status)
    return Retry(_RETRY_KINDS[result.verdict], result.message)


def _gave_up(attempts: int, last: TransientError) -> UnavailableError:
    return UnavailableError(
        f"audience check: visitor lookup failed after {attempts} attempts: {last}"
    )


# ---------------------------------------------------------------------------- the check


@dataclass(slots=True)
class AudienceStats:
    looked_up: int = 0  # HTTP requests made (retries included)
    cached: int = 0  # recipients answered from an earlier lookup of the same id
    counts: dict[str, int] = field(default_factory=dict)  # per audience

    def add(self, audience: Audience) -> None:
        self.counts[audience.value] = self.counts.get(audience.value, 0) + 1


class AudienceCheck:
    """Visitor lookups through ``scheduler`` (group ``group``) and ``transport``."""

    def __init__(
        self,
        transport: Sender,
        scheduler: Scheduler,
        *,
        headers: Mapping[str, str],
        path: str = maxtraffic.PATHS["visitor"],
        group: str = maxtraffic.GROUP,
        concurrency: int = 16,
        max_attempts: int = 6,
        cache_size: int = 100_000,
    ) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.headers = dict(headers)
        self.path = path
        self.group = group
        self.concurrency = max(1, concurrency)
        self.max_attempts = max(1, max_attempts)
        self.cache_size = max(0, cache_size)
        self.stats = AudienceStats()
        self._cache: OrderedDict[str, Answer] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Answer]] = {}
        self._slots = asyncio.Semaphore(self.concurrency)
        self._first = FirstRequest()
        self._failure: ProviderError | None = None
        self._fetcher = Fetcher(
            transport,
            scheduler,
            group=group,
            what="audience check",
            max_attempts=self.max_attempts,
            gave_up=_gave_up,
            on_send=self._count_request,
        )

    def _count_request(self) -> None:
        self.stats.looked_up += 1

    @classmethod
    def for_provider(
        cls, provider: maxtraffic.MaxTraffic, transport: Sender, scheduler: Scheduler, **kwargs: Any
    ) -> AudienceCheck:
        """The check for a built MaxTraffic adapter: its key, its visitor path, its group."""
        return cls(
            transport,
            scheduler,
            headers=provider.headers(),
            path=provider.paths["visitor"],
            **kwargs,
        )

    # -- one id ------------------------------------------------------------------------------
    async def lookup(self, visitor_id: str) -> Answer:
        """The answer for one visitor id (shared by concurrent callers, then cached)."""
        cached = self._cache.get(visitor_id)
        if cached is not None:
            self._cache.move_to_end(visitor_id)
            self.stats.cached += 1
            return cached
        pending = self._pending.get(visitor_id)
        if pending is not None:
            self.stats.cached += 1
            return await asyncio.shield(pending)
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[visitor_id] = future
        try:
            answer = await self._fetch(visitor_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            future.set_result(answer)
            self._remember(visitor_id, answer)
            return answer
        finally:
            del self._pending[visitor_id]

    def _remember(self, visitor_id: str, answer: Answer) -> None:
        if not self.cache_size:
            return
        self._cache[visitor_id] = answer
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _fetch(self, visitor_id: str) -> Answer:
        """One lookup; the first goes alone (a 401 then costs one request), and after a
        failure that ends the check no further request is made."""
        async with self._slots:
            await self._wait_for_probe()
            try:
                return await self._ask(visitor_id)
            except ProviderError as exc:
                if self._failure is None:
                    self._failure = exc
                raise
            finally:
                self._first.done()

    async def _wait_for_probe(self) -> None:
        while True:
            failure = self._failure
            if failure is not None:
                raise type(failure)(str(failure), status=failure.status)
            if not await self._first.waited():
                return

    async def _ask(self, visitor_id: str) -> Answer:
        request = visitor_request(visitor_id, self.headers, self.path)
        url = getattr(self.transport, "base_url", "") + request.path
        return await self._fetcher.fetch(request, lambda response: _answer_of(response, url))

    # -- streams -----------------------------------------------------------------------------
    async def _answer(self, recipient: Recipient) -> AudienceResult:
        if recipient.id is None:
            return AudienceResult(recipient, Audience.UNCHECKED)
        answer = await self.lookup(recipient.id)
        return AudienceResult(recipient, answer.audience, answer.reason)

    async def results(self, recipients: Iterable[Recipient]) -> AsyncIterator[AudienceResult]:
        """One result per recipient, in input order, with up to ``concurrency`` lookups at once
        (and a look-ahead of four times that, so one slow lookup does not stall the rest)."""
        window: deque[asyncio.Task[AudienceResult]] = deque()
        ahead = self.concurrency * 4
        it = iter(recipients)
        exhausted = False
        try:
            while True:
                while not exhausted and len(window) < ahead:
                    recipient = next(it, None)
                    if recipient is None:
                        exhausted = True
                        break
                    window.append(asyncio.ensure_future(self._answer(recipient)))
                if not window:
                    return
                result = await window.popleft()
                self.stats.add(result.audience)
                yield result
        finally:
            for task in window:
                task.cancel()
            await asyncio.gather(*window, return_exceptions=True)

    async def filter(self, chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
        """The chunks with dropped recipients moved to ``rejected`` (reason on each)."""
        async for recipients, rejected in _aiter(chunks):
            kept: list[Recipient] = []
            dropped: list[Rejected] = []
            async for result in self.results(recipients):
                r = result.recipient
                if result.dropped:
                    dropped.append(Rejected(r.line, result.reason, r.id, r.uid))
                else:
                    kept.append(r)
            yield Chunk(kept, rejected + dropped if dropped else rejected)


async def _aiter(chunks: Iterable[Chunk] | AsyncIterable[Chunk]) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield Chunk(*chunk)
    else:
        for chunk in chunks:
            yield Chunk(*chunk)


def default_scheduler(in_flight: int = 16, limit: Limit | None = None) -> Scheduler:
    """A scheduler with MaxTraffic's one ``api`` group (600/min until headers say otherwise)."""
    policy = GroupPolicy(
        maxtraffic.DEFAULT_LIMITS[maxtraffic.GROUP], in_flight=in_flight, stated=limit
    )
    return Scheduler({maxtraffic.GROUP: policy})


async def check_audience(
    base_url: str,
    api_key: str,
    recipients: Iterable[Recipient],
    *,
    scheduler: Scheduler | None = None,
    transport: Sender | None = None,
    path: str = maxtraffic.PATHS["visitor"],
    concurrency: int = 16,
    max_attempts: int = 6,
) -> AsyncIterator[AudienceResult]:
    """Look every recipient up; yields one ``AudienceResult`` each, in order.

    Standalone use; inside a send, build an ``AudienceCheck`` on the send's own transport and
    scheduler so the lookups and the sends share one quota.
    """
    scheduler = scheduler or default_scheduler(concurrency)
    headers = maxtraffic.MaxTraffic(api_key=api_key, message={}).headers()
    async with contextlib.AsyncExitStack() as stack:
        if transport is None:  # standalone: a transport of its own, closed at the end
            transport = await stack.enter_async_context(
                Transport(base_url, connections=concurrency)
            )
        check = AudienceCheck(
            transport,
            scheduler,
            headers=headers,
            path=path,
            concurrency=concurrency,
            max_attempts=max_attempts,
        )
        async for result in check.results(recipients):
            yield result
