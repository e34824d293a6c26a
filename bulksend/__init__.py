"""bulksend: send large campaigns through rate-limited HTTP APIs.

The library API, for use from Python (the CLI is built on it)::

    import asyncio
    from pathlib import Path
    import bulksend

    settings = bulksend.load_settings(Path("campaign.toml"))
    secrets = bulksend.resolve_secrets(settings)
    result = asyncio.run(bulksend.send_campaign(settings, secrets))
    print(result.summary.render())

Everything importable from ``bulksend`` is listed in ``__all__`` and kept stable. Members are
imported on first use, so ``import bulksend`` (and ``bulksend --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_MEMBERS = {
    "JournalOptions": "bulksend.campaign",
    "SendResult": "bulksend.campaign",
    "send_campaign": "bulksend.campaign",
    "Settings": "bulksend.config",
    "load_settings": "bulksend.config",
    "parse_rate": "bulksend.config",
    "resolve_secrets": "bulksend.config",
    "AuthError": "bulksend.errors",
    "BulksendError": "bulksend.errors",
    "ConfigError": "bulksend.errors",
    "InputError": "bulksend.errors",
    "MissingSecretError": "bulksend.errors",
    "ProviderError": "bulksend.errors",
    "TransientError": "bulksend.errors",
    "UnavailableError": "bulksend.errors",
    "Outcome": "bulksend.models",
    "Recipient": "bulksend.models",
    "Rejected": "bulksend.models",
    "Status": "bulksend.models",
    "Summary": "bulksend.output.report",
}

__all__ = [
    "AuthError",
    "BulksendError",
    "ConfigError",
    "InputError",
    "JournalOptions",
    "MissingSecretError",
    "Outcome",
    "ProviderError",
    "Recipient",
    "Rejected",
    "SendResult",
    "Settings",
    "Status",
    "Summary",
    "TransientError",
    "UnavailableError",
    "__version__",
    "load_settings",
    "parse_rate",
    "resolve_secrets",
    "send_campaign",
]

if TYPE_CHECKING:
    from bulksend.campaign import JournalOptions, SendResult, send_campaign
    from bulksend.config import Settings, load_settings, parse_rate, resolve_secrets
    from bulksend.errors import (
        AuthError,
        BulksendError,
        ConfigError,
        InputError,
        MissingSecretError,
        ProviderError,
        TransientError,
        UnavailableError,
    )
    from bulksend.models import Outcome, Recipient, Rejected, Status
    from bulksend.output.report import Summary


def __getattr__(name: str) -> Any:
    module = _MEMBERS.get(name)
    if module is None:
        raise AttributeError(f"module 'bulksend' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MEMBERS})
