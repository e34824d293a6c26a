"""One request, retried: permit -> send -> read the answer -> back off -> again.

Every request outside the campaign send takes this path (the leads export, the audience check,
the providers' reads)::

    fetcher = Fetcher(transport, scheduler, group="api", what="leads", max_attempts=6)
    leads = await fetcher.fetch(request, read)

``read(response)`` returns the caller's value, raises what ends the request (``AuthError``,
``UnavailableError``, ``ConfigError``, ...) or returns ``Retry(kind, message)`` for an answer worth
another attempt. Each attempt first takes a permit from the scheduler for ``group`` and gives it
back with what became of the send. What comes next is the campaign send's own decision table
(``bulksend.dispatch.decide``), so every request of bulksend retries alike: a THROTTLED answer
(429, a 403 with rate-limit evidence) is retried as soon as the scheduler admits it (its pause,
quota and retry budget pace it); an ERROR answer (5xx, 408) and no answer at all
(``NoResponse``) wait ``scheduler.backoff(group, attempt)`` first. After ``max_attempts``
attempts, ``gave_up(attempts, last)`` says what to raise
(by default ``last`` itself: the ``NoResponse``, or a ``TransientError`` with the answer's message
and status). A wait longer than the scheduler allows (``Deferred``) raises ``UnavailableError``
``"<what>: <Deferred's message>"``.

The campaign send (``bulksend.dispatch.engine``) performs the same table's actions on batches
(it parks them instead of sleeping, splits refused ones and opens circuits), and shares
``FirstRequest`` and ``NO_ANSWER`` with this path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from bulksend.dispatch.decide import Do, decide
from bulksend.errors import Deferred, NoResponse, TransientError, UnavailableError
from bulksend.models import HttpRequest, HttpResponse
from bulksend.providers.base import Verdict
from bulksend.ratelimit.scheduler import Feedback, FeedbackKind, Permit, Scheduler

__all__ = ["NO_ANSWER", "Fetcher", "FirstRequest", "Retry", "Sender"]

T = TypeVar("T")

#: what a send that got no answer tells the scheduler (one shared, frozen instance)
NO_ANSWER = Feedback(FeedbackKind.NO_RESPONSE)
_OK = FeedbackKind.OK
#: the verdict of an attempt that ended without a value, for the decision table (None: no answer)
_VERDICTS: dict[FeedbackKind, Verdict | None] = {
    FeedbackKind.THROTTLED: Verdict.THROTTLED,
    FeedbackKind.ERROR: Verdict.RETRY,
    FeedbackKind.NO_RESPONSE: None,
}


class Sender(Protocol):
    """What a request needs of a transport (``bulksend.net.transport.Transport`` fits)."""

    async def send(self, request: HttpRequest) -> HttpResponse: ...


@dataclass(frozen=True, slots=True)
class Retry:
    """What ``read`` returns for an answer worth another attempt.

    ``kind``: ``FeedbackKind.THROTTLED`` (retried when the scheduler admits it) or
    ``FeedbackKind.ERROR`` (retried after a backoff); ``message`` says what the answer was.
    """

    kind: FeedbackKind
    message: str


@dataclass(frozen=True, slots=True)
class _Failed:
    """One attempt that ended without a value: what to tell the scheduler, and the error."""

    kind: FeedbackKind
    error: TransientError


def _raise_last(attempts: int, last: TransientError) -> BaseException:
    return last


class Fetcher:
    """Requests to one endpoint ``group`` through ``transport``, paced by ``scheduler``.

    ``what`` names the caller in errors (``"leads"``); ``gave_up`` builds the error raised after
    ``max_attempts``; ``on_send`` is called before each request (a counter); ``sleep`` waits out
    a backoff (tests pass one that advances their clock).
    """

    def __init__(
        self,
        transport: Sender,
        scheduler: Scheduler,
        *,
        group: str,
        what: str,
        max_attempts: int = 6,
        gave_up: Callable[[int, TransientError], BaseException] = _raise_last,
        on_send: Callable[[], object] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.group = group
        self.what = what
        self.max_attempts = max(1, max_attempts)
        self.gave_up = gave_up
        self.on_send = on_send
        self.sleep = sleep

    async def fetch(self, request: HttpRequest, read: Callable[[HttpResponse], T | Retry]) -> T:
        """``read``'s value for the first answer that is not a ``Retry``; see the module."""
        attempts = 0
        while True:
            permit = await self._permit(retry=attempts > 0)
            attempts += 1
            outcome = await self._attempt(permit, request, read)
            if not isinstance(outcome, _Failed):
                return outcome
            action = decide(_VERDICTS[outcome.kind], attempts, self.max_attempts)
            if action.do is Do.BACKOFF:
                delay = self.scheduler.backoff(self.group, attempts)
                await self.sleep(delay if action.floor is None else max(delay, action.floor))
            elif action.do is not Do.RETRY:  # the attempts ran out
                raise self.gave_up(attempts, outcome.error)

    async def _permit(self, *, retry: bool) -> Permit:
        try:
            return await self.scheduler.acquire(self.group, retry=retry)
        except Deferred as exc:
            raise UnavailableError(f"{self.what}: {exc}") from None

    async def _attempt(
        self, permit: Permit, request: HttpRequest, read: Callable[[HttpResponse], T | Retry]
    ) -> T | _Failed:
        """Send once and give the permit back with what became of it."""
        scheduler = self.scheduler
        if self.on_send is not None:
            self.on_send()
        try:
            response = await self.transport.send(request)
        except NoResponse as exc:
            scheduler.complete(permit, NO_ANSWER)
            return _Failed(FeedbackKind.NO_RESPONSE, exc)
        except BaseException:
            scheduler.complete(permit, NO_ANSWER)
            raise
        try:
            outcome = read(response)
        except BaseException:
            scheduler.complete(permit, Feedback(_OK, response.headers, response.status))
            raise
        if isinstance(outcome, Retry):
            scheduler.complete(permit, Feedback(outcome.kind, response.headers, response.status))
            return _Failed(outcome.kind, TransientError(outcome.message, status=response.status))
        scheduler.complete(permit, Feedback(_OK, response.headers, response.status))
        return outcome


class FirstRequest:
    """The first request goes alone; the others wait until it is ``done`` (answered, or failed
    in a way that settles it), so a wrong key or base URL costs one request, not one per
    concurrent task."""

    __slots__ = ("_done", "_taken")

    def __init__(self) -> None:
        self._done = asyncio.Event()
        self._taken = False

    def is_done(self) -> bool:
        return self._done.is_set()

    def done(self) -> None:
        """The first request is settled: everyone may go."""
        self._done.set()

    async def waited(self) -> bool:
        """False when the caller may go now (it is the first, or the first is done); else wait
        until the first is done and return True (the caller looks again at what changed)."""
        if self._done.is_set():
            return False
        if not self._taken:
            self._taken = True
            return False
        await self._done.wait()
        return True
