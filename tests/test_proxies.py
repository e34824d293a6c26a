"""HTTP proxies from the environment: the pure reading, and real sends through a real proxy."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bulksend.errors import ConfigError, NoResponse
from bulksend.models import HttpRequest
from bulksend.net.proxies import bypassed, is_loopback, proxy_for, redacted
from bulksend.net.transport import Transport
from bulksend.providers import traitly_api
from bulksend.sandbox import SandboxConfig, running

API = "https://api.maxtraffic.com"


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        (API, {"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        (API, {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"}, "http://low:1"),
        (API, {"HTTP_PROXY": "http://proxy:3128"}, None),  # an http proxy for http:// only
        ("http://api.example.com", {"HTTP_PROXY": "http://p:8"}, "http://p:8"),
        (API, {"ALL_PROXY": "http://all:9"}, "http://all:9"),
        (API, {"HTTPS_PROXY": "http://p:1", "ALL_PROXY": "http://all:9"}, "http://p:1"),
        (API, {"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128"),  # curl's default
        (API, {"HTTPS_PROXY": "https://tls-proxy:443"}, "https://tls-proxy:443"),
        (API, {"HTTPS_PROXY": "  "}, None),
        (API, {}, None),
        # never for loopback: the sandbox lives there
        ("http://127.0.0.1:8765", {"HTTP_PROXY": "http://p:8"}, None),
        ("http://127.1.2.3:8765", {"HTTP_PROXY": "http://p:8"}, None),
        ("http://[::1]:8765", {"HTTP_PROXY": "http://p:8"}, None),
        ("http://localhost:8765", {"HTTP_PROXY": "http://p:8"}, None),
    ],
)
def test_which_proxy_the_environment_names(
    url: str, env: dict[str, str], expected: str | None
) -> None:
    assert proxy_for(url, env) == expected


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "expected"),
    [
        ("*", "api.maxtraffic.com", 443, True),
        ("maxtraffic.com", "api.maxtraffic.com", 443, True),  # subdomains too
        (".maxtraffic.com", "api.maxtraffic.com", 443, True),
        ("maxtraffic.com", "maxtraffic.com", 443, True),
        ("traffic.com", "api.maxtraffic.com", 443, False),  # not a suffix match of the label
        ("other.com, maxtraffic.com", "api.maxtraffic.com", 443, True),
        ("other.com maxtraffic.com", "api.maxtraffic.com", 443, True),
        ("api.maxtraffic.com:8443", "api.maxtraffic.com", 443, False),  # another port
        ("api.maxtraffic.com:443", "api.maxtraffic.com", 443, True),
        ("10.0.0.0/8", "10.2.3.4", 443, True),
        ("10.0.0.0/8", "11.2.3.4", 443, False),
        ("192.168.1.7", "192.168.1.7", 80, True),
        ("[2001:db8::1]:443", "2001:db8::1", 443, True),
        ("2001:db8::/32", "2001:db8::5", 443, True),
        ("", "api.maxtraffic.com", 443, False),
    ],
)
def test_no_proxy_entries(no_proxy: str, host: str, port: int, expected: bool) -> None:
    assert bypassed(host, port, no_proxy) is expected


def test_no_proxy_in_the_environment_sends_directly() -> None:
    env = {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.org,.maxtraffic.com"}
    assert proxy_for(API, env) is None
    assert proxy_for("https://api.traitly.ai", env) == "http://p:1"


def test_a_proxy_bulksend_cannot_use_is_an_error_that_shows_no_password() -> None:
    with pytest.raises(ConfigError) as caught:
        proxy_for(API, {"HTTPS_PROXY": "socks5://me:hunter2secret@proxy:1080"})
    assert str(caught.value) == (
        "HTTPS_PROXY: a socks5:// proxy is not supported (use an http:// or https:// proxy, or "
        "unset it)"
    )
    with pytest.raises(ConfigError) as caught:
        proxy_for(API, {"https_proxy": "http://me:hunter2secret@proxy:port"})
    assert str(caught.value) == "https_proxy: the proxy's port is not a number"
    with pytest.raises(ConfigError) as caught:
        proxy_for(API, {"HTTPS_PROXY": "http://"})
    assert str(caught.value) == "HTTPS_PROXY: the proxy URL names no host"


def test_redacted_leaves_the_credentials_out() -> None:
    assert redacted("http://me:hunter2secret@proxy.corp:3128") == "http://proxy.corp:3128"
    assert redacted("https://[2001:db8::1]:443/") == "https://[2001:db8::1]:443"
    assert redacted("http://proxy") == "http://proxy"
    assert is_loopback("LOCALHOST")
    assert is_loopback("app.localhost")
    assert not is_loopback("10.0.0.1")


# -- through a real proxy ---------------------------------------------------------------------


@dataclass
class Proxy:
    """A forward proxy on loopback that sends every request on to one upstream server."""

    upstream: str
    url: str = ""
    targets: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


@asynccontextmanager
async def forward_proxy(upstream: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(upstream)

    async def forward(request: web.Request) -> web.Response:
        proxy.targets.append(str(request.url))  # the absolute URL the client asked for
        proxy.auth.append(request.headers.get("Proxy-Authorization"))
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "proxy-authorization", "proxy-connection")
        }
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, upstream + request.path_qs, data=body, headers=headers
            ) as answer,
        ):
            answered = await answer.read()
            keep = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type",)}
            keep.update((k, v) for k, v in answer.headers.items() if k.lower().startswith("x-"))
            return web.Response(status=answer.status, body=answered, headers=keep)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()


def notification(key: str) -> HttpRequest:
    return HttpRequest(
        "POST",
        "/v1/notifications",
        {"Authorization": f"key={key}", "Content-Type": "application/json"},
        b'{"messages":[{"title":"t","body":"b"}],"to_ids":["v1"]}',
    )


async def test_requests_go_through_the_proxy_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        running(SandboxConfig(provider="maxtraffic", api_key="k-123456789")) as sandbox,
        forward_proxy(sandbox.base_url) as proxy,
    ):
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://me:hunter2secret@"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # a name only the proxy can reach: connecting directly would fail
        async with Transport("http://maxtraffic.invalid") as transport:
            assert transport.route == f"http://maxtraffic.invalid through the proxy {proxy.url}"
            response = await transport.send(notification("k-123456789"))
    assert response.status == 200
    assert proxy.targets == ["http://maxtraffic.invalid/v1/notifications"]
    assert proxy.auth == ["Basic " + base64.b64encode(b"me:hunter2secret").decode()]
    assert sandbox.stats.requests == 1


async def test_no_proxy_and_loopback_connect_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        running(SandboxConfig(provider="maxtraffic", api_key="k-123456789")) as sandbox,
        forward_proxy(sandbox.base_url) as proxy,
    ):
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "maxtraffic.invalid")
        async with Transport("http://maxtraffic.invalid") as transport:
            assert transport.proxy is None
            with pytest.raises(NoResponse) as caught:
                await transport.send(notification("k-123456789"))
        assert caught.value.sent is False  # not resolvable without the proxy
        async with Transport(sandbox.base_url) as local:  # the sandbox: never proxied
            assert (await local.send(notification("k-123456789"))).status == 200
    assert proxy.targets == []


async def test_an_unreachable_proxy_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://me:hunter2secret@127.0.0.1:9")  # discard port
    async with Transport("https://api.maxtraffic.invalid") as transport:
        with pytest.raises(NoResponse) as caught:
            await transport.send(notification("k"))
    message = str(caught.value)
    assert message.startswith(
        "cannot connect to https://api.maxtraffic.invalid through the proxy http://127.0.0.1:9: "
    )
    assert "hunter2secret" not in message
    assert caught.value.sent is False


async def test_provider_reads_go_through_the_proxy_too(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "traitly-token-0123456789"
    async with (
        running(SandboxConfig(provider="traitly", token=token)) as sandbox,
        forward_proxy(sandbox.base_url) as proxy,
    ):
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with Transport("http://traitly.invalid") as transport:
            found = await traitly_api.list_customers(transport, token, name="Ann & Bob+1 é")
    assert found == []
    (target,) = proxy.targets
    assert target.startswith("http://traitly.invalid/api/v1/customer?")
    assert URL(target).query == {"name": "Ann & Bob+1 é"}  # as the server reads it
