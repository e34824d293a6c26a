"""Test helpers (product code, so tests, benchmarks and the demo share them).

* ``sandbox(provider, tmp_path=..., **settings)``: an async context manager serving a sandbox in
  the current loop with its ledger in ``tmp_path``; wrap it in a fixture::

      @pytest.fixture
      async def maxtraffic(tmp_path):
          async with sandbox("maxtraffic", tmp_path=tmp_path, limit=50) as sb:
              yield sb

* ``FakeClock``: a clock to hand to ``sandbox(..., clock=...)`` to drive windows and storms.
* ``SandboxProcess``: the CLI in a child process (``python -m bulksend.sandbox.cli``), for
  benchmarks and end-to-end tests: ``with SandboxProcess("maxtraffic", "--limit", "60") as p``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from bulksend.sandbox.common import Clock
from bulksend.sandbox.config import FaultConfig, SandboxConfig
from bulksend.sandbox.server import Sandbox, running

LISTENING = re.compile(r"^bulksend sandbox (?P<name>\S+) listening on (?P<url>http://\S+)$")


def parse_listening_line(line: str) -> str | None:
    """The base URL from the CLI's start line, or None if ``line`` is not that line."""
    match = LISTENING.match(line.strip())
    return match.group("url") if match else None


class Started:
    """A context manager of something with ``start()`` and ``stop()`` (a child process, a
    server): started on entry, stopped on exit, whatever happened in between."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class FakeClock:
    """A monotonic clock the test moves by hand: ``clock.advance(10)``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(
    provider: str = "maxtraffic",
    *,
    tmp_path: Path | None = None,
    faults: FaultConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> SandboxConfig:
    """A config with a ledger in ``tmp_path`` (unless ``ledger`` is given) and ``settings``."""
    if tmp_path is not None and "ledger" not in settings:
        settings["ledger"] = tmp_path / f"{provider}-ledger.jsonl"
    if isinstance(faults, Mapping):
        faults = FaultConfig(**faults)
    if faults is not None:
        settings["faults"] = faults
    return SandboxConfig(provider=provider, **settings)


@asynccontextmanager
async def sandbox(
    provider: str = "maxtraffic",
    *,
    tmp_path: Path | None = None,
    clock: Clock | None = None,
    wall: Clock | None = None,
    faults: FaultConfig | Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Sandbox]:
    """Serve a sandbox on a free loopback port for the duration of the block."""
    config = make_config(provider, tmp_path=tmp_path, faults=faults, **settings)
    async with running(config, clock=clock, wall=wall) as sb:
        yield sb


class SandboxProcess(Started):
    """``python -m bulksend.sandbox.cli PROVIDER --port 0 ARGS...`` in a child process."""

    def __init__(
        self,
        provider: str,
        *args: str,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.argv = [python, "-m", "bulksend.sandbox.cli", provider, "--port", "0", *args]
        self.env = dict(os.environ if env is None else env)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.first_line = ""
        self.stdout_rest = ""
        self.stderr = ""
        self._stderr: IO[bytes] | None = None

    def start(self) -> str:
        """Start the child and return its base URL once it listens."""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=self.env,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.start_timeout)
        line = self.process.stdout.readline() if ready else ""
        url = parse_listening_line(line)
        if url is None:
            code = self.stop()
            why = self.stderr_text().strip() or f"it printed {line!r}"
            raise RuntimeError(f"sandbox did not start (exit {code}): {why}")
        self.first_line, self.base_url = line.rstrip("\n"), url
        return url

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the child and return its exit status (killed after ``timeout``)."""
        process = self.process
        if process is None:
            return 0
        stop_process(process, sig, timeout)
        if process.stdout is not None and not process.stdout.closed:
            self.stdout_rest = process.stdout.read()
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.seek(0)
            self.stderr = self._stderr.read().decode("utf-8", "replace")
            self._stderr.close()
            self._stderr = None
        return process.returncode

    def stderr_text(self) -> str:
        """What the child wrote to stderr (complete after ``stop``)."""
        return self.stderr

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the running child has used so far (read from Linux's
        ``/proc``; None elsewhere, or once it has stopped)."""
        process = self.process
        if process is None or process.poll() is not None:
            return None
        try:
            stat = Path(f"/proc/{process.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(
    process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Signal a child (SIGTERM by default), kill it after ``timeout``; its exit status, or None
    when there was none."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes (for process tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
