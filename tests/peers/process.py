"""Child processes of the peers: wait until a port answers, stop for sure."""

from __future__ import annotations

import socket
import subprocess
import time

from bulksend.sandbox.testing import stop_process


def port_answers(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts a TCP connection at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    process: subprocess.Popen[bytes], host: str, port: int, timeout: float = 10.0
) -> bool:
    """Poll until host:port accepts connections; False if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if port_answers(host, port):
            return True
        time.sleep(0.02)
    return False


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
    return stop_process(process, timeout=timeout)
