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
    """The password in a Redis URL (userinfo or ``?password=``), for the log redactor. When
    the userinfo is cut short (``_cut_short``), what stands between ``scheme://`` and the last
    ``@`` after its first ``:`` (all of it, without a ``:``)."""
    userinfo = _cut_short(url)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        return (password if colon else user) or None
    try:
        parts = urlsplit(url)
    except ValueError:  # (and no "@": no userinfo)
        return None
    if parts.password:
        return parts.password
    for name, value in parse_qsl(parts.query):
        if name == "password" and value:
            return value
    return None


def _cut_short(url: str) -> str | None:
    """Everything between ``scheme://`` (or the start) and the last ``@`` of ``url`` when
    ``urlsplit`` does not read that as the userinfo -- a password holding an unencoded ``/``,
    ``?`` or ``#`` (``redis://bob:12/34@host/0``: the path would hold the rest of it and the
    host) or a URL it cannot read at all -- else None."""
    if "@" not in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # (such as "Invalid IPv6 URL": a "[" in the password)
        pass
    else:
        if "@" not in parts.path + parts.query + parts.fragment:
            return None
    head, sep, rest = url.partition("://")
    return (rest if sep else head).rpartition("@")[0]


#: what a URL whose userinfo is cut short is told (without any of its parts)
_CUT_SHORT = (
    "the URL has an '@' after its host, as when a password holds a / ? or # (the rest of it "
    "would be read as the database or an option); percent-encode them in the password: / as "
    "%2F, ? as %3F, # as %23, @ as %40"
)


def checked_url(url: str, flag: str) -> str:
    """``url`` when it is a Redis URL (``redis://``, ``rediss://``, ``unix://``) naming its
    database as a number or not at all, else a one-line ``ConfigError`` naming ``flag`` and the
    URL without its password (without any of its parts when its userinfo is cut short or its
    host cannot be read: they may hold part of the password)."""
    scheme = url.partition("://")[0].lower()
    if "://" not in url or scheme not in SCHEMES:
        raise ConfigError(
            f"{flag}: expected redis://HOST:PORT/DB (or rediss://, unix://), "
            f"got {redact_url(url)!r}"
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # such as "Invalid IPv6 URL" (its text is not shown: it may quote)
        raise ConfigError(f"{flag}: {_UNREADABLE}") from None
    if _cut_short(url) is not None:
        raise ConfigError(f"{flag}: {_CUT_SHORT}")
    try:
        parts.port  # noqa: B018 (read: a port that is not a number raises)
    except ValueError:  # "Port out of range 0-65535", "Port could not be cast ... as 'pa'"
        raise ConfigError(f"{flag}: {_UNREADABLE}") from None
    fault = database_fault(url)
    if fault:
        where = "unix://PATH?db=DB" if scheme == "unix" else "redis://HOST:PORT/DB (or ?db=DB)"
        raise ConfigError(
            f"{flag}: {redact_url(url)}: {fault}; write {where} with DB from 0 to 15 (a default "
            "Redis's 16 databases), or leave it out for database 0"
        )
    return url


_UNREADABLE = (
    "expected redis://HOST:PORT/DB (or rediss://, unix://), got a URL whose host or port "
    "cannot be read; write PORT as a number from 0 to 65535 and an IPv6 HOST in brackets "
    "([::1]), and percent-encode [ ] in a password (%5B %5D)"
)


def database_fault(url: str) -> str | None:
    """What is wrong with the database a Redis URL names (``/DB`` after ``redis://HOST:PORT``
    or ``rediss://``, ``?db=DB`` with any scheme), or None. redis-py would read a path that is
    not a number as database 0 (``/1/2`` as 12) and take ``?db=`` over the path: such a path, a
    ``?db=`` that is not a number and two different databases are refused here. A ValueError
    when ``url`` cannot be read at all."""
    parts = urlsplit(url)
    named: dict[int, str] = {}  # (each database once, as first written)
    if parts.scheme.lower() != "unix":  # (there the path is the socket's)
        path = unquote(parts.path).removeprefix("/")
        if path:
            if not _number(path):
                return f"the database {path!r} is not a number from 0 up"
            named.setdefault(int(path), path)
    for name, value in parse_qsl(parts.query):
        if name == "db":
            if not _number(value):
                return f"the database ?db={value} is not a number from 0 up"
            named.setdefault(int(value), value)
    if len(named) > 1:
        return f"it names {len(named)} databases ({', '.join(named.values())}), not one"
    return None


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def redact_url(url: str) -> str:
    """``url`` fit for messages and logs: a password (userinfo or query) becomes ``***``; when
    the userinfo is cut short (``_cut_short``: a password holding an unencoded ``/``, ``?``,
    ``#``), all of it up to the last ``@`` does (``redis://***@host:6379/0``), and all that
    follows ``scheme://`` when a ``password=`` precedes that ``@`` (its value may go on past
    it). A URL without a password is shown as given."""
    userinfo = _cut_short(url)
    if userinfo is None:
        return _redacted(url)
    head, sep, _ = url.partition("://")
    prefix = head + sep if sep else ""
    if "password=" in userinfo:
        return prefix + "***"
    host = url.rpartition("@")[2]  # (and what follows it)
    return prefix + "***@" + _redacted(prefix + host).removeprefix(prefix)


def _redacted(url: str) -> str:
    if "@" not in url and "password=" not in url:
        return url
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query)
        has_password = any(k == "password" for k, _ in pairs)
        if parts.password is None and not has_password:
            return url
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rpartition("@")[2]
            netloc = f"{user}:***@{host}"
        query = parts.query
        if has_password:  # (else as given: ?ssl_ca_certs=/a/ca.pem)
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
