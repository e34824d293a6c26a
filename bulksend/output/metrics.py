"""Prometheus metrics of one send: served while it runs (``--metrics-port``), pushed once to a
Pushgateway at its end (``--metrics-push``).

Imported only when metrics are asked for: it needs ``prometheus_client`` (``pip install
'bulksend[metrics]'``), and a send without metrics does not pay for importing it.

What it costs the send: nothing per recipient, and per request one clock reading on each side of
the send plus one bucket count in a plain dictionary (``SendMetrics.timed``, which the engine
calls instead of the transport when metrics are on). Everything else is read when Prometheus
scrapes (or at the push) by one collector, from what the send counts anyway: the ``Summary``,
the scheduler's ``snapshot()`` and the engine's queues. Each send has a ``CollectorRegistry`` of
its own (no global state: a process may run many sends). The exposition is the library's
(``choose_encoder``: the Prometheus text format, or OpenMetrics when the scraper asks for it).

The request duration is OpenTelemetry's ``http.client.request.duration`` (seconds, its advised
buckets), named as Prometheus names it: ``http_client_request_duration_seconds``, with the
labels ``http_request_method``, ``http_response_status_code``, ``error_type``,
``server_address``, ``server_port``, and bulksend's endpoint ``group``. docs/operations.md lists
every metric.
"""

from __future__ import annotations

import asyncio
import os
import socket
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from time import perf_counter
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, push_to_gateway
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bulksend.errors import ConfigError, NoResponse
from bulksend.models import Status

#: OpenTelemetry's advised bucket boundaries for ``http.client.request.duration`` (seconds)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LE = [f"{b:g}" for b in BUCKETS] + ["+Inf"]
#: the Summary's counter of each final state (the others are named as the state)
_SUMMARY_FIELD = {Status.DUPLICATE: "duplicates"}
#: the Pushgateway's job label
JOB = "bulksend"
PATH = "/metrics"


class _Durations:
    """Request durations of one label set: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


#: (group, method, HTTP status or 0 for no answer, the failure's cause or "")
_Key = tuple[str, str, int, str]


class SendMetrics:
    """The metrics of one send. ``attach(engine)`` once the engine exists (before it runs);
    ``registry`` is what a server serves and a push pushes."""

    def __init__(self, *, provider: str, campaign: str) -> None:
        self.provider = provider
        self.campaign = campaign
        #: the Pushgateway's grouping key besides ``job``: the campaign (and a shard's slice)
        self.grouping = {"campaign": campaign}
        self.engine: Any = None
        self.server = ("", "")  # the provider's host and port (from the transport's base URL)
        self.durations: dict[_Key, _Durations] = {}
        self.retries: dict[str, int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(_SendCollector(self))
        ProcessCollector(registry=self.registry)  # CPU, memory, file descriptors (Linux)

    def attach(self, engine: Any) -> None:
        """Count the requests ``engine`` sends, and read its state when collected."""
        self.engine = engine
        engine.metrics = self
        self.server = server_of(getattr(engine.transport, "base_url", ""))

    async def timed(self, transport: Any, group: str, request: Any, retry: bool) -> Any:
        """``transport.send(request)``, timed and counted (a retry when ``retry``)."""
        if retry:
            self.retries[group] = self.retries.get(group, 0) + 1
        start = perf_counter()
        try:
            response = await transport.send(request)
        except NoResponse as exc:
            self._observe((group, request.method, 0, exc.cause), perf_counter() - start)
            raise
        seconds = perf_counter() - start
        key = (group, request.method, response.status, "")
        durations = self.durations.get(key) or self._new(key)  # (inline: once per request)
        durations.counts[bisect_left(BUCKETS, seconds)] += 1
        durations.total += seconds
        return response

    def _new(self, key: _Key) -> _Durations:
        durations = self.durations[key] = _Durations()
        return durations

    def _observe(self, key: _Key, seconds: float) -> None:
        durations = self.durations.get(key) or self._new(key)
        durations.counts[bisect_left(BUCKETS, seconds)] += 1
        durations.total += seconds


def server_of(base_url: str) -> tuple[str, str]:
    """``(host, port)`` of a base URL, the port as the scheme implies when it is not given."""
    try:
        parts = urlsplit(base_url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        return "", ""
    return parts.hostname or "", str(port or "")


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ...; ``none`` for a request that got no answer."""
    return f"{status // 100}xx" if status else "none"


class _SendCollector(Collector):
    """Reads a send's figures when the registry is collected (a scrape or the push)."""

    def __init__(self, metrics: SendMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        info = InfoMetricFamily("bulksend_send", "The send these metrics are of")
        info.add_metric([], {"provider": m.provider, "campaign": m.campaign})
        yield info
        engine = m.engine
        pause = getattr(engine, "pause", None)  # (bulksend.control.pause.PauseControl)
        paused = pause is not None and pause.paused
        yield GaugeMetricFamily(
            "bulksend_paused", "1 while the send is paused (takes no new batches)", int(paused)
        )
        if engine is None:  # not started yet
            return
        yield from _summary_metrics(engine.summary)
        yield from _request_metrics(m)
        yield from _group_metrics(engine.scheduler.snapshot(), m.retries)
        queued, parked = engine.backlog
        yield GaugeMetricFamily(
            "bulksend_queued_batches", "Batches read and waiting for a worker", queued
        )
        yield GaugeMetricFamily(
            "bulksend_parked_batches", "Batches waiting to be retried (backoff, quota)", parked
        )


def _summary_metrics(summary: Any) -> Iterator[Metric]:
    """Counters the send's ``Summary`` keeps (the whole campaign, as the summary counts it)."""
    recipients = CounterMetricFamily(
        "bulksend_recipients", "Recipients by final state", labels=["state"]
    )
    for state in Status:
        value = getattr(summary, _SUMMARY_FIELD.get(state, state.value), None)
        if isinstance(value, int):
            recipients.add_metric([state.value], value)
    yield recipients
    yield CounterMetricFamily(
        "bulksend_rows_read", "Rows read from the recipient file", summary.read
    )
    yield CounterMetricFamily(
        "bulksend_possible_duplicates",
        "Delivered recipients the provider may have received twice",
        summary.possible_duplicates,
    )


def _request_metrics(m: SendMetrics) -> Iterator[Metric]:
    """Requests by group and status class, and their durations (OpenTelemetry's histogram)."""
    requests = CounterMetricFamily(
        "bulksend_requests",
        "Requests that were answered (or got no answer: status_class none)",
        labels=["group", "status_class"],
    )
    histogram = HistogramMetricFamily(
        "http_client_request_duration",
        "Duration of HTTP client requests (OpenTelemetry http.client.request.duration)",
        labels=[
            "group",
            "http_request_method",
            "http_response_status_code",
            "error_type",
            "server_address",
            "server_port",
        ],
        unit="seconds",
    )
    address, port = m.server
    by_class: dict[tuple[str, str], int] = {}
    for (group, method, status, cause), durations in sorted(m.durations.items()):
        cumulative, buckets = 0, []
        for le, count in zip(_LE, durations.counts, strict=True):
            cumulative += count
            buckets.append((le, cumulative))
        error = cause or (str(status) if status >= 400 else "")
        code = str(status) if status else ""
        labels = [group, method, code, error, address, port]
        histogram.add_metric(labels, buckets, durations.total)
        key = (group, status_class(status))
        by_class[key] = by_class.get(key, 0) + cumulative
    for (group, kind), count in sorted(by_class.items()):
        requests.add_metric([group, kind], count)
    yield requests
    yield histogram


def _group_metrics(snapshot: Mapping[str, Any], retries: Mapping[str, int]) -> Iterator[Metric]:
    """What the scheduler believes of each endpoint group's quota, and its load."""
    families = {
        "limit": GaugeMetricFamily(
            "bulksend_quota_limit",
            "Requests per window the group believes it may send",
            labels=["group"],
        ),
        "window": GaugeMetricFamily(
            "bulksend_quota_window_seconds", "The window of that limit", labels=["group"]
        ),
        "remaining": GaugeMetricFamily(
            "bulksend_quota_remaining",
            "Requests the group believes it may still send in the current window",
            labels=["group"],
        ),
        "utilisation": GaugeMetricFamily(
            "bulksend_quota_utilisation_ratio",
            "Share of the current window's limit used (1 - remaining / limit)",
            labels=["group"],
        ),
        "in_flight": GaugeMetricFamily(
            "bulksend_in_flight_requests", "Requests sent and not answered yet", labels=["group"]
        ),
        "waiting": GaugeMetricFamily(
            "bulksend_waiting_requests",
            "Requests waiting for the quota or a free slot",
            labels=["group"],
        ),
    }
    throttled = CounterMetricFamily(
        "bulksend_throttled_responses",
        "Answers that said slow down (429, or the provider's equivalent)",
        labels=["group"],
    )
    retried = CounterMetricFamily(
        "bulksend_retries", "Requests that were a retry of an earlier attempt", labels=["group"]
    )
    for group, stats in snapshot.items():
        limit = stats.limit
        values = {
            "limit": limit,
            "window": stats.window,
            "remaining": stats.remaining,
            "utilisation": 1.0 - stats.remaining / limit if limit > 0 else 0.0,
            "in_flight": stats.in_flight,
            "waiting": stats.waiting,
        }
        for name, family in families.items():
            family.add_metric([group], values[name])
        throttled.add_metric([group], stats.throttled)
        retried.add_metric([group], retries.get(group, 0))
    yield from families.values()
    yield throttled
    yield retried


class MetricsServer:
    """Serves a registry at ``http://HOST:PORT/metrics`` in the running event loop (so a scrape
    reads the send's state between two of its steps, never in the middle of one)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen; returns the URL. A port that cannot be had is a ``ConfigError``."""
        app = web.Application()
        app.router.add_get(PATH, self._serve)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            why = exc.strerror if isinstance(exc, socket.gaierror) else None
            why = why or (os.strerror(exc.errno).lower() if exc.errno else str(exc))
            raise ConfigError(
                f"metrics: cannot listen on {self.host}:{self.port} ({why}); "
                "choose another --metrics-port or --metrics-host"
            ) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{PATH}"

    async def _serve(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def push(metrics: SendMetrics, gateway: str, *, within: float = 10.0) -> str:
    """PUT the final values to a Pushgateway under ``job="bulksend"`` and the metrics'
    ``grouping`` (``/metrics/job/bulksend/campaign/NAME``); returns "" or why it failed."""
    try:
        await asyncio.to_thread(
            push_to_gateway,
            gateway,
            job=JOB,
            registry=metrics.registry,
            grouping_key=metrics.grouping,
            timeout=within,
        )
    except Exception as exc:  # whatever goes wrong, the send's outcome stands
        reason = getattr(exc, "reason", None) or exc
        return f"{type(exc).__name__}: {reason}"
    return ""
