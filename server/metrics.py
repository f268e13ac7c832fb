"""Prometheus metrics, correct across several worker processes.

With ``pipeline-db serve --workers N`` the CLI points ``PROMETHEUS_MULTIPROC_DIR``
at a fresh folder before the workers start; every process writes its samples
there and ``GET /metrics`` merges them (prometheus-client's multiprocess mode).
Queue figures come from the database at scrape time, as they are global.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline_db import Database, PoolStatus
from pipeline_db.models import JobStats

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_CACHED_LABELS = 512
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "pipeline_http_requests_total", "HTTP requests answered.", ["route", "method", "status"]
)
LATENCY = Histogram(
    "pipeline_http_request_duration_seconds",
    "HTTP request latency.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
POOL = Gauge(
    "pipeline_db_pool_connections",
    "Connection pool state (size, checked_out, checked_in, overflow, waiting).",
    ["state"],
    multiprocess_mode="livesum",
)
POOL_WAIT = Histogram(
    "pipeline_db_pool_wait_seconds",
    "Time spent waiting for a database connection slot.",
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter(
    "pipeline_db_transaction_retries_total", "Transactions retried, by cause.", ["cause"]
)
JOB_DURATION = Histogram(
    "pipeline_job_duration_seconds",
    "Job run time in this process's runners.",
    ["kind", "status"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600),
)


def observe_pool(status: PoolStatus) -> None:
    """Publish this process's pool figures."""
    for state in ("size", "checked_out", "checked_in", "overflow", "waiting"):
        POOL.labels(state).set(getattr(status, state))


def render(stats: JobStats | None) -> tuple[bytes, str]:
    """The metrics text, merged across processes when in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = CollectorRegistry()
        for collector in list(REGISTRY._collector_to_names):
            registry.register(collector)
    if stats is not None:
        registry.register(_JobsCollector(stats))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _JobsCollector:
    def __init__(self, stats: JobStats) -> None:
        self._stats = stats

    def collect(self) -> list[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "pipeline_jobs", "Jobs in the queue, by status.", labels=["status"]
        )
        for status, count in self._stats.by_status.items():
            jobs.add_metric([status], count)
        oldest = GaugeMetricFamily(
            "pipeline_jobs_oldest_queued_age_seconds", "Age of the oldest queued job."
        )
        oldest.add_metric([], self._stats.oldest_queued_age_seconds or 0.0)
        return [jobs, oldest]


class MetricsMiddleware:
    """Count and time every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled children, looked up once per label set (labels() takes a lock).
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            labels = (template, scope["method"], str(status))
            children = self._children.get(labels)
            if children is None:
                children = REQUESTS.labels(*labels), LATENCY.labels(*labels)
                if len(self._children) < MAX_CACHED_LABELS:  # methods come from clients
                    self._children[labels] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


def attach(db: Database) -> None:
    """Export the database's retries and pool waits."""
    db.observers.append(_DatabaseObserver())


class _DatabaseObserver:
    def retried(self, cause: str) -> None:
        RETRIES.labels(cause).inc()

    def waited(self, seconds: float) -> None:
        POOL_WAIT.observe(seconds)
