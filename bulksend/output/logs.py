"""structlog set-up: JSON lines (orjson) when stderr is not a TTY, console output on a TTY.

Every event passes through ``Redactor``, which replaces any registered secret value (and the
value of any key that looks like a credential) with ``"[redacted]"`` — wherever it appears.
Console lines are for people: a text value with a control character is shown as Python writes
it (``'\\x1b[2J'``), the event on one line, escaped (``bulksend.output.printable``); JSON
lines stay exact (JSON escapes control characters itself).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from bulksend.output.printable import escaped, unwrapped

REDACTED = "[redacted]"
_SECRET_KEYS = ("authorization", "api_key", "apikey", "password", "token", "secret")


class Redactor:
    """A structlog processor that scrubs secrets from every event, keys and values alike."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    #: shorter values are not real credentials (and scrubbing them would garble plain text)
    MIN_LENGTH = 8

    def register(self, values: Iterable[str]) -> None:
        self._secrets.update(v for v in values if v and len(v) >= self.MIN_LENGTH)

    def clear(self) -> None:
        self._secrets.clear()

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value) if self._secrets else value
        if isinstance(value, dict):
            return {k: self._item(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def _item(self, key: str, value: Any) -> Any:
        if any(s in key.lower() for s in _SECRET_KEYS):
            return REDACTED
        return self._value(value)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            event[key] = self._item(key, event[key])
        return event


redactor = Redactor()


class _Quoted:
    """A text value the console shows quoted and escaped, as Python's ``repr`` writes it (the
    console renderer shows a plain word bare, and would show its control characters raw)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)


def escape_for_console(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: nothing from outside drives the terminal of a console line."""
    for key, value in event.items():
        if not isinstance(value, str) or value.isprintable():
            continue
        event[key] = escaped(value) if key == "event" else _Quoted(value)
    return event


def _dumps_text(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, **kwargs).decode()


def configure(
    *,
    level: int = logging.INFO,
    fmt: str = "auto",
    stream: TextIO | None = None,
    colors: bool | None = None,
) -> None:
    """Configure structlog for the CLI. ``fmt``: "json", "console" or "auto" (by TTY).

    ``colors``: ANSI colours in console output (default: when ``stream`` is a terminal).
    """
    stream = unwrapped(stream or sys.stderr)  # escaped below for the console; JSON is exact
    if colors is None:
        colors = stream.isatty()
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redactor,
    ]
    binary: Any = getattr(stream, "buffer", None)
    factory: Any
    if fmt == "json" and binary is not None:  # the fast path: orjson bytes straight out
        processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
        factory = structlog.BytesLoggerFactory(binary)
    elif fmt == "json":  # a text stream (tests, embedding)
        processors.append(structlog.processors.JSONRenderer(serializer=_dumps_text))
        factory = structlog.PrintLoggerFactory(stream)
    else:
        processors.append(escape_for_console)
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("bulksend").bind(**context)
