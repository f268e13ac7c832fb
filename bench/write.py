"""The commonest write: advance one episode's stage and append its processing_log row.

Measured with 1, 10 and 50 concurrent tasks:

* ``raw asyncpg``: the plain form on a raw asyncpg pool of the same size
  (BEGIN; UPDATE; INSERT; COMMIT), the baseline;
* ``Database pg``: ``Episodes.advance_stage`` through ``Database`` on PostgreSQL;
* ``Database sqlite``: the same call on a SQLite file.

Variants are interleaved and repeated; the report gives medians over repeats.
Targets (issue 2): PostgreSQL through Database >= 0.9x raw asyncpg's
transactions/s at 10 and 50 tasks with p99 <= 1.2x raw's; SQLite at 50 tasks
with 0 lock errors and p99 <= 50 ms.
"""

from __future__ import annotations

import random
from typing import Any

import asyncpg

from bench._common import Result, median, postgres_database, sqlite_database, table, timed
from pipeline_db import Database, Episodes
from pipeline_db.migrations import upgrade
from pipeline_db.schema import STAGES

EPISODES = 1_000
CONCURRENCY = (1, 10, 50)
SECONDS = 4.0
REPEATS = 3
# Equal, fixed pools: a QueuePool with overflow closes overflow connections on
# return, and reconnecting under load would measure churn, not the layer.
POOL_SIZE = 20

RAW_UPDATE = "UPDATE episodes SET stage = $1 WHERE id = $2"
RAW_INSERT = (
    "INSERT INTO processing_log (episode_id, stage, status, duration_seconds) "
    "VALUES ($1, $2, 'completed', $3)"
)


async def _seed(db: Database) -> None:
    await upgrade(db)
    episodes = Episodes(db)
    for n in range(EPISODES):
        await episodes.register(id=f"ep{n}", hash=f"h{n}", source_path=f"/videos/ep{n}.mp4")


def _episode(task: int, iteration: int) -> tuple[str, str]:
    rng = random.Random(task * 1_000_003 + iteration)
    return f"ep{rng.randrange(EPISODES)}", STAGES[iteration % len(STAGES)]


async def run(seconds: float = SECONDS, repeats: int = REPEATS) -> dict[str, Any]:
    """Run the write benchmark; print and return its figures."""
    print("\n== write: advance_stage + processing_log row ==")
    results: dict[tuple[str, int], list[Result]] = {}
    overrides = {"pool_size": POOL_SIZE, "max_overflow": 0}
    async with postgres_database(**overrides) as (pg_config, dsn):
        with sqlite_database(**overrides) as sqlite_config:
            async with Database(pg_config) as pg, Database(sqlite_config) as lite:
                # One at a time: Alembic's migration context is process-global.
                await _seed(pg)
                await _seed(lite)
                pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
                try:
                    for _ in range(repeats):
                        for concurrency in CONCURRENCY:
                            for name, operation in _variants(pool, pg, lite):
                                result = await timed(
                                    name, operation, concurrency=concurrency, seconds=seconds
                                )
                                results.setdefault((name, concurrency), []).append(result)
                finally:
                    await pool.close()
    return _report(results)


def _variants(pool: asyncpg.Pool, pg: Database, lite: Database) -> list[tuple[str, Any]]:
    pg_episodes, lite_episodes = Episodes(pg), Episodes(lite)

    async def raw(task: int, iteration: int) -> None:
        episode_id, stage = _episode(task, iteration)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(RAW_UPDATE, stage, episode_id)
            await conn.execute(RAW_INSERT, episode_id, stage, 0.5)

    async def through_pg(task: int, iteration: int) -> None:
        episode_id, stage = _episode(task, iteration)
        await pg_episodes.advance_stage(episode_id, stage, force=True, duration_seconds=0.5)

    async def through_sqlite(task: int, iteration: int) -> None:
        episode_id, stage = _episode(task, iteration)
        await lite_episodes.advance_stage(episode_id, stage, force=True, duration_seconds=0.5)

    return [
        ("raw asyncpg", raw),
        ("Database pg", through_pg),
        ("Database sqlite", through_sqlite),
    ]


def _report(results: dict[tuple[str, int], list[Result]]) -> dict[str, Any]:
    rows, figures = [], {}
    for concurrency in CONCURRENCY:
        raw = results[("raw asyncpg", concurrency)]
        raw_rate = median([r.rate for r in raw])
        raw_p99 = median([r.percentile(0.99) for r in raw])
        for name in ("raw asyncpg", "Database pg", "Database sqlite"):
            runs = results[(name, concurrency)]
            rate = median([r.rate for r in runs])
            p50 = median([r.percentile(0.50) for r in runs])
            p99 = median([r.percentile(0.99) for r in runs])
            # Ratios per repeat (each against the baseline run beside it), then the median.
            rate_ratio = median([r.rate / b.rate for r, b in zip(runs, raw, strict=True)])
            p99_ratio = median(
                [r.percentile(0.99) / b.percentile(0.99) for r, b in zip(runs, raw, strict=True)]
            )
            errors = sum(sum(r.errors.values()) for r in runs)
            locks = sum(r.lock_errors for r in runs)
            figures[f"{name}@{concurrency}"] = {
                "tx_per_s": rate,
                "p50_ms": p50,
                "p99_ms": p99,
                "ratio": rate_ratio,
                "p99_ratio": p99_ratio,
                "errors": errors,
                "lock_errors": locks,
            }
            rows.append(
                [
                    name,
                    str(concurrency),
                    f"{rate:,.0f}",
                    f"{p50:.2f}",
                    f"{p99:.2f}",
                    str(locks),
                    str(errors),
                    f"{rate_ratio:.2f}x",
                    f"{p99_ratio:.2f}x",
                ]
            )
        del raw_rate, raw_p99
    print(
        table(
            rows,
            [
                "variant",
                "tasks",
                "tx/s",
                "p50 ms",
                "p99 ms",
                "lock errs",
                "errors",
                "vs raw",
                "p99 vs raw",
            ],
        )
    )
    checks = []
    for concurrency in (10, 50):
        f = figures[f"Database pg@{concurrency}"]
        checks.append(
            (f"pg@{concurrency} >= 0.9x raw tx/s", f["ratio"] >= 0.9, f"{f['ratio']:.2f}x")
        )
        checks.append(
            (f"pg@{concurrency} p99 <= 1.2x raw", f["p99_ratio"] <= 1.2, f"{f['p99_ratio']:.2f}x")
        )
    lite = figures["Database sqlite@50"]
    checks.append(("sqlite@50 0 lock errors", lite["lock_errors"] == 0, str(lite["lock_errors"])))
    checks.append(("sqlite@50 p99 <= 50 ms", lite["p99_ms"] <= 50, f"{lite['p99_ms']:.1f} ms"))
    for label, ok, value in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")
    return figures
