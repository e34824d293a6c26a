"""How many requests per second the sandbox sustains: ``python -m bulksend.sandbox.bench``.

Spawns ``python -m bulksend.sandbox.cli maxtraffic`` (with any extra flags after ``--``) and
drives it with a lean keep-alive HTTP/1.1 client written on asyncio protocols, so the client
costs little CPU next to the server on a small machine. Every request is a notification with
``--ids`` unique 32-character visitor ids. Prints one JSON object: requests/s, ids/s, statuses
and the server's CPU seconds (Linux).

    python -m bulksend.sandbox.bench --requests 20000 -- --ledger /tmp/l.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence

import orjson

from bulksend.sandbox.testing import SandboxProcess


class _Connection(asyncio.Protocol):
    """Sends ``request`` again each time a complete answer arrives, while ``left`` lasts."""

    def __init__(
        self, request: bytes, left: list[int], done: asyncio.Future[None], statuses: Counter[int]
    ) -> None:
        self.request = request
        self.left = left
        self.done = done
        self.statuses = statuses
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if self.left[0] <= 0:
            self.transport.close()
            return
        self.left[0] -= 1
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            line_end = head.find(b"\r\n", at)
            length = int(head[at + 15 : line_end if line_end >= 0 else len(head)].strip())
            if len(self.buffer) < end + 4 + length:
                return
            self.statuses[int(self.buffer[9:12])] += 1
            self.buffer = self.buffer[end + 4 + length :]
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def notification_request(host: str, port: int, ids: int, key: str) -> bytes:
    body = orjson.dumps(
        {
            "messages": [{"title": "Hello", "body": "World"}],
            "to_ids": [f"{i:032x}" for i in range(ids)],
            "campaign": "bench",
        }
    )
    head = (
        f"POST /v1/notifications HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: key={key}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def drive(
    host: str, port: int, request: bytes, requests: int, connections: int
) -> tuple[float, Counter[int]]:
    """Send ``requests`` copies of ``request`` over ``connections``; (seconds, statuses)."""
    loop = asyncio.get_running_loop()
    left, statuses = [requests], Counter[int]()
    started = time.perf_counter()
    done: list[asyncio.Future[None]] = []
    for _ in range(connections):
        future: asyncio.Future[None] = loop.create_future()
        done.append(future)
        factory = functools.partial(_Connection, request, left, future, statuses)
        await loop.create_connection(factory, host, port)
    await asyncio.gather(*done)
    return time.perf_counter() - started, statuses


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bulksend.sandbox.bench")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--ids", type=int, default=1000, help="ids per request (1000)")
    parser.add_argument("sandbox_args", nargs="*", help="extra sandbox flags (after --)")
    args = parser.parse_args(argv)
    extra = ["--limit", "1000000000", *args.sandbox_args]
    process = SandboxProcess("maxtraffic", *extra)
    url = process.start()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    assert process.process is not None
    pid = process.process.pid
    try:
        request = notification_request(host, int(port), args.ids, "sandbox-key")
        cpu_before = _cpu_seconds(pid)
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            seconds, statuses = asyncio.run(
                drive(host, int(port), request, args.requests, args.connections)
            )
        else:
            seconds, statuses = uvloop.run(
                drive(host, int(port), request, args.requests, args.connections)
            )
        cpu_after = _cpu_seconds(pid)
    finally:
        code = process.stop()
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    result = {
        "requests": args.requests,
        "ids_per_request": args.ids,
        "connections": args.connections,
        "seconds": round(seconds, 3),
        "requests_per_s": round(args.requests / seconds),
        "ids_per_s": round(args.requests * args.ids / seconds),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
        "server_exit": code,
        "sandbox_args": extra,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0 if code == 0 and sum(statuses.values()) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
