"""What to read (:class:`SourceSpec`), what comes out (:class:`Chunk`) and the reason texts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from bulksend.models import Recipient, Rejected

Format = Literal["auto", "csv", "tsv", "jsonl", "lines"]
FORMATS: tuple[Format, ...] = ("auto", "csv", "tsv", "jsonl", "lines")
STDIN = "-"


@dataclass(frozen=True, slots=True)
class Columns:
    """Names of the source columns (or JSON keys) that hold the recipient's ``id`` and ``uid``.

    Matched case-insensitively. ``None`` means "not read". A column left at its default name
    may be absent from a header as long as another mapped column is present; a column given
    another name must be there.
    """

    id: str | None = "id"
    uid: str | None = "uid"

    def mapped(self) -> list[tuple[str, str]]:
        """``(field, column name)`` for each column that is read."""
        pairs = [("id", self.id), ("uid", self.uid)]
        return [(key, name) for key, name in pairs if name is not None]


DEFAULT_NAMES = {"id": "id", "uid": "uid"}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A recipient file and how to read it (see ``open_source``)."""

    path: str
    format: Format = "auto"
    delimiter: str | None = None
    encoding: str = "utf-8"
    columns: Columns = field(default_factory=Columns)
    keep_attrs: bool = True
    max_value_len: int = 1024
    strict: bool = False
    #: keys (``id``, ``uid``) whose column may be missing from a header, whatever its name,
    #: when another mapped column is there (a suppression list may hold either identifier)
    optional: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """How the file is named in messages."""
        return "<stdin>" if self.path == STDIN else self.path


class Chunk(NamedTuple):
    """Consecutive rows of a file: the good ones and the rejected ones, each in file order.

    Readers hand over ``recipients`` as :class:`~bulksend.recipients.Recipients` (columns);
    anything else that makes chunks may use any sequence of recipients.
    """

    recipients: Sequence[Recipient]
    rejected: list[Rejected]


def describe(name: str, rejected: Rejected) -> str:
    """``file:line: reason``, the form used in reports and ``--strict`` listings."""
    return f"{name}:{rejected.line}: {rejected.reason}"


# The reasons a row is rejected. Short, exact, without the line (``Rejected.line`` has it).
def wrong_fields(expected: int, got: int) -> str:
    return f"wrong number of fields (expected {expected}, got {got})"


def missing(keys: list[str]) -> str:
    return "missing " + " and ".join(keys)


def empty(keys: list[str]) -> str:
    """A row with characters in it but no value: only delimiters, whitespace, ``{}``."""
    return "empty row: " + " and ".join(f"no {key}" for key in keys)


def too_long(column: str, length: int, limit: int) -> str:
    return f"value too long in column {column!r} ({length} > {limit} chars)"


def control(column: str) -> str:
    return f"control character in column {column!r}"


def undecodable(encoding: str) -> str:
    if encoding.replace("_", "-").lower() in ("utf-8", "utf8", "utf-8-sig"):
        return "undecodable bytes (not utf-8; try --encoding)"
    return f"undecodable bytes (not {encoding})"


def bad_type(column: str, kind: str) -> str:
    return f"value in column {column!r} is not a string or integer (got {kind})"
