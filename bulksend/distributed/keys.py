"""Names and fingerprints for the shared limiter (pure: no I/O, no clock).

A provider's quota belongs to its API key, so the Redis keys of one endpoint group are named by
provider + a fingerprint of the key + the group::

    bulksend:{maxtraffic:6f1c0d2e9a7b3c45:api}:log     ZSET  admission id -> Redis time (s)
    bulksend:{maxtraffic:6f1c0d2e9a7b3c45:api}:state   HASH  epoch, tat, hold, limit, seeded

The fingerprint is the first 16 hex digits of a salted SHA-256 of the secret values: two workers
with the same key meet in the same keys, and nothing in Redis can give the key back. The braces
are a Redis Cluster hash tag, so both keys of a group live on one node and one script can touch
them atomically.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from bulksend.errors import ConfigError

__all__ = [
    "MAX_MARGIN",
    "SCHEMES",
    "checked_url",
    "database_fault",
    "key_fingerprint",
    "key_names",
    "key_ttl_ms",
    "quota_scope",
    "redact_url",
    "remedy",
    "url_password",
]

SCHEMES = ("redis", "rediss", "unix")
#: the largest margin (seconds) any worker adds to a window; the log keeps this much extra history
MAX_MARGIN = 1.0
_SALT = b"bulksend-quota-fingerprint-v1\x00"


def key_fingerprint(secrets: Mapping[str, str]) -> str:
    """16 hex digits identifying the credentials (never the credentials themselves)."""
    h = hashlib.sha256(_SALT)
    for name in sorted(secrets):
        h.update(name.encode() + b"\x00" + secrets[name].encode() + b"\x00")
    return h.hexdigest()[:16]


def quota_scope(provider: str, secrets: Mapping[str, str]) -> str:
    """``provider:fingerprint``, the part of every key that says whose quota it is."""
    return f"{provider}:{key_fingerprint(secrets)}"


def key_names(scope: str, group: str, prefix: str = "bulksend") -> tuple[str, str]:
    """The (log, state) keys of one endpoint group."""
    tag = f"{{{scope}:{group}}}"
    return f"{prefix}:{tag}:log", f"{prefix}:{tag}:state"


def key_ttl_ms(window: float) -> int:
    """How long the keys outlive the last admission: two windows (with margins) plus a minute."""
    return math.ceil((2.0 * (window + MAX_MARGIN) + 60.0) * 1000.0)


def url_password(url: str) -> str | None:
    """The password in a Redis URL (userinfo or ``?password=``), for the log redactor."""
    parts = urlsplit(url)
    if parts.password:
        return parts.password
    for name, value in parse_qsl(parts.query):
        if name == "password" and value:
            return value
    return None


def checked_url(url: str, flag: str) -> str:
    """``url`` when it is a Redis URL (``redis://``, ``rediss://``, ``unix://``) naming its
    database as a number or not at all, else a one-line ``ConfigError`` naming ``flag`` and the
    URL without its password."""
    scheme = url.partition("://")[0].lower()
    if "://" not in url or scheme not in SCHEMES:
        raise ConfigError(
            f"{flag}: expected redis://HOST:PORT/DB (or rediss://, unix://), "
            f"got {redact_url(url)!r}"
        )
    try:
        urlsplit(url).port  # noqa: B018 (read: a port that is not a number raises)
        fault = database_fault(url)
    except ValueError as exc:  # such as "Invalid IPv6 URL", "Port out of range 0-65535"
        raise ConfigError(
            f"{flag}: expected redis://HOST:PORT/DB (or rediss://, unix://), got a URL that "
            f"cannot be read ({exc})"
        ) from None
    if fault:
        raise ConfigError(
            f"{flag}: {redact_url(url)}: {fault}; write redis://HOST:PORT/DB (or ?db=DB) with DB "
            "from 0 to 15 (a default Redis's 16 databases), or leave it out for database 0"
        )
    return url


def database_fault(url: str) -> str | None:
    """What is wrong with the database a Redis URL names (``/DB`` after ``redis://HOST:PORT``
    or ``rediss://``, ``?db=DB`` with any scheme), or None. redis-py would read a path that is
    not a number as database 0 (``/1/2`` as 12) and take ``?db=`` over the path: such a path, a
    ``?db=`` that is not a number and two different databases are refused here. A ValueError
    when ``url`` cannot be read at all."""
    parts = urlsplit(url)
    named: list[str] = []
    if parts.scheme.lower() != "unix":  # (there the path is the socket's)
        path = unquote(parts.path).removeprefix("/")
        if path:
            if not _number(path):
                return f"the database {path!r} is not a number from 0 up"
            named.append(path)
    for name, value in parse_qsl(parts.query):
        if name == "db":
            if not _number(value):
                return f"the database ?db={value} is not a number from 0 up"
            named.append(value)
    if len({int(n) for n in named}) > 1:
        return f"it names {len(named)} databases ({', '.join(named)}), not one"
    return None


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def redact_url(url: str) -> str:
    """``url`` fit for messages and logs: a password (userinfo or query) becomes ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rpartition("@")[2]
            netloc = f"{user}:***@{host}"
        query = parts.query
        pairs = parse_qsl(query)
        if any(k == "password" for k, _ in pairs):  # (else as given: ?ssl_ca_certs=/a/ca.pem)
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
        text = f"{parts.scheme}://{netloc}{parts.path}"
        if query:
            text += "?" + query
        if parts.fragment:
            text += "#" + parts.fragment
        return text
    except ValueError:
        return "<unparsable URL>"


#: what to do when a ``rediss://`` connection fails because the server's certificate is not
#: trusted (signed by a CA of the user's own)
_UNTRUSTED = (
    "CERTIFICATE_VERIFY_FAILED",
    "the server's TLS certificate is not trusted here: name the CA that signed it at the end of "
    "the URL, ?ssl_ca_certs=/path/to/ca.pem (docs/scaling.md)",
)


def remedy(reason: str, otherwise: str) -> str:
    """What to do when reaching Redis failed with ``reason`` (an exception's text): an
    untrusted TLS certificate said apart, ``otherwise`` for the rest."""
    marker, what = _UNTRUSTED
    return what if marker in reason else otherwise
