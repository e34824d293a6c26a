"""Provider registry. Each provider module exposes:

``NAME``, ``DEFAULT_BASE_URL``, ``DEFAULT_BATCH_SIZE``, ``OPERATIONS``, ``SECRETS`` (secret name ->
default environment variable) and ``build(options, secrets) -> Provider``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from bulksend.errors import ConfigError

KNOWN = ("maxtraffic", "notifyvisitors", "maxemail", "traitly")


def load(name: str) -> ModuleType:
    """The provider module for ``name``, or a ConfigError that lists the known ones."""
    if name not in KNOWN:
        raise ConfigError(f"unknown provider {name!r} (known: {', '.join(KNOWN)})")
    try:
        return importlib.import_module(f"bulksend.providers.{name}")
    except ModuleNotFoundError as exc:  # a provider not shipped yet
        raise ConfigError(f"provider {name!r} is not available in this version") from exc
