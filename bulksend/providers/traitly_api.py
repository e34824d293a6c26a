"""Traitly reads through a caller's ``Transport`` (requests and answers are built and read by the
pure functions in ``bulksend.providers.traitly``; the requests go the one request-with-retry
path, ``bulksend.providers.reads.get``)::

    async with Transport(base_url) as transport:
        starters = await list_customers(transport, token, plan="Starter")
        actions = await next_actions(transport, token, "123", "30-day Conversion")

Errors: ``AuthError`` (401), ``TransientError`` (429, a 403 with rate-limit headers, 5xx,
timeouts; worth retrying later), ``ProviderError`` (400, 403 hidden, 404 unknown customer, ...;
``.status`` tells which). Each takes ``scheduler`` (with Traitly's ``api`` group: pass a send's
to share its quota) and ``max_attempts`` (1: no retry) as ``reads.get`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from bulksend.models import HttpResponse
from bulksend.net.fetch import Sender
from bulksend.providers import traitly
from bulksend.providers.reads import ReadRequest, get
from bulksend.ratelimit.scheduler import Scheduler

T = TypeVar("T")


async def _get(
    transport: Sender,
    read: ReadRequest,
    reader: Callable[[HttpResponse], T],
    scheduler: Scheduler | None,
    max_attempts: int,
) -> T:
    return await get(
        transport,
        read,
        reader,
        scheduler=scheduler,
        group=traitly.GROUP,
        limit=traitly.DEFAULT_LIMITS[traitly.GROUP],
        max_attempts=max_attempts,
    )


async def list_customers(
    transport: Sender,
    token: str,
    *,
    customer_id: str | None = None,
    name: str | None = None,
    plan: str | None = None,
    paths: Mapping[str, str] = traitly.PATHS,
    scheduler: Scheduler | None = None,
    max_attempts: int = 1,
) -> list[dict[str, Any]]:
    """Customers matching every filter given (all of them with none)."""
    read = traitly.customers_read(token, customer_id=customer_id, name=name, plan=plan, paths=paths)
    return await _get(
        transport, read, lambda r: traitly.read_list(r, "customers"), scheduler, max_attempts
    )


async def list_events(
    transport: Sender,
    token: str,
    customer_id: str,
    name: str,
    *,
    paths: Mapping[str, str] = traitly.PATHS,
    scheduler: Scheduler | None = None,
    max_attempts: int = 1,
) -> list[dict[str, Any]]:
    """The events called ``name`` of one customer."""
    read = traitly.events_read(token, customer_id, name, paths=paths)
    return await _get(
        transport, read, lambda r: traitly.read_list(r, "events"), scheduler, max_attempts
    )


async def next_actions(
    transport: Sender,
    token: str,
    customer_id: str,
    goal_name: str | None = None,
    *,
    paths: Mapping[str, str] = traitly.PATHS,
    scheduler: Scheduler | None = None,
    max_attempts: int = 1,
) -> dict[str, Any]:
    """Recommended next actions and the goal likelihood of one customer."""
    read = traitly.next_actions_read(token, customer_id, goal_name, paths=paths)
    return await _get(transport, read, traitly.read_next_actions, scheduler, max_attempts)
