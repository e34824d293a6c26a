"""End to end: when the provider cannot be reached, the stop line on stderr names the cause.

Refused (a closed loopback port), a name that does not resolve (``.invalid``) and a timeout (a
loopback port that takes connections and never answers), through ``bulksend send``: exit 4 and
one line naming the cause class and the host. The circuit breaker's pauses are shortened (its
first pause is 2 s, doubling) so that its three probes take milliseconds; nothing else changes.
Reset and TLS failures are named by the transport itself (checked below without the CLI).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bulksend import campaign as campaign_module
from bulksend.dispatch.engine import EngineOptions
from bulksend.errors import NoResponse
from bulksend.models import HttpRequest
from bulksend.net.transport import Transport
from tests.conftest import KEY, CliResult, run_cli, write_campaign, write_recipients

ROWS = [(f"v{i:03d}", f"u{i:03d}") for i in range(200)]
STOPPED = "; the send stopped (what was not sent is skipped and resumable)"


@pytest.fixture(autouse=True)
def _short_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = functools.partial(EngineOptions, circuit_cooldown=0.01)
    monkeypatch.setattr(campaign_module, "EngineOptions", fast)


@pytest.fixture(autouse=True)
def _no_dns_for_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    """``.invalid`` never resolves (RFC 6761); answered here, so no test waits on a resolver
    (aiohttp's default resolver asks ``socket.getaddrinfo`` in a thread)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str | bytes) and str(host).rstrip(".").endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent() -> Iterator[int]:
    """A loopback port whose connections are taken by the kernel and never answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(512)
        yield int(s.getsockname()[1])


def send(tmp_path: Path, base_url: str, *flags: str) -> tuple[CliResult, float]:
    recipients = write_recipients(tmp_path / "r.csv", ROWS)
    campaign = write_campaign(tmp_path, recipients, batch_size=10, in_flight=4)
    args = ["send", str(campaign), "--base-url", base_url, "--no-journal", "-q"]
    started = time.monotonic()
    result = run_cli(*args, "--log-format", "json", *flags, env={"MAXTRAFFIC_API_KEY": KEY})
    return result, time.monotonic() - started


def stop_line(result: CliResult) -> str:
    """The one line a person reads on stderr (the rest are JSON log lines)."""
    (line,) = [x for x in result.stderr.splitlines() if not x.startswith("{")]
    return line


def test_a_refused_connection_is_named_with_the_host(tmp_path: Path) -> None:
    port = free_port()
    result, _ = send(tmp_path, f"http://127.0.0.1:{port}")
    assert result.status == 4
    line = stop_line(result)
    assert line.startswith(
        f"bulksend: endpoint group 'api' kept failing (connection refused: 127.0.0.1:{port}): "
    )
    assert line.endswith(
        f"(it never answered: check the base URL http://127.0.0.1:{port})" + STOPPED
    )


def test_a_name_that_does_not_resolve_is_named_and_fails_fast(tmp_path: Path) -> None:
    result, took = send(tmp_path, "https://api.bulksend-test.invalid")
    assert result.status == 4
    line = stop_line(result)
    assert line.startswith(
        "bulksend: endpoint group 'api' kept failing "
        "(DNS name not resolved: api.bulksend-test.invalid:443): "
    )
    assert took < 20


def test_a_provider_that_never_answers_is_named_as_a_timeout(tmp_path: Path, silent: int) -> None:
    result, took = send(tmp_path, f"http://127.0.0.1:{silent}", "--timeout", "0.2")
    assert result.status == 4
    line = stop_line(result)
    assert line.startswith(
        f"bulksend: endpoint group 'api' kept failing (timeout: 127.0.0.1:{silent}): "
    )
    assert took < 30


def test_a_send_too_short_to_open_the_circuit_still_names_the_cause(tmp_path: Path) -> None:
    port = free_port()
    result, _ = send(
        tmp_path, f"http://127.0.0.1:{port}", "--max-attempts", "1", "--batch-size", "100"
    )
    assert result.status == 4
    assert stop_line(result) == (
        f"bulksend: http://127.0.0.1:{port} never answered (connection refused: 127.0.0.1:{port}): "
        "is --base-url right? nothing was delivered"
    )


async def test_a_reset_and_a_tls_failure_are_named_by_the_transport() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.transport.abort()  # closes the connection without an answer

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # a TLS client hello, answered in plain HTTP
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    resets = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    plain = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    reset_port = resets.sockets[0].getsockname()[1]
    plain_port = plain.sockets[0].getsockname()[1]
    request = HttpRequest("POST", "/v1/notifications", {}, b"{}")
    try:
        async with Transport(f"http://127.0.0.1:{reset_port}", proxy=None) as transport:
            with pytest.raises(NoResponse) as reset:
                await transport.send(request)
        async with Transport(f"https://127.0.0.1:{plain_port}", proxy=None) as transport:
            with pytest.raises(NoResponse) as tls:
                await transport.send(request)
    finally:
        for server in (resets, plain):
            server.close()
            await server.wait_closed()
    assert (reset.value.reason, reset.value.sent) == (
        f"connection reset: 127.0.0.1:{reset_port}",
        True,
    )
    assert (tls.value.reason, tls.value.sent) == (f"TLS error: 127.0.0.1:{plain_port}", False)
    assert str(tls.value).startswith(
        f"cannot connect to https://127.0.0.1:{plain_port}: TLS error ("
    )
