"""Every file a command will write, checked before the command starts.

A mistake in an output path is a one-line usage error (exit status 2) before the first request,
not a traceback after the whole campaign was sent. The rules, the same for every command:

- ``-`` is standard output where the flag says so (``--report``, ``--summary-json``,
  ``leads --out``); at most one output of a command can be standard output.
- an output is a file: a directory (or a path ending in ``/``) is refused.
- missing parent directories are created when the file is written (as ``mkdir -p``, each
  ``0700``; a new file is ``0600``: ``bulksend.output.private``); the nearest one that exists
  must be a directory bulksend can create files in.
- an existing file must be writable; it is replaced (appended to: ``$GITHUB_STEP_SUMMARY``,
  ``traitly-webhooks --out``; continued: a journal).
- an output is never one of the command's inputs, nor another output.

``problem`` looks at one output and ``first_problem`` at all of them; both return the message
or None. Only ``check`` raises. Looking creates nothing: a file that exists is opened for
appending and closed (its content untouched), a directory is probed with a temporary file
that is removed at once.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bulksend.errors import ConfigError

__all__ = ["Output", "check", "first_problem", "problem"]

#: (path) -> the error writing there would raise, or None
Probe = Callable[[Path], OSError | None]
#: what an input is ("the recipient file") -> its path
Inputs = Mapping[str, str | os.PathLike[str] | None]


@dataclass(frozen=True, slots=True)
class Output:
    """One file a command will write, named the way the user named it."""

    label: str  # "--report", "$GITHUB_STEP_SUMMARY", "journal"
    path: str | os.PathLike[str] | None  # None: not written this time
    example: str = "out.json"  # a file name to suggest when a directory was given
    stdout: bool = False  # "-" means standard output
    beside: bool = False  # also creates files beside it (temporary file, database side files)
    hint: str = ""  # what else the user can do, appended to a problem

    @property
    def given(self) -> bool:
        return self.path is not None

    @property
    def text(self) -> str:
        return os.fspath(self.path) if self.path is not None else ""

    @property
    def to_stdout(self) -> bool:
        return self.stdout and self.text == "-"


def can_append(path: Path) -> OSError | None:
    """Whether an existing regular file can be written (opened for appending, then closed)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        return exc
    os.close(fd)
    return None


def can_create_in(directory: Path) -> OSError | None:
    """Whether files can be created in ``directory`` (a temporary one is made and removed)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".bulksend-probe-", dir=directory)
    except OSError as exc:
        return exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def _dir_text(path: Path | str) -> str:
    text = os.fspath(path)
    return text if text.endswith(("/", os.sep)) else text + "/"


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")  # pragma: no cover - a relative path's parents end with "."


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def problem(
    output: Output, *, append: Probe = can_append, create_in: Probe = can_create_in
) -> str | None:
    """What is wrong with writing ``output``, as one line, or None."""
    if not output.given:
        return None
    text, name = output.text, output.label
    if text == "-":
        if output.stdout:
            return None
        return f"{name} -: cannot be standard output; give a file path such as {output.example}"
    if not text.strip():
        return f"{name}: empty path; give a file path such as {output.example}"
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        shown = _dir_text(text)
        return f"{name} {shown}: is a directory; give a file path such as {shown}{output.example}"
    error = _write_problem(path, output, append, create_in)
    if error is None:
        return None
    return f"{name} {text}: {error}" + (f"; {output.hint}" if output.hint else "")


def _write_problem(path: Path, output: Output, append: Probe, create_in: Probe) -> str | None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # e.g. a parent that is a file: ENOTDIR
        mode = None
        if not isinstance(exc, NotADirectoryError):
            return f"cannot write ({_reason(exc)})"
    if mode is not None and stat.S_ISREG(mode):
        failed = append(path)
        if failed is not None:
            return f"cannot write ({_reason(failed)})"
        if not output.beside:
            return None
    elif mode is not None:  # a device such as /dev/null, a FIFO: written as it is
        return None
    return _create_problem(path, create_in)


def _create_problem(path: Path, create_in: Probe) -> str | None:
    """Whether ``path``'s directory is (or can be made, as mkdir -p) one to create files in."""
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    failed = create_in(ancestor)
    if failed is not None:
        return f"cannot create files in {_dir_text(ancestor)} ({_reason(failed)})"
    return None


def _identity(path: Path) -> str | None:
    """What two names of one regular file share (None for devices, FIFOs, ...)."""
    try:
        if path.exists() and not path.is_file():
            return None
        return os.fspath(path.resolve())
    except OSError:  # pragma: no cover - resolve() on a loop of symbolic links
        return None


def _clash(outputs: list[Output], inputs: Inputs) -> str | None:
    """Two outputs on standard output, an output that is an input, or two outputs in one file."""
    on_stdout = [o.label for o in outputs if o.to_stdout]
    if len(on_stdout) > 1:
        return f"{' and '.join(on_stdout)}: only one output can be standard output ('-')"
    seen: dict[str, str] = {}
    for what, path in inputs.items():
        if path is not None and os.fspath(path) != "-":
            key = _identity(Path(path))
            if key is not None:
                seen.setdefault(key, what)
    for output in outputs:
        if output.to_stdout:
            continue
        key = _identity(Path(output.text))
        if key is None:
            continue
        other = seen.get(key)
        if other is not None:
            return f"{output.label} {output.text}: is also {other}; give it a path of its own"
        seen[key] = output.label
    return None


def first_problem(
    outputs: Iterable[Output],
    inputs: Inputs | None = None,
    *,
    append: Probe = can_append,
    create_in: Probe = can_create_in,
) -> str | None:
    """The first problem of ``outputs`` (each, then together with ``inputs``), or None.

    ``inputs`` maps what each input is ("the recipient file") to its path.
    """
    given = [o for o in outputs if o.given]
    for output in given:
        found = problem(output, append=append, create_in=create_in)
        if found is not None:
            return found
    return _clash(given, inputs or {})


def check(outputs: Iterable[Output], inputs: Inputs | None = None) -> None:
    """Raise ``ConfigError`` (exit status 2) with the first problem of ``outputs``."""
    found = first_problem(outputs, inputs)
    if found is not None:
        raise ConfigError(found)
