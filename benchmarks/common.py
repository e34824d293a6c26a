"""Helpers shared by the benchmarks: a sandbox in its own process, recipient files, timing."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog

from bulksend.output import logs
from bulksend.sandbox.testing import SandboxProcess

KEY = "bench-key"
#: the start of the benchmarks' MaxTraffic campaign, ``{path}`` its recipient file (a template
#: for ``str.format``: add the tables a benchmark needs, ``[send]`` or ``[auth]``)
CAMPAIGN_HEAD = """provider = "maxtraffic"
name = "bench"
[message]
campaign = "bench"
messages = [{{ title = "Benchmark", body = "hello" }}]
[recipients]
path = "{path}"
"""


@contextmanager
def sandbox_process(provider: str = "maxtraffic", *args: str) -> Iterator[str]:
    """Start ``bulksend sandbox`` in a separate process; yields its base URL."""
    with sandbox_child(provider, *args) as process:
        yield process.base_url


@contextmanager
def sandbox_child(provider: str = "maxtraffic", *args: str) -> Iterator[SandboxProcess]:
    """Start ``bulksend sandbox`` in a separate process; yields it (``base_url``, ``process``)."""
    process = SandboxProcess(provider, "--api-key", KEY, *args)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def cli_logging() -> Iterator[None]:
    """structlog set up as the CLI does at INFO (JSON), written to a null stream: the engine
    pays for its log calls as in a real send, and the benchmark's output stays readable."""
    with open(os.devnull, "w") as devnull:
        logs.configure(level=logging.INFO, fmt="json", stream=devnull)
        try:
            yield
        finally:
            structlog.reset_defaults()  # the next benchmark logs as it would on its own


def write_rows(path: Path, n: int, *, header: str = "id,uid") -> Path:
    """``n`` unique rows of a 32-hex id and a uuid-like uid."""
    with path.open("w") as f:
        f.write(header + "\n")
        f.writelines(f"{i:032x},u-{i:08d}-{i % 9973:04d}\n" for i in range(n))
    return path


def machine() -> str:
    cpus = os.cpu_count()
    return f"{platform.machine()}, {cpus} cores, Python {platform.python_version()}"


def ratio_line(name: str, value: float, baseline: float, unit: str) -> str:
    ratio = value / baseline if baseline else float("nan")
    return f"{name}: {value:,.0f} {unit} vs {baseline:,.0f} {unit} baseline -> ratio {ratio:.2f}"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
