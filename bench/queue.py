"""The job queue: enqueue, then drain, 20,000 no-op jobs with 10 concurrent runner tasks.

Each system gets its own fresh database on the same PostgreSQL server, in the
same run, and the same work: 2,000 jobs enqueued one per call (the single
enqueue rate), 18,000 in batches of 1,000 (the batch rate), then every job run
by a no-op handler until the queue is empty (jobs/s from the worker's start to
its last outcome recorded):

* ``pipeline-db pg``: ``JobQueue.enqueue`` / ``enqueue_many``, then a ``Runner``
  (``concurrency=10``, ``prefetch=50``) stopped once every job has started
  (stopping records the last outcomes); each ``JobQueue.claim`` call is timed.
  A claim takes as many jobs as the runner has room for, so with jobs this
  short the prefetch sets the jobs per claim round trip, which sets the rate;
  ``prefetch=0`` (the default: claims of about 10) is measured too;
* ``pgqueuer``: ``Queries.enqueue``, then ``QueueManager.run`` in drain mode at
  its default batch of 10, the target's baseline, and at a batch of 50, tuned
  like pipeline-db (a cap of 10 jobs at once would force batches of 5: it
  wants ``max_concurrent_tasks >= 2 * batch_size``);
* ``procrastinate``: ``defer_async`` / ``batch_defer_async``, then
  ``run_worker_async(concurrency=10, wait=False)`` on a pool of 10, in the
  first repeat only (it is the slowest by far);
* ``pipeline-db sqlite``: as on PostgreSQL, on a SQLite file, counting the
  lock errors that reach the runner.

Every queue table is ANALYZEd once its jobs are in, as autovacuum does within a
minute of a burst. ``pipeline-db pg (no stats)`` drains a never-analyzed table
too, as in a fresh database's first minute: the planner then sorts every
queued job per claim. Systems are interleaved and repeated; the report gives
medians, and ratios per repeat against the pgqueuer run beside it. Last,
enqueue-to-start latency on PostgreSQL: a runner idle on a 5 s poll interval,
woken by LISTEN/NOTIFY, gets 100 jobs enqueued one at a time through another
``Database``; the time from each ``enqueue`` call to its handler's start.

Targets (issue 4): PostgreSQL processing >= pgqueuer's jobs/s; SQLite >= 1,000
jobs/s with 0 lock errors; enqueue-to-start p50 <= 50 ms on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from bench._common import median, postgres_database, sqlite_database, table
from pipeline_db import Database, DatabaseConfig, TransientError
from pipeline_db.handlers import Handlers, JobContext
from pipeline_db.jobs import JobQueue, Outcome
from pipeline_db.migrations import upgrade
from pipeline_db.models import Job
from pipeline_db.runner import Runner, RunnerOptions

JOBS = 20_000
SINGLE_SHARE = 10  # one job in 10 is enqueued alone
BATCH = 1_000
CONCURRENCY = 10
PREFETCH = 50
REPEATS = 3
LATENCY_JOBS = 100
IDLE_POLL_S = 5.0
#: Upper bound on a drain or a wait; reached only when something is broken.
TIMEOUT_S = 600.0
TARGET_SQLITE_JOBS_S = 1_000
TARGET_START_P50_MS = 50.0
KIND = "noop"
PG, SQLITE = "pipeline-db pg", "pipeline-db sqlite"
PG_NO_PREFETCH, PG_NO_STATS = "pipeline-db pg prefetch=0", "pipeline-db pg (no stats)"
PGQUEUER, PGQUEUER_50, PROCRASTINATE = "pgqueuer", "pgqueuer batch_size=50", "procrastinate"
SYSTEMS = (PG, PG_NO_PREFETCH, PG_NO_STATS, PGQUEUER, PGQUEUER_50, PROCRASTINATE, SQLITE)
T = TypeVar("T")


@dataclass
class Drain:
    """One system's enqueue and drain of ``jobs`` jobs."""

    jobs: int
    single_s: float = 0.0
    batch_s: float = 0.0
    drain_s: float = 0.0
    claims: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retried: int = 0

    def rates(self) -> tuple[float, float, float]:
        """Jobs/s enqueued one per call, enqueued in batches, and run."""
        single, batches = _split(self.jobs)
        return single / self.single_s, sum(batches) / self.batch_s, self.jobs / self.drain_s

    def claim_ms(self, fraction: float) -> float:
        """A percentile of the claim calls' latency, in milliseconds."""
        return _percentile(self.claims, fraction) * 1000

    @property
    def lock_errors(self) -> int:
        """Locked-database errors that reached the runner (SQLite BUSY/LOCKED)."""
        return self.errors["busy"] + self.errors["locked"]


class _TimedQueue(JobQueue):
    """The runner's queue, timing each claim and counting the errors that reach the runner."""

    def __init__(self, db: Database, drain: Drain) -> None:
        super().__init__(db)
        self._drain = drain

    async def claim(
        self,
        worker_id: str,
        *,
        kinds: Sequence[str] | None = None,
        limit: int = 1,
        lease_s: float = 30.0,
    ) -> list[Job]:
        started = time.perf_counter()
        claim = super().claim(worker_id, kinds=kinds, limit=limit, lease_s=lease_s)
        jobs = await self._counted(claim)
        self._drain.claims.append(time.perf_counter() - started)
        return jobs

    async def finish(self, worker_id: str, outcomes: Sequence[Outcome]) -> None:
        await self._counted(super().finish(worker_id, outcomes))

    async def heartbeat(
        self, worker_id: str, job_ids: Iterable[int], *, lease_s: float = 30.0
    ) -> tuple[set[int], set[int]]:
        return await self._counted(super().heartbeat(worker_id, job_ids, lease_s=lease_s))

    async def reap(self) -> list[Job]:
        return await self._counted(super().reap())

    async def _counted(self, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except TransientError as error:
            self._drain.errors[error.cause or "transient"] += 1
            raise


async def run(scale: float = 1.0, repeats: int = REPEATS) -> dict[str, Any]:
    """Run the queue benchmark; print and return its figures."""
    count = max(100, round(JOBS * scale))
    print(f"\n== queue: enqueue + drain {count:,} no-op jobs, {CONCURRENCY} concurrent tasks ==")
    load = os.getloadavg()[0]
    results: dict[str, list[Drain]] = {name: [] for name in SYSTEMS}
    for repeat in range(repeats):
        for name in SYSTEMS:
            if name != PROCRASTINATE or repeat == 0:
                results[name].append(await _measure(name, count))
    latencies = await _start_latency(max(10, round(LATENCY_JOBS * min(1.0, scale * 10))))
    print(
        f"load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"on {os.cpu_count()} cores shared with the server"
    )
    return _report(results, latencies)


async def _measure(name: str, count: int) -> Drain:
    if name == SQLITE:
        with sqlite_database() as config:
            return await _pipeline_db(config, count, PREFETCH, None)
    async with postgres_database() as (config, dsn):
        if name in (PGQUEUER, PGQUEUER_50):
            return await _pgqueuer(dsn, count, 50 if name == PGQUEUER_50 else 10)
        if name == PROCRASTINATE:
            return await _procrastinate(dsn, count)
        prefetch = 0 if name == PG_NO_PREFETCH else PREFETCH
        return await _pipeline_db(config, count, prefetch, None if name == PG_NO_STATS else dsn)


def _split(count: int) -> tuple[int, list[int]]:
    """Jobs enqueued one at a time, and the sizes of the batches of the rest."""
    single = count // SINGLE_SHARE
    rest = count - single
    return single, [min(BATCH, rest - n) for n in range(0, rest, BATCH)]


async def _timed(operation: Awaitable[object]) -> float:
    began = time.perf_counter()
    await asyncio.wait_for(operation, TIMEOUT_S)
    return time.perf_counter() - began


async def _analyze(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"ANALYZE {name}")
    finally:
        await conn.close()


async def _pipeline_db(
    config: DatabaseConfig, count: int, prefetch: int, analyze: str | None
) -> Drain:
    """Enqueue and drain through pipeline-db; ``analyze`` is the DSN of a table to ANALYZE."""
    drain = Drain(count)
    single, batches = _split(count)
    async with Database(config) as db:
        await upgrade(db)
        queue = _TimedQueue(db, drain)

        async def singles() -> None:
            for _ in range(single):
                await queue.enqueue(KIND)

        async def batched() -> None:
            for size in batches:
                await queue.enqueue_many(KIND, [{}] * size)

        drain.single_s = await _timed(singles())
        drain.batch_s = await _timed(batched())
        if analyze is not None:
            await _analyze(analyze, "jobs")
        started = 0
        all_started = asyncio.Event()

        async def noop(context: JobContext) -> None:
            nonlocal started
            started += 1
            if started == count:
                all_started.set()

        options = RunnerOptions(concurrency=CONCURRENCY, prefetch=prefetch)
        runner = Runner(db, Handlers({KIND: noop}), options)
        runner._queue = queue  # to time its claims (it makes a plain JobQueue)

        async def drained() -> None:
            task = asyncio.create_task(runner.run())
            try:
                await all_started.wait()
            finally:
                runner.stop()  # records the last outcomes before run() returns
                await task

        drain.drain_s = await _timed(drained())
        succeeded = (await JobQueue(db).stats()).by_status["succeeded"]
        drain.retried = sum(db.retries.values())
    if succeeded != count:
        drain.errors["not drained"] += count - succeeded
    return drain


async def _pgqueuer(dsn: str, count: int, batch_size: int) -> Drain:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    drain = Drain(count)
    single, batches = _split(count)
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()

        async def singles() -> None:
            for _ in range(single):
                await queries.enqueue(KIND, None)

        async def batched() -> None:
            for size in batches:
                await queries.enqueue([KIND] * size, [None] * size, [0] * size)

        drain.single_s = await _timed(singles())
        drain.batch_s = await _timed(batched())
        await _analyze(dsn, "pgqueuer")
        manager = QueueManager(queries)
        ran = 0

        @manager.entrypoint(KIND)
        async def noop(job: object) -> None:
            nonlocal ran
            ran += 1

        drained = manager.run(
            batch_size=batch_size,
            mode=QueueExecutionMode.drain,
            dequeue_timeout=timedelta(seconds=1),
        )
        drain.drain_s = await _timed(drained)
    finally:
        await conn.close()
    if ran != count:
        drain.errors["not drained"] += count - ran
    return drain


async def _procrastinate(dsn: str, count: int) -> Drain:
    import procrastinate

    drain = Drain(count)
    single, batches = _split(count)
    pool = {"min_size": CONCURRENCY, "max_size": CONCURRENCY}
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, **pool))
    ran = 0

    @app.task(name=KIND)
    async def noop() -> None:
        nonlocal ran
        ran += 1

    async def singles() -> None:
        for _ in range(single):
            await noop.defer_async()

    async def batched() -> None:
        for size in batches:
            await noop.batch_defer_async(*({} for _ in range(size)))

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        drain.single_s = await _timed(singles())
        drain.batch_s = await _timed(batched())
        await _analyze(dsn, "procrastinate_jobs")
        drained = app.run_worker_async(
            concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
        )
        drain.drain_s = await _timed(drained)
    if ran != count:
        drain.errors["not drained"] += count - ran
    return drain


async def _start_latency(jobs: int) -> list[float]:
    """Seconds from each enqueue call to its handler's start, on an idle PostgreSQL runner."""
    latencies: list[float] = []
    async with postgres_database() as (config, _):
        async with Database(config) as db, Database(config) as producer:
            await upgrade(db)
            started_at = 0.0
            started = asyncio.Event()

            async def noop(context: JobContext) -> None:
                nonlocal started_at
                started_at = time.perf_counter()
                started.set()

            # Another Database: its in-process signal cannot wake the runner, only NOTIFY can.
            queue = JobQueue(producer)
            options = RunnerOptions(concurrency=CONCURRENCY, poll_interval=IDLE_POLL_S)
            runner = Runner(db, Handlers({KIND: noop}), options)
            task = asyncio.create_task(runner.run())
            try:
                for n in range(jobs + 1):
                    started.clear()
                    enqueued_at = time.perf_counter()
                    await queue.enqueue(KIND)
                    await asyncio.wait_for(started.wait(), IDLE_POLL_S * 2)
                    if n > 0:  # the first warms up (the runner may not listen yet)
                        latencies.append(started_at - enqueued_at)
            finally:
                runner.stop()
                await task
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _report(results: dict[str, list[Drain]], latencies: list[float]) -> dict[str, Any]:
    baseline = results[PGQUEUER]
    rows, figures = [], {}
    for name in SYSTEMS:
        runs = results[name]
        rates = [run.rates() for run in runs]
        timed = [run for run in runs if run.claims]
        figure = {
            "single_per_s": median([r[0] for r in rates]),
            "batch_per_s": median([r[1] for r in rates]),
            "drain_per_s": median([r[2] for r in rates]),
            # Per repeat, against the pgqueuer run of the same repeat.
            "vs_pgqueuer": median(
                [r.rates()[2] / b.rates()[2] for r, b in zip(runs, baseline, strict=False)]
            ),
            "claim_p50_ms": median([run.claim_ms(0.50) for run in timed]),
            "claim_p99_ms": median([run.claim_ms(0.99) for run in timed]),
            "lock_errors": sum(run.lock_errors for run in runs),
            "errors": sum(sum(run.errors.values()) for run in runs),
            "retried": sum(run.retried for run in runs),
        }
        figures[name] = figure
        claims = [f"{figure[k]:.2f}" if timed else "-" for k in ("claim_p50_ms", "claim_p99_ms")]
        rows.append(
            [
                name,
                str(len(runs)),
                f"{figure['single_per_s']:,.0f}",
                f"{figure['batch_per_s']:,.0f}",
                f"{figure['drain_per_s']:,.0f}",
                f"{figure['vs_pgqueuer']:.2f}x",
                *claims,
                str(figure["lock_errors"]),
                str(figure["errors"]) + (f" ({figure['retried']} retried)" if timed else ""),
            ]
        )
    header = ["system", "runs", "enqueue 1/call/s", "enqueue batch/s", "drain jobs/s"]
    header += ["vs pgqueuer", "claim p50 ms", "claim p99 ms", "lock errs", "errors"]
    print(table(rows, header))
    p50, p99 = (_percentile(latencies, f) * 1000 for f in (0.50, 0.99))
    figures["start_latency"] = {"p50_ms": p50, "p99_ms": p99, "jobs": len(latencies)}
    print(
        f"enqueue-to-start on PostgreSQL (LISTEN/NOTIFY, {IDLE_POLL_S:.0f} s poll), "
        f"{len(latencies)} jobs: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    pg, lite, rival = figures[PG], figures[SQLITE], figures[PGQUEUER]
    each = [r.rates()[2] / b.rates()[2] for r, b in zip(results[PG], baseline, strict=False)]
    checks = [
        (
            "pg drain >= pgqueuer's jobs/s",
            pg["vs_pgqueuer"] >= 1.0,
            f"medians {pg['drain_per_s']:,.0f} vs {rival['drain_per_s']:,.0f} jobs/s; "
            f"{pg['vs_pgqueuer']:.2f}x, the median of the repeats' "
            + ", ".join(f"{ratio:.2f}x" for ratio in each),
        ),
        (
            f"sqlite drain >= {TARGET_SQLITE_JOBS_S:,} jobs/s",
            lite["drain_per_s"] >= TARGET_SQLITE_JOBS_S,
            f"{lite['drain_per_s']:,.0f} jobs/s, "
            f"{lite['drain_per_s'] / TARGET_SQLITE_JOBS_S:.2f}x the target",
        ),
        ("sqlite 0 lock errors", lite["lock_errors"] == 0, str(lite["lock_errors"])),
        (
            f"pg enqueue-to-start p50 <= {TARGET_START_P50_MS:.0f} ms",
            p50 <= TARGET_START_P50_MS,
            f"{p50:.1f} ms, {p50 / TARGET_START_P50_MS:.2f}x the limit",
        ),
    ]
    for label, ok, value in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")
    tuned = zip(results[PG], results[PGQUEUER_50], strict=False)
    ratio = median([r.rates()[2] / b.rates()[2] for r, b in tuned])
    figures[PG]["vs_pgqueuer_50"] = ratio
    print(f"  [info] pg drain vs {PGQUEUER_50} (both tuned): {ratio:.2f}x")
    return figures
