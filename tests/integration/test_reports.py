"""`pipeline-db stats` and `pipeline-db top` on real databases, with a real lock held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from pipeline_db import Database, DatabaseConfig, Episodes, database_config
from pipeline_db.jobs import JobQueue
from pipeline_db.reports import LockWait, Top, stats, top
from tests.conftest import admin_dsn
from tests.integration._ops_helpers import (
    kill,
    postgresql_only,
    private_postgres,
    run_cli,
    sqlite_only,
    start_helper,
    write_config,
)

WAIT_S = 20.0


async def test_stats_counts_rows_stages_jobs_and_reads_the_pool(
    db: Database, make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    episodes = Episodes(db)
    for n in range(3):
        await episodes.register(id=f"e{n}", hash=f"h{n}", source_path=f"/v/{n}.mp4")
    await episodes.advance_stage("e0", "prepped")
    queue = JobQueue(db)
    await queue.enqueue("probe", params={"path": "/v/1.mp4"})
    await queue.enqueue("probe", params={"path": "/v/2.mp4"})

    found = await stats(db)

    tables = {t.name: t for t in found.tables}
    assert tables["episodes"].rows == 3 and tables["jobs"].rows == 2
    assert tables["processing_log"].rows >= 4
    assert all(t.bytes is not None and t.bytes > 0 for t in found.tables)
    assert found.database_bytes is not None and found.database_bytes > 0
    assert found.episodes_by_stage["discovered"] == 2 and found.episodes_by_stage["prepped"] == 1
    assert sum(found.episodes_by_stage.values()) == 3
    assert found.jobs_by_status["queued"] == 2 and found.jobs_by_status["running"] == 0
    assert found.pool_limit == db.config.pool_size + db.config.max_overflow
    text = "\n".join(found.lines())
    assert "episodes" in text and "jobs per status" in text and "pool (this process)" in text

    code, output = await run_cli(["stats"], write_config(make_config(), tmp_path / "p.yaml"))
    assert code == 0, output
    assert "episodes per stage" in output and "prepped" in output


async def _wait_for_waiter(db: Database, pid: int) -> Top:
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await top(db)
        if any(w.pid == pid for w in found.lock_waits):
            return found
        assert time.monotonic() < deadline, "the blocked session never showed in top"
        await asyncio.sleep(0.05)


@postgresql_only
async def test_top_names_the_session_waiting_on_a_lock_and_its_blocker(
    make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    config = make_config()
    dsn = admin_dsn(config.sqlalchemy_url().database)
    async with Database(config) as db:
        await Episodes(db).register(id="hot", hash="h-hot", source_path="/v/hot.mp4")
        holder = await asyncpg.connect(dsn, server_settings={"application_name": "lock-holder"})
        waiter = await asyncpg.connect(dsn, server_settings={"application_name": "lock-waiter"})
        blocked: asyncio.Task[str] | None = None
        try:
            holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
            waiter_pid = await waiter.fetchval("SELECT pg_backend_pid()")
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1 FROM episodes WHERE id = 'hot' FOR UPDATE")
            blocked = asyncio.create_task(
                waiter.execute("UPDATE episodes SET errors = 'x' WHERE id = 'hot'")
            )
            found = await _wait_for_waiter(db, waiter_pid)

            (wait,) = [w for w in found.lock_waits if w.pid == waiter_pid]
            assert isinstance(wait, LockWait)
            assert wait.blocker_pid == holder_pid
            assert (wait.application, wait.blocker_application) == ("lock-waiter", "lock-holder")
            assert wait.blocker_state == "idle in transaction"
            assert wait.wait_event.startswith("Lock:") and "UPDATE episodes" in wait.query
            assert wait.blocker_query is not None and "FOR UPDATE" in wait.blocker_query
            groups = {(c.application, c.state): c.sessions for c in found.connections}
            assert groups[("lock-holder", "idle in transaction")] == 1
            assert groups[("lock-waiter", "active")] == 1
            text = "\n".join(found.lines())
            assert f"pid {waiter_pid} (lock-waiter)" in text
            assert f"blocked by pid {holder_pid} (lock-holder" in text
            assert f"SELECT pg_terminate_backend({holder_pid});" in text

            code, output = await run_cli(["top"], write_config(config, tmp_path / "p.yaml"))
            assert code == 0, output
            assert f"blocked by pid {holder_pid}" in output

            await holder.execute("ROLLBACK")
            await asyncio.wait_for(blocked, WAIT_S)
            assert not [w for w in (await top(db)).lock_waits if w.pid == waiter_pid]
        finally:
            await holder.close()  # lets the waiter through, whatever happened
            if blocked is not None:
                await asyncio.gather(blocked, return_exceptions=True)
            await waiter.close()


@postgresql_only
async def test_top_without_pg_stat_statements_prints_the_commands_that_enable_it(
    db: Database,
) -> None:
    async with db.read() as conn:
        preload = str((await conn.exec_driver_sql("SHOW shared_preload_libraries")).scalar_one())
    if "pg_stat_statements" in preload:
        pytest.skip("this server preloads pg_stat_statements")
    found = await top(db)
    assert found.statements is None and found.statements_hint is not None
    assert "ALTER SYSTEM SET shared_preload_libraries = " in found.statements_hint
    assert "'pg_stat_statements';" in found.statements_hint
    assert "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;" in found.statements_hint
    assert db.config.sqlalchemy_url().database in found.statements_hint

    # Created but not preloaded: still the preload command, not a failing query.
    async with db.connection() as conn:
        await conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.commit()
    found = await top(db)
    assert found.statements is None
    assert found.statements_hint is not None and "shared_preload_libraries" in found.statements_hint


@pytest.mark.postgresql
async def test_top_lists_the_slowest_statements_when_pg_stat_statements_runs() -> None:
    with private_postgres("shared_preload_libraries=pg_stat_statements") as url:
        config = database_config({"type": "postgresql", "url": url}, environ={})
        async with Database(config) as db:
            found = await top(db)
            assert found.statements is None and found.statements_hint is not None
            assert "ALTER SYSTEM" not in found.statements_hint  # preloaded: CREATE is enough
            assert "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;" in found.statements_hint

            async with db.connection() as conn:
                await conn.exec_driver_sql("CREATE EXTENSION pg_stat_statements")
                await conn.exec_driver_sql("SELECT pg_sleep(0.2)")
                await conn.exec_driver_sql("SELECT 1 AS quick")
                await conn.commit()
            found = await top(db, limit=5)
    assert found.statements is not None and found.statements_hint is None
    assert len(found.statements) <= 5
    slowest = found.statements[0]
    assert "pg_sleep" in slowest.query and slowest.mean_ms >= 200 and slowest.calls == 1
    assert "slowest statements" in "\n".join(found.lines())


@sqlite_only
@pytest.mark.parametrize("journal_mode", ["WAL", "DELETE"])
async def test_top_on_sqlite_names_the_process_holding_the_write_lock(
    make_config: Callable[..., DatabaseConfig], tmp_path: Path, journal_mode: str
) -> None:
    if not await asyncio.to_thread(Path("/proc/locks").exists):
        pytest.skip("no /proc/locks on this platform")
    config = make_config(journal_mode=journal_mode)
    async with Database(config) as db:
        await Episodes(db).register(id="e", hash="h", source_path="/v/e.mp4")
        idle = await top(db)
        assert idle.sqlite_writers == [] and idle.sqlite_processes == []
        assert "write lock: free" in idle.lines()

        writer, _ = await start_helper("sqlite_hold.py", str(config.path), "write")
        try:
            found = await top(db)
            assert writer.pid is not None
            assert found.sqlite_writers == [writer.pid]
            assert found.sqlite_processes == [writer.pid]
            assert f"write lock: held by process {writer.pid}" in "\n".join(found.lines())

            path = write_config(config, tmp_path / "p.yaml", journal_mode=journal_mode)
            code, output = await run_cli(["top"], path)
            assert code == 0 and f"held by process {writer.pid}" in output, output
        finally:
            await kill(writer)
        assert (await top(db)).sqlite_writers == []
