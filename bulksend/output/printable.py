"""What bulksend shows a person cannot drive their terminal.

Text from outside -- a provider's body and headers, a recipient or campaign file, Redis -- can
carry control characters: ``ESC[2J`` clears the screen, ``ESC]0;...BEL`` retitles the window,
a carriage return overwrites the line it is on, a right-to-left override reverses what follows,
a NUL cuts a line in some viewers. Printed as it came, an error body could rewrite what the
person reads. So everything written for people goes through ``printable``: every character
Python does not call printable (``str.isprintable``: controls, format characters, separators
other than the space, lone surrogates) becomes a visible escape -- ``\\x1b``, ``\\x00``,
``\\u202e`` -- and only the line breaks bulksend writes itself stay.

Where it applies: all of stderr (``PrintableStream`` wraps it in ``bulksend.cli.run``: console
logs, the progress line, the final ``bulksend:`` line, warnings, usage errors) and the text
for people on stdout (the summary with its ``stopped:`` line, dry-run and validate). Data stays
exact: JSON logs (JSON escapes control characters itself), reports, ``--summary-json`` and
anything written to stdout as data (``--report -``) are not touched.

``escaped`` is the one-line form, for text inside a message (a body's start): line breaks and
tabs are escaped too, and a backslash is doubled, so the text can be read back exactly.
"""

from __future__ import annotations

import io
from typing import Any, TextIO, cast

__all__ = ["PrintableStream", "escaped", "for_people", "printable", "unwrapped"]

#: the one-line form's names for the usual controls
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _fine(text: str) -> bool:
    """Nothing to escape: every line printable (checked in C, the common case)."""
    if text.isprintable():
        return True
    return "\n" in text and all(line.isprintable() for line in text.split("\n"))


def printable(text: str) -> str:
    """``text`` safe to show: control and other invisible characters as escapes (``\\x1b``),
    line breaks kept. Printable text comes back as it is (the same object)."""
    if _fine(text):
        return text
    return "".join(ch if ch == "\n" or ch.isprintable() else _escape(ch) for ch in text)


def escaped(text: str) -> str:
    """``text`` on one line: as ``printable``, and ``\\n``, ``\\r``, ``\\t`` escaped and ``\\``
    doubled (so an escape in the text cannot pass for one of ours)."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join("\\\\" if ch == "\\" else ch if ch.isprintable() else _escape(ch) for ch in text)


class PrintableStream(io.TextIOBase):
    """A text stream for people: every write goes through ``printable``.

    ``raw`` is the stream underneath, for writers that add their own control sequences on
    purpose (the progress line, coloured logs) after escaping what came from outside.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.raw = stream

    def write(self, text: str) -> int:
        self.raw.write(printable(text))
        return len(text)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.raw.isatty()

    def fileno(self) -> int:
        return self.raw.fileno()

    @property
    def buffer(self) -> Any:  # the byte side (JSON log lines): data, not escaped
        return self.raw.buffer

    def close(self) -> None:  # the stream underneath belongs to the caller
        self.flush()


def for_people(stream: TextIO) -> TextIO:
    """``stream`` with every write escaped (once: a ``PrintableStream`` is returned as it is)."""
    return stream if isinstance(stream, PrintableStream) else cast(TextIO, PrintableStream(stream))


def unwrapped(stream: TextIO) -> TextIO:
    """The stream under a ``PrintableStream`` (any other stream as it is)."""
    return stream.raw if isinstance(stream, PrintableStream) else stream
