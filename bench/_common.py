"""Shared benchmark plumbing: databases to run on, timed concurrent loops, reports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from pipeline_db import DatabaseConfig, PipelineDBError, TransientError, database_config

ADMIN_URL = os.environ.get(
    "PIPELINE_BENCH_POSTGRES_URL",
    os.environ.get("PIPELINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)


@dataclass
class Result:
    """The outcome of one timed run."""

    name: str
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        """Completed operations per second."""
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
        return ordered[index] * 1000

    @property
    def lock_errors(self) -> int:
        """Errors that were a locked database (SQLite BUSY/LOCKED) reaching the caller."""
        return self.errors["busy"] + self.errors["locked"]


async def timed(
    name: str,
    operation: Callable[[int, int], Awaitable[object]],
    *,
    concurrency: int,
    seconds: float,
) -> Result:
    """Run ``operation(task, iteration)`` in ``concurrency`` tasks for ``seconds``."""
    result = Result(name, concurrency, seconds)
    deadline = time.perf_counter() + seconds

    async def worker(task: int) -> None:
        iteration = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await operation(task, iteration)
            except TransientError as error:
                result.errors[error.cause or "transient"] += 1
            except (PipelineDBError, asyncpg.PostgresError, OSError) as error:
                result.errors[type(error).__name__] += 1
            else:
                result.latencies.append(time.perf_counter() - started)
            iteration += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


def median(values: list[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def admin_dsn(database: str | None = None) -> str:
    """A libpq DSN of the benchmark server, optionally for another database."""
    url = make_url(ADMIN_URL).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def postgres_database(**overrides: object) -> AsyncIterator[tuple[DatabaseConfig, str]]:
    """A fresh PostgreSQL database for the run; yields (config, plain DSN); dropped after."""
    name = f"pdbbench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=name)
    config = database_config(
        {"type": "postgresql", "url": url.render_as_string(hide_password=False), **overrides},
        environ={},
    )
    try:
        yield config, admin_dsn(name)
    finally:
        admin = await asyncpg.connect(admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.contextmanager
def sqlite_database(**overrides: object) -> Iterator[DatabaseConfig]:
    """A SQLite file in a temporary folder for the run."""
    with tempfile.TemporaryDirectory(prefix="pdbbench_") as folder:
        path = Path(folder) / "pipeline.db"
        yield database_config({"type": "sqlite", "path": str(path), **overrides}, environ={})


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain-text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)
