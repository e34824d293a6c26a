"""Campaign settings: the TOML campaign file, overridden by ``BULKSEND_*`` variables, overridden by
flags, validated into one frozen ``Settings``. Every error is a one-line ``ConfigError`` that names
the file, the key and what is wrong. Secrets come only from the environment (or a file named there),
never from a flag.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from bulksend import providers
from bulksend.control.windows import SendWindows, parse_windows, parse_zone
from bulksend.errors import ConfigError, MissingSecretError, WindowError
from bulksend.providers.base import Limit, SecretsFor

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
_DURATION_UNITS = {**_UNITS, "": 1.0, "d": 86400.0, "day": 86400.0, "days": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")

#: the keys of ``[send]``: where to send and how (every one but ``limiter``, ``window``,
#: ``timezone``, ``state`` and ``state_ttl`` has a flag of its own; every one but ``batch_size``
#: may change between the runs of one send)
SEND_KEYS = frozenset(
    {
        "base_url",
        "batch_size",
        "rate",
        "limit",
        "in_flight",
        "timeout",
        "max_attempts",
        "max_unexpected",
        "report",
        "limiter",
        "metrics_port",
        "window",
        "timezone",
        "state",
        "state_ttl",
    }
)
#: how long a finished campaign's state stays in Redis (``--state``) unless ``[send] state_ttl``
#: says otherwise: 30 days
DEFAULT_STATE_TTL = 30 * 86400.0
#: the keys of ``[recipients]`` that name suppression lists and their columns
EXCLUDE_KEYS = frozenset({"exclude", "exclude_id", "exclude_uid"})
#: the top-level tables a campaign file may have, and the keys each may hold
_TABLES: Mapping[str, frozenset[str]] = {
    "recipients": frozenset(
        {"path", "format", "delimiter", "encoding", "id", "uid", *EXCLUDE_KEYS}
    ),
    "auth": frozenset(),  # provider-specific *_env / *_file keys, checked against SECRETS
    "send": SEND_KEYS,
    "message": frozenset(),  # checked by the provider
    "api": frozenset(),  # provider-specific options (paths, ...), checked by the provider
}
_TOP = frozenset({"provider", "operation", "name", *_TABLES})

#: BULKSEND_* variables and the [send]/[recipients] keys they override
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "BULKSEND_BASE_URL": ("send", "base_url"),
    "BULKSEND_BATCH_SIZE": ("send", "batch_size"),
    "BULKSEND_RATE": ("send", "rate"),
    "BULKSEND_LIMIT": ("send", "limit"),
    "BULKSEND_IN_FLIGHT": ("send", "in_flight"),
    "BULKSEND_TIMEOUT": ("send", "timeout"),
    "BULKSEND_MAX_ATTEMPTS": ("send", "max_attempts"),
    "BULKSEND_MAX_UNEXPECTED": ("send", "max_unexpected"),
    "BULKSEND_REPORT": ("send", "report"),
    "BULKSEND_RECIPIENTS": ("recipients", "path"),
    "BULKSEND_LIMITER": ("send", "limiter"),
    "BULKSEND_METRICS_PORT": ("send", "metrics_port"),
    "BULKSEND_STATE": ("send", "state"),
    "BULKSEND_STATE_TTL": ("send", "state_ttl"),
}


def parse_rate(text: str, *, what: str = "rate") -> Limit:
    """``"300/min"``, ``"50/1s"``, ``"10/s"``, ``"1000/h"`` -> Limit(requests, window seconds)."""
    m = _RATE.match(str(text).lower())
    if not m or m.group(3) not in _UNITS:
        raise ConfigError(
            f"{what}: cannot read {text!r}; write it as N/UNIT, e.g. '300/min', '50/1s', '10/s'"
        )
    requests = float(m.group(1))
    window = float(m.group(2) or 1) * _UNITS[m.group(3)]
    if requests <= 0 or window <= 0:
        raise ConfigError(f"{what}: {text!r} must be positive")
    if requests != int(requests):  # "0.5/s" -> 30 per minute
        return Limit(max(1, round(requests * 60)), window * 60)
    return Limit(int(requests), window)


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number of seconds or ``"30d"``, ``"12h"``, ``"90m"``, ``"3600s"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a duration such as '30d' or '12h', got {shown(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).lower())
        if not m or m.group(2) not in _DURATION_UNITS:
            raise ConfigError(
                f"{where}: cannot read {str(value)!r}; write it as a number of seconds or with "
                "a unit, e.g. '30d', '12h', '90m'"
            )
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{where} must be positive, got {shown(value)}")
    return seconds


@dataclass(frozen=True, slots=True)
class RecipientSettings:
    path: str
    format: str = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"
    id_column: str | None = "id"
    uid_column: str | None = "uid"
    #: suppression lists (``--exclude``, ``[recipients] exclude``): paths as they are opened
    exclude: tuple[str, ...] = ()
    #: the lists' id and uid columns: None for the campaign's own, "" for none
    exclude_id_column: str | None = None
    exclude_uid_column: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a send needs, validated. ``options`` goes to the provider's ``build``."""

    campaign_file: Path
    provider: str
    operation: str
    name: str
    options: Mapping[str, Any]
    recipients: RecipientSettings
    secret_sources: Mapping[str, str]  # secret name -> environment variable (or "file:PATH")
    base_url: str
    batch_size: int
    limit: Limit | None = None  # the provider's quota when known better than its default
    rate: Limit | None = None  # the user's own ceiling
    in_flight: int = 16
    timeout: float = 30.0
    max_attempts: int = 6
    #: unexpected answers in a row (a 2xx that is not the provider's answer) that stop the send
    max_unexpected: int = 5
    report: Path | None = None
    #: a shared limiter (``redis://...``) for several workers; None: in-process
    limiter: str | None = None
    #: serve Prometheus metrics on this port while sending (0: any free one); None: do not
    metrics_port: int | None = None
    #: when the send may send (``[send] window`` in ``[send] timezone``); None: any time
    windows: SendWindows | None = None
    #: where the journal is kept: None for SQLite beside the campaign, or ``redis://...``
    state: str | None = None
    #: seconds a finished campaign's state stays in Redis
    state_ttl: float = DEFAULT_STATE_TTL
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def provider_module(self) -> ModuleType:
        return providers.load(self.provider)


def read_campaign(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: campaign file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a campaign file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read campaign file ({exc.strerror})") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: campaign file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


# ---- the types of the campaign file's values ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """What a campaign key holds: ``what`` is said in the error, ``accepts`` checks a value."""

    what: str
    accepts: Callable[[Any], bool]


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_whole(value: Any) -> bool:  # a bool is an int to Python, not to a campaign file
    return type(value) is int  # 10.0 is refused, as "10.0" is from a variable or a flag


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_texts(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    )


_TEXT = Kind("text", _is_text)
_PATH = Kind("a file path (text)", _is_text)
_URL = Kind("a URL (text)", _is_text)
_COLUMN = Kind("a column name (text)", _is_text)
_PATHS = Kind(
    "a list of file paths (text)",
    lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
)
_RATE_TEXT = Kind("a rate such as '300/min' (text)", _is_text)
_WHOLE = Kind("a whole number", _is_whole)
_SECONDS = Kind("a number of seconds", _is_number)
_DURATION_KIND = Kind(
    "a duration such as '30d', '12h' (text) or a number of seconds",
    lambda value: _is_number(value) or _is_text(value),
)

#: the kind of every key of the campaign file bulksend itself reads ([message] and [api] are the
#: provider's, which checks them; [auth] keys are ``AUTH_KINDS`` by suffix); None: the top level
KINDS: Mapping[tuple[str | None, str], Kind] = {
    (None, "provider"): Kind("a provider name (text)", _is_text),
    (None, "operation"): Kind("an operation name (text)", _is_text),
    (None, "name"): _TEXT,
    ("recipients", "path"): _PATH,
    ("recipients", "format"): Kind("one of auto, csv, tsv, jsonl, lines (text)", _is_text),
    ("recipients", "delimiter"): Kind("one character (text)", _is_text),
    ("recipients", "encoding"): Kind("an encoding name (text)", _is_text),
    ("recipients", "id"): _COLUMN,
    ("recipients", "uid"): _COLUMN,
    ("recipients", "exclude"): _PATHS,
    ("recipients", "exclude_id"): _COLUMN,
    ("recipients", "exclude_uid"): _COLUMN,
    ("send", "base_url"): _URL,
    ("send", "batch_size"): _WHOLE,
    ("send", "rate"): _RATE_TEXT,
    ("send", "limit"): _RATE_TEXT,
    ("send", "in_flight"): _WHOLE,
    ("send", "timeout"): _SECONDS,
    ("send", "max_attempts"): _WHOLE,
    ("send", "max_unexpected"): _WHOLE,
    ("send", "report"): _PATH,
    ("send", "limiter"): _URL,
    ("send", "metrics_port"): Kind("a port number (a whole number)", _is_whole),
    ("send", "window"): Kind(
        "a window such as 'Mon-Fri 09:00-20:00' (text), or an array of them", _is_texts
    ),
    ("send", "timezone"): Kind("an IANA time zone name such as 'Europe/Berlin' (text)", _is_text),
    ("send", "state"): _URL,
    ("send", "state_ttl"): _DURATION_KIND,
}
AUTH_KINDS: Mapping[str, Kind] = {
    "_env": Kind("an environment variable name (text)", _is_text),
    "_file": _PATH,
}


def shown(value: Any) -> str:
    """A value as an error message shows it: TOML's words for tables and the like."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_kind(value: Any, kind: Kind, where: str) -> None:
    if not kind.accepts(value):
        raise ConfigError(f"{where} must be {kind.what}, got {shown(value)}")


def _where(origin: str, table: str | None, key: str) -> str:
    return f"{origin}: {key}" if table is None else f"{origin}: [{table}] {key}"


def _int(value: Any, where: str, *, minimum: int = 1) -> int:
    """A whole number from the file (checked by its kind), an environment variable or a flag."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, got {shown(value)}") from None
    if isinstance(value, bool | float):
        raise ConfigError(f"{where} must be a whole number, got {shown(value)}")
    if number < minimum:
        raise ConfigError(f"{where} must be at least {minimum}, got {number}")
    return number


def _port(value: Any, where: str) -> int | None:
    """A TCP port (0: any free one), or None when not given."""
    if value is None or value == "":
        return None
    port = _int(value, where, minimum=0)
    if port > 65535:
        raise ConfigError(f"{where} must be a port number up to 65535, got {port}")
    return port


def check_base_url(value: str, where: str) -> str:
    """``value`` without a trailing ``/`` when it is an http(s) URL with a host (and a valid
    port); else a one-line ``ConfigError`` naming ``where`` it came from."""
    url = value.strip().rstrip("/")
    said = shown(re.sub(r"//[^/@]*@", "//", value))  # never a user name or password
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ConfigError(f"{where}: {said} is not a URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where}: {said} is not an http(s) URL with a host; "
            "give one such as https://api.example.com"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where}: {said} carries a user name or password, which bulksend does not send; "
            "leave them out (credentials come from [auth])"
        )
    return url


def _float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number of seconds, got {shown(value)}") from None
    if isinstance(value, bool):
        raise ConfigError(f"{where} must be a number of seconds, got {shown(value)}")
    if number <= 0:
        raise ConfigError(f"{where} must be positive, got {shown(value)}")
    return number


def _table(data: Mapping[str, Any], name: str, origin: str) -> dict[str, Any]:
    """The table ``name`` of the file, its keys known (where bulksend knows them) and of the
    right kind."""
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: [{name}] must be a table, got {shown(value)}")
    allowed = _TABLES[name]
    if allowed:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(
                f"{origin}: unknown key(s) in [{name}]: {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
    for key, item in value.items():
        kind = KINDS.get((name, key))
        if name == "auth":
            kind = next((k for end, k in AUTH_KINDS.items() if key.endswith(end)), None)
        if kind is not None:
            _check_kind(item, kind, _where(origin, name, key))
    return dict(value)


def _top(data: Mapping[str, Any], origin: str) -> None:
    """Top-level keys: known, and of the right kind."""
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown top-level key(s): {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(_TOP))})"
        )
    if not data.get("provider"):
        raise ConfigError(f"{origin}: 'provider' is required (one of {', '.join(providers.KNOWN)})")
    for (table, key), kind in KINDS.items():
        if table is None and key in data:
            _check_kind(data[key], kind, _where(origin, None, key))


# ---- loading ------------------------------------------------------------------------------------

#: [send]/[recipients] keys that flags set, and the flag's name when it is not --KEY
_FLAGS: Mapping[str, tuple[str, str]] = {
    **{
        key: ("send", key)
        for key in sorted(SEND_KEYS - {"limiter", "window", "timezone", "state", "state_ttl"})
    },
    "recipients": ("recipients", "path"),
    **{key: ("recipients", key) for key in ("format", "delimiter", "encoding")},
    "exclude_id_column": ("recipients", "exclude_id"),
    "exclude_uid_column": ("recipients", "exclude_uid"),
}
#: the keys of the flags that override the campaign file (``--batch-size`` -> ``batch_size``),
#: and ``exclude`` (``--exclude``), whose lists are added to the file's
FLAG_KEYS = (*_FLAGS, "exclude")


class _Values:
    """The file's tables with ``BULKSEND_*`` and flags applied, and where each value came from
    (for errors: ``campaign.toml: [send] batch_size``, ``BULKSEND_BATCH_SIZE``, ``--batch-size``).
    """

    def __init__(
        self,
        tables: dict[str, dict[str, Any]],
        origin: str,
        env: Mapping[str, str],
        flags: Mapping[str, Any],
    ) -> None:
        self.tables = tables
        self.origin = origin
        self.flags = flags
        self._sources: dict[tuple[str, str], str] = {}
        for var, (table, key) in ENV_OVERRIDES.items():
            if env.get(var):
                tables[table][key] = env[var]
                self._sources[(table, key)] = var
        for flag, (table, key) in _FLAGS.items():
            if flag in flags:
                tables[table][key] = flags[flag]
                self._sources[(table, key)] = "--" + flag.replace("_", "-")

    def where(self, table: str, key: str) -> str:
        return self._sources.get((table, key)) or _where(self.origin, table, key)

    def from_flag(self, table: str, key: str) -> bool:
        """Whether a flag set it (a path then is relative to the working directory)."""
        return self._sources.get((table, key), "").startswith("--")

    def whole(self, key: str, default: int) -> int:
        return _int(self.tables["send"].get(key, default), self.where("send", key))

    def rate(self, key: str) -> Limit | None:
        value = self.tables["send"].get(key)
        return parse_rate(value, what=self.where("send", key)) if value else None


def load_settings(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read ``path``, apply ``BULKSEND_*`` from ``env``, then ``overrides`` (flags; None = unset).

    ``overrides`` keys: recipients, base_url, report, batch_size, rate, limit, in_flight, timeout,
    max_attempts, max_unexpected, metrics_port, format, delimiter, encoding, exclude_id_column,
    exclude_uid_column, and exclude (a list of paths, added to ``[recipients] exclude``).
    """
    env = os.environ if env is None else env
    data = read_campaign(path)
    origin = str(path)
    _top(data, origin)
    module = providers.load(data["provider"])
    tables = {name: _table(data, name, origin) for name in _TABLES}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = _Values(tables, origin, env, flags)
    recipients = _recipients(values, path, flags.get("exclude") or ())
    secret_sources = _secret_sources(module, tables, path.parent, origin)
    send = tables["send"]
    report = send.get("report")
    relative = report and report != "-" and not Path(str(report)).is_absolute()
    if relative and not values.from_flag("send", "report"):
        report = str(path.parent / str(report))
    operation = str(data.get("operation", module.OPERATIONS[0]))
    name = str(data.get("name", path.stem))
    options = {
        **tables["api"],
        "operation": operation,
        "message": tables["message"],
        "campaign_name": name,
        "columns": {"id": recipients.id_column, "uid": recipients.uid_column},
    }
    return Settings(
        campaign_file=path,
        provider=data["provider"],
        operation=operation,
        name=name,
        options=options,
        recipients=recipients,
        secret_sources=secret_sources,
        base_url=check_base_url(
            str(send.get("base_url", module.DEFAULT_BASE_URL)), values.where("send", "base_url")
        ),
        batch_size=values.whole("batch_size", module.DEFAULT_BATCH_SIZE),
        limit=values.rate("limit"),
        rate=values.rate("rate"),
        in_flight=values.whole("in_flight", 16),
        timeout=_float(send.get("timeout", 30.0), values.where("send", "timeout")),
        max_attempts=values.whole("max_attempts", 6),
        max_unexpected=values.whole("max_unexpected", 5),
        report=Path(str(report)) if report else None,
        limiter=str(send["limiter"]) if send.get("limiter") else None,
        metrics_port=_port(send.get("metrics_port"), values.where("send", "metrics_port")),
        windows=_windows(send, origin),
        state=str(send["state"]) if send.get("state") else None,
        state_ttl=parse_duration(
            send.get("state_ttl", DEFAULT_STATE_TTL), values.where("send", "state_ttl")
        ),
    )


def _windows(send: Mapping[str, Any], origin: str) -> SendWindows | None:
    """``[send] window`` in ``[send] timezone`` (both, or neither)."""
    window, zone = send.get("window"), send.get("timezone")
    if window is None and zone is None:
        return None
    if window is None:
        raise ConfigError(
            f"{_where(origin, 'send', 'timezone')} is set without [send] window; add a window "
            "such as 'Mon-Fri 09:00-20:00', or remove timezone"
        )
    if zone is None:
        raise ConfigError(
            f"{_where(origin, 'send', 'window')} needs [send] timezone, the zone its hours are "
            "in: an IANA name such as 'Europe/Berlin' (or 'UTC')"
        )
    try:
        tz = parse_zone(str(zone))
    except WindowError as exc:
        raise ConfigError(f"{_where(origin, 'send', 'timezone')}: {exc}") from None
    try:
        return parse_windows(window, tz)
    except WindowError as exc:
        raise ConfigError(f"{_where(origin, 'send', 'window')}: {exc}") from None


def _recipients(values: _Values, path: Path, flagged: Any) -> RecipientSettings:
    rec = values.tables["recipients"]
    rec_path = rec.get("path")
    if not rec_path:
        raise ConfigError(
            f"{values.origin}: no recipient file: set [recipients].path or --recipients"
        )
    rec_path = str(rec_path)
    relative = rec_path != "-" and not Path(rec_path).is_absolute()
    if relative and not values.from_flag("recipients", "path"):
        rec_path = str(path.parent / rec_path)  # file paths are relative to the campaign file
    fmt = str(rec.get("format", "auto"))
    if fmt not in {"auto", "csv", "tsv", "jsonl", "lines"}:
        raise ConfigError(
            f"{values.where('recipients', 'format')} {fmt!r} is not one of "
            "auto, csv, tsv, jsonl, lines"
        )
    return RecipientSettings(
        path=rec_path,
        format=fmt,
        delimiter=rec.get("delimiter"),
        encoding=str(rec.get("encoding", "utf-8")),
        id_column=rec.get("id", "id") or None,
        uid_column=rec.get("uid", "uid") or None,
        exclude=_exclusions(values, path, flagged),
        exclude_id_column=_text_or_none(rec.get("exclude_id")),
        exclude_uid_column=_text_or_none(rec.get("exclude_uid")),
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _exclusions(values: _Values, path: Path, flagged: Any) -> tuple[str, ...]:
    """The suppression lists: ``[recipients] exclude`` (relative to the campaign file), then
    ``--exclude`` (relative to the working directory), each once."""
    listed = values.tables["recipients"].get("exclude", [])
    listed = [listed] if isinstance(listed, str) else list(listed)
    where = values.where("recipients", "exclude")
    named = [(str(p), where, path.parent / str(p)) for p in listed]
    named += [(str(p), "--exclude", Path(str(p))) for p in flagged]
    out: dict[Path, str] = {}
    for given, origin, resolved in named:
        if not given or given == "-":
            raise ConfigError(
                f"{origin}: {shown(given)} is not a suppression list; give a file (stdin is "
                "the recipients' alone)"
            )
        out.setdefault(resolved.absolute(), str(path.parent / given) if origin == where else given)
    return tuple(out.values())


def _secret_sources(
    module: ModuleType, tables: Mapping[str, dict[str, Any]], base: Path, origin: str
) -> dict[str, str]:
    """Secret name -> the environment variable (or ``file:PATH``) it is read from."""
    auth = tables["auth"]
    secret_sources: dict[str, str] = {}
    needed = module.secrets_for(tables["api"]) if isinstance(module, SecretsFor) else module.SECRETS
    for name, default_var in needed.items():
        if f"{name}_file" in auth:
            secret_sources[name] = "file:" + str(base / str(auth[f"{name}_file"]))
        else:
            secret_sources[name] = str(auth.get(f"{name}_env", default_var))
    allowed_auth = {f"{n}_{s}" for n in needed for s in ("env", "file")}
    for key in auth:
        if key not in allowed_auth:
            allowed = ", ".join(sorted(allowed_auth))
            raise ConfigError(
                f"{origin}: unknown key [auth].{key} (allowed: {allowed}; "
                "secrets are read from the environment or a file, never from the campaign file)"
            )
    return secret_sources


#: set to 1 to use a secret file that group or others can read or write (refused otherwise)
ALLOW_OPEN_SECRETS = "BULKSEND_ALLOW_OPEN_SECRETS"


def open_secret_problem(file: Path, mode: int, env: Mapping[str, str]) -> str | None:
    """Why a secret file with permission bits ``mode`` is refused (as ssh refuses a private key
    others can read), or None: group or others may read or write it, and
    ``BULKSEND_ALLOW_OPEN_SECRETS=1`` is not set."""
    if not mode & 0o077 or env.get(ALLOW_OPEN_SECRETS) == "1" or os.name != "posix":
        return None
    quoted = shlex.quote(str(file))
    return (
        f"secret file {file} is open to group or others (mode {mode & 0o777:04o}): "
        f"run chmod 600 {quoted} (or set {ALLOW_OPEN_SECRETS}=1 to use it as it is)"
    )


def read_secret_file(name: str, file: Path, env: Mapping[str, str]) -> str:
    """The secret in ``file``, stripped; MissingSecretError when it cannot be used."""
    try:
        with file.open("rb") as f:
            problem = open_secret_problem(file, stat.S_IMODE(os.fstat(f.fileno()).st_mode), env)
            if problem is not None:
                raise MissingSecretError(f"{name}: {problem}")
            value = f.read().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise MissingSecretError(f"{name}: cannot read secret file {file}") from None
    if not value:
        raise MissingSecretError(f"{name}: secret file {file} is empty")
    return value


def resolve_secrets(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret values, from the environment or the named files; MissingSecretError otherwise.

    A secret file that group or others can read is refused unless ``env`` has
    ``BULKSEND_ALLOW_OPEN_SECRETS=1``."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for name, source in settings.secret_sources.items():
        if source.startswith("file:"):
            value = read_secret_file(name, Path(source[5:]), env)
        else:
            value = env.get(source, "").strip()
            if not value:
                raise MissingSecretError(
                    f"{name}: environment variable {source} is not set "
                    f"(export {source}=... before sending)"
                )
        out[name] = value
    return out
