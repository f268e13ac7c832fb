"""``pipeline-db migrate``: legacy pipeline.db files to PostgreSQL and back, value by value.

Each legacy file is built from the SQL of its schema version (``_legacy.py``)
and filled with the dirty data old pipelines left behind; the generator knows
what every row must become, so the tests compare each value the targets hold
with it. PostgreSQL targets are fresh, empty databases (their schema is
Alembic's, made by the migration); SQLite files live under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from pipeline_db import (
    Database,
    DatabaseConfig,
    Episodes,
    History,
    MetadataIndex,
)
from pipeline_db import schema as s
from pipeline_db.migrations import require_current, upgrade
from pipeline_db.transfer import (
    MigrateOptions,
    MigrationReport,
    RowRejectedError,
    TargetNotEmptyError,
    VerificationError,
    migrate,
    plan,
    verify_only,
)
from pipeline_db.transfer.convert import LOCAL_SPELLING, UTC_SPELLING
from pipeline_db.transfer.display import LogDisplay
from tests.conftest import admin_dsn, admin_execute, postgres_config, sqlite_config
from tests.integration import _legacy

pytestmark = pytest.mark.postgresql

ZONE = ZoneInfo("America/New_York")
CLI = str(Path(sys.executable).parent / "pipeline-db")
Config = Callable[[], Awaitable[DatabaseConfig]]


# -- fixtures and helpers --------------------------------------------------------


@pytest.fixture
async def pg_database(postgres_template: str | None) -> AsyncIterator[Config]:
    """A factory of fresh, empty PostgreSQL databases (dropped afterwards)."""
    if postgres_template is None:
        pytest.skip("PostgreSQL is unreachable (set PIPELINE_TEST_POSTGRES_URL)")
    created: list[str] = []

    async def make() -> DatabaseConfig:
        name = f"pdbmig_{uuid.uuid4().hex[:12]}"
        await admin_execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return postgres_config(name)

    yield make
    for name in created:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def legacy(
    tmp_path: Path,
    version: int,
    *,
    name: str = "pipeline.db",
    broken_fts: bool = True,
    social_jobs: bool = True,
    **fill: Any,
) -> tuple[Path, _legacy.LegacyData]:
    """A filled legacy file of ``version``."""
    path = tmp_path / name
    _legacy.create(path, version, social_jobs=social_jobs)
    data = _legacy.fill(path, version, ZONE, social_jobs=social_jobs, **fill)
    if broken_fts and version >= 3:
        _legacy.break_fts(path)
    return path, data


def options(tmp_path: Path, **kw: Any) -> MigrateOptions:
    kw.setdefault("report", tmp_path / f"report-{uuid.uuid4().hex[:6]}.json")
    return MigrateOptions(source_timezone=ZONE.key, **kw)


async def run(
    source: DatabaseConfig, target: DatabaseConfig, opts: MigrateOptions
) -> MigrationReport:
    return await migrate(source, target, opts, display=LogDisplay())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def snapshot(config: DatabaseConfig) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every row of every table, read through pipeline-db's own schema types."""
    found: dict[str, dict[Any, dict[str, Any]]] = {}
    async with Database(config) as db, db.read() as conn:
        for table in s.metadata.sorted_tables:
            (key,) = [c.name for c in table.primary_key.columns]
            rows = (await conn.execute(select(table))).mappings().all()
            found[table.name] = {row[key]: dict(row) for row in rows}
    return found


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same type; floats bit for bit; timestamps aware."""
    if isinstance(expected, float):
        return isinstance(actual, float) and actual.hex() == expected.hex()
    if isinstance(expected, datetime):
        return isinstance(actual, datetime) and actual.tzinfo is not None and actual == expected
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    return bool(actual == expected)


def assert_holds(actual: dict[str, dict[Any, dict[str, Any]]], expected: dict[str, Any]) -> None:
    """The target holds exactly the expected rows, each value as expected."""
    for table, rows in expected.items():
        assert set(actual[table]) == set(rows), table
        for key, values in rows.items():
            for column, value in values.items():
                got = actual[table][key][column]
                assert same(got, value), f"{table} {key} {column}: {got!r} != {value!r}"


def issues(report: MigrationReport) -> list[dict[str, Any]]:
    assert report.report_file is not None
    loaded: list[dict[str, Any]] = json.loads(report.report_file.read_text())["issues"]
    return loaded


async def sequence_position(config: DatabaseConfig, table: str) -> int:
    conn = await asyncpg.connect(admin_dsn(make_url(config.url.get_secret_value()).database))  # type: ignore[union-attr]
    try:
        value = await conn.fetchval(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence($1, 'id'))", table
        )
    finally:
        await conn.close()
    return int(value or 0)


def sqlite_counters(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    finally:
        conn.close()


async def cli(*args: str) -> tuple[int, str, str]:
    """Run ``pipeline-db`` in a subprocess; return its status, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def pg_url(config: DatabaseConfig) -> str:
    assert config.url is not None
    return config.url.get_secret_value()


# -- every version, there and back -----------------------------------------------


@pytest.mark.parametrize("version", _legacy.VERSIONS)
async def test_legacy_version_to_postgresql_and_back(
    version: int, tmp_path: Path, pg_database: Config
) -> None:
    source, data = legacy(tmp_path, version)
    before = sha256(source)
    pg = await pg_database()

    report = await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))

    assert sha256(source) == before
    assert report.verified
    expected = data.expected("repair")
    assert_holds(await snapshot(pg), expected)
    # Every timestamp was read in the spelling it was written in.
    spellings = {UTC_SPELLING: 0, LOCAL_SPELLING: 0}
    for table in report.tables:
        for counts in table.conversions.values():
            for label in spellings:
                spellings[label] += counts.get(label, 0)
    assert spellings == {UTC_SPELLING: data.utc_spellings, LOCAL_SPELLING: data.local_spellings}
    # Identities continue past the legacy AUTOINCREMENT counters, never reusing an id.
    for table, counter in data.counters.items():
        assert await sequence_position(pg, table) >= counter
    async with Database(pg) as db:
        entry = await History(db).append("ep0001", "prepped", "completed")
        assert entry.id > data.counters["processing_log"]

    back = tmp_path / "back.db"
    report_back = await run(pg, sqlite_config(back), options(tmp_path))
    assert report_back.verified
    expected["processing_log"][entry.id] = {"episode_id": "ep0001", "stage": "prepped"}
    assert_holds(await snapshot(sqlite_config(back)), expected)
    counters = sqlite_counters(back)
    for table, counter in data.counters.items():
        assert counters[table] >= counter
    # pipeline-db serves the file it made: schema current, reads and search work.
    async with Database(sqlite_config(back)) as db:
        await require_current(db)
        episode = await Episodes(db).get("ep0001")
        assert episode.metadata == expected["episodes"]["ep0001"]["metadata"]
        if version >= 3:
            hits = await MetadataIndex(db).search("compost", limit=100)
            assert {h.episode_id for h in hits} == set(expected["json_metadata_index"])
        later = await History(db).append("ep0002", "prepped", "completed")
        assert later.id > entry.id


async def test_round_trip_gives_the_same_content(tmp_path: Path, pg_database: Config) -> None:
    source, _ = legacy(tmp_path, 5)
    first, second = await pg_database(), await pg_database()
    middle = sqlite_config(tmp_path / "middle.db")

    # In this process, large tables in three key ranges at once; then the defaults.
    in_ranges = options(tmp_path, on_error="repair", workers=0, split_rows=100)
    await run(sqlite_config(source), first, in_ranges)
    await run(first, middle, options(tmp_path, split_rows=100))
    await run(middle, second, options(tmp_path))

    in_first = await snapshot(first)
    assert sum(len(rows) for rows in in_first.values()) > 400
    assert await snapshot(middle) == in_first
    assert await snapshot(second) == in_first


@pytest.mark.parametrize(
    ("version", "social_jobs", "broken_fts"),
    [(3, False, False), (4, False, True), (5, True, False)],
)
async def test_optional_parts_of_a_legacy_file(
    version: int, social_jobs: bool, broken_fts: bool, tmp_path: Path, pg_database: Config
) -> None:
    """With or without social_jobs, with a broken or a working FTS5 table."""
    source, data = legacy(tmp_path, version, social_jobs=social_jobs, broken_fts=broken_fts)
    pg = await pg_database()
    report = await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    assert_holds(await snapshot(pg), data.expected("repair"))
    assert ("social_jobs" in [t.name for t in report.tables]) == social_jobs
    fts = [n for n in report.notes if "json_metadata_fts" in n]
    assert fts and ("cannot be queried" in fts[0]) == broken_fts


# -- the schema is Alembic's -----------------------------------------------------


async def _pg_schema(config: DatabaseConfig) -> dict[str, list[Any]]:
    conn = await asyncpg.connect(admin_dsn(make_url(pg_url(config)).database))
    try:
        queries = {
            "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "generation_expression FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2",
            "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
            "indexes": "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' ORDER BY 1",
            "triggers": "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger "
            "WHERE NOT tgisinternal ORDER BY 1",
            "tables": "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        }
        return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in queries.items()}
    finally:
        await conn.close()


def _sqlite_schema(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()


async def test_target_schema_is_exactly_alembics(tmp_path: Path, pg_database: Config) -> None:
    source, _ = legacy(tmp_path, 5)
    pg, fresh_pg = await pg_database(), await pg_database()
    back = tmp_path / "back.db"
    fresh_sqlite = tmp_path / "fresh.db"
    for config in (fresh_pg, sqlite_config(fresh_sqlite)):
        async with Database(config) as db:
            await upgrade(db)

    await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    await run(pg, sqlite_config(back), options(tmp_path))

    assert await _pg_schema(pg) == await _pg_schema(fresh_pg)
    assert _sqlite_schema(back) == _sqlite_schema(fresh_sqlite)


# -- bad rows ---------------------------------------------------------------------


async def test_abort_names_table_key_column_and_reason(tmp_path: Path, pg_database: Config) -> None:
    source, _ = legacy(tmp_path, 2)
    pg = await pg_database()

    with pytest.raises(RowRejectedError) as caught:
        await run(sqlite_config(source), pg, options(tmp_path))

    error = caught.value
    assert (error.table, error.key, error.column) == ("episodes", "ep-badjson", "metadata")
    assert "not valid JSON" in error.reason
    status, _, err = await cli("migrate", str(source), pg_url(await pg_database()))
    assert status == 2
    assert "episodes row ep-badjson, column metadata: not valid JSON" in err


@pytest.mark.parametrize("policy", ["skip", "repair"])
async def test_error_policy_does_what_it_says(
    policy: str, tmp_path: Path, pg_database: Config
) -> None:
    source, data = legacy(tmp_path, 5)
    pg = await pg_database()

    # processing_log and processing_metrics are copied in two key ranges at once.
    report = await run(sqlite_config(source), pg, options(tmp_path, on_error=policy, split_rows=60))

    assert_holds(await snapshot(pg), data.expected(policy))
    listed = issues(report)
    dirty = data.dirty(policy)
    assert {(i["table"], i["key"]) for i in listed} == {
        (table, str(key)) for table, keys in dirty.items() for key in keys
    }
    assert all(i["reason"] and i["column"] for i in listed)
    expected_rows = data.expected(policy)
    for issue in listed:
        kept = issue["key"] in {str(k) for k in expected_rows[issue["table"]]}
        assert issue["action"] == ("repaired" if kept else "skipped"), issue
    if policy == "skip":
        assert {i["action"] for i in listed} == {"skipped"}
    repaired = {(i["table"], i["key"], i["column"]) for i in listed if i["action"] == "repaired"}
    if policy == "repair":
        assert ("episodes", "ep-nan", "metadata") in repaired  # NaN -> null
        assert ("episodes", "ep-nul", "errors") in repaired  # NUL stripped
    for table in report.tables:
        assert table.skipped == sum(
            1 for k in dirty.get(table.name, ()) if k not in expected_rows[table.name]
        )


async def test_rows_breaking_rules_the_source_never_enforced(
    tmp_path: Path, pg_database: Config
) -> None:
    """A CHECK, a unique value repeated, text that is not UTF-8: found, reported, left out."""
    source, data = legacy(tmp_path, 4, dirty=False)
    conn = sqlite3.connect(source)
    conn.executescript(
        """
        UPDATE episodes SET stage = 'uploaded' WHERE id = 'ep0003';
        UPDATE clips SET score = 1.5 WHERE id = 'clip-ep0004';
        -- an older pipeline.db whose hash had no UNIQUE constraint, and a repeated hash
        CREATE TABLE episodes_new AS SELECT * FROM episodes;
        DROP TABLE episodes;
        ALTER TABLE episodes_new RENAME TO episodes;
        INSERT INTO episodes SELECT 'ep9999', hash, stage, source_path, metadata, errors,
            file_size, duration_seconds, created_at, updated_at, last_modified
            FROM episodes WHERE id = 'ep0001';
        -- bytes that are not UTF-8, which only the target notices
        UPDATE processing_log SET error_message = CAST(X'6666FF6D706567' AS TEXT) WHERE id = 5;
        """
    )
    conn.commit()
    conn.close()
    pg = await pg_database()

    report = await run(sqlite_config(source), pg, options(tmp_path, on_error="skip"))

    listed = {(i["table"], i["key"], i["column"]): i["reason"] for i in issues(report)}
    assert "ck_episodes_stage" in listed[("episodes", "ep0003", "stage")]
    assert "ck_clips_score" in listed[("clips", "clip-ep0004", "score")]
    assert "duplicate of id ep0001" in listed[("episodes", "ep9999", "hash")]
    assert "refused" in next(
        r for (t, k, _), r in listed.items() if (t, k) == ("processing_log", "5")
    )
    held = await snapshot(pg)
    assert "ep0003" not in held["episodes"] and "ep9999" not in held["episodes"]
    assert "clip-ep0004" not in held["clips"] and 5 not in held["processing_log"]
    assert len(held["episodes"]) == len(data.rows["episodes"]) - 1
    assert report.verified


# -- the target -------------------------------------------------------------------


async def test_a_target_that_is_not_empty_is_refused(tmp_path: Path, pg_database: Config) -> None:
    source, data = legacy(tmp_path, 3)
    pg = await pg_database()
    await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))

    with pytest.raises(TargetNotEmptyError, match="not empty"):
        await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    with pytest.raises(TargetNotEmptyError, match="--resume only continues"):
        await run(sqlite_config(source), pg, options(tmp_path, on_error="repair", resume=True))
    status, _, err = await cli("migrate", str(source), pg_url(pg), "--on-error", "repair")
    assert status == 2 and "not empty" in err

    served = tmp_path / "served.db"
    async with Database(sqlite_config(served)) as db:
        await upgrade(db)
        await Episodes(db).register(id="mine", hash="mine", source_path="/v/mine.mp4")
    with pytest.raises(TargetNotEmptyError):
        await run(pg, sqlite_config(served), options(tmp_path))

    report = await run(
        sqlite_config(source), pg, options(tmp_path, on_error="repair", replace=True)
    )
    assert report.verified
    assert_holds(await snapshot(pg), data.expected("repair"))


async def test_dry_run_changes_nothing(tmp_path: Path, pg_database: Config) -> None:
    source, data = legacy(tmp_path, 5)
    before = sha256(source)
    pg = await pg_database()

    found = await plan(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    status, out, _ = await cli("migrate", str(source), pg_url(pg), "--dry-run")

    assert status == 0
    assert {t.name: t.rows for t in found.tables} == {
        name: len(rows) for name, rows in data.rows.items()
    }
    for needle in ("processing_log", "0/1 -> boolean", "estimated time", "schema_version 5"):
        assert needle in out
    assert not found.target_state.filled and found.target_state.revision is None
    assert (await plan(sqlite_config(source), pg, options(tmp_path))).target_state.revision is None
    assert sha256(source) == before


async def test_verify_only_finds_a_changed_value(tmp_path: Path, pg_database: Config) -> None:
    source, _ = legacy(tmp_path, 2)
    pg = await pg_database()
    await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))

    report = await verify_only(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    assert report.verified
    async with Database(pg) as db, db.connection() as conn:
        # One ulp: float4 or a text round trip would hide it, the checksum must not.
        await conn.execute(
            text(
                "UPDATE processing_metrics SET metric_value = metric_value * (1 + 2e-16) "
                "WHERE id = 1"
            )
        )
        await conn.commit()

    with pytest.raises(VerificationError, match="processing_metrics"):
        await verify_only(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    status, out, err = await cli(
        "migrate",
        str(source),
        pg_url(pg),
        "--verify-only",
        "--on-error",
        "repair",
        "--source-timezone",
        ZONE.key,
    )
    assert status == 1
    assert "processing_metrics" in err and "DIFFERS" in out


async def test_passwords_are_never_echoed(tmp_path: Path, pg_database: Config) -> None:
    source, _ = legacy(tmp_path, 1, dirty=False)
    pg = await pg_database()
    url = make_url(pg_url(pg)).set(password="s3cr@t pass")
    secret_url = url.render_as_string(hide_password=False)
    missing = url.set(database="pdbmig_missing").render_as_string(hide_password=False)
    report = tmp_path / "report.json"

    status, out, err = await cli("migrate", str(source), secret_url, "--report", str(report))
    assert status == 0, err
    assert "s3cr" not in out + err + report.read_text()
    status, out, err = await cli("migrate", str(source), missing)
    assert status == 2
    assert "pdbmig_missing" in err and "s3cr" not in out + err


# -- interrupted, then resumed ------------------------------------------------------


async def _progress(config: DatabaseConfig, table: str) -> tuple[int, bool] | None:
    conn = await asyncpg.connect(admin_dsn(make_url(pg_url(config)).database))
    try:
        copied = await conn.fetchval(
            "SELECT sum(copied) FROM _pipeline_db_migration_batches WHERE table_name = $1", table
        )
        done = await conn.fetchval(
            "SELECT done FROM _pipeline_db_migration WHERE table_name = $1", table
        )
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return None if copied is None else (int(copied), bool(done))


async def _sessions(config: DatabaseConfig) -> int:
    """Connections of migrations to the database."""
    database = make_url(pg_url(config)).database
    conn = await asyncpg.connect(admin_dsn())
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND application_name = 'pipeline-db migrate'",
                database,
            )
        )
    finally:
        await conn.close()


Progress = Callable[[], Awaitable[tuple[int, bool] | None]]


async def _kill_in_processing_log(args: list[str], progress: Progress, pg: DatabaseConfig) -> None:
    """Run ``pipeline-db *args`` and SIGKILL it once 5,000 rows of processing_log
    are in (and it is not done), then wait until its workers have left ``pg``.

    ``progress``: the target's (rows copied, done) for processing_log, or None.
    """
    process = await asyncio.create_subprocess_exec(
        CLI, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        for _ in range(3000):
            found = await progress()
            if found is not None and found[0] >= 5_000 and not found[1]:
                break
            assert process.returncode is None, "the migration ended before it was killed"
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the migration never reached processing_log")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    # Its worker processes died with it: nothing writes while it is resumed.
    for _ in range(200):
        if not await _sessions(pg):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the killed migration's workers are still connected")


@pytest.mark.slow
async def test_sigkill_during_the_largest_table_then_resume(
    tmp_path: Path, pg_database: Config
) -> None:
    source, data = legacy(tmp_path, 5)
    extra = 60_000
    _legacy.big_log(source, extra)
    before = sha256(source)
    pg = await pg_database()
    args = [
        "migrate",
        str(source),
        pg_url(pg),
        "--on-error",
        "repair",
        "--batch-size",
        "500",
        "--source-timezone",
        ZONE.key,
        "--report",
        str(tmp_path / "report.json"),
        "--split-rows",  # processing_log in two key ranges, one per worker process
        "20000",
    ]
    await _kill_in_processing_log(args, lambda: _progress(pg, "processing_log"), pg)
    killed_at = await _progress(pg, "processing_log")
    assert killed_at is not None and not killed_at[1]

    status, out, err = await cli(*args, "--resume")

    assert status == 0, err
    assert "verification: every table equal" in out
    held = await snapshot(pg)
    expected = data.expected("repair")
    logs = expected.pop("processing_log")
    assert_holds(held, expected)
    in_source = sqlite3.connect(source)
    try:
        source_ids = {r[0] for r in in_source.execute("SELECT id FROM processing_log")}
    finally:
        in_source.close()
    skipped = {k for k in data.rows["processing_log"] if k not in logs}
    assert set(held["processing_log"]) == source_ids - skipped
    assert len(held["processing_log"]) == len(logs) + extra
    report = json.loads((tmp_path / "report.json").read_text())
    keys = [(i["table"], i["key"], i["column"]) for i in report["issues"]]
    assert len(keys) == len(set(keys))  # each bad row listed once, resume or not
    assert sha256(source) == before
    fresh = await pg_database()
    async with Database(fresh) as db:
        await upgrade(db)
    assert await _pg_schema(pg) == await _pg_schema(fresh)  # indexes set aside came back


def _sqlite_progress(path: Path, table: str) -> tuple[int, bool] | None:
    """A SQLite target's progress on a table (None: not readable yet)."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=0.1)
    except sqlite3.Error:
        return None
    try:
        copied = conn.execute(
            "SELECT sum(copied) FROM _pipeline_db_migration_batches WHERE table_name = ?",
            (table,),
        ).fetchone()[0]
        done = conn.execute(
            "SELECT done FROM _pipeline_db_migration WHERE table_name = ?", (table,)
        ).fetchone()
    except sqlite3.Error:  # not created yet, or a writer holds the file
        return None
    finally:
        conn.close()
    return None if copied is None else (int(copied), bool(done and done[0]))


@pytest.mark.slow
async def test_sigkill_into_sqlite_during_the_largest_table_then_resume(
    tmp_path: Path, pg_database: Config
) -> None:
    """PostgreSQL to SQLite: killed mid-way through processing_log, resumed, equal."""
    source, _ = legacy(tmp_path, 5)
    _legacy.big_log(source, 60_000)
    pg = await pg_database()
    await run(sqlite_config(source), pg, options(tmp_path, on_error="repair"))
    back = tmp_path / "back.db"
    args = [
        "migrate",
        pg_url(pg),
        str(back),
        "--batch-size",
        "500",
        "--report",
        str(tmp_path / "report-back.json"),
        "--split-rows",  # processing_log in two key ranges, one per worker process
        "20000",
    ]

    async def progress() -> tuple[int, bool] | None:
        return await asyncio.to_thread(_sqlite_progress, back, "processing_log")

    await _kill_in_processing_log(args, progress, pg)
    killed_at = _sqlite_progress(back, "processing_log")
    assert killed_at is not None and not killed_at[1]

    status, out, err = await cli(*args, "--resume")

    assert status == 0, err
    assert "verification: every table equal" in out
    assert await snapshot(sqlite_config(back)) == await snapshot(pg)
    report = json.loads((tmp_path / "report-back.json").read_text())
    assert report["issues"] == []
    fresh = tmp_path / "fresh.db"
    async with Database(sqlite_config(fresh)) as db:
        await upgrade(db)
    assert _sqlite_schema(back) == _sqlite_schema(fresh)  # no progress table left behind


class Crash(Exception):
    """The migrating process dies here."""


async def test_resume_after_batches_committed_out_of_order(
    tmp_path: Path, pg_database: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers per table: batch 4 commits, batch 3 never does; resume fills the gap only."""
    from pipeline_db.transfer.pg_target import PostgreSQLTarget

    source, data = legacy(tmp_path, 2)
    pg = await pg_database()
    original = PostgreSQLTarget.write
    fourth = asyncio.Event()
    calls = 0

    async def crash_before_the_third(self: Any, plan: Any, batch: Any, on_error: Any) -> Any:
        nonlocal calls
        if plan.name != "processing_log":
            return await original(self, plan, batch, on_error)
        calls += 1
        if calls == 3:
            await asyncio.wait_for(fourth.wait(), 30)
            raise Crash  # the process dies with batch 3 uncommitted
        record = await original(self, plan, batch, on_error)
        if calls == 4:
            fourth.set()
        return record

    monkeypatch.setattr(PostgreSQLTarget, "write", crash_before_the_third)
    with pytest.raises(Crash):
        await run(sqlite_config(source), pg, options(tmp_path, on_error="repair", batch_size=20))
    monkeypatch.setattr(PostgreSQLTarget, "write", original)
    copied = await _progress(pg, "processing_log")
    assert copied is not None and copied[0] == 3 * 20  # batches 1, 2 and 4

    report = await run(
        sqlite_config(source), pg, options(tmp_path, on_error="repair", batch_size=20, resume=True)
    )

    assert report.verified
    assert_holds(await snapshot(pg), data.expected("repair"))
