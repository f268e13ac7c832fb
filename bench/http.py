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
  with the same worker count and options: the HTTP stack's limit.

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

import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from bench._common import Result, postgres_database, sqlite_database, table, timed
from bench._dataset import EPISODES as DATASET_EPISODES
from bench._dataset import generate, load_postgres, load_sqlite
from bench.write import RAW_INSERT, RAW_UPDATE
from pipeline_db import Database
from pipeline_db.migrations import upgrade
from pipeline_db.schema import STAGES, episodes

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 15.0
WARMUP_S = 2.0
CONNECTIONS = 50
WORKERS = (1, 4)
#: PostgreSQL connections of the whole server, whatever its worker count.
TOTAL_POOL = 20
#: Episodes at scale 1 (the dataset's 100,000 times this share).
EPISODES = 10_000
#: wrk's threads: wrk, the server, PostgreSQL and this process share 2 cores.
WRK_THREADS = 2
WRK_TIMEOUT_S = 10
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CASES = ("read", "register", "advance")
PATHS = {
    "read": ("GET", "/episodes/{episode_id}"),
    "register": ("POST", "/episodes"),
    "advance": ("PATCH", "/episodes/{episode_id}"),
    "constant": ("GET", "/"),
}
TARGET_RATIO = 0.9
TARGET_PG_P99_MS = 50.0
TARGET_SQLITE_P99_MS = 250.0

RAW_READ = f"SELECT {', '.join(c.name for c in episodes.c)} FROM episodes WHERE id = $1"
RAW_REGISTER = "INSERT INTO episodes (id, hash, source_path) VALUES ($1, $2, $3)"
RAW_REGISTERED = (
    "INSERT INTO processing_log (episode_id, stage, status) "
    "VALUES ($1, 'registration', 'completed')"
)

# One script for every case: ``wrk ... -- CASE EPISODES TAG``. Each thread has its
# own Lua state, numbered in setup(); done() prints the figures as JSON.
WRK_SCRIPT = """
local stages = {STAGES}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  case, count, tag = args[1], tonumber(args[2]), args[3]
  n = 0
  math.randomseed(tid * 7919 + 17)
  json = {["Content-Type"] = "application/json"}
end
function request()
  n = n + 1
  if case == "read" then
    return wrk.format("GET", string.format("/episodes/ep%06d", math.random(0, count - 1)))
  elseif case == "advance" then
    local body = string.format('{"stage":"%s","force":true}', stages[n % #stages + 1])
    local path = string.format("/episodes/ep%06d", math.random(0, count - 1))
    return wrk.format("PATCH", path, json, body)
  elseif case == "register" then
    local key = string.format("%s-%d-%d", tag, tid, n)
    local body = string.format(
      '{"id":"http-%s","hash":"%s","source_path":"/media/http/%s.mp4"}', key, key, key)
    return wrk.format("POST", "/episodes", json, body)
  end
  return wrk.format("GET", "/")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("{STAGES}", "{" + ", ".join(f'"{s}"' for s in STAGES) + "}")


async def _constant(request: Any) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


#: The HTTP stack's limit: ``uvicorn bench.http:constant_app``.
constant_app = Starlette(routes=[Route("/", _constant)])


@dataclass
class Measured:
    """One case's figures: rate, latency percentiles and errors by kind."""

    rate: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str] = field(default_factory=Counter)
    #: Answers by status, and the mean wait for a pool slot, from /metrics.
    statuses: Counter[str] = field(default_factory=Counter)
    wait_ms: float | None = None

    @property
    def error_count(self) -> int:
        """Every error: socket errors, timeouts and non-2xx answers."""
        return sum(self.errors.values())

    @classmethod
    def of(cls, result: Result) -> Measured:
        """The figures of an in-process timed run (raw asyncpg)."""
        return cls(result.rate, result.percentile(0.5), result.percentile(0.99), result.errors)


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


# -- load generators ---------------------------------------------------------------


class Load:
    """Runs one case against a base URL for some seconds: wrk, or httpx without it."""

    def __init__(self, folder: Path, episodes: int) -> None:
        self.wrk = shutil.which("wrk")
        self.script = folder / "cases.lua"
        self.script.write_text(WRK_SCRIPT, encoding="utf-8")
        self.episodes = episodes
        self.runs = 0

    @property
    def label(self) -> str:
        """What generates the load, for the report."""
        if self.wrk:
            return f"wrk, {WRK_THREADS} threads, {CONNECTIONS} connections"
        return (
            f"httpx in-process, {CONNECTIONS} connections (wrk not found: "
            "`apt-get install wrk` for the real figures; these are lower)"
        )

    async def run(self, base_url: str, case: str, seconds: float) -> Measured:
        """Load ``case`` for ``seconds``."""
        self.runs += 1
        tag = f"{os.getpid()}-{self.runs}-{random.getrandbits(24):x}"
        if self.wrk:
            return await self._wrk(base_url, case, seconds, tag)
        return await _httpx_load(base_url, case, seconds, self.episodes, tag)

    async def _wrk(self, base_url: str, case: str, seconds: float, tag: str) -> Measured:
        assert self.wrk is not None
        proc = await asyncio.create_subprocess_exec(
            self.wrk,
            f"-t{WRK_THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={WRK_TIMEOUT_S}s",
            "-s",
            str(self.script),
            base_url,
            "--",
            case,
            str(self.episodes),
            tag,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        text = output.decode(errors="replace")
        found = re.search(r"^WRK (\{.*\})$", text, re.MULTILINE)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
        figures = json.loads(found.group(1))
        errors = Counter(
            {
                kind: figures[kind]
                for kind in ("connect", "read", "write", "timeout", "status")
                if figures[kind]
            }
        )
        return Measured(
            rate=figures["requests"] / (figures["duration_us"] / 1e6),
            p50_ms=figures["p50_us"] / 1000,
            p99_ms=figures["p99_us"] / 1000,
            errors=errors,
        )


def _request(case: str, n: int, rng: random.Random, episodes: int, tag: str) -> httpx.Request:
    """The same requests as the wrk script's."""
    if case == "read":
        return httpx.Request("GET", f"/episodes/ep{rng.randrange(episodes):06d}")
    if case == "advance":
        body = {"stage": STAGES[n % len(STAGES)], "force": True}
        return httpx.Request("PATCH", f"/episodes/ep{rng.randrange(episodes):06d}", json=body)
    if case == "register":
        key = f"{tag}-{n}"
        body = {"id": f"http-{key}", "hash": key, "source_path": f"/media/http/{key}.mp4"}
        return httpx.Request("POST", "/episodes", json=body)
    return httpx.Request("GET", "/")


async def _httpx_load(
    base_url: str, case: str, seconds: float, episodes: int, tag: str
) -> Measured:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=WRK_TIMEOUT_S) as client:
        deadline = time.perf_counter() + seconds

        async def connection(index: int) -> None:
            rng, n = random.Random(index * 7919 + 17), 0
            while time.perf_counter() < deadline:
                n += 1
                request = _request(case, n, rng, episodes, f"{tag}-{index}")
                request.url = client.base_url.join(request.url)
                started = time.perf_counter()
                try:
                    response = await client.send(request)
                except httpx.TimeoutException:
                    errors["timeout"] += 1
                    continue
                except httpx.TransportError:
                    errors["read"] += 1
                    continue
                latencies.append(time.perf_counter() - started)
                if not 200 <= response.status_code < 400:
                    errors["status"] += 1

        began = time.perf_counter()
        await asyncio.gather(*(connection(i) for i in range(CONNECTIONS)))
        elapsed = time.perf_counter() - began
    result = Result(case, CONNECTIONS, elapsed, latencies)
    return Measured(
        len(latencies) / elapsed, result.percentile(0.5), result.percentile(0.99), errors
    )


# -- servers -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _environment(config_path: Path | None) -> dict[str, str]:
    """This environment without PIPELINE_* (and metrics folders), pointed at the config."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIPELINE_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    if config_path is not None:
        env["PIPELINE_CONFIG"] = str(config_path)
    return env


@dataclass
class Server:
    """A server process on 127.0.0.1 and its log file."""

    proc: asyncio.subprocess.Process
    base_url: str
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The end of what it printed."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def _serving(args: list[str], env: dict[str, str], log: Path) -> AsyncIterator[Server]:
    """Start a server (``args`` take ``{port}``), wait for it to answer; SIGTERM it after."""
    port = _free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *(arg.format(port=port) for arg in args),
            env=env,
            cwd=str(ROOT),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        await _wait_ready(server)
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        while True:
            if server.proc.returncode is not None:
                raise RuntimeError(f"the server exited early:\n{server.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{server.tail()}")
            with contextlib.suppress(httpx.TransportError):
                # The constant app answers every path 404 but "/", the API /ready.
                response = await client.get("/ready")
                if response.status_code in (200, 404):
                    return
            await asyncio.sleep(0.1)


def _pipeline_server(config_path: Path, workers: int, log: Path) -> Any:
    args = [sys.executable, "-m", "pipeline_db.cli", "serve", "--host", "127.0.0.1"]
    args += ["--port", "{port}", "--workers", str(workers)]
    return _serving(args, _environment(config_path), log)


def _constant_server(workers: int, log: Path) -> Any:
    # As `pipeline-db serve` runs uvicorn: uvloop and httptools (uvicorn[standard]).
    args = [sys.executable, "-m", "uvicorn", "bench.http:constant_app", "--host", "127.0.0.1"]
    args += ["--port", "{port}", "--workers", str(workers), "--no-access-log"]
    args += ["--loop", "uvloop", "--http", "httptools"]
    return _serving(args, _environment(None), log)


def _write_config(database: dict[str, Any], path: Path) -> Path:
    # No access log (server.access_log, on by default): a line per request cost
    # a fifth of a worker's CPU on a read; the constant app goes without it too.
    document = {"database": database, "server": {"access_log": False}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


# -- /metrics ----------------------------------------------------------------------

# Label values hold braces ("/episodes/{episode_id}"): the labels run to the last "}".
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")


async def _scrape(base_url: str) -> dict[tuple[str, str], float]:
    """Requests by (route method, status), and the pool-wait sum, from /metrics."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        text = (await client.get("/metrics")).text
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, value = match["name"], float(match["value"])
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if name == "pipeline_http_requests_total":
            key = (f"{labels['method']} {labels['route']}", labels["status"])
            found[key] = found.get(key, 0.0) + value
        elif name == "pipeline_db_pool_wait_seconds_sum":
            found[("pool wait", "sum")] = found.get(("pool wait", "sum"), 0.0) + value
    return found


def _difference(
    case: str, before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> tuple[Counter[str], float | None]:
    method, path = PATHS[case]
    route = f"{method} {path}"
    statuses: Counter[str] = Counter()
    for key, value in after.items():
        if key[0] == route:
            statuses[key[1]] += round(value - before.get(key, 0.0))
    total = sum(statuses.values())
    waited = after.get(("pool wait", "sum"), 0.0) - before.get(("pool wait", "sum"), 0.0)
    return +statuses, (waited / total * 1000 if total else None)


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


async def _http(load: Load, server: Server, case: str, seconds: float) -> Measured:
    """One HTTP case after a warm-up, with its statuses and pool waits from /metrics."""
    await load.run(server.base_url, case, min(WARMUP_S, seconds))
    before = await _scrape(server.base_url) if case != "constant" else {}
    figures = await load.run(server.base_url, case, seconds)
    if server.proc.returncode is not None:
        raise RuntimeError(f"the server died:\n{server.tail()}")
    if case != "constant":
        figures.statuses, figures.wait_ms = _difference(
            case, before, await _scrape(server.base_url)
        )
    return figures


async def _postgresql(
    load: Load, url: str, dsn: str, workers: int, folder: Path, seconds: float
) -> list[Row]:
    """Constant, then each case: raw asyncpg and through the server, back to back."""
    async with _constant_server(workers, folder / "constant.log") as server:
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
        async with _pipeline_server(config_path, workers, folder / f"pg{workers}.log") as server:
            for case in CASES:
                # Side by side, so that the noise of the shared cores falls on both.
                limit = await _raw(raw[case], seconds)
                rows.append(Row(f"{case} (raw asyncpg)", workers, "postgresql", limit))
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
