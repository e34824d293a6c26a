"""A real gateway: nginx ``limit_req`` in front of bulksend's sandbox, on loopback.

``gateway(directory, rate=20, ...)`` starts the MaxTraffic sandbox with no limit of its own and
no rate-limit headers (nginx adds none either: bulksend must find the rate from refusals), then
one nginx process in front of it (``daemon off; master_process off;``: no user switching, no
children; its pid, logs and temp paths in ``directory``), and stops both on the way out. nginx
logs every answer as ``$msec $status``.

nginx's ``limit_req`` is a leaky bucket in milliseconds: without ``burst`` a request that comes
less than ``1000 / rate`` ms after the previous accepted one is refused; ``burst=B`` lets B
excess requests through (``nodelay``: at once; else delayed to the rate). Refusals are 503 unless
``limit_req_status`` says otherwise, with an HTML body and no Retry-After.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bulksend.distributed.testing import free_port
from bulksend.sandbox.testing import SandboxProcess, Started
from tests.peers.measure import Answer, read_nginx_log
from tests.peers.process import stop, wait_for_port

UNAVAILABLE = (
    "NGINX UNAVAILABLE -- the real-gateway tests did NOT run: install nginx "
    "(apt-get install nginx-light); .ci/run does it"
)
#: where Debian and source builds put the binary when /usr/sbin is not on the PATH
_PLACES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    """The nginx executable, or None when there is none."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in _PLACES if Path(p).is_file()), None)


@dataclass(frozen=True, slots=True)
class Limit:
    """One ``limit_req`` setting."""

    rate: int  # requests per second
    burst: int = 0
    nodelay: bool = False
    status: int | None = 429  # None: nginx's default, 503
    key: str = "$binary_remote_addr"  # every test client is 127.0.0.1: one client

    def directive(self) -> str:
        burst = f" burst={self.burst}" if self.burst else ""
        nodelay = " nodelay" if self.nodelay else ""
        return f"limit_req zone=peers{burst}{nodelay};"


def render_conf(directory: Path, port: int, upstream: str, limit: Limit) -> str:
    """nginx.conf for one process on 127.0.0.1:port proxying to ``upstream`` (host:port)."""
    d = directory.resolve()
    temp_paths = "\n".join(f"    {name}_temp_path {d / name};" for name in _TEMP_PATHS)
    status = f"    limit_req_status {limit.status};\n" if limit.status else ""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
events {{
    worker_connections 256;
}}
http {{
    log_format peers '$msec $status';
    access_log {d / "access.log"} peers;
{temp_paths}
    limit_req_zone {limit.key} zone=peers:1m rate={limit.rate}r/s;
{status}    upstream sandbox {{
        server {upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            {limit.directive()}
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class Nginx(Started):
    """nginx in a child process with everything in ``directory``."""

    def __init__(self, directory: Path, upstream: str, limit: Limit, binary: str) -> None:
        self.directory = directory
        self.upstream = upstream
        self.limit = limit
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def start(self, tries: int = 3) -> str:
        """Start nginx on a free port (another try if the port was taken meanwhile)."""
        for _ in range(tries):
            if self._start_once(free_port()):
                return self.base_url
        raise RuntimeError(f"nginx did not start: {self.errors()}")

    def _start_once(self, port: int) -> bool:
        self.port = port
        conf = self.directory / "nginx.conf"
        conf.write_text(render_conf(self.directory, port, self.upstream, self.limit))
        argv = [self.binary, "-c", str(conf), "-p", f"{self.directory}/"]
        argv += ["-e", str(self.directory / "error.log")]
        with (self.directory / "stderr.log").open("ab") as err:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.directory
            )
        try:
            if wait_for_port(self.process, "127.0.0.1", port):
                return True
        except BaseException:
            stop(self.process)
            raise
        stop(self.process)
        return False

    def stop(self) -> None:
        stop(self.process)

    def errors(self) -> str:
        """The end of nginx's error log and stderr, for a failure message."""
        texts = []
        for name in ("error.log", "stderr.log"):
            path = self.directory / name
            if path.exists():
                texts.append(path.read_text(errors="replace")[-1500:])
        return "\n".join(texts)

    def answers(self) -> list[Answer]:
        return read_nginx_log(self.access_log) if self.access_log.exists() else []


def upstream_of(url: str) -> str:
    """``host:port`` of a base URL."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@contextmanager
def gateway(directory: Path, limit: Limit, *, api_key: str, binary: str) -> Iterator[Nginx]:
    """The sandbox (no limit, no rate headers) behind nginx ``limit``; both stopped after."""
    sandbox_args = ["--api-key", api_key, "--limit", "1000000", "--window", "1"]
    sandbox_args += ["--no-ratelimit-headers"]
    directory.mkdir(parents=True, exist_ok=True)
    with (
        SandboxProcess("maxtraffic", *sandbox_args) as sandbox,
        Nginx(directory, upstream_of(sandbox.base_url), limit, binary) as nginx,
    ):
        yield nginx
