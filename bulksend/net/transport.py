"""The only place that touches the network: one aiohttp session with a pooled connector.

``Transport.send`` turns an ``HttpRequest`` into an ``HttpResponse`` or raises ``NoResponse`` (a
``TransientError``) for timeouts and broken connections — outcomes that are *unknown*: the
provider may or may not have acted on the request.

Redirects are not followed: an API that answers a POST with a 3xx has not taken it (aiohttp would
repeat a 301/302/303 as a GET without the body and count the page it lands on), so the 3xx itself
goes to the provider's ``classify``, which stops the send naming where it points.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from types import TracebackType

import aiohttp
from yarl import URL

from bulksend.errors import NoResponse
from bulksend.models import HttpRequest, HttpResponse
from bulksend.net.proxies import proxy_for, redacted

REFUSED = "connection refused"
DNS = "DNS name not resolved"
TLS = "TLS error"
TIMEOUT = "timeout"
RESET = "connection reset"
#: the causes ``NoResponse.cause`` names (else "cannot connect" or "connection lost")
CAUSES = (REFUSED, DNS, TLS, TIMEOUT, RESET)


def failure_cause(exc: BaseException) -> str | None:
    """The class of a connection failure (one of ``CAUSES``), or None for another one."""
    for error in (exc, getattr(exc, "os_error", None), exc.__cause__):
        if isinstance(error, socket.gaierror):
            return DNS
        if isinstance(error, ssl.SSLError | aiohttp.ClientSSLError):
            return TLS
        if isinstance(error, ConnectionRefusedError):
            return REFUSED
        if isinstance(error, TimeoutError):
            return TIMEOUT
        if isinstance(
            error,
            ConnectionResetError
            | BrokenPipeError
            | aiohttp.ServerDisconnectedError
            | aiohttp.ClientPayloadError  # the answer was cut short
            | asyncio.IncompleteReadError,
        ):
            return RESET
    return None


#: ``Transport(proxy=FROM_ENVIRONMENT)``: the proxy the process environment names, if any
FROM_ENVIRONMENT = "environment"


class Transport:
    """One pooled session for a whole send. Use as an async context manager.

    ``proxy``: by default the one ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` name for the
    base URL, unless ``NO_PROXY`` lists its host or the host is loopback (``bulksend.net.proxies``);
    or a proxy URL; or None for a direct connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connections: int = 64,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        proxy: str | None = FROM_ENVIRONMENT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if proxy == FROM_ENVIRONMENT:
            proxy = proxy_for(self.base_url, os.environ)
        self.proxy = proxy
        #: where the requests go, for messages (never the proxy's credentials)
        self.route = self.base_url + (f" through the proxy {redacted(proxy)}" if proxy else "")
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
            proxy=self.proxy,
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
                allow_redirects=False,  # a redirect is an answer: the provider decides
            ) as resp:
                body = await resp.read()
                return HttpResponse(resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise self._timed_out(request, exc) from None
        except aiohttp.ClientConnectorError as exc:
            cause = failure_cause(exc) or "cannot connect"
            host = f"{exc.host}:{exc.port}"
            message = f"cannot connect to {self.route}: {cause} ({exc.os_error})"
            raise NoResponse(message, sent=False, cause=cause, host=host) from None
        except aiohttp.ClientHttpProxyError as exc:  # the proxy refused to connect us
            raise NoResponse(
                f"cannot connect to {self.route}: the proxy answered {exc.status} {exc.message}",
                sent=False,
                cause=f"the proxy answered {exc.status}",
                host=self._host(request),
            ) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError) as exc:
            lost = failure_cause(exc)
            said = f"{lost} ({type(exc).__name__})" if lost else type(exc).__name__
            raise NoResponse(
                f"connection lost: {said}",
                sent=True,
                cause=lost or "connection lost",
                host=self._host(request),
            ) from None

    def _host(self, request: HttpRequest) -> str:
        """``host:port`` of the request's URL (the proxy's when one is used)."""
        url = URL(self.proxy) if self.proxy else self.url(request.path)
        return f"{url.host}:{url.port}"

    def _timed_out(self, request: HttpRequest, exc: TimeoutError) -> NoResponse:
        """A timeout: before the connection was made (not sent) or while waiting (unknown)."""
        connecting = isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ()))
        seconds = (self._timeout.connect if connecting else self._timeout.total) or 0.0
        what = "connecting to" if connecting else "waiting for an answer from"
        return NoResponse(
            f"timed out {what} {self.route} (after {seconds:g} s)",
            sent=not connecting,
            cause=TIMEOUT,
            host=self._host(request),
        )
