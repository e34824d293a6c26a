"""A live progress line for people on a terminal; nothing when stderr is not a TTY (the
structured ``progress`` log events serve machines there).

    delivered 12,345/50,000  24.7%  1,234/s  ETA 0:00:31  429s 0  retries 2  limit 600/60s
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bulksend.report import Summary
from bulksend.scheduler import Scheduler


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


def render_line(summary: Summary, total: int | None, elapsed: float, limits: str) -> str:
    done = summary.accounted
    rate = summary.delivered / elapsed if elapsed > 0 else 0.0
    parts = [f"delivered {summary.delivered:,}" + (f"/{total:,}" if total else "")]
    if total:
        parts.append(f"{min(100.0, 100.0 * done / total):5.1f}%")
    parts.append(f"{rate:,.0f}/s")
    if total and rate > 0 and done < total:
        eta = (total - done) / (done / elapsed) if done else 0
        parts.append(f"ETA {dt.timedelta(seconds=round(eta))}")
    parts += [f"429s {summary.throttled:,}", f"retries {summary.retries:,}"]
    if summary.failed:
        parts.append(f"failed {summary.failed:,}")
    if limits:
        parts.append(f"limit {limits}")
    return "  ".join(parts)


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
    ) -> None:
        self.stream = stream
        self.summary = summary
        self._scheduler = scheduler
        self.total = total
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def _limits(self) -> str:
        sched = self._scheduler()
        if sched is None:
            return ""
        return ", ".join(f"{g.limit}/{g.window:g}s" for g in sched.snapshot().values())

    def draw(self, elapsed: float) -> None:
        line = render_line(self.summary, self.total, elapsed, self._limits())
        self.stream.write("\r\x1b[2K" + line)
        self.stream.flush()

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
            self.stream.write("\n")
            self.stream.flush()
