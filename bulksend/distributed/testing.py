"""A throw-away ``redis-server`` on loopback for tests, benchmarks and demos.

    with RedisServer() as server:          # a free port, no persistence, a temporary directory
        url = server.url                   # redis://127.0.0.1:PORT/0
        server.kill()                      # SIGKILL: the data is gone, as in a crash
        server.start()                     # again on the same port

``RedisServer(extra=["--appendonly", "yes"])`` adds ``redis-server`` arguments (persistence, ACL
users, ...). ``RedisServer.available()`` says whether a ``redis-server`` binary is on the PATH.
Nothing here needs the ``redis`` Python package (readiness is checked with a raw ``PING``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from bulksend.sandbox.testing import stop_process

__all__ = ["RedisServer", "free_port", "ping"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis answers ``PING`` at host:port (or asks to authenticate first)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # (up, with users)
    except OSError:
        return False


class RedisServer:
    """``redis-server`` in a child process, bound to loopback, without persistence."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.host = host
        #: more ``redis-server`` arguments, after the defaults (``--appendonly yes`` wins)
        self.extra = list(extra)
        self.port = port or free_port(host)
        self.binary = binary or shutil.which("redis-server") or "redis-server"
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        """Start (or start again, on the same port) and return the URL once it answers."""
        if self.process is not None and self.process.poll() is None:
            return self.url
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="bulksend-redis-")
        argv = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            str(Path(self._dir.name) / "redis.log"),
        ]
        argv += self.extra
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if ping(self.host, self.port):
                return self.url
            time.sleep(0.02)
        code = self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port} (exit {code})")

    def kill(self) -> None:
        """SIGKILL, as in a crash: connections drop and the data is gone."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        process, self.process = self.process, None
        return stop_process(process, sig, timeout)

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
