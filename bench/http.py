"""HTTP: the API under load, beside the database-bound limit measured in the same run.

``wrk`` (``apt-get install wrk``) keeps 50 connections busy for 15 s on each case,
with a Lua script that varies the episode per request:

* ``read``: ``GET /episodes/{id}`` of a random episode;
* ``register``: ``POST /episodes`` of a new episode (a unique id and hash);
* ``advance``: ``PATCH /episodes/{id}`` with ``{"stage": S, "force": true}`` on a
  random episode, cycling through the stages as bench/write.py does.

Each case runs against ``pipeline-db serve`` with 1 and 4 uvicorn workers on
PostgreSQL and on SQLite, both seeded with the same 10,000 generated episodes
(bench/_dataset.py). Beside them, on the same 2 shared cores:

* ``raw asyncpg``: the same read (``SELECT`` of every column by id) and the same
  writes (bench/write.py's raw stage advance: BEGIN; UPDATE; INSERT processing_log;
  COMMIT; and a minimal registration: BEGIN; INSERT episodes; INSERT
  processing_log; COMMIT) on one asyncpg pool of the server's total pool size,
  50 tasks, in this process: the database-bound limit;
* ``constant``: a bare Starlette endpoint returning a constant, served by uvicorn
  with the same worker count and options: the HTTP stack's limit;
* ``read (starlette + asyncpg)``: the floor of any Python HTTP read here: a bare
  Starlette endpoint doing the raw read on its own asyncpg pool and returning
  the row as JSON (no SQLAlchemy, no validation, no middleware), same workers.

Each raw case runs right before its HTTP case, so that the noise of the shared
cores falls on both; ratios are of the two. Every worker count gets the same
total of PostgreSQL connections, ``TOTAL_POOL`` (``pool_size = TOTAL_POOL /
workers``, no overflow: a QueuePool closes overflow connections on return, and
reconnecting under sustained load would measure churn), the raw pool's size.
The server runs with ``server.access_log: false`` (uvicorn's line per request
cost a fifth of a worker's CPU on a read). Errors are wrk's socket errors plus
non-2xx answers; the server's /metrics splits them by status (a SQLite lock
error reaching a client is a 503) and gives the mean wait for a pool slot.

Targets (issue 5): 0 errors everywhere; on PostgreSQL the best worker count
reaches >= 0.9x the raw-asyncpg limit for both the read and the stage advance,
with p99 <= 50 ms; on SQLite with 4 workers, p99 <= 250 ms and 0 lock errors.
Without wrk on PATH an httpx load generator in this process stands in (same
concurrency, clearly labelled; its own CPU cost lowers every HTTP figure).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from bench._common import postgres_database, sqlite_database, table, timed
from bench._dataset import EPISODES as DATASET_EPISODES
from bench._dataset import generate, load_postgres, load_sqlite
from bench._http import (
    CONNECTIONS,
    Load,
    Measured,
    Server,
    difference,
    environment,
    scrape,
    serving,
)
from bench.write import RAW_INSERT, RAW_UPDATE
from pipeline_db import Database
from pipeline_db.migrations import upgrade
from pipeline_db.schema import STAGES, episodes

SECONDS = 15.0
WARMUP_S = 2.0
WORKERS = (1, 4)
#: PostgreSQL connections of the whole server, whatever its worker count.
TOTAL_POOL = 20
#: Episodes at scale 1 (the dataset's 100,000 times this share).
EPISODES = 10_000
CASES = ("read", "register", "advance")
TARGET_RATIO = 0.9
TARGET_PG_P99_MS = 50.0
TARGET_SQLITE_P99_MS = 250.0

RAW_READ = f"SELECT {', '.join(c.name for c in episodes.c)} FROM episodes WHERE id = $1"
RAW_REGISTER = "INSERT INTO episodes (id, hash, source_path) VALUES ($1, $2, $3)"
RAW_REGISTERED = (
    "INSERT INTO processing_log (episode_id, stage, status) "
    "VALUES ($1, 'registration', 'completed')"
)


async def _constant(request: Any) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


#: The HTTP stack's limit: ``uvicorn bench.http:constant_app``.
constant_app = Starlette(routes=[Route("/", _constant)])

#: ``floor_app``'s database and pool size, from its environment.
FLOOR_DSN, FLOOR_POOL = "BENCH_FLOOR_DSN", "BENCH_FLOOR_POOL"


@contextlib.asynccontextmanager
async def _floor_pool(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    size = int(os.environ[FLOOR_POOL])
    async with asyncpg.create_pool(os.environ[FLOOR_DSN], min_size=size, max_size=size) as pool:
        gc.collect()
        gc.freeze()  # as the pipeline's server does
        yield {"pool": pool}


async def _floor_read(request: Any) -> Response:
    row = await request.state.pool.fetchrow(RAW_READ, request.path_params["episode_id"])
    document = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}
    return Response(json.dumps(document), media_type="application/json")


#: The floor of a Python HTTP read: ``uvicorn bench.http:floor_app``.
floor_app = Starlette(routes=[Route("/episodes/{episode_id}", _floor_read)], lifespan=_floor_pool)


@dataclass
class Row:
    """A line of the report."""

    case: str
    workers: int
    backend: str
    figures: Measured
    limit: Measured | None = None  # the raw-asyncpg run this case is compared with

    @property
    def ratio(self) -> float | None:
        """Requests/s over the raw-asyncpg limit beside it."""
        return self.figures.rate / self.limit.rate if self.limit else None


def _pipeline_server(config_path: Path, workers: int, log: Path) -> Any:
    args = [sys.executable, "-m", "pipeline_db.cli", "serve", "--host", "127.0.0.1"]
    args += ["--port", "{port}", "--workers", str(workers)]
    return serving(args, environment(config_path), log)


def _bare_server(app: str, workers: int, log: Path, env: dict[str, str] | None = None) -> Any:
    # As `pipeline-db serve` runs uvicorn: uvloop and httptools (uvicorn[standard]).
    args = [sys.executable, "-m", "uvicorn", f"bench.http:{app}", "--host", "127.0.0.1"]
    args += ["--port", "{port}", "--workers", str(workers), "--no-access-log"]
    args += ["--loop", "uvloop", "--http", "httptools"]
    return serving(args, {**environment(None), **(env or {})}, log)


def _write_config(database: dict[str, Any], path: Path) -> Path:
    # No access log (server.access_log, on by default): a line per request cost
    # a fifth of a worker's CPU on a read; the constant app goes without it too.
    document = {"database": database, "server": {"access_log": False}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


# -- the raw-asyncpg limit ---------------------------------------------------------


def _raw_operations(
    pool: asyncpg.Pool, count: int
) -> dict[str, Callable[[int, int], Awaitable[object]]]:
    def episode(task: int, iteration: int) -> str:
        rng = random.Random(task * 1_000_003 + iteration)
        return f"ep{rng.randrange(count):06d}"

    async def read(task: int, iteration: int) -> None:
        async with pool.acquire() as conn:
            await conn.fetchrow(RAW_READ, episode(task, iteration))

    async def advance(task: int, iteration: int) -> None:
        episode_id, stage = episode(task, iteration), STAGES[iteration % len(STAGES)]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(RAW_UPDATE, stage, episode_id)
            await conn.execute(RAW_INSERT, episode_id, stage, 0.5)

    tag, numbers = f"{os.getpid()}-{random.getrandbits(24):x}", itertools.count()

    async def register(task: int, iteration: int) -> None:
        key = f"{tag}-{next(numbers)}"
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(RAW_REGISTER, f"raw-{key}", key, f"/media/raw/{key}.mp4")
            await conn.execute(RAW_REGISTERED, f"raw-{key}")

    return {"read": read, "advance": advance, "register": register}


async def _raw(operation: Callable[[int, int], Awaitable[object]], seconds: float) -> Measured:
    """One raw-asyncpg case at the HTTP cases' concurrency, after a warm-up."""
    await timed("warm-up", operation, concurrency=CONNECTIONS, seconds=min(WARMUP_S, seconds))
    return Measured.of(await timed("raw", operation, concurrency=CONNECTIONS, seconds=seconds))


# -- the run -----------------------------------------------------------------------


async def _http(
    load: Load, server: Server, case: str, seconds: float, *, path_case: str | None = None
) -> Measured:
    """One HTTP case after a warm-up, with its statuses and pool waits from /metrics.

    ``path_case``: the requests of that case, on a bare server without /metrics.
    """
    requests = path_case or case
    await load.run(server.base_url, requests, min(WARMUP_S, seconds))
    before = await scrape(server.base_url) if case != "constant" else {}
    figures = await load.run(server.base_url, requests, seconds)
    if server.proc.returncode is not None:
        raise RuntimeError(f"the server died:\n{server.tail()}")
    if case != "constant":
        figures.statuses, figures.wait_ms = difference(case, before, await scrape(server.base_url))
    return figures


async def _postgresql(
    load: Load, url: str, dsn: str, workers: int, folder: Path, seconds: float
) -> list[Row]:
    """Constant, then each case: raw asyncpg and through the server, back to back."""
    async with _bare_server("constant_app", workers, folder / "constant.log") as server:
        rows = [
            Row(
                "constant (starlette)", workers, "-", await _http(load, server, "constant", seconds)
            )
        ]
    database = {
        "type": "postgresql",
        "url": url,
        "pool_size": TOTAL_POOL // workers,
        "max_overflow": 0,
    }
    config_path = _write_config(database, folder / f"pg{workers}.yaml")
    pool = await asyncpg.create_pool(dsn, min_size=TOTAL_POOL, max_size=TOTAL_POOL)
    try:
        raw = _raw_operations(pool, load.episodes)
        floor_env = {FLOOR_DSN: dsn, FLOOR_POOL: str(TOTAL_POOL // workers)}
        floor_log = folder / f"floor{workers}.log"
        async with _bare_server("floor_app", workers, floor_log, floor_env) as server:
            floor = await _http(load, server, "constant", seconds, path_case="read")
        async with _pipeline_server(config_path, workers, folder / f"pg{workers}.log") as server:
            for case in CASES:
                # Side by side, so that the noise of the shared cores falls on both.
                limit = await _raw(raw[case], seconds)
                rows.append(Row(f"{case} (raw asyncpg)", workers, "postgresql", limit))
                if case == "read":
                    rows.append(
                        Row("read (starlette + asyncpg)", workers, "postgresql", floor, limit)
                    )
                figures = await _http(load, server, case, seconds)
                rows.append(Row(case, workers, "postgresql", figures, limit))
    finally:
        await pool.close()
    return rows


async def _sqlite(load: Load, path: str, workers: int, folder: Path, seconds: float) -> list[Row]:
    config_path = _write_config({"type": "sqlite", "path": path}, folder / f"sqlite{workers}.yaml")
    rows = []
    async with _pipeline_server(config_path, workers, folder / f"sqlite{workers}.log") as server:
        for case in CASES:
            rows.append(Row(case, workers, "sqlite", await _http(load, server, case, seconds)))
    return rows


async def run(seconds: float = SECONDS, scale: float = 1.0) -> dict[str, Any]:
    """Run the HTTP benchmark; print and return its figures."""
    print(f"\n== http: {CONNECTIONS} connections, {seconds:g} s per case ==")
    print(_machine())
    started = time.perf_counter()
    data = generate(EPISODES * scale / DATASET_EPISODES)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pdbbench_http_") as folder_name:
        folder = Path(folder_name)
        load = Load(folder, len(data.episodes))
        print(f"load generator: {load.label}")
        async with postgres_database() as (pg_config, dsn):
            with sqlite_database() as lite_config:
                for config in (pg_config, lite_config):  # one at a time: Alembic is global
                    async with Database(config) as db:
                        await upgrade(db)
                await load_postgres(dsn, data)
                load_sqlite(str(lite_config.path), data)
                del data
                print(
                    f"seeded {load.episodes:,} episodes on both backends in "
                    f"{time.perf_counter() - started:.1f} s; PostgreSQL: {TOTAL_POOL} "
                    f"connections per server and for raw asyncpg "
                    f"(pool_size {TOTAL_POOL} // workers, no overflow)"
                )
                assert pg_config.url is not None
                url = pg_config.url.get_secret_value()
                for workers in WORKERS:
                    rows += await _postgresql(load, url, dsn, workers, folder, seconds)
                for workers in WORKERS:
                    rows += await _sqlite(load, str(lite_config.path), workers, folder, seconds)
    print(_machine())
    return _report(rows)


def _machine() -> str:
    # Everything shares these cores: other work on the machine lowers every figure.
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load} (1, 5, 15 min)"


def _report(rows: list[Row]) -> dict[str, Any]:
    lines = []
    for row in rows:
        f = row.figures
        errors = ", ".join(f"{k} {v}" for k, v in sorted(f.errors.items())) or "0"
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(f.statuses.items()))
        lines.append(
            [
                row.case,
                str(row.workers),
                row.backend,
                f"{f.rate:,.0f}",
                f"{f.p50_ms:.1f}",
                f"{f.p99_ms:.1f}",
                errors,
                f"{row.ratio:.2f}x" if row.ratio is not None else "-",
                statuses or "-",
                f"{f.wait_ms:.1f}" if f.wait_ms is not None else "-",
            ]
        )
    header = ["case", "workers", "backend", "req/s", "p50 ms", "p99 ms", "errors"]
    header += ["vs raw", "statuses", "pool wait ms"]
    print(table(lines, header))
    figures = {
        f"{r.case}@{r.workers}/{r.backend}": {
            "req_per_s": r.figures.rate,
            "p50_ms": r.figures.p50_ms,
            "p99_ms": r.figures.p99_ms,
            "errors": r.figures.error_count,
            "ratio": r.ratio,
        }
        for r in rows
    }
    checks = [("0 errors everywhere", *_no_errors(rows))]
    floors = [r for r in rows if r.case == "read (starlette + asyncpg)"]
    if floors:
        best_floor = max(floors, key=lambda r: r.ratio or 0.0)
        print(
            f"  [INFO] the floor of a Python HTTP read here (bare Starlette + asyncpg, "
            f"{best_floor.workers} workers): {best_floor.ratio or 0.0:.2f}x raw asyncpg"
        )
    for case in ("read", "advance"):
        candidates = [r for r in rows if r.case == case and r.backend == "postgresql"]
        best = max(candidates, key=lambda r: r.ratio or 0.0)
        ratio = best.ratio or 0.0
        checks.append(
            (
                f"postgresql {case}: best workers ({best.workers}) >= {TARGET_RATIO}x raw",
                ratio >= TARGET_RATIO,
                f"{ratio:.2f}x",
            )
        )
        raw_p99 = best.limit.p99_ms if best.limit else float("nan")
        checks.append(
            (
                f"postgresql {case}: p99 <= {TARGET_PG_P99_MS:g} ms at {best.workers} workers",
                best.figures.p99_ms <= TARGET_PG_P99_MS,
                f"{best.figures.p99_ms:.1f} ms (raw asyncpg beside it: {raw_p99:.1f} ms)",
            )
        )
    lite = [r for r in rows if r.backend == "sqlite" and r.workers == max(WORKERS)]
    worst = max(lite, key=lambda r: r.figures.p99_ms)
    checks.append(
        (
            f"sqlite {max(WORKERS)} workers: p99 <= {TARGET_SQLITE_P99_MS:g} ms",
            worst.figures.p99_ms <= TARGET_SQLITE_P99_MS,
            f"worst {worst.figures.p99_ms:.1f} ms ({worst.case})",
        )
    )
    locks = sum(r.figures.statuses.get("503", 0) for r in lite)
    checks.append((f"sqlite {max(WORKERS)} workers: 0 lock errors (503)", locks == 0, str(locks)))
    for label, ok, value in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")
    return figures


def _no_errors(rows: list[Row]) -> tuple[bool, str]:
    failing = [f"{r.case}@{r.workers}/{r.backend}" for r in rows if r.figures.error_count]
    return not failing, ", ".join(failing) or "0"
