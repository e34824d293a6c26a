"""Several workers, one provider quota: a scheduler whose buckets are shared through Redis.

    scheduler = await shared_scheduler("redis://localhost:6379/0", settings, env)
    try:
        result = await send_campaign(settings, secrets, scheduler=scheduler, shard=shard)
    finally:
        await scheduler.aclose()

``bulksend send --limiter redis://HOST:PORT/DB`` (or ``BULKSEND_LIMITER``) does this. Redis is an
optional extra (``pip install 'bulksend[redis]'``); importing this package does not need it.

* ``keys``      -- key names, API-key fingerprints, URL redaction (pure)
* ``lua``       -- the gate's Lua scripts (sliding-window log + GCRA + shared pause, on Redis time)
* ``gate``      -- ``RedisGate``: the connection and the scripts (thin I/O)
* ``scheduler`` -- ``SharedScheduler``: the in-process ``Scheduler`` plus the shared gate
* ``testing``   -- ``RedisServer``: a throw-away ``redis-server`` for tests and demos

docs/scaling.md tells when one machine is enough, how to run N workers, what Redis holds and how
the failure modes behave.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bulksend.distributed.keys import checked_url, quota_scope, redact_url, url_password
from bulksend.errors import ConfigError

if TYPE_CHECKING:
    from bulksend.config import Settings
    from bulksend.distributed.scheduler import SharedScheduler

__all__ = ["quota_scope", "redact_url", "shared_scheduler"]


async def shared_scheduler(
    url: str,
    settings: Settings,
    env: Mapping[str, str],
    *,
    secrets: Mapping[str, str] | None = None,
    connect_timeout: float = 3.0,
    **kwargs: Any,
) -> SharedScheduler:
    """A ``SharedScheduler`` for the campaign's provider, connected to the Redis at ``url``.

    The quota is keyed by provider + a fingerprint of the API key (``secrets``, read from
    ``env`` as the send does when not given) + endpoint group. Raises ``ConfigError`` for a bad
    URL or a missing ``redis`` package and ``UnavailableError`` when Redis does not answer
    within ``connect_timeout`` seconds; messages name the URL without its password. ``kwargs``
    go to ``SharedScheduler`` (e.g. ``max_outage``, ``min_margin``).
    """
    from bulksend.output import logs

    checked_url(url, "--limiter")
    password = url_password(url)
    if password:
        logs.redactor.register([password])
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--limiter needs the Redis client: pip install 'bulksend[redis]'"
        ) from None
    from bulksend.campaign import build_provider
    from bulksend.config import resolve_secrets
    from bulksend.distributed.gate import RedisGate
    from bulksend.distributed.scheduler import SharedScheduler

    if secrets is None:
        secrets = resolve_secrets(settings, env)
    provider = build_provider(settings, secrets)
    scope = quota_scope(provider.name, secrets)
    gate = await RedisGate.connect(url, scope, connect_timeout=connect_timeout)
    return SharedScheduler(policies(settings, provider), gate, **kwargs)


def policies(settings: Settings, provider: Any) -> dict[str, Any]:
    """The provider's endpoint groups as ``GroupPolicy``, exactly as a local send has them."""
    from bulksend.campaign import group_policies

    return group_policies(settings, provider)


def __getattr__(name: str) -> Any:
    if name in {"SharedScheduler", "SharedStats", "LimiterUnavailable"}:
        from bulksend.distributed import scheduler

        return getattr(scheduler, name)
    if name in {"RedisGate", "GateUnavailable", "Admission"}:
        from bulksend.distributed import gate

        return getattr(gate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
