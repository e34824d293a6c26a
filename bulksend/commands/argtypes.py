"""argparse value types shared by the commands: a bad value is a one-line usage error (exit 2)
that names the flag, before anything starts."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulksend.providers.base import Limit


def fraction(text: str) -> float:
    """A number from 0 to 1 (``0.05``)."""
    value = _number(text, "a number between 0 and 1")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """A number >= 0 (milliseconds, seconds)."""
    value = _number(text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive(text: str) -> float:
    """A number > 0 (a window in seconds)."""
    value = _number(text, "a number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    return _whole(text, 0)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}")
    return value


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):  # nan, inf
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def rate(text: str) -> Limit:
    """A limit written as ``send --limit`` takes it: ``N/UNIT`` (``50/s``, ``600/min``,
    ``100/15s``), read by the same parser as the campaign file's ``limit``."""
    from bulksend.config import parse_rate
    from bulksend.errors import ConfigError

    try:
        return parse_rate(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"expected N/UNIT such as '50/s', '600/min' or '100/15s', got {text!r}"
        ) from None
