"""Provider registry. Each provider module is a ``base.ProviderModule``:

``NAME``, ``DEFAULT_BASE_URL``, ``DEFAULT_BATCH_SIZE``, ``OPERATIONS``, ``SECRETS`` (secret name ->
default environment variable) and ``build(options, secrets) -> Provider``; optionally
``secrets_for(api)`` (``base.SecretsFor``). mypy checks every module against the contract below,
without importing them at run time; ``tests/test_provider_contract.py`` checks what it built.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from bulksend.errors import ConfigError

KNOWN = ("maxtraffic", "notifyvisitors", "maxemail", "traitly")

if TYPE_CHECKING:  # the contract, checked statically (the modules load only when used)
    from bulksend.providers import maxemail, maxtraffic, notifyvisitors, traitly
    from bulksend.providers.base import ProviderModule

    _CONTRACT: tuple[ProviderModule, ...] = (maxtraffic, notifyvisitors, maxemail, traitly)


def load(name: str) -> ModuleType:
    """The provider module for ``name``, or a ConfigError that lists the known ones."""
    if name not in KNOWN:
        raise ConfigError(f"unknown provider {name!r} (known: {', '.join(KNOWN)})")
    try:
        return importlib.import_module(f"bulksend.providers.{name}")
    except ModuleNotFoundError as exc:  # a provider not shipped yet
        raise ConfigError(f"provider {name!r} is not available in this version") from exc
