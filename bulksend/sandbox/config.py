"""Settings of one sandbox server: frozen values, validated once, shared by CLI and tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LEDGER_FORMATS = ("lines", "requests")
#: ``--profile`` values: which rate limiter answers (see ``bulksend.sandbox.limiters``)
PROFILES = ("fixed", "leaky", "limits-fixed", "limits-moving", "github", "ietf", "bare429")
#: refusal statuses a profile may be told to use (the first is its default)
REJECT_STATUSES: Mapping[str, tuple[int, ...]] = {
    "fixed": (429,),
    "leaky": (503, 429),
    "limits-fixed": (429,),
    "limits-moving": (429,),
    "github": (403, 429),
    "ietf": (429,),
    "bare429": (429,),
}
#: whether a profile sends Retry-After when ``retry_after`` is left to it (None: never can)
RETRY_AFTER_DEFAULTS: Mapping[str, bool | None] = {
    "fixed": True,
    "leaky": None,
    "limits-fixed": True,
    "limits-moving": True,
    "github": False,
    "ietf": True,
    "bare429": None,
}
#: the ietf profile's long policy, by default: this many times the short one's quota and window
LONG_LIMIT_FACTOR = 30
LONG_WINDOW_FACTOR = 60


class SandboxConfigError(ValueError):
    """A sandbox setting is out of range (the CLI turns it into a usage error)."""


def _rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise SandboxConfigError(f"{name} must be between 0 and 1 (got {value})")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Injected faults. They apply to the send endpoints only and are drawn from the seed.

    ``fail_rate``, ``reset_rate`` and ``drop_after_accept_rate`` share one draw per send request
    (so their sum must stay <= 1); ``slow_rate`` is drawn on its own and can combine with them.
    """

    fail_rate: float = 0.0  # answered 500 or 503 (half each); 503 carries Retry-After
    reset_rate: float = 0.0  # connection closed before anything is processed or answered
    slow_rate: float = 0.0  # the answer is held back for slow_ms after the request is processed
    slow_ms: float = 5000.0
    storm_every: float = 0.0  # seconds between the starts of two 429 storms (0: no storms)
    storm_for: float = 0.0  # length of each storm in seconds
    drop_after_accept_rate: float = 0.0  # recorded in the ledger, then the connection is dropped
    retry_after_503: bool = True

    def validate(self) -> None:
        _rate("fail_rate", self.fail_rate)
        _rate("reset_rate", self.reset_rate)
        _rate("slow_rate", self.slow_rate)
        _rate("drop_after_accept_rate", self.drop_after_accept_rate)
        if self.fail_rate + self.reset_rate + self.drop_after_accept_rate > 1.0 + 1e-9:
            raise SandboxConfigError("fail_rate + reset_rate + drop_after_accept_rate must be <= 1")
        if self.slow_ms < 0:
            raise SandboxConfigError("slow_ms must be >= 0")
        if self.storm_every < 0 or self.storm_for < 0:
            raise SandboxConfigError("storm_every and storm_for must be >= 0")
        if self.storm_every and not 0 < self.storm_for < self.storm_every:
            raise SandboxConfigError("storm_for must be > 0 and shorter than storm_every")

    @property
    def any(self) -> bool:
        return bool(
            self.fail_rate
            or self.reset_rate
            or self.slow_rate
            or self.storm_every
            or self.drop_after_accept_rate
        )


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything one sandbox needs. ``None`` means "the provider's documented default".

    ``limit`` (when set) replaces every endpoint group's request limit; ``group_limits`` then
    overrides single groups by name (see each provider module for its group names). Each group
    has its own limiter of the kind ``profile`` names (``bulksend.sandbox.limiters``): by default
    (``fixed``) the provider's own, counting fixed windows of ``window`` seconds aligned to the
    server's start and answering in the provider's dialect; the other profiles put a gateway of
    a real family in front (nginx, Flask-Limiter, GitHub, the IETF RateLimit draft, bare 429s)
    at ``limit`` per ``window``.
    """

    provider: str = "maxtraffic"
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "sandbox-key"
    limit: int | None = None
    window: float = 60.0
    group_limits: Mapping[str, int] = field(default_factory=dict)
    ratelimit_headers: bool = True  # fixed profile only
    #: None: the profile's habit (``RETRY_AFTER_DEFAULTS``)
    retry_after: bool | None = None
    profile: str = "fixed"
    burst: int = 0  # leaky: nginx's burst=N
    #: None: the profile's default refusal status (``REJECT_STATUSES``)
    reject_status: int | None = None
    long_limit: int | None = None  # ietf: quota of the long policy (None: 30 x the group's)
    long_window: float | None = None  # ietf: its window in seconds (None: 60 x ``window``)
    latency_ms: float = 0.0
    ledger: Path | None = None
    #: "lines": one line per recipient (the default); "requests": one line per accepted request
    #: with a ``values`` array, about 3 times fewer bytes, for benchmarks at high rates
    ledger_format: str = "lines"
    max_batch: int | None = None
    seed: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    # MaxTraffic
    strict_arrays: bool = False
    reject_marker: str | None = None  # ids/uids containing it are answered 422
    visitors: Path | None = None
    unknown_visitor_rate: float = 0.0
    leads: int = 100
    # NotifyVisitors (api_key is the x-api-key; token the partner-app bearer token)
    brand_id: str = "sandbox-brand"
    # NotifyVisitors bearer token and Traitly token; None: the api_key
    token: str | None = None
    # Maxemail Basic auth; password None: the api_key
    username: str = "sandbox@example.com"
    password: str | None = None

    @property
    def effective_token(self) -> str:
        return self.api_key if self.token is None else self.token

    @property
    def effective_password(self) -> str:
        return self.api_key if self.password is None else self.password

    @property
    def effective_retry_after(self) -> bool:
        """Whether window refusals carry Retry-After (limits: every answer does)."""
        if self.retry_after is not None:
            return self.retry_after
        return bool(RETRY_AFTER_DEFAULTS.get(self.profile))

    @property
    def effective_reject_status(self) -> int:
        if self.reject_status is not None:
            return self.reject_status
        return REJECT_STATUSES.get(self.profile, (429,))[0]

    @property
    def effective_long_window(self) -> float:
        return self.window * LONG_WINDOW_FACTOR if self.long_window is None else self.long_window

    @property
    def seed_value(self) -> int:
        """The seed actually used: ``None`` means 0, so every run is reproducible."""
        return 0 if self.seed is None else self.seed

    def validate(self) -> None:
        if not self.api_key:
            raise SandboxConfigError("api_key must not be empty")
        if self.limit is not None and self.limit < 1:
            raise SandboxConfigError("limit must be >= 1")
        for name, value in self.group_limits.items():
            if value < 1:
                raise SandboxConfigError(f"group limit {name} must be >= 1")
        if self.window <= 0:
            raise SandboxConfigError("window must be > 0")
        if self.latency_ms < 0:
            raise SandboxConfigError("latency_ms must be >= 0")
        if self.max_batch is not None and self.max_batch < 1:
            raise SandboxConfigError("max_batch must be >= 1")
        if not 0 <= self.port <= 65535:
            raise SandboxConfigError("port must be between 0 and 65535")
        if self.ledger_format not in LEDGER_FORMATS:
            raise SandboxConfigError(f"ledger_format must be one of {', '.join(LEDGER_FORMATS)}")
        if self.leads < 0:
            raise SandboxConfigError("leads must be >= 0")
        _rate("unknown_visitor_rate", self.unknown_visitor_rate)
        self.faults.validate()
        _validate_profile(self)


def _whole_seconds(name: str, value: float) -> None:
    if value < 1 or value != int(value):
        raise SandboxConfigError(f"{name} must be a whole number of seconds >= 1 (got {value:g})")


def _validate_profile(c: SandboxConfig) -> None:
    """The profile's own settings; one line per problem (the first one found)."""
    p = c.profile
    if p not in PROFILES:
        raise SandboxConfigError(f"profile must be one of {', '.join(PROFILES)} (got {p!r})")
    if c.burst < 0:
        raise SandboxConfigError("burst must be >= 0")
    if c.burst and p != "leaky":
        raise SandboxConfigError("burst applies to the leaky profile only")
    allowed = REJECT_STATUSES[p]
    if c.reject_status is not None and c.reject_status not in allowed:
        choices = " or ".join(map(str, allowed))
        raise SandboxConfigError(f"reject_status for the {p} profile must be {choices}")
    if (c.long_limit is not None or c.long_window is not None) and p != "ietf":
        raise SandboxConfigError("long_limit and long_window apply to the ietf profile only")
    if c.long_limit is not None and c.long_limit < 1:
        raise SandboxConfigError("long_limit must be >= 1")
    if not c.ratelimit_headers and p != "fixed":
        raise SandboxConfigError(
            "ratelimit_headers=False applies to the fixed profile only (bare429 sends none)"
        )
    if c.retry_after and RETRY_AFTER_DEFAULTS[p] is None:
        raise SandboxConfigError(f"the {p} profile never sends Retry-After")
    _validate_windows(c)


def _validate_windows(c: SandboxConfig) -> None:
    if c.profile in ("limits-fixed", "limits-moving"):
        _whole_seconds("window (limits counts whole seconds)", c.window)
    elif c.profile == "ietf":
        _whole_seconds("window (RateLimit-Policy w)", c.window)
        _whole_seconds("long_window (RateLimit-Policy w)", c.effective_long_window)
    elif c.profile == "leaky":
        limits = [*([c.limit] if c.limit is not None else []), *c.group_limits.values()]
        for limit in limits:
            if limit * 1000 / c.window < 1:
                raise SandboxConfigError(
                    f"leaky: {limit} per {c.window:g} s is below nginx's lowest rate (0.001 r/s)"
                )
