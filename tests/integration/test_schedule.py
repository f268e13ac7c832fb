"""Periodic jobs: one job per interval however many schedulers tick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pipeline_db import Database, DatabaseConfig
from pipeline_db.jobs import JobQueue
from pipeline_db.schedule import Periodic, Scheduler


async def test_many_schedulers_enqueue_one_job_per_interval(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    schedule = [Periodic("backup", 3600.0)]
    async with Database(make_config()) as one, Database(make_config()) as two:
        schedulers = [Scheduler(one, schedule), Scheduler(two, schedule)] * 3
        now = 1_800_000_000.0
        created = await asyncio.gather(*(s.tick(now) for s in schedulers))
        assert sum(len(ids) for ids in created) == 1
        again = await asyncio.gather(*(s.tick(now + 3599 - now % 3600) for s in schedulers))
        assert sum(len(ids) for ids in again) == 0  # still the same interval
        later = await asyncio.gather(*(s.tick(now + 3600) for s in schedulers))
        assert sum(len(ids) for ids in later) == 1
        jobs = await JobQueue(one).list(kind="backup")
        assert len(jobs.items) == 2
        assert {j.idempotency_key for j in jobs.items} == {
            f"schedule:backup:{int(now // 3600)}",
            f"schedule:backup:{int(now // 3600) + 1}",
        }


async def test_run_ticks_and_stops(db: Database) -> None:
    scheduler = Scheduler(db, [Periodic("discover", 0.2)])
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.7)
    scheduler.stop()
    await asyncio.wait_for(task, 2)
    found = await JobQueue(db).list(kind="discover")
    assert 2 <= len(found.items) <= 5


def test_an_interval_must_be_positive(db: Database) -> None:
    with pytest.raises(ValueError, match="interval"):
        Scheduler(db, [Periodic("discover", 0)])
