"""Standard streams whose reader may go away: ``bulksend send ... | head`` must not fail.

Python ignores SIGPIPE, so a write to a pipe whose reader has closed raises
``BrokenPipeError`` — from a log call deep inside a worker, from the summary, or from the
interpreter's last flush at exit (``Exception ignored ...``, status 120). ``SafeStream`` wraps
stdout and stderr: the first failed write marks the stream gone and every later one is dropped,
so the send goes on, the journal and the report are completed, and the exit status is the
send's. The stream's descriptor is pointed at ``os.devnull`` then, so the data Python still
holds for it is flushed there at exit instead of raising (the way the ``signal`` module's docs
recommend).

A reader that stops reading without closing the pipe still blocks a writer once the pipe is
full, as it would ``cat``; closing it (``head`` exiting) frees it.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any, TextIO

__all__ = ["SafeStream"]

#: what a write to a stream whose reader (terminal, pipe, socket) is gone raises
_GONE = (OSError, ValueError)  # BrokenPipeError, EIO of a hung-up terminal, a closed file


class _Gone:
    """Shared by a text stream and its byte buffer: once one fails, both drop writes."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.gone = False

    def lost(self) -> None:
        if self.gone:
            return
        self.gone = True
        try:
            fd = self.stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return
        try:
            os.dup2(devnull, fd)
        except OSError:  # pragma: no cover - dup2 onto an open descriptor does not fail
            pass
        finally:
            os.close(devnull)


class _SafeBuffer(io.RawIOBase):
    """The byte side (``stream.buffer``) of a ``SafeStream``; the JSON log lines go here."""

    def __init__(self, buffer: IO[bytes], state: _Gone) -> None:
        super().__init__()
        self._buffer = buffer
        self._state = state

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data)
        if self._state.gone:
            return n
        try:
            self._buffer.write(data)
        except _GONE:
            self._state.lost()
        return n

    def flush(self) -> None:
        if self._state.gone:
            return
        try:
            self._buffer.flush()
        except _GONE:
            self._state.lost()


class SafeStream(io.TextIOBase):
    """A text stream whose writes never raise: once the reader is gone they are dropped."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._state = _Gone(stream)
        raw = getattr(stream, "buffer", None)
        self._buffer = _SafeBuffer(raw, self._state) if raw is not None else None

    @classmethod
    def wrap(cls, stream: TextIO | SafeStream) -> SafeStream:
        return stream if isinstance(stream, SafeStream) else cls(stream)

    @property
    def gone(self) -> bool:
        """Did a write fail (the reader closed the pipe)? Later writes are dropped."""
        return self._state.gone

    @property
    def buffer(self) -> Any:  # the byte side, as sys.stdout.buffer; AttributeError when none
        if self._buffer is None:
            raise AttributeError("buffer")
        return self._buffer

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._state.gone:
            return len(text)
        try:
            self.stream.write(text)
        except _GONE:
            self._state.lost()
        return len(text)

    def flush(self) -> None:
        if self._state.gone:
            return
        try:
            self.stream.flush()  # a TextIOWrapper flushes its buffer too
        except _GONE:
            self._state.lost()

    def isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except _GONE:
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:  # the wrapped stream belongs to the caller (sys.stdout, ...)
        self.flush()
