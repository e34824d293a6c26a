"""A live progress line for people on a terminal; nothing when stderr is not a TTY (the
structured ``progress`` log events serve machines there).

    12,345/50,000 24.7%  delivered 12,300  1,234/s  ETA 31s  limit 600/min  429s 0  retries 2
    12,345/50,000 24.7%  paused until 09:00 Europe/Berlin  delivered 12,300  ...

The first figure counts every row settled (delivered, duplicate, invalid, failed, ...), so it
reaches the file's row count; *delivered* and the rate count deliveries. The line is cut to
the terminal's width (a wrapped line could not be redrawn in place), and ``TerminalLine`` lets
log lines and messages written to the same terminal scroll up above it instead of landing
inside it.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bulksend.output.printable import printable, unwrapped
from bulksend.output.report import Summary
from bulksend.ratelimit.scheduler import Scheduler


def count_rows(path: str, *, header: bool = True, limit_bytes: int = 2 << 30) -> int | None:
    """Rows in a plain-text file (newlines, minus a header), or None when that is not cheap."""
    if path == "-" or path.endswith(".gz"):
        return None
    try:
        p = Path(path)
        if p.stat().st_size > limit_bytes:
            return None
        n = 0
        last = b"\n"
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError:
        return None
    n += last != b"\n"
    return max(0, n - header)


def line_parts(
    summary: Summary, total: int | None, elapsed: float, limits: str, paused: str = ""
) -> list[str]:
    """The progress line's parts, most important first (``fit`` drops from the end);
    ``paused``: why the send is paused (no ETA then)."""
    done = summary.accounted
    delivered_now = summary.delivered - summary.delivered_earlier  # not a resumed run's replay
    rate = delivered_now / elapsed if elapsed > 0 else 0.0
    if total:
        parts = [f"{done:,}/{total:,} {min(100.0, 100.0 * done / total):.1f}%"]
    else:
        parts = [f"{done:,} rows"]
    if paused:
        parts.append(paused)
    parts.append(f"delivered {summary.delivered:,}")
    if summary.failed:
        parts.append(f"failed {summary.failed:,}")
    parts.append(f"{rate:,.0f}/s")
    if total and done and done < total and elapsed > 0 and not paused:
        parts.append(f"ETA {eta_text((total - done) / (done / elapsed))}")
    if limits:
        parts.append(f"limit {limits}")
    parts += [f"429s {summary.throttled:,}", f"retries {summary.retries:,}"]
    return parts


def eta_text(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: short, so the line keeps room for the rest."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def limit_text(requests: int, window: float) -> str:
    """``600/min``, ``50/s``, ``1000/h``, else ``100/15s``."""
    unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(window)
    return f"{requests}/{unit}" if unit else f"{requests}/{window:.3g}s"


def fit(parts: list[str], width: int) -> str:
    """As many leading ``parts`` as fit in ``width - 1`` columns (the last column is left free:
    some terminals wrap when it is written)."""
    line = parts[0][: max(0, width - 1)] if parts else ""
    for part in parts[1:]:
        longer = f"{line}  {part}"
        if len(longer) > width - 1:
            break
        line = longer
    return line


class TerminalLine(io.TextIOBase):
    """A terminal stream shared by a status line and everything else written to it.

    A write clears the status line first; once a write ends a line, the status line is drawn
    again below it. With nothing to show it passes writes straight through.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.status = ""
        self._shown = False

    def columns(self) -> int:
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            width = 0
        return width if width > 0 else shutil.get_terminal_size().columns  # else $COLUMNS, 80

    def show(self, line: str) -> None:
        """Draw ``line`` as the status line (replacing the one shown)."""
        self.status = line = printable(line)
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()
        self._shown = True

    def keep(self) -> None:
        """Leave the status line shown as it is, end it, and stop redrawing it."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
        self.status, self._shown = "", False

    def write(self, text: str) -> int:
        if self._shown and text:
            self.stream.write("\r\x1b[2K")
            self._shown = False
        n = self.stream.write(text)
        if self.status and text.endswith("\n"):
            self.stream.write(self.status)
            self._shown = True
        return n

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def shows_progress(mode: str | None, stream: TextIO) -> bool:
    """Whether ``--progress MODE`` draws the live line on ``stream``."""
    return mode == "always" or (mode == "auto" and stream.isatty())


class ProgressView:
    """Redraws one line on ``stream`` every ``interval`` seconds while the send runs."""

    def __init__(
        self,
        stream: TextIO,
        summary: Summary,
        scheduler: Callable[[], Scheduler | None],
        total: int | None,
        *,
        interval: float = 0.25,
        paused: Callable[[], str] | None = None,
    ) -> None:
        stream = unwrapped(stream)  # the line's own control sequences are not escaped
        self.line = stream if isinstance(stream, TerminalLine) else TerminalLine(stream)
        self.summary = summary
        self._scheduler = scheduler
        self.total = total
        self.interval = interval
        self._paused = paused
        self._task: asyncio.Task[None] | None = None

    def _limits(self) -> str:
        sched = self._scheduler()
        if sched is None:
            return ""
        return ", ".join(limit_text(g.limit, g.window) for g in sched.snapshot().values())

    def draw(self, elapsed: float) -> None:
        paused = self._paused() if self._paused is not None else ""
        parts = line_parts(self.summary, self.total, elapsed, self._limits(), paused)
        self.line.show(fit(parts, self.line.columns()))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            self.draw(loop.time() - start)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self.draw(self.summary.elapsed)
            self.line.keep()
