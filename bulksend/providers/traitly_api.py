"""Traitly reads on a caller's aiohttp session (requests and answers are built and read by the
pure functions in ``bulksend.providers.traitly``)::

    async with aiohttp.ClientSession() as session:
        starters = await list_customers(session, base_url, token, plan="Starter")
        actions = await next_actions(session, base_url, token, "123", "30-day Conversion")

Errors: ``AuthError`` (401), ``TransientError`` (429, a 403 with rate-limit headers, 5xx,
timeouts; worth retrying later), ``ProviderError`` (400, 403 hidden, 404 unknown customer, ...;
``.status`` tells which).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from bulksend.providers import traitly
from bulksend.providers.reads import fetch


async def list_customers(
    session: aiohttp.ClientSession,
    base_url: str,
    token: str,
    *,
    customer_id: str | None = None,
    name: str | None = None,
    plan: str | None = None,
    paths: Mapping[str, str] = traitly.PATHS,
) -> list[dict[str, Any]]:
    """Customers matching every filter given (all of them with none)."""
    read = traitly.customers_read(token, customer_id=customer_id, name=name, plan=plan, paths=paths)
    return traitly.read_list(await fetch(session, base_url, read), "customers")


async def list_events(
    session: aiohttp.ClientSession,
    base_url: str,
    token: str,
    customer_id: str,
    name: str,
    *,
    paths: Mapping[str, str] = traitly.PATHS,
) -> list[dict[str, Any]]:
    """The events called ``name`` of one customer."""
    read = traitly.events_read(token, customer_id, name, paths=paths)
    return traitly.read_list(await fetch(session, base_url, read), "events")


async def next_actions(
    session: aiohttp.ClientSession,
    base_url: str,
    token: str,
    customer_id: str,
    goal_name: str | None = None,
    *,
    paths: Mapping[str, str] = traitly.PATHS,
) -> dict[str, Any]:
    """Recommended next actions and the goal likelihood of one customer."""
    read = traitly.next_actions_read(token, customer_id, goal_name, paths=paths)
    return traitly.read_next_actions(await fetch(session, base_url, read))
