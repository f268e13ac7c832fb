"""The doctor against real conditions, on both backends, as a library and as `pipeline-db check`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import Database, DatabaseConfig, Episodes, database_config
from pipeline_db.backup import backup
from pipeline_db.doctor import Check, failed, run_checks
from pipeline_db.jobs import JobQueue
from pipeline_db.migrations import downgrade, status, upgrade
from pipeline_db.schema import backup_log
from tests.conftest import ADMIN_URL
from tests.integration._ops_helpers import (
    kill,
    postgresql_only,
    run_cli,
    sqlite_only,
    start_helper,
    url_of,
    write_config,
)

SQLITE_CHECKS = ["journal mode", "wal size", "integrity"]
POSTGRESQL_CHECKS = ["pool", "pgbouncer"]
COMMON = ["stuck jobs", "last backup", "clock skew"]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


async def test_a_healthy_database_passes_every_check(backend: str, db: Database) -> None:
    checks = await run_checks(db)

    own = SQLITE_CHECKS if backend == "sqlite" else POSTGRESQL_CHECKS
    assert [c.name for c in checks] == ["database", "schema", *own, *COMMON]
    assert not failed(checks), [c.line() for c in checks]
    found = by_name(checks)
    assert found["database"].status == "ok"
    assert found["schema"].status == "ok"
    assert found["stuck jobs"].status == "ok"
    assert found["clock skew"].status == "ok"
    assert found["last backup"].status == "warn"  # none taken yet
    assert "pipeline-db backup" in found["last backup"].detail
    if backend == "sqlite":
        assert {found[name].status for name in SQLITE_CHECKS} == {"ok"}
    else:
        assert found["pgbouncer"].status == "ok"
        assert found["pool"].status in ("ok", "warn")  # warn: other sessions on a shared server


@postgresql_only
async def test_an_exhausted_connection_budget_fails_the_pool_check(
    make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    async with Database(make_config()) as db, db.read() as conn:
        maximum = int((await conn.execute(text("SHOW max_connections"))).scalar_one())
        reserved = int(
            (await conn.execute(text("SHOW superuser_reserved_connections"))).scalar_one()
        )
    available = maximum - reserved
    workers = 4
    pool_size = available // workers  # 4 x (pool_size + 1) > available
    config = make_config(pool_size=pool_size, max_overflow=1)
    async with Database(config) as db:
        pool = by_name(await run_checks(db, workers=workers))["pool"]
    assert pool.status == "fail", pool.line()
    assert f"= {workers * (pool_size + 1)} connections" in pool.detail
    assert f"allows {available} (max_connections {maximum} - {reserved} superuser" in pool.detail

    async with Database(make_config(pool_size=2, max_overflow=1)) as db:
        assert by_name(await run_checks(db, workers=workers))["pool"].status in ("ok", "warn")

    path = write_config(
        config, tmp_path / "pipeline.yaml", server={"workers": workers}, pool_size=pool_size
    )
    code, output = await run_cli(["check"], path)
    assert code == 1, output
    assert any(line.startswith("fail  pool") for line in output.splitlines()), output


async def test_a_stale_schema_fails_naming_the_upgrade(
    db: Database, make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    head = (await status(db)).head
    await downgrade(db, "-1")

    checks = await run_checks(db)
    schema = by_name(checks)["schema"]
    assert schema.status == "fail" and failed(checks)
    assert f"needs {head}" in schema.detail and "`pipeline-db db upgrade`" in schema.detail
    assert [c.name for c in checks][:2] == ["database", "schema"]

    code, output = await run_cli(["check"], write_config(make_config(), tmp_path / "p.yaml"))
    assert code == 1, output
    assert "pipeline-db db upgrade" in output

    await downgrade(db, "base")
    schema = by_name(await run_checks(db))["schema"]
    assert schema.status == "fail" and "no schema yet" in schema.detail

    await upgrade(db)
    assert not failed(await run_checks(db))


async def test_a_job_whose_runner_was_killed_is_reported_stuck(
    db: Database, make_config: Callable[..., DatabaseConfig]
) -> None:
    queue = JobQueue(db)
    job = (await queue.enqueue("probe", params={"path": "/v/a.mp4"})).job
    runner, (claimed, worker_id) = await start_helper(
        "claim_and_hang.py", url_of(make_config()), "probe", "0.5"
    )
    await kill(runner)
    assert claimed == str(job.id)
    assert (await queue.get(job.id)).status == "running"
    await asyncio.sleep(0.7)  # the lease runs out with nobody to heartbeat it

    stuck = by_name(await run_checks(db))["stuck jobs"]
    assert stuck.status == "warn", stuck.line()
    assert f"#{job.id} probe on {worker_id}" in stuck.detail and "1 running job" in stuck.detail

    await queue.reap()
    assert by_name(await run_checks(db))["stuck jobs"].status == "ok"


async def test_the_age_of_the_last_good_backup(
    db: Database, make_config: Callable[..., DatabaseConfig], tmp_path: Path
) -> None:
    newest = await backup(db, to=tmp_path / "backups")
    check = by_name(await run_checks(db))["last backup"]
    assert check.status == "ok" and Path(newest.backup_path).name in check.detail

    async def age(conn: AsyncConnection) -> None:
        when = datetime.now(UTC) - timedelta(hours=80)
        await conn.execute(update(backup_log).values(created_at=when))

    await db.transaction(age)
    async with Database(make_config(backup_enabled=True, backup_interval_hours=24)) as scheduled:
        check = by_name(await run_checks(scheduled))["last backup"]
    assert check.status == "fail", check.line()
    assert "due every 24 h" in check.detail

    await asyncio.to_thread(Path(newest.backup_path).unlink)
    check = by_name(await run_checks(db))["last backup"]
    assert check.status == "warn" and "none found intact" in check.detail


async def test_an_unreachable_database_fails_without_showing_its_password(
    backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        config = database_config({"type": "sqlite", "path": str(tmp_path / "nope.db")}, environ={})
    else:
        config = database_config(
            {
                "type": "postgresql",
                "url": "postgresql://who:s3cret-pw@127.0.0.1:1/nowhere",
                "connection_timeout": 2,
            },
            environ={},
        )
    async with Database(config) as db:
        checks = await run_checks(db)
    assert [(c.name, c.status) for c in checks] == [("database", "fail")]
    assert "s3cret-pw" not in checks[0].line()
    assert config.describe() in checks[0].detail

    code, output = await run_cli(["check"], write_config(config, tmp_path / "p.yaml"))
    assert code == 1 and "fail  database" in output and "s3cret-pw" not in output


@postgresql_only
async def test_pgbouncer_true_against_postgresql_itself_warns(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config(pgbouncer=True)) as db:
        check = by_name(await run_checks(db))["pgbouncer"]
    assert check.status == "warn" and "is PostgreSQL itself" in check.detail


@sqlite_only
async def test_sqlite_journal_mode_and_wal_size(
    make_config: Callable[..., DatabaseConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Database(make_config(journal_mode="DELETE")) as db:
        found = by_name(await run_checks(db))
    assert found["journal mode"].status == "warn" and "delete" in found["journal mode"].detail

    from pipeline_db import doctor

    monkeypatch.setattr(doctor, "WAL_WARN_BYTES", 1)
    async with Database(make_config()) as db:
        await Episodes(db).register(id="e", hash="h", source_path="/v/e.mp4")
        found = by_name(await run_checks(db))
    assert found["journal mode"].status == "ok"
    assert found["wal size"].status == "warn" and "MiB" in found["wal size"].detail


def _scramble_page(path: Path, index: str) -> None:
    """Overwrite the second half of an index's root page: the file is malformed."""
    conn = sqlite3.connect(path)
    try:
        (page,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = ?", (index,)
        ).fetchone()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    with path.open("r+b") as handle:
        handle.seek((page - 1) * size + size // 2)
        handle.write(bytes(range(256)) * (size // 2 // 256))


def _misdeclare(path: Path, index: str) -> None:
    """Declare an index over another column than it holds: its entries match no row."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_schema SET sql = ? WHERE name = ?",
            (f"CREATE INDEX {index} ON episodes (source_path)", index),
        )
    finally:
        conn.close()


@sqlite_only
@pytest.mark.parametrize("corrupt", [_scramble_page, _misdeclare])
async def test_a_corrupted_sqlite_file_fails_the_integrity_check(
    make_config: Callable[..., DatabaseConfig], corrupt: Callable[[Path, str], None]
) -> None:
    config = make_config()
    async with Database(config) as db:
        for n in range(200):
            await Episodes(db).register(id=f"e{n}", hash=f"h{n}", source_path=f"/v/{n}.mp4")
    # Closed: the WAL is checkpointed into the file.
    await asyncio.to_thread(corrupt, config.path, "ix_episodes_updated_at")

    async with Database(config) as db:
        checks = await run_checks(db)
    integrity = by_name(checks)["integrity"]
    assert integrity.status == "fail" and failed(checks), integrity.line()
    assert "integrity_check" in integrity.detail and "pipeline-db restore" in integrity.detail


@postgresql_only
async def test_pgbouncer_is_detected_and_the_setting_checked_against_it(
    request: pytest.FixtureRequest, make_config: Callable[..., DatabaseConfig]
) -> None:
    try:  # conftest's real PgBouncer (issue 7), where this checkout has it
        bouncer = request.getfixturevalue("pgbouncer")
    except pytest.FixtureLookupError:
        pytest.skip("no pgbouncer fixture in this checkout")
    direct = make_config()
    through = str(bouncer.url(make_url(ADMIN_URL), direct.sqlalchemy_url().database))
    for pgbouncer, expected in ((False, "fail"), (True, "ok")):
        settings = {"type": "postgresql", "url": through, "pgbouncer": pgbouncer}
        # No startup parameter a stock PgBouncer refuses (that is another test's subject).
        settings["idle_in_transaction_session_timeout"] = 0
        config = database_config(settings, environ={})
        async with Database(config) as db:
            found = await run_checks(db)
        checks = by_name(found)
        assert "pgbouncer" in checks, [c.line() for c in found]
        assert checks["pgbouncer"].status == expected, checks["pgbouncer"].line()
        assert "PgBouncer at" in checks["pgbouncer"].detail or "PgBouncer answers" in (
            checks["pgbouncer"].detail
        )
        assert checks["schema"].status == "ok" and checks["database"].status == "ok"
