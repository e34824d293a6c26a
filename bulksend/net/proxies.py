"""Which HTTP proxy the environment names for a URL (pure: the environment is an argument).

The reading curl, pip and requests share, so a CI runner set up for them works here too:

* ``<scheme>_proxy`` for the URL's scheme (``https_proxy`` for ``https://``), the lowercase name
  first, then the uppercase one; else ``all_proxy`` / ``ALL_PROXY``. A value without a scheme
  (``proxy.corp:3128``) is an ``http://`` proxy; ``https://`` proxies work too; others (socks)
  are refused with a clear error rather than ignored.
* ``no_proxy`` / ``NO_PROXY``: comma- or space-separated entries; ``*`` matches every host; a
  name matches itself and its subdomains (``example.com``, ``.example.com``); an IP address or
  a network (``10.0.0.0/8``) matches the addresses in it; ``host:port`` matches that port only.
* Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) never go through a proxy: the
  sandbox and local tools live there.

``redacted(url)`` is what may be shown of a proxy URL: its credentials are left out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from bulksend.errors import ConfigError

_SCHEMES = ("http", "https")


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy URL to reach ``url`` through, or None to connect directly."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or is_loopback(host):
        return None
    scheme = parts.scheme.lower()
    name, value = _setting(env, f"{scheme}_proxy")
    if not value:
        name, value = _setting(env, "all_proxy")
    if not value:
        return None
    port = parts.port or (443 if scheme == "https" else 80)
    if bypassed(host, port, _setting(env, "no_proxy")[1]):
        return None
    return _checked(name, value)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether a ``no_proxy`` value lists ``host`` (at ``port``)."""
    address = _address(host)
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.strip().lower()
        if entry == "*":
            return True
        name, want_port = _split_port(entry)
        if want_port is not None and want_port != port:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name.strip("[]"), strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def is_loopback(host: str) -> bool:
    host = host.lower().strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def redacted(proxy: str) -> str:
    """``scheme://host:port`` of a proxy URL, without user name or password."""
    parts = urlsplit(proxy)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _setting(env: Mapping[str, str], name: str) -> tuple[str, str]:
    for key in (name, name.upper()):
        value = env.get(key, "").strip()
        if value:
            return key, value
    return name, ""


def _checked(name: str, value: str) -> str:
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{name}: the proxy's port is not a number") from None
    # the value itself may hold a password: errors name the variable and the scheme only
    if parts.scheme.lower() not in _SCHEMES:
        raise ConfigError(
            f"{name}: a {parts.scheme}:// proxy is not supported "
            "(use an http:// or https:// proxy, or unset it)"
        )
    if not parts.hostname:
        raise ConfigError(f"{name}: the proxy URL names no host")
    return value


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` -> (host, port); a bare IPv6 address or a network has no port."""
    if entry.startswith("["):  # [::1]:8080
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None
