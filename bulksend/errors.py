"""The one exception tree of bulksend. The type says what the caller can do about it.

::

    BulksendError
    ├── ConfigError              bad campaign file, flag or environment (exit 2)
    │   ├── MissingSecretError   the API key variable is unset or empty (exit 2)
    │   └── WindowError          a send window or time zone that cannot be read
    ├── InputError               unreadable or unusable recipient file (exit 2)
    │   └── MissingColumn        a row lacks a column a message template names (that row invalid)
    ├── PayloadError             a webhook body of the wrong shape (answered 400, never raised on)
    ├── ProviderError            the provider answered something final for the whole send
    │   ├── AuthError            401/403: stop at once, nothing more is sent (exit 3)
    │   └── UnavailableError     the provider stayed down past every retry (exit 4)
    │       └── TakenOver        a worker's batch was taken over by another (that batch only)
    ├── TransientError           retryable: 5xx, 429, timeouts, connection errors
    │   └── NoResponse           no answer at all: whether the request arrived is unknown
    ├── Deferred                 a wait longer than allowed: the batch is skipped, resumable
    │   └── LimiterUnavailable   the shared limiter (Redis) stayed out of reach too long
    ├── GateUnavailable          Redis did not answer one call (the shared scheduler retries)
    └── Interrupted              SIGINT/SIGTERM: what is queued is skipped, resumable

``TransientError`` never escapes a send: the engine retries it within the budget and then reports
the recipients failed with its message. ``Deferred``, ``GateUnavailable`` and ``Interrupted``
are signals inside a send and end as recipient states, never as an exit by themselves. Messages
never contain secrets.

The sandbox (``bulksend.sandbox``) is a separate server: its own exceptions only build its HTTP
answers and never leave it.
"""

from __future__ import annotations


class BulksendError(Exception):
    """Base of every error bulksend raises on purpose."""


class ConfigError(BulksendError):
    """The campaign file, a flag or an environment variable is wrong."""


class MissingSecretError(ConfigError):
    """The environment variable that should hold the API key is unset or empty."""


class WindowError(ConfigError, ValueError):
    """A ``[send] window`` or ``timezone`` that cannot be read (the caller adds file and key)."""


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


class TakenOver(UnavailableError):
    """A worker's in-flight record of a batch was refused: another worker took the batch over
    (``bulksend.workers``); only that batch is not sent by this worker."""


class TransientError(BulksendError):
    """A failure worth retrying: 429, 5xx, timeout or a broken connection."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NoResponse(TransientError):
    """No response arrived (timeout, reset, refused): the request's outcome is unknown.

    ``cause`` names the class of failure for people (``bulksend.net.transport.CAUSES``) and
    ``host`` the ``host:port`` it concerns; ``reason`` joins them: ``connection refused:
    127.0.0.1:9``.
    """

    def __init__(
        self, message: str, *, sent: bool, cause: str = "connection lost", host: str = ""
    ) -> None:
        super().__init__(message)
        #: False when the connection failed before the request could have reached the provider
        self.sent = sent
        self.cause = cause
        self.host = host

    @property
    def reason(self) -> str:
        return f"{self.cause}: {self.host}" if self.host else self.cause


class MissingColumn(InputError, LookupError):
    """A message template names a column the row does not have (that recipient is invalid)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class PayloadError(BulksendError, ValueError):
    """A webhook payload does not have the documented shape (answered 400 with this message)."""


class Deferred(BulksendError):
    """The provider asked to wait longer than ``max_wait``: defer instead of blocking."""

    def __init__(self, group: str, wait: float) -> None:
        super().__init__(f"{group}: provider asked to wait {wait:.0f} s")
        self.group = group
        self.wait = wait


class LimiterUnavailable(Deferred):
    """Redis stayed out of reach longer than ``max_outage``: the send is deferred, not sent on
    an unshared limit."""

    def __init__(self, group: str, url: str, down_for: float) -> None:
        super().__init__(group, down_for)
        self.args = (f"{group}: limiter {url} unreachable for {down_for:.0f} s",)


class GateUnavailable(BulksendError):
    """Redis could not be reached (the message names the URL without its password)."""


class Interrupted(BulksendError):
    """The send was interrupted by a signal; what was queued is skipped and resumable."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name
