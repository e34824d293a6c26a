"""Bytes to text: opening a path or stdin, gzip by magic bytes, the byte-order mark, the
whole-file checks.

Everything that makes a file unusable as a whole raises :class:`~bulksend.errors.InputError`
with a one-line message that names the file, here or while reading on.

The encoding: with ``utf-8`` (the default) a byte-order mark at the start of the (decompressed)
file decides: UTF-8, UTF-16 LE/BE or UTF-32 LE/BE; without one the file is UTF-8. None of those
marks can begin UTF-8 text, so following it is never wrong. Any other encoding is used as
given; a mark of that encoding is skipped (``utf-16`` or ``utf-32`` take their byte order from
it), any other mark is left in the text. The mark is cut off before decoding, so line numbers
are unchanged, and only the first block is looked at: the file is still streamed.
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import sys
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from bulksend.errors import InputError
from bulksend.sources.spec import STDIN, SourceSpec

HEAD = 1 << 16
#: NUL bytes in this much of the start mean a binary file (unless the encoding is UTF-16/32)
BINARY_PROBE = 8192
BLOCK = 1 << 18
#: errors a read can raise on a broken or truncated gzip stream, or a failing disk
READ_ERRORS = (OSError, EOFError, zlib.error)


class _Replay(io.RawIOBase):
    """A raw stream that gives ``head`` first, then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO | gzip.GzipFile, *, owned: bool) -> None:
        self._head = memoryview(head)
        self._stream = stream
        self._owned = owned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and self._owned:
            self._stream.close()
        super().close()


def read_error(name: str, error: BaseException, line: int | None = None) -> InputError:
    where = name if line is None else f"{name}:{line}"
    if isinstance(error, EOFError):
        return InputError(f"{where}: truncated gzip data")
    if isinstance(error, gzip.BadGzipFile | zlib.error):
        return InputError(f"{where}: not a valid gzip file ({error})")
    detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return InputError(f"{where}: read error ({detail})")


def _read_head(name: str, stream: BinaryIO | gzip.GzipFile) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        while size < HEAD:
            data = stream.read(HEAD - size)
            if not data:
                break
            parts.append(data)
            size += len(data)
    except READ_ERRORS as error:
        raise read_error(name, error) from None
    return b"".join(parts)


def wide(encoding: str) -> bool:
    """UTF-16 or UTF-32 (where NUL bytes are text)."""
    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


def _lone_surrogates(error: UnicodeError) -> tuple[str, int]:
    """Like ``surrogateescape`` for any byte: UTF-16/32 data can be bad in bytes below 128,
    which ``surrogateescape`` refuses to escape (it raises instead). Each bad byte becomes a
    lone surrogate, so the row holding it is rejected as undecodable and reading goes on."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(chr(0xDC00 + byte) for byte in bad), error.end


LONE_SURROGATES = "bulksend-lone-surrogates"
codecs.register_error(LONE_SURROGATES, _lone_surrogates)


#: byte-order marks and their codecs; UTF-32 LE's (FF FE 00 00) before UTF-16 LE's (FF FE)
BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def choose_encoding(name: str, head: bytes) -> tuple[str, int]:
    """``(codec, bytes of byte-order mark to skip)`` for a file that starts with ``head``, when
    ``name`` was asked for (a normalised codec name; see the module docstring)."""
    found = next(((bom, codec) for bom, codec in BOMS if head.startswith(bom)), None)
    if found is None:
        return name, 0
    bom, codec = found
    if name in ("utf-8", "utf-8-sig") or codec == name or codec.startswith(f"{name}-"):
        return codec, len(bom)
    return name, 0  # an explicit encoding wins over a mark of another one


def _binary(name: str, head: bytes) -> InputError:
    probe = head[:BINARY_PROBE]
    hint = ""
    if len(probe) >= 4:
        if probe[1::2].count(0) * 4 >= len(probe) * 3 // 2:  # NUL every other byte
            hint = "; if it is UTF-16 text without a byte-order mark, try --encoding utf-16-le"
        elif probe[0::2].count(0) * 4 >= len(probe) * 3 // 2:
            hint = "; if it is UTF-16 text without a byte-order mark, try --encoding utf-16-be"
    return InputError(f"{name}: looks like a binary file (NUL bytes), not a recipient list{hint}")


@contextmanager
def open_text(
    spec: SourceSpec, stdin: BinaryIO | None = None
) -> Iterator[tuple[io.TextIOWrapper, int | None, str]]:
    """The decoded text of the file (undecodable bytes kept as lone surrogates, byte-order mark
    cut off), its size in bytes when it is a plain regular file (for estimates) else None, and
    the codec it is decoded with."""
    name = spec.name
    try:
        asked = codecs.lookup(spec.encoding).name
    except LookupError:
        raise InputError(f"{name}: unknown encoding {spec.encoding!r}") from None
    size: int | None = None
    raw: BinaryIO
    if spec.path == STDIN:
        raw = stdin if stdin is not None else sys.stdin.buffer
        owned = False
    else:
        raw = _open_file(spec.path, name)
        owned = True
        try:
            status = os.fstat(raw.fileno())
            size = status.st_size
        except OSError:
            size = None
    text = None
    try:
        head = _read_head(name, raw)
        stream: BinaryIO | gzip.GzipFile = raw
        if head[:2] == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=_Replay(head, raw, owned=False), mode="rb")
            head = _read_head(name, stream)
            size = None
        if not head:
            raise InputError(f"{name}: file is empty")
        encoding, skip = choose_encoding(asked, head)
        if encoding in ("utf-16", "utf-32") and not skip:
            raise InputError(
                f"{name}: --encoding {encoding} takes its byte order from a byte-order mark and "
                f"this file has none; give {encoding}-le or {encoding}-be"
            )
        if skip and len(head) == skip:
            raise InputError(f"{name}: file is empty (only a byte-order mark)")
        if b"\0" in head[skip:BINARY_PROBE] and not wide(encoding):
            raise _binary(name, head)
        buffered = io.BufferedReader(_Replay(head[skip:], stream, owned=False), buffer_size=BLOCK)
        errors = LONE_SURROGATES if wide(encoding) else "surrogateescape"
        # newline="\n": read() gives the text as it is, as with newline="" (the readers split
        # lines themselves), without the newline decoder that "" adds: it walks every
        # character of a text with CRs to note the kinds of line ends it saw
        text = io.TextIOWrapper(buffered, encoding=encoding, errors=errors, newline="\n")
        yield text, size, encoding
    finally:
        if text is not None:
            text.close()
        if owned:
            raw.close()


def _open_file(path: str, name: str) -> BinaryIO:
    try:
        if os.path.isdir(path):
            raise InputError(f"{name}: is a directory")
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as error:
        raise InputError(f"{name}: cannot open ({error.strerror or error})") from None


class TextSource:
    """Reads text in blocks of whole lines (each ends with a newline, except the last)."""

    def __init__(self, text: io.TextIOBase, name: str, block: int | None = None) -> None:
        self._text = text
        self._name = name
        self._block = block or BLOCK
        self._pending = ""
        self._eof = False
        #: characters handed out so far, and lines of them (for row estimates)
        self.consumed = 0
        self.line = 1  # the line number of the next line to be handed out

    def block(self) -> str:
        """The next block of whole lines; "" at the end."""
        while True:
            data = "" if self._eof else self._read()
            if not data:
                self._eof = True
                out, self._pending = self._pending, ""
                self.consumed += len(out)
                return out
            buffer = self._pending + data if self._pending else data
            cut = buffer.rfind("\n") + 1
            if cut == 0:
                self._pending = buffer  # a line longer than a block: read on
                continue
            self._pending = buffer[cut:]
            out = buffer[:cut]
            self.consumed += len(out)
            return out

    def unread(self, block: str) -> None:
        """Give back the block just taken (used after peeking at the start of the file)."""
        self._pending = block + self._pending
        self.consumed -= len(block)

    def _read(self) -> str:
        try:
            return self._text.read(self._block)
        except READ_ERRORS as error:
            raise read_error(self._name, error, self.line) from None


def split_lines(block: str) -> list[str]:
    """Physical lines with their endings, split as ``open(newline="")`` does (\\n, \\r\\n, \\r)."""
    return io.StringIO(block, newline="").readlines()


def lines_of(block: str) -> list[str]:
    """The physical lines of a block of whole lines, without their endings: \\n, \\r\\n and a
    lone \\r, as ``split_lines`` (a block without a lone \\r is split in C)."""
    if "\r" in block:
        joined = block.replace("\r\n", "\n")
        if "\r" in joined:
            return [line.rstrip("\r\n") for line in split_lines(block)]
        block = joined
    return (block[:-1] if block.endswith("\n") else block).split("\n")


#: characters of earlier blocks a ``Feed`` keeps: twice csv's default field size limit
HISTORY_CHARS = 2 * 131_072


class Feed:
    """Physical lines for ``csv.reader``, pulled from the source a block at a time."""

    def __init__(self, source: TextSource) -> None:
        self._source = source
        self._lines: list[str] = []
        self._next = 0
        #: the source ran out while ``csv.reader`` asked for more (see ``DelimitedReader``)
        self.ended = False
        self._chars = 0  # of the block loaded
        #: earlier blocks' lines and sizes, newest last, kept (by reference) for ``last``
        self._history: deque[tuple[list[str], int]] = deque()
        self._history_chars = 0

    def load(self, block: str) -> None:
        if self._lines:
            self._history.append((self._lines, self._chars))
            self._history_chars += self._chars
            while len(self._history) > 1 and self._history_chars > HISTORY_CHARS:
                self._history_chars -= self._history.popleft()[1]
        self._lines = split_lines(block)
        self._chars = len(block)
        self._next = 0

    @property
    def drained(self) -> bool:
        """Whether every line of the blocks loaded so far has been handed out."""
        return self._next >= len(self._lines)

    def __iter__(self) -> Feed:
        return self

    def __next__(self) -> str:
        if self._next >= len(self._lines):
            block = self._source.block()
            if not block:
                self.ended = True
                raise StopIteration
            self.load(block)
        line = self._lines[self._next]
        self._next += 1
        return line

    def last(self, count: int) -> list[str]:
        """The last ``count`` lines handed out (one record's), from the blocks still kept:
        at least ``HISTORY_CHARS`` characters' worth, more than csv's field size limit."""
        out = self._lines[max(0, self._next - count) : self._next]
        for lines, _ in reversed(self._history):
            if len(out) >= count:
                break
            out = lines[max(0, len(lines) - (count - len(out))) :] + out
        return out

    def take_rest(self) -> str:
        """The lines of the loaded block not handed out yet, as one text; they are then gone
        from the feed, and so are the ones before them (``load`` the text to read it here)."""
        rest = "".join(self._lines[self._next :])
        self._lines, self._next, self._chars = [], 0, 0
        return rest

    def put_back(self, lines: list[str]) -> None:
        """Hand ``lines`` out again before the rest (after the end of the source, too)."""
        self._lines = lines + self._lines[self._next :]
        self._next = 0
        self.ended = False
