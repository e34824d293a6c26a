"""Files that hold recipients or request bodies are created owner-only.

A journal, a report, dead letters, ``--requests-out``, a webhook audience and the leads export
list people (ids, emails, attributes): on a shared CI runner or server, a file created with the
usual umask (022, so 0644) can be read by every other account. So every file bulksend writes is
opened here:

- a file bulksend creates is created ``0600`` (read and write for its owner only);
- a directory bulksend creates on the way (as ``mkdir -p``) is created ``0700``;
- an existing file or directory keeps its mode: bulksend neither widens it nor narrows it (a
  report someone made group-readable on purpose stays so). A file replaced atomically (leads
  ``--out``) takes the mode of the file it replaces.

The umask can only take more away (``umask 077`` leaves these modes as they are). SQLite creates
a journal's ``-wal`` and ``-shm`` files with the mode of the journal itself, so creating the
journal here (``create``) is enough for all three.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TextIO

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "create",
    "make_dirs",
    "open_private",
    "replacing",
    "write_private",
]

FILE_MODE = 0o600
DIR_MODE = 0o700
#: open() mode -> os.open flags (text or binary alike)
_FLAGS = {
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}


def make_dirs(directory: str | os.PathLike[str]) -> None:
    """``mkdir -p directory``, each directory it creates ``0700`` (existing ones untouched)."""
    missing: list[Path] = []
    current = Path(directory)
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile (another shard)
            path.mkdir(mode=DIR_MODE)


def open_private(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a``, ``wb``, ``ab``), a new file created
    ``0600`` and missing directories ``0700``; an existing file keeps its mode."""
    flags = _FLAGS[mode.replace("b", "")] | getattr(os, "O_CLOEXEC", 0)
    make_dirs(Path(path).parent)
    fd = os.open(path, flags, FILE_MODE)
    try:
        if "b" in mode:
            return os.fdopen(fd, mode)
        return os.fdopen(fd, mode, encoding=encoding or "utf-8", newline=newline)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    """``Path(path).write_bytes(data)``, the file created owner-only."""
    with open_private(path, "wb") as f:
        f.write(data)


def create(path: str | os.PathLike[str]) -> None:
    """Make sure ``path`` exists (created ``0600``, empty); an existing file is left as it is.

    For files another library opens (SQLite), so they are owner-only from the first byte."""
    make_dirs(Path(path).parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, newline: str | None = None) -> Iterator[TextIO]:
    """A text file that replaces ``path`` atomically when the block ends without an error
    (a temporary file beside it, renamed into place). It is ``0600``, or the mode of the file
    it replaces."""
    target = Path(path)
    make_dirs(target.parent)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(f.fileno(), stat.S_IMODE(target.stat().st_mode))
            yield f
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
