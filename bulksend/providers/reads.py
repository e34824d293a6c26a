"""Read requests (GET with query parameters) shared by the providers' read helpers.

The providers build a ``ReadRequest`` and interpret the ``HttpResponse`` (pure); ``get`` sends
one through a caller's ``Transport`` on the one request-with-retry path (``bulksend.net.fetch``)::

    async with Transport(base_url) as transport:
        customers = await get(transport, traitly.customers_read(token), traitly.read_list)

By default a read is one request, paced by a scheduler of its own: a reader's
``TransientError`` (429, 5xx) is raised, and so is ``NoResponse`` (a ``TransientError``) for a
timeout or a broken connection. With ``max_attempts`` above 1 those are retried through
``scheduler`` (pass the send's own to share its quota): a 429, or a 403 with rate-limit
evidence, when the scheduler admits it, the rest after its backoff; the last failure is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlencode

from bulksend.errors import TransientError
from bulksend.models import HttpRequest, HttpResponse
from bulksend.net.fetch import Fetcher, Retry, Sender
from bulksend.providers.base import Limit
from bulksend.providers.status import throttled
from bulksend.ratelimit.scheduler import FeedbackKind, GroupPolicy, Scheduler

T = TypeVar("T")

#: the group (and quota) of a read without a scheduler of the caller's
READ_GROUP = "read"
READ_LIMIT = Limit(60, 60.0)


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A GET: ``path`` (joined to the base URL), query ``params`` and ``headers``."""

    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def http(self) -> HttpRequest:
        """The request for the transport: the params percent-encoded into the path."""
        path = self.path
        if self.params:
            path += ("&" if "?" in path else "?") + urlencode(list(self.params.items()))
        return HttpRequest("GET", path, dict(self.headers))


def retrying(reader: Callable[[HttpResponse], T]) -> Callable[[HttpResponse], T | Retry]:
    """``reader`` for the retry path: the ``TransientError`` it raises becomes a ``Retry``
    (THROTTLED for a 429 or a 403 with rate-limit evidence, else ERROR)."""

    def read(response: HttpResponse) -> T | Retry:
        try:
            return reader(response)
        except TransientError as exc:
            spent = throttled(response.status, response.headers, "") is not None
            return Retry(FeedbackKind.THROTTLED if spent else FeedbackKind.ERROR, str(exc))

    return read


async def get(
    transport: Sender,
    read: ReadRequest,
    reader: Callable[[HttpResponse], T],
    *,
    scheduler: Scheduler | None = None,
    group: str = READ_GROUP,
    limit: Limit = READ_LIMIT,
    max_attempts: int = 1,
) -> T:
    """``reader``'s value for ``read``'s answer; see the module for retries and errors.
    Without ``scheduler``, one of ``group`` at ``limit`` paces this call alone."""
    if scheduler is None:
        scheduler = Scheduler({group: GroupPolicy(limit, in_flight=1)})
    fetcher = Fetcher(
        transport, scheduler, group=group, what=f"GET {read.path}", max_attempts=max_attempts
    )
    return await fetcher.fetch(read.http(), retrying(reader))


async def fetch(transport: Sender, read: ReadRequest) -> HttpResponse:
    """The answer to ``read``, whatever it is (one request; ``NoResponse`` if none came)."""
    return await get(transport, read, _as_is)


def _as_is(response: HttpResponse) -> HttpResponse:
    return response
