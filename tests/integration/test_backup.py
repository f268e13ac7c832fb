"""Backups and restore on both backends: consistency under writes, checksums, serving, retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import (
    ConfigurationError,
    ConflictError,
    Database,
    DatabaseConfig,
    Episodes,
    InvalidInputError,
)
from pipeline_db.backup import (
    SIDECAR,
    backup,
    backup_job,
    file_checksum,
    other_sessions,
    prune,
    restore,
    serving,
)
from pipeline_db.builtin_handlers import schedules
from pipeline_db.config import WorkerConfig
from pipeline_db.doctor import failed, run_checks
from pipeline_db.handlers import Handlers
from pipeline_db.jobs import JobQueue
from pipeline_db.runner import Runner, RunnerOptions
from pipeline_db.schedule import Scheduler
from pipeline_db.schema import backup_log, episodes, processing_log
from pipeline_db.social import BackupLog
from tests.conftest import admin_dsn
from tests.integration._ops_helpers import (
    empty_database,
    files_in,
    flip_byte,
    kill,
    postgresql_only,
    run_cli,
    sqlite_only,
    start_helper,
    write_config,
)

WRITERS = 10


async def _snapshot(db: Database, ids: set[str]) -> dict[str, tuple[str, object, int]]:
    """(hash, metadata, number of history events) of each episode in ``ids``."""
    async with db.read() as conn:
        rows = (
            await conn.execute(select(episodes.c.id, episodes.c.hash, episodes.c.metadata))
        ).all()
        events = dict(
            (
                await conn.execute(
                    select(processing_log.c.episode_id, func.count()).group_by(
                        processing_log.c.episode_id
                    )
                )
            ).all()
        )
    return {r.id: (r.hash, r.metadata, events.get(r.id, 0)) for r in rows if r.id in ids}


async def _set_created_at(db: Database, backup_id: int, when: datetime) -> None:
    async def work(conn: AsyncConnection) -> None:
        await conn.execute(
            update(backup_log).where(backup_log.c.id == backup_id).values(created_at=when)
        )

    await db.transaction(work)


async def test_a_backup_under_ten_writers_restores_every_row_committed_before_it(
    db: Database, backend: str, tmp_path: Path
) -> None:
    register = Episodes(db).register
    committed: list[tuple[str, float]] = []  # (episode id, when its commit returned)
    stop, warm = asyncio.Event(), asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            eid = f"w{n}-{i}"
            await register(
                id=eid, hash=f"h-{eid}", source_path=f"/v/{eid}.mp4", metadata={"n": n, "i": i}
            )
            committed.append((eid, time.monotonic()))
            if len(committed) >= 100:
                warm.set()
            i += 1

    tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
    try:
        await asyncio.wait_for(warm.wait(), 60)
        began = time.monotonic()
        record = await backup(db, to=tmp_path / "backups")
        ended = time.monotonic()
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    before = {eid for eid, at in committed if at < began}
    assert any(began <= at <= ended for _, at in committed), "nobody wrote during the backup"
    assert len(before) >= 100 and len(committed) > len(before)
    expected = await _snapshot(db, before)

    async with empty_database(backend, tmp_path) as config, Database(config) as fresh:
        restored = await restore(fresh, Path(record.backup_path))
        assert restored.restored_at is not None and restored.checksum == record.checksum
        checks = await run_checks(fresh)
        assert not failed(checks), [c.line() for c in checks]
        assert {c.name: c.status for c in checks}["schema"] == "ok"
        found = await _snapshot(fresh, before)
    assert found == expected


async def test_restore_over_the_database_brings_it_back_and_marks_the_entry(
    db: Database, tmp_path: Path
) -> None:
    episodes_api = Episodes(db)
    await episodes_api.register(id="kept", hash="h-kept", source_path="/v/kept.mp4")
    record = await backup(db, to=tmp_path)
    await episodes_api.delete("kept")
    await episodes_api.register(id="later", hash="h-later", source_path="/v/later.mp4")

    restored = await restore(db, Path(record.backup_path))

    assert await episodes_api.exists("kept") and not await episodes_api.exists("later")
    assert restored.backup_path == record.backup_path
    assert restored.checksum == record.checksum and restored.restored_at is not None
    logged = await BackupLog(db).list()
    assert [r.id for r in logged if r.restored_at is not None] == [restored.id]


async def test_a_corrupted_backup_is_refused_and_the_database_left_alone(
    db: Database, tmp_path: Path
) -> None:
    await Episodes(db).register(id="canary", hash="h-canary", source_path="/v/c.mp4")
    record = await backup(db, to=tmp_path)
    file = Path(record.backup_path)
    await asyncio.to_thread(flip_byte, file)
    await Episodes(db).register(id="after", hash="h-after", source_path="/v/a.mp4")

    with pytest.raises(InvalidInputError, match="corrupt") as caught:
        await restore(db, file, force=True)
    assert caught.value.field == "file"

    # A sidecar rewritten to match does not fool the checksum in backup_log.
    checksum = await asyncio.to_thread(file_checksum, file)
    await asyncio.to_thread(Path(f"{file}{SIDECAR}").write_text, f"{checksum}  {file.name}\n")
    with pytest.raises(InvalidInputError, match=f"backup_log entry {record.id}"):
        await restore(db, file, force=True)
    assert await Episodes(db).exists("after")
    assert all(r.restored_at is None for r in await BackupLog(db).list())


async def test_a_backup_without_any_checksum_is_refused(
    backend: str, db: Database, tmp_path: Path
) -> None:
    record = await backup(db, to=tmp_path)
    await asyncio.to_thread(Path(f"{record.backup_path}{SIDECAR}").unlink)
    async with empty_database(backend, tmp_path) as config, Database(config) as fresh:
        with pytest.raises(InvalidInputError, match="unverifiable"):
            await restore(fresh, Path(record.backup_path))
    # In the database it came from, backup_log still vouches for it.
    await restore(db, Path(record.backup_path))


async def test_restore_refuses_a_served_database_unless_forced(
    backend: str, make_config: Callable[..., DatabaseConfig], db: Database, tmp_path: Path
) -> None:
    record = await backup(db, to=tmp_path)
    file = Path(record.backup_path)
    async with Database(make_config()) as server:
        if backend == "sqlite":
            with serving(server):
                assert await other_sessions(db) >= 1
                with pytest.raises(ConflictError, match="--force"):
                    await restore(db, file)
                await restore(db, file, force=True)
        else:
            async with server.connection() as held:
                await held.execute(select(1))
                assert await other_sessions(db) >= 1
                with pytest.raises(ConflictError, match="--force"):
                    await restore(db, file)
                await held.rollback()
                await restore(db, file, force=True)
    assert await other_sessions(db) == 0
    await restore(db, file)


@sqlite_only
async def test_sqlite_restore_sees_another_process_with_the_file_open(
    make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    config = make_config()
    async with Database(config) as db:
        record = await backup(db, to=tmp_path / "backups")
        holder, _ = await start_helper("sqlite_hold.py", str(config.path), "open")
        try:
            if not await asyncio.to_thread(Path("/proc/locks").exists):
                pytest.skip("no /proc/locks on this platform")
            with pytest.raises(ConflictError, match="1 other session"):
                await restore(db, Path(record.backup_path))
        finally:
            await kill(holder)
        await restore(db, Path(record.backup_path))


@postgresql_only
async def test_postgresql_restore_sees_a_session_of_another_client(
    make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    config = make_config()
    async with Database(config) as db:
        record = await backup(db, to=tmp_path)
        other = await asyncpg.connect(admin_dsn(config.sqlalchemy_url().database))
        try:
            with pytest.raises(ConflictError, match="1 other session"):
                await restore(db, Path(record.backup_path))
        finally:
            await other.close()


async def test_retention_keeps_the_newest_and_the_young_and_deletes_the_rest(
    db: Database, tmp_path: Path
) -> None:
    ages_days = [0, 1, 5, 10, 20]  # newest first
    folder = tmp_path / "backups"
    records = [await backup(db, to=folder) for _ in ages_days]
    records.reverse()  # newest first, as ages_days
    now = datetime.now(UTC)
    for record, age in zip(records, ages_days, strict=True):
        await _set_created_at(db, record.id, now - timedelta(days=age, minutes=1))

    pruned = await prune(db, keep_newest=2, keep_days=7)

    doomed = records[3:]
    assert sorted(pruned.files) == sorted(
        path for r in doomed for path in (r.backup_path, f"{r.backup_path}{SIDECAR}")
    )
    assert pruned.rows == 2
    left = await asyncio.to_thread(files_in, folder)
    assert left == {
        path for r in records[:3] for path in (r.backup_path, f"{r.backup_path}{SIDECAR}")
    }
    assert [r.id for r in await BackupLog(db).list()] == [r.id for r in records[:3]]
    assert await prune(db, keep_newest=2, keep_days=7) == type(pruned)(files=[], rows=0)


async def test_two_runners_take_one_backup_per_interval(
    make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    interval_s = 1.0
    config = make_config(
        backup_enabled=True,
        backup_interval_hours=interval_s / 3600,
        backup_dir=str(tmp_path / "backups"),
    )
    handlers = Handlers()
    handlers.register("backup", backup_job)
    options = RunnerOptions(concurrency=2, poll_interval=0.05, lease=10)
    async with Database(config) as one, Database(config) as two:
        schedulers = [Scheduler(db, schedules(config, WorkerConfig())) for db in (one, two)]
        runners = [Runner(db, handlers, options) for db in (one, two)]
        tasks = [asyncio.create_task(x.run()) for x in [*schedulers, *runners]]
        first = int(time.time() // interval_s)
        await asyncio.sleep(2.6 * interval_s)
        for scheduler in schedulers:
            scheduler.stop()
        await asyncio.gather(*tasks[:2])
        last = int(time.time() // interval_s)
        queue = JobQueue(one)
        deadline = time.monotonic() + 30
        while (await queue.stats()).by_status["succeeded"] < len(
            (await queue.list(kind="backup")).items
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        for runner in runners:
            runner.stop()
        await asyncio.gather(*tasks[2:])

        jobs = (await queue.list(kind="backup")).items
        intervals = {int(str(j.idempotency_key).rsplit(":", 1)[1]) for j in jobs}
        assert len(jobs) == len(intervals)  # one job per interval, not one per runner
        assert intervals <= set(range(first, last + 1)) and len(intervals) >= 2
        assert all(j.status == "succeeded" for j in jobs)
        logged = await BackupLog(one).list()
        assert len(logged) == len(jobs)
        files = await asyncio.to_thread(files_in, tmp_path / "backups")
        assert len(files) == 2 * len(jobs)  # each backup and its checksum
        assert sum(runner.finished.get("succeeded", 0) for runner in runners) == len(jobs)


async def test_the_backup_and_restore_commands(
    make_config: Callable[..., DatabaseConfig], db: Database, tmp_path: Path
) -> None:
    path = write_config(make_config(), tmp_path / "pipeline.yaml")
    folder = tmp_path / "cli-backups"
    code, output = await run_cli(["backup", "--to", str(folder)], path)
    assert code == 0, output
    (record,) = await BackupLog(db).list()
    assert output.startswith(f"{record.backup_path}: {record.backup_size} bytes, sha256 ")
    file = Path(record.backup_path)
    assert file.parent == folder.resolve()

    await db.dispose()  # the test's own pool: not a server
    code, output = await run_cli(["restore", str(file)], path)
    assert code == 0, output
    assert f"restored {file}" in output

    async with Database(make_config()) as server:
        with serving(server):
            async with server.connection() as held:
                await held.execute(select(1))
                code, output = await run_cli(["restore", str(file)], path)
                assert code == 2 and "--force" in output, output
                await held.rollback()
            code, output = await run_cli(["restore", str(file), "--force"], path)
            assert code == 0, output

    await asyncio.to_thread(flip_byte, file)
    code, output = await run_cli(["restore", str(file), "--force"], path)
    assert code == 2 and "is corrupt" in output, output


def _fake_tool(folder: Path, name: str, version: str) -> None:
    folder.mkdir(exist_ok=True)
    tool = folder / name
    tool.write_text(f'#!/bin/sh\necho "{name} (PostgreSQL) {version}"\n')
    tool.chmod(0o755)


@postgresql_only
async def test_missing_or_outdated_client_tools_are_named_and_nothing_is_written(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "backups"
    empty = tmp_path / "no-tools"
    await asyncio.to_thread(empty.mkdir)
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigurationError, match="pg_dump is not on the PATH"):
        await backup(db, to=folder)

    old = tmp_path / "old-tools"
    await asyncio.to_thread(_fake_tool, old, "pg_dump", "9.6.24")
    monkeypatch.setenv("PATH", str(old))
    with pytest.raises(ConfigurationError, match=r"is PostgreSQL 1\d+ but pg_dump is 9"):
        await backup(db, to=folder)
    assert await asyncio.to_thread(files_in, folder) == set()
    assert await BackupLog(db).list() == []
