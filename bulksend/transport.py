"""The only place that touches the network: one aiohttp session with a pooled connector.

``Transport.send`` turns an ``HttpRequest`` into an ``HttpResponse`` or raises ``NoResponse`` (a
``TransientError``) for timeouts and broken connections — outcomes that are *unknown*: the
provider may or may not have acted on the request.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import aiohttp
from yarl import URL

from bulksend.errors import TransientError
from bulksend.models import HttpRequest, HttpResponse


class NoResponse(TransientError):
    """No response arrived (timeout, reset, refused): the request's outcome is unknown."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        #: False when the connection failed before the request could have reached the provider
        self.sent = sent


class Transport:
    """One pooled session for a whole send. Use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        *,
        connections: int = 64,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(connect_timeout, timeout))
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def __aenter__(self) -> Transport:
        connector = aiohttp.TCPConnector(
            limit=self._connections, limit_per_host=self._connections, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "bulksend"},
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.base_url + path)
        return url

    async def send(self, request: HttpRequest) -> HttpResponse:
        session = self._session
        if session is None:
            raise RuntimeError("Transport used outside 'async with'")
        try:
            async with session.request(
                request.method,
                self.url(request.path),
                data=request.body,
                headers=request.headers,
            ) as resp:
                body = await resp.read()
                return HttpResponse(resp.status, resp.headers, body)
        except TimeoutError:
            raise NoResponse("timed out waiting for the provider", sent=True) from None
        except aiohttp.ClientConnectorError as exc:
            raise NoResponse(
                f"cannot connect to {self.base_url}: {exc.os_error}", sent=False
            ) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError) as exc:
            raise NoResponse(f"connection lost: {type(exc).__name__}", sent=True) from None
