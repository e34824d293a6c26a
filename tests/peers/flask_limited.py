"""MaxTraffic's send endpoint behind Flask-Limiter: a server-side limiter nobody here wrote.

Run as a child process (``FlaskLimited`` does it)::

    python -m tests.peers.flask_limited --limit "50 per second" --strategy fixed-window \\
        --api-key KEY --log answers.jsonl

It binds 127.0.0.1 (port 0: a free one), prints the bound port alone on the first line of
stdout and serves ``POST /v1/notifications`` with werkzeug's threaded server until SIGTERM.
Flask-Limiter (memory storage, one constant key: every request is one client) decides every
refusal and writes every rate-limit header itself (``headers_enabled=True``). As installed
(Flask-Limiter 4.1, limits 5.8), for the record:

* ``X-RateLimit-Limit`` is the count only (no window); ``X-RateLimit-Remaining``;
  ``X-RateLimit-Reset`` an epoch in whole seconds, ``int(reset + 1)``: up to 2 s after the
  window really frees.
* ``Retry-After`` (seconds until that Reset, truncated) is sent on *every* answer, 200s too.
* A fixed window in memory starts at the first hit after the previous one expired, so its phase
  follows the traffic, not the clock; a moving window counts the last second at any moment.
* A refusal is Flask-Limiter's own 429 (an HTML body).

Every answer is logged as one JSON line: ``{"t": monotonic, "wall": epoch, "status": 200,
"n": recipients}``, ``t`` taken when the request reached the WSGI app.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

import orjson

from bulksend.sandbox.testing import Started
from tests.peers.measure import Answer, read_jsonl_log
from tests.peers.process import stop

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "/v1/notifications"
STRATEGIES = ("fixed-window", "moving-window")
#: the WSGI environ key the view leaves the request's recipient count in, for the log
RECIPIENTS = "peers.recipients"
UNAVAILABLE = (
    "FLASK-LIMITER UNAVAILABLE -- the real-limiter tests did NOT run: "
    "pip install -e '.[dev]' (it brings flask and flask-limiter)"
)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def available() -> bool:
    """True when flask and flask_limiter can be imported by this interpreter."""
    return all(importlib.util.find_spec(name) is not None for name in ("flask", "flask_limiter"))


# ---- the server (child process) ----------------------------------------------------------


class AnswerLog:
    """WSGI middleware: one JSON line per answer (arrival time, status, recipients)."""

    def __init__(self, app: WsgiApp, out: IO[bytes]) -> None:
        self.app = app
        self.out = out
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        arrived, wall = time.monotonic(), time.time()
        statuses: list[int] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(int(status.split(" ", 1)[0]))
            return start_response(status, headers, exc_info)

        body = self.app(environ, capture)
        row = {"t": arrived, "wall": wall, "status": statuses[-1] if statuses else 0}
        row["n"] = environ.get(RECIPIENTS, 0)
        with self.lock:
            self.out.write(orjson.dumps(row) + b"\n")
            self.out.flush()
        return body


def build_app(limit: str, strategy: str, api_key: str) -> Any:
    """The Flask app: MaxTraffic's send endpoint, every request limited by ``limit``."""
    from flask import Flask, jsonify, request
    from flask_limiter import Limiter

    app = Flask("flask_limited")
    Limiter(
        lambda: "one-client",
        app=app,
        default_limits=[limit],
        strategy=strategy,
        storage_uri="memory://",
        headers_enabled=True,
    )

    @app.post(ENDPOINT)
    def notifications() -> Any:
        if request.headers.get("Authorization") != f"key={api_key}":
            return jsonify(success=False, message="invalid API key"), 401
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not (body.get("to_ids") or body.get("to_uids")):
            return jsonify(success=False, message="to_ids or to_uids is required"), 422
        ids, uids = body.get("to_ids") or [], body.get("to_uids") or []
        request.environ[RECIPIENTS] = max(len(ids), len(uids))
        return jsonify(success=True)

    return app


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(args: argparse.Namespace) -> int:
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    app = build_app(args.limit, args.strategy, args.api_key)
    with args.log.open("ab") as out:
        app.wsgi_app = AnswerLog(app.wsgi_app, out)
        server = make_server(args.host, args.port, app, threaded=True)
        signal.signal(signal.SIGTERM, _terminate)
        print(server.server_port, flush=True)
        try:
            server.serve_forever(poll_interval=0.1)
        finally:
            server.server_close()
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--limit", required=True, help='a limits string, e.g. "50 per second"')
    parser.add_argument("--strategy", choices=STRATEGIES, default="fixed-window")
    parser.add_argument("--api-key", required=True, help="the accepted key (key=... header)")
    parser.add_argument("--log", type=Path, required=True, help="answers, as JSON Lines")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return serve(parse_args(argv))


# ---- the launcher (test process) ---------------------------------------------------------


def first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first line on stdout, stripped ("" if none within ``timeout``)."""
    if process.stdout is None:
        return ""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().decode().strip() if ready else ""


class FlaskLimited(Started):
    """The peer in a child process: ``with FlaskLimited(dir, limit=..., ...) as peer``."""

    def __init__(
        self, directory: Path, *, limit: str, strategy: str, api_key: str, host: str = "127.0.0.1"
    ) -> None:
        self.log = directory / "flask-answers.jsonl"
        self.host = host
        self.argv = [
            sys.executable, "-m", "tests.peers.flask_limited", "--limit", limit,
            "--strategy", strategy, "--api-key", api_key, "--log", str(self.log), "--host", host,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.stderr = ""  # what the child wrote to stderr, once stopped
        self.base_url = ""

    def start(self, timeout: float = 20.0) -> str:
        """Start the child; its base URL once it listens."""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._stderr,
        )  # fmt: skip
        try:
            line = first_line(self.process, timeout)
        except BaseException:
            self.stop()
            raise
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the Flask-Limiter peer did not start: {line!r} {self.stderr}")
        self.base_url = f"http://{self.host}:{int(line)}"
        return self.base_url

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and keep the end of its stderr."""
        stop(self.process)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        if self._stderr is not None:
            self._stderr.seek(0)
            self.stderr = self._stderr.read().decode("utf-8", "replace")[-2000:]
            self._stderr.close()
            self._stderr = None

    def answers(self) -> list[Answer]:
        return read_jsonl_log(self.log) if self.log.exists() else []


if __name__ == "__main__":
    sys.exit(main())
