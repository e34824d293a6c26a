"""The one exception tree of bulksend. The type says what the caller can do about it.

::

    BulksendError
    ├── ConfigError            bad campaign file, flag or environment (exit 2)
    │   └── MissingSecretError the API key variable is unset or empty (exit 2)
    ├── InputError             unreadable or unusable recipient file (exit 2)
    ├── ProviderError          the provider answered something final for the whole send
    │   ├── AuthError          401/403: stop at once, nothing more is sent (exit 3)
    │   └── UnavailableError   the provider stayed down past every retry (exit 4)
    └── TransientError         retryable: 5xx, 429, timeouts, connection errors

``TransientError`` never escapes a send: the engine retries it within the budget and then reports
the recipients failed with its message. Messages never contain secrets.
"""

from __future__ import annotations


class BulksendError(Exception):
    """Base of every error bulksend raises on purpose."""


class ConfigError(BulksendError):
    """The campaign file, a flag or an environment variable is wrong."""


class MissingSecretError(ConfigError):
    """The environment variable that should hold the API key is unset or empty."""


class InputError(BulksendError):
    """The recipient file cannot be used at all (missing, empty, binary, missing column, ...)."""


class ProviderError(BulksendError):
    """The provider answered something that ends the whole send."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ProviderError):
    """The provider rejected the credentials (401/403)."""


class UnavailableError(ProviderError):
    """The provider stayed unavailable past every retry."""


class TransientError(BulksendError):
    """A failure worth retrying: 429, 5xx, timeout or a broken connection."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
