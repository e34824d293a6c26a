"""Campaign settings: the TOML campaign file, overridden by ``BULKSEND_*`` variables, overridden by
flags, validated into one frozen ``Settings``. Every error is a one-line ``ConfigError`` that names
the file, the key and what is wrong. Secrets come only from the environment (or a file named there),
never from a flag.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from bulksend import providers
from bulksend.errors import ConfigError, MissingSecretError
from bulksend.providers.base import Limit

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
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")

#: the top-level tables a campaign file may have, and the keys each may hold
_TABLES: Mapping[str, frozenset[str]] = {
    "recipients": frozenset({"path", "format", "delimiter", "encoding", "id", "uid"}),
    "auth": frozenset(),  # provider-specific *_env / *_file keys, checked against SECRETS
    "send": frozenset(
        {
            "base_url",
            "batch_size",
            "rate",
            "limit",
            "in_flight",
            "timeout",
            "max_attempts",
            "report",
            "limiter",
        }
    ),
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
    "BULKSEND_REPORT": ("send", "report"),
    "BULKSEND_RECIPIENTS": ("recipients", "path"),
    "BULKSEND_LIMITER": ("send", "limiter"),
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


@dataclass(frozen=True, slots=True)
class RecipientSettings:
    path: str
    format: str = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"
    id_column: str | None = "id"
    uid_column: str | None = "uid"


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
    report: Path | None = None
    #: a shared limiter (``redis://...``) for several workers; None: in-process
    limiter: str | None = None
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


def _int(value: Any, where: str, *, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if number < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {number}")
    return number


def _float(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number of seconds, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return number


def _table(data: Mapping[str, Any], name: str, origin: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{origin}: [{name}] must be a table")
    allowed = _TABLES[name]
    if allowed:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(
                f"{origin}: unknown key(s) in [{name}]: {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
    return dict(value)


def load_settings(
    path: Path,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read ``path``, apply ``BULKSEND_*`` from ``env``, then ``overrides`` (flags; None = unset).

    ``overrides`` keys: recipients, base_url, report, batch_size, rate, limit, in_flight, timeout,
    max_attempts, format, delimiter, encoding.
    """
    env = os.environ if env is None else env
    data = read_campaign(path)
    origin = str(path)
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown top-level key(s): {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(_TOP))})"
        )
    provider = data.get("provider")
    if not isinstance(provider, str) or not provider:
        raise ConfigError(f"{origin}: 'provider' is required (one of {', '.join(providers.KNOWN)})")
    module = providers.load(provider)
    tables = {name: _table(data, name, origin) for name in _TABLES}
    for var, (table, key) in ENV_OVERRIDES.items():
        if env.get(var):
            tables[table][key] = env[var]
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    send, rec = tables["send"], tables["recipients"]
    for key in ("base_url", "batch_size", "rate", "limit", "in_flight", "timeout", "max_attempts"):
        if key in flags:
            send[key] = flags[key]
    if "report" in flags:
        send["report"] = flags["report"]
    if "recipients" in flags:
        rec["path"] = flags["recipients"]
    for key in ("format", "delimiter", "encoding"):
        if key in flags:
            rec[key] = flags[key]

    base = path.parent
    rec_path = rec.get("path")
    if not rec_path:
        raise ConfigError(f"{origin}: no recipient file: set [recipients].path or --recipients")
    rec_path = str(rec_path)
    if "recipients" not in flags and rec_path != "-" and not Path(rec_path).is_absolute():
        rec_path = str(base / rec_path)  # file paths are relative to the campaign file
    fmt = str(rec.get("format", "auto"))
    if fmt not in {"auto", "csv", "tsv", "jsonl", "lines"}:
        raise ConfigError(
            f"{origin}: [recipients].format {fmt!r} is not one of auto, csv, tsv, jsonl, lines"
        )
    recipients = RecipientSettings(
        path=rec_path,
        format=fmt,
        delimiter=rec.get("delimiter"),
        encoding=str(rec.get("encoding", "utf-8")),
        id_column=rec.get("id", "id") or None,
        uid_column=rec.get("uid", "uid") or None,
    )

    auth = tables["auth"]
    secret_sources: dict[str, str] = {}
    secrets_for = getattr(module, "secrets_for", None)  # secrets may depend on [api] (auth mode)
    needed = secrets_for(tables["api"]) if secrets_for else module.SECRETS
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

    report = send.get("report")
    if report and "report" not in flags and report != "-" and not Path(str(report)).is_absolute():
        report = str(base / str(report))
    operation = str(data.get("operation", module.OPERATIONS[0]))
    options = {
        **tables["api"],
        "operation": operation,
        "message": tables["message"],
        "campaign_name": str(data.get("name", path.stem)),
        "columns": {"id": recipients.id_column, "uid": recipients.uid_column},
    }
    return Settings(
        campaign_file=path,
        provider=provider,
        operation=operation,
        name=str(data.get("name", path.stem)),
        options=options,
        recipients=recipients,
        secret_sources=secret_sources,
        base_url=str(send.get("base_url", module.DEFAULT_BASE_URL)).rstrip("/"),
        batch_size=_int(send.get("batch_size", module.DEFAULT_BATCH_SIZE), "batch_size"),
        limit=parse_rate(send["limit"], what="limit") if send.get("limit") else None,
        rate=parse_rate(send["rate"], what="rate") if send.get("rate") else None,
        in_flight=_int(send.get("in_flight", 16), "in_flight"),
        timeout=_float(send.get("timeout", 30.0), "timeout"),
        max_attempts=_int(send.get("max_attempts", 6), "max_attempts"),
        report=Path(str(report)) if report else None,
        limiter=str(send["limiter"]) if send.get("limiter") else None,
    )


def resolve_secrets(settings: Settings, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The secret values, from the environment or the named files; MissingSecretError otherwise."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for name, source in settings.secret_sources.items():
        if source.startswith("file:"):
            file = Path(source[5:])
            try:
                value = file.read_text().strip()
            except OSError:
                raise MissingSecretError(f"{name}: cannot read secret file {file}") from None
            if not value:
                raise MissingSecretError(f"{name}: secret file {file} is empty")
        else:
            value = env.get(source, "").strip()
            if not value:
                raise MissingSecretError(
                    f"{name}: environment variable {source} is not set "
                    f"(export {source}=... before sending)"
                )
        out[name] = value
    return out
