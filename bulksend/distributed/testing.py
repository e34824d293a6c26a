"""A throw-away ``redis-server`` on loopback for tests, benchmarks and demos.

    with RedisServer() as server:          # a free port, no persistence, a temporary directory
        url = server.url                   # redis://127.0.0.1:PORT/0
        server.kill()                      # SIGKILL: the data is gone, as in a crash
        server.start()                     # again on the same port

``RedisServer(extra=["--appendonly", "yes"])`` adds ``redis-server`` arguments (persistence, ACL
users, ...). ``RedisServer.available()`` says whether a ``redis-server`` binary is on the PATH.
Nothing here needs the ``redis`` Python package (readiness is checked with a raw ``PING``).

TLS (``rediss://``): ``make_certificates(folder)`` makes a CA and a certificate for 127.0.0.1
with the ``openssl`` CLI; ``RedisServer(tls=certificates)`` then listens with TLS only (its
``url`` is ``rediss://127.0.0.1:PORT/0``; clients must trust ``certificates.ca``)::

    with RedisServer(tls=make_certificates(tmp_path)) as server:
        url = f"{server.url}?ssl_ca_certs={certificates.ca}"
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bulksend.sandbox.testing import stop_process

__all__ = ["Certificates", "RedisServer", "free_port", "make_certificates", "ping"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def ping(host: str, port: int, timeout: float = 0.5, tls: ssl.SSLContext | None = None) -> bool:
    """True when a Redis answers ``PING`` at host:port (or asks to authenticate first); with
    ``tls``, over TLS."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if tls is None:
                return _pong(raw)
            with tls.wrap_socket(raw, server_hostname=host) as wrapped:
                return _pong(wrapped)
    except OSError:
        return False


def _pong(s: socket.socket) -> bool:
    s.sendall(b"PING\r\n")
    return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # (up, with users)


@dataclass(frozen=True, slots=True)
class Certificates:
    """A test CA and a server certificate signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


#: the server certificate's extensions: what a TLS client checks (the address, the use)
_SERVER_EXTENSIONS = """\
subjectAltName = IP:{host}
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(folder: Path, host: str = "127.0.0.1", days: int = 2) -> Certificates:
    """A CA and a certificate for ``host`` signed by it, made in ``folder`` with the
    ``openssl`` CLI (P-256 keys); a RuntimeError with openssl's message when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, request = folder / "server.crt", folder / "server.key", folder / "server.csr"
    extensions = folder / "server.ext"
    extensions.write_text(_SERVER_EXTENSIONS.format(host=host))
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-days", days,
        "-subj", "/CN=bulksend test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl("req", *new_key, "-keyout", key, "-out", request, "-subj", f"/CN={host}")
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", days, "-extfile", extensions,
    )  # fmt: skip
    return Certificates(ca, cert, key)


def _openssl(*args: object) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed")
    done = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


class RedisServer:
    """``redis-server`` in a child process, bound to loopback, without persistence."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str | None = None,
        extra: Sequence[str] = (),
        tls: Certificates | None = None,
    ) -> None:
        self.host = host
        #: TLS only (``rediss://``) with this certificate; clients need not show one
        self.tls = tls
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
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{self.host}:{self.port}/0"

    def log(self) -> str:
        """What redis-server wrote so far: its output (a bad argument), then its log file."""
        if self._dir is None:
            return ""
        paths = [Path(self._dir.name) / name for name in ("redis.out", "redis.log")]
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
        ]  # fmt: skip

    def _context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca))

    def start(self, timeout: float = 10.0) -> str:
        """Start (or start again, on the same port) and return the URL once it answers."""
        if self.process is not None and self.process.poll() is None:
            return self.url
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="bulksend-redis-")
        argv = [
            self.binary,
            *self._listen(),
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
        with (Path(self._dir.name) / "redis.out").open("ab") as out:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        context = self._context()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if ping(self.host, self.port, tls=context):
                return self.url
            time.sleep(0.02)
        code = self.stop()
        last = (self.log().strip().splitlines() or ["(no log)"])[-1]
        raise RuntimeError(f"redis-server did not start on port {self.port} (exit {code}): {last}")

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
