"""Start a sandbox inside the running event loop: ``async with running(config) as sandbox``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp import web

from bulksend.sandbox import maxemail, maxtraffic, notifyvisitors, traitly
from bulksend.sandbox.common import Clock, Core, Stats
from bulksend.sandbox.config import SandboxConfig, SandboxConfigError


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One sandboxed provider: its endpoint groups (name -> default requests per window)."""

    name: str
    groups: Mapping[str, int]
    default_max_batch: int | None
    build_app: Callable[[Core], web.Application]


def _spec(module: ModuleType) -> ProviderSpec:
    return ProviderSpec(
        module.NAME, dict(module.GROUPS), module.DEFAULT_MAX_BATCH, module.build_app
    )


PROVIDERS: Mapping[str, ProviderSpec] = {
    spec.name: spec for spec in map(_spec, (maxtraffic, notifyvisitors, maxemail, traitly))
}


class Sandbox:
    """A running sandbox: where it listens, what it counted, what it recorded."""

    def __init__(self, config: SandboxConfig, core: Core, host: str, port: int) -> None:
        self.config = config
        self.core = core
        self.host = host
        self.port = port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def stats(self) -> Stats:
        return self.core.stats

    @property
    def ledger_path(self) -> Path | None:
        return self.config.ledger

    def ledger_entries(self) -> list[dict[str, Any]]:
        """Every ledger line written so far, parsed (empty when there is no ledger)."""
        return self.core.ledger.entries()


def spec_for(name: str) -> ProviderSpec:
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(PROVIDERS)
        raise SandboxConfigError(f"unknown sandbox provider {name!r} (known: {known})") from None


def make_app(
    config: SandboxConfig, *, clock: Clock | None = None, wall: Clock | None = None
) -> tuple[web.Application, Core]:
    """The aiohttp application and its state, without starting a server."""
    config.validate()
    spec = spec_for(config.provider)
    kwargs: dict[str, Clock] = {}
    if clock is not None:
        kwargs["clock"] = clock
    if wall is not None:
        kwargs["wall"] = wall
    core = Core(config, spec.groups, **kwargs)
    try:
        app = spec.build_app(core)
    except BaseException:
        core.close()
        raise
    return app, core


@asynccontextmanager
async def running(
    config: SandboxConfig, *, clock: Clock | None = None, wall: Clock | None = None
) -> AsyncIterator[Sandbox]:
    """Serve ``config`` on its host and port (0: a free port) until the block ends."""
    app, core = make_app(config, clock=clock, wall=wall)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, backlog=1024)
        await site.start()
        address = runner.addresses[0]
        sandbox = Sandbox(config, core, str(address[0]), int(address[1]))
        yield sandbox
    finally:
        await runner.cleanup()
        core.close()
