"""The shared gate: one Redis connection and the three Lua scripts, per quota scope.

``RedisGate`` is a thin I/O wrapper: every decision is taken inside the scripts
(``bulksend.distributed.lua``), atomically, on Redis's clock. It turns every way Redis can be
out of reach into ``GateUnavailable`` so the scheduler can pause and reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bulksend.distributed import lua
from bulksend.distributed.keys import MAX_MARGIN, checked_url, key_names, redact_url, remedy
from bulksend.errors import ConfigError, GateUnavailable, UnavailableError

__all__ = [
    "DOWN",
    "Admission",
    "GateUnavailable",
    "RedisGate",
    "Verdict",
    "client_from_url",
    "reached",
]

#: errors that mean "Redis is not there right now" (not a bug in a script)
DOWN: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # includes BusyLoadingError (a restarted Redis loading its data)
    rex.TimeoutError,
    rex.ReadOnlyError,  # a replica after a failover
    rex.TryAgainError,
    OSError,
    asyncio.TimeoutError,
)


class Verdict(enum.IntEnum):
    EPOCH = -1  # Redis lost its state since this worker last looked: reseed, then ask again
    WAIT = 0
    ADMITTED = 1


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    now: float  # Redis time of the decision (seconds since the epoch)
    stamp: str  # the same, as stored in the log
    epoch: str
    wait: float = 0.0  # seconds, with WAIT

    @property
    def admitted(self) -> bool:
        return self.verdict is Verdict.ADMITTED


def client_from_url(
    url: str, *, timeout: float = 3.0, flag: str = "--limiter", retry: Retry | None = None
) -> aioredis.Redis:
    """A Redis client on ``url`` (not yet connected; ``rediss://`` and ``user:password@`` as
    redis-py reads them). Timeouts bound every command, so a Redis that hangs counts as one that
    is gone; without ``retry`` the client never retries on its own. A URL redis-py cannot read
    or would read wrong (``checked_url``: a database that is not a number) is a one-line
    ``ConfigError`` naming ``flag``, without the password, and so is a TLS file it names
    (``?ssl_ca_certs=PATH``) that is not there."""
    checked_url(url, flag)
    _check_tls_files(url, flag)
    try:
        return aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=retry or Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    except ValueError as exc:
        raise ConfigError(f"{flag}: cannot use {redact_url(url)}: {exc}") from None


async def reached(coro: Any, shown: str, *, down: str, otherwise: str, refused: str) -> Any:
    """``await coro``, Redis refusing or out of reach as a one-line ``UnavailableError`` that
    begins with ``shown`` (what that Redis serves and its URL, without the password): a wrong
    password or an ACL says so; out of reach, ``down`` (such as "is unreachable"), the reason
    and what to do (``otherwise``, unless the server's TLS certificate is not trusted); any
    other Redis error, ``refused`` with ``{}`` standing for the error."""
    try:
        return await coro
    except (rex.AuthenticationError, rex.AuthorizationError) as exc:
        raise UnavailableError(
            f"{shown} refused the connection ({exc}); check the user name and password"
        ) from None
    except DOWN as exc:
        reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        then = remedy(reason, otherwise)
        raise UnavailableError(f"{shown} {down} ({reason}); {then}") from None
    except rex.RedisError as exc:
        raise UnavailableError(f"{shown} {refused.format(exc)}") from None


#: the query parameters of a Redis URL that name files (redis-py's ``ssl_*`` arguments)
TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")


def _check_tls_files(url: str, flag: str) -> None:
    """A one-line ``ConfigError`` when ``url`` names a TLS file that is not on this machine
    (redis-py would only say "No such file or directory" when it connects)."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name in TLS_FILES and not Path(value).exists():
            raise ConfigError(
                f"{flag}: {redact_url(url)}: {name}={value} does not exist on this machine; "
                "give the path of the file (for ssl_ca_certs, the PEM certificate of the CA "
                "that signed the Redis server's certificate)"
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisGate:
    """The Redis side of the shared limiter for one quota scope (``provider:fingerprint``)."""

    def __init__(self, client: aioredis.Redis, url: str, scope: str, prefix: str = "bulksend"):
        self.client = client
        self.url = redact_url(url)
        self.scope = scope
        self.prefix = prefix
        self._admit = client.register_script(lua.ADMIT)
        self._pause = client.register_script(lua.PAUSE)
        self._reseed = client.register_script(lua.RESEED)
        self._keys: dict[str, list[str]] = {}

    @classmethod
    def from_url(cls, url: str, scope: str, *, timeout: float = 3.0) -> RedisGate:
        """A gate on ``url`` (not yet connected). Timeouts bound every command, so a Redis that
        hangs counts as one that is gone; the client never retries on its own."""
        return cls(client_from_url(url, timeout=timeout), url, scope)

    @classmethod
    async def connect(cls, url: str, scope: str, *, connect_timeout: float = 3.0) -> RedisGate:
        """Connect and check that Redis answers and runs scripts; fail fast otherwise."""
        gate = cls.from_url(url, scope, timeout=connect_timeout)
        try:
            await reached(
                gate._ready(),
                f"limiter {gate.url}",
                down="is unreachable",
                otherwise="start Redis or drop --limiter",
                refused="refused the limiter ({}); check the URL (its database number) and the "
                "user's rights",
            )
        except UnavailableError:
            await gate.aclose()
            raise
        return gate

    async def _ready(self) -> None:
        """Redis answers and runs scripts (its errors as they are, for ``reached``)."""
        await self.client.ping()
        await self.client.script_load(lua.ADMIT)

    def keys(self, group: str) -> list[str]:
        keys = self._keys.get(group)
        if keys is None:
            keys = self._keys[group] = list(key_names(self.scope, group, self.prefix))
        return keys

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except DOWN as exc:
            raise GateUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def ping(self) -> None:
        await self._call(self.client.ping())

    async def run_id(self) -> str:
        info = await self._call(self.client.info("server"))
        return str(info.get("run_id", ""))

    async def admit(
        self,
        group: str,
        *,
        limit: int,
        window: float,
        margin: float,
        member: str,
        epoch: str,
        ttl_ms: int,
        slack: float = 0.005,
    ) -> Admission:
        """Admit one send to ``group`` now, or say how long to wait (see ``lua.ADMIT``)."""
        args = (
            max(1, int(limit)),
            f"{window:.6f}",
            f"{margin:.6f}",
            member,
            epoch,
            ttl_ms,
            f"{slack:.6f}",
            f"{MAX_MARGIN:.6f}",
        )
        reply = await self._call(self._admit(keys=self.keys(group), args=args))
        verdict, stamp, new_epoch, wait = reply
        stamp = _text(stamp)
        return Admission(Verdict(int(verdict)), float(stamp), stamp, _text(new_epoch), float(wait))

    async def pause(
        self,
        group: str,
        *,
        seconds: float | None,
        limit: int | None,
        ttl_ms: int,
        unless_explained: tuple[int, int, float, float] | None = None,
    ) -> bool:
        """Tell every worker: admit nothing for ``seconds``; the provider announced ``limit``.

        ``unless_explained=(remaining, limit, admitted_at, span)``: the pause comes from an
        exhausted Remaining; apply it only when the server counted more than the log admitted in
        the ``span`` seconds before ``admitted_at`` (Redis time). True when the pause applied.
        """
        cond: tuple[str, ...] = ("", "", "", "")
        if unless_explained is not None:
            remaining, lim, at, span = unless_explained
            cond = (str(int(remaining)), str(int(lim)), f"{at:.6f}", f"{span:.6f}")
        args: list[str | int] = [
            "" if seconds is None else f"{max(0.0, seconds):.6f}",
            "" if limit is None else str(int(limit)),
            ttl_ms,
            *cond,
        ]
        return bool(await self._call(self._pause(keys=self.keys(group), args=args)))

    async def reseed(
        self,
        group: str,
        *,
        epoch: str,
        entries: Sequence[tuple[str, str]],
        grace: float,
        ttl_ms: int,
    ) -> bool:
        """Write this worker's recent admissions (stamp, member) back after Redis lost them; the
        first reseed of an epoch also holds everyone for ``grace`` seconds, so the other workers
        can write theirs before anyone is admitted. False when the epoch changed again."""
        for chunk in _chunks(entries, 500):
            flat = [x for stamp, member in chunk for x in (stamp, member)]
            args: list[str | int] = [epoch, f"{grace:.6f}", ttl_ms, *flat]
            if not await self._call(self._reseed(keys=self.keys(group), args=args)):
                return False
        return True

    async def aclose(self) -> None:
        with contextlib.suppress(*DOWN):  # closing a connection to a Redis that is gone
            await self.client.aclose()


def _chunks(items: Sequence[tuple[str, str]], size: int) -> Iterable[Sequence[tuple[str, str]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
