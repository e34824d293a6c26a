"""bulksend's built-in sandbox: local aiohttp.web servers that behave like each provider's doc.

``async with running(SandboxConfig(provider="maxtraffic")) as sb`` serves on a free loopback port;
``sb.base_url``, ``sb.stats`` and ``sb.ledger_entries()`` tell what happened. The ledger is a JSON
Lines file with one line per accepted recipient. ``python -m bulksend.sandbox.cli NAME`` runs one
in its own process. Each provider module's docstring lists the readings made where its doc is
silent. ``SandboxConfig.profile`` (``--profile``) picks the rate limiter that answers: the
provider's own (``fixed``) or a real family's gateway (``bulksend.sandbox.limiters``).
"""

from __future__ import annotations

from bulksend.sandbox.common import Stats
from bulksend.sandbox.config import FaultConfig, SandboxConfig, SandboxConfigError
from bulksend.sandbox.ledger import read_ledger
from bulksend.sandbox.server import PROVIDERS, ProviderSpec, Sandbox, make_app, running

__all__ = [
    "PROVIDERS",
    "FaultConfig",
    "ProviderSpec",
    "Sandbox",
    "SandboxConfig",
    "SandboxConfigError",
    "Stats",
    "make_app",
    "read_ledger",
    "running",
]
