"""Read requests (GET with query parameters) shared by the providers' read helpers.

The providers build a ``ReadRequest`` and interpret the ``HttpResponse`` (pure); ``fetch`` is the
thin I/O step between the two, on a caller's ``aiohttp.ClientSession``::

    async with aiohttp.ClientSession() as session:
        response = await fetch(session, base_url, traitly.customers_read(token, plan="Starter"))
        customers = traitly.read_list(response)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from bulksend.errors import TransientError
from bulksend.models import HttpResponse


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A GET: ``path`` (joined to the base URL), query ``params`` and ``headers``."""

    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


async def fetch(session: aiohttp.ClientSession, base_url: str, read: ReadRequest) -> HttpResponse:
    """Send ``read``; the session's timeout or a broken connection raises ``TransientError``."""
    url = base_url.rstrip("/") + read.path
    try:
        async with session.get(
            url,
            params=dict(read.params),
            headers=dict(read.headers),
        ) as resp:
            return HttpResponse(resp.status, resp.headers, await resp.read())
    except TimeoutError:
        raise TransientError(f"GET {read.path}: timed out") from None
    except aiohttp.ClientError as exc:
        raise TransientError(f"GET {read.path}: {type(exc).__name__}") from None
