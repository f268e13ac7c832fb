"""`Database`: transactions, the attempt iterator, reads, errors and the pool, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import (
    ConflictError,
    Database,
    InterfaceError,
    InvalidInputError,
    PipelineDBError,
)
from pipeline_db.schema import episodes, processing_log


def episode(n: int, **values: object) -> dict[str, object]:
    return {"id": f"ep{n}", "hash": f"h{n}", "source_path": f"/v/{n}.mp4", "metadata": {}} | values


async def count(db: Database, table: object = episodes) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def test_transaction_commits_and_returns_the_result(db: Database) -> None:
    async def work(conn: AsyncConnection) -> str:
        await conn.execute(insert(episodes).values(episode(1)))
        await conn.execute(
            insert(processing_log).values(
                episode_id="ep1", stage="registration", status="completed"
            )
        )
        return "done"

    assert await db.transaction(work) == "done"
    assert await count(db) == 1
    assert await count(db, processing_log) == 1


async def test_failed_work_is_rolled_back_and_translated(db: Database) -> None:
    await db.transaction(lambda conn: conn.execute(insert(episodes).values(episode(1))))

    async def duplicate(conn: AsyncConnection) -> None:
        await conn.execute(insert(episodes).values(episode(2)))
        await conn.execute(insert(episodes).values(episode(3, hash="h1")))

    with pytest.raises(ConflictError) as caught:
        await db.transaction(duplicate)
    assert caught.value.context["cause"] == "unique"
    assert "sqlalchemy" not in type(caught.value.__cause__).__module__ or isinstance(
        caught.value, PipelineDBError
    )
    assert await count(db) == 1  # ep2 was rolled back with the failed insert


async def test_check_constraint_is_invalid_input(db: Database) -> None:
    with pytest.raises(InvalidInputError):
        await db.transaction(
            lambda conn: conn.execute(insert(episodes).values(episode(1, stage="mastered")))
        )
    assert await count(db) == 0


async def test_foreign_key_violation_is_a_conflict(db: Database) -> None:
    with pytest.raises(ConflictError) as caught:
        await db.transaction(
            lambda conn: conn.execute(
                insert(processing_log).values(episode_id="nope", stage="x", status="started")
            )
        )
    assert caught.value.context["cause"] == "foreign_key"


async def test_unserialisable_json_is_invalid_input(db: Database) -> None:
    with pytest.raises(InvalidInputError):
        await db.transaction(
            lambda conn: conn.execute(
                insert(episodes).values(episode(1, metadata={"x": float("nan")}))
            )
        )
    assert await count(db) == 0


async def test_retrying_iterator_commits_once(db: Database) -> None:
    bodies = 0
    async for attempt in db.retrying():
        async with attempt as conn:
            bodies += 1
            await conn.execute(insert(episodes).values(episode(1)))
    assert bodies == 1
    assert attempt.number == 1
    assert await count(db) == 1


async def test_updated_at_is_maintained_on_update(db: Database) -> None:
    await db.transaction(lambda conn: conn.execute(insert(episodes).values(episode(1))))
    async with db.read() as conn:
        before = (await conn.execute(select(episodes.c.updated_at))).scalar_one()
    assert before.tzinfo is not None
    await db.transaction(lambda conn: conn.execute(update(episodes).values(stage="prepped")))
    async with db.read() as conn:
        after = (await conn.execute(select(episodes.c.updated_at))).scalar_one()
    assert after > before


async def test_timestamps_round_trip_as_aware_utc(db: Database) -> None:
    moment = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
    await db.transaction(
        lambda conn: conn.execute(insert(episodes).values(episode(1, last_modified=moment)))
    )
    async with db.read() as conn:
        assert (await conn.execute(select(episodes.c.last_modified))).scalar_one() == moment


async def test_naive_datetime_is_refused(db: Database) -> None:
    with pytest.raises(InvalidInputError, match="naive"):
        await db.transaction(
            lambda conn: conn.execute(
                insert(episodes).values(episode(1, last_modified=datetime(2026, 1, 1)))
            )
        )


async def test_bad_isolation_level_is_refused_up_front(db: Database) -> None:
    with pytest.raises(InterfaceError, match="isolation"):
        await db.transaction(lambda conn: conn.execute(select(1)), isolation="CHAOS")  # type: ignore[arg-type]


async def test_pool_status_counts_checked_out_connections(db: Database) -> None:
    async with db.read():
        during = db.pool_status()
    after = db.pool_status()
    assert during.checked_out == 1
    assert after.checked_out == 0
    assert after.size == db.config.pool_size


async def test_engine_is_refused_after_dispose(db: Database) -> None:
    await db.dispose()
    with pytest.raises(InterfaceError, match="not open"):
        await db.transaction(lambda conn: conn.execute(select(1)))
