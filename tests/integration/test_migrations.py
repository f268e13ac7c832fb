"""Alembic migrations: the schema they make is exactly `schema.metadata`, on both backends."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from pipeline_db import Database, DatabaseConfig, SchemaOutOfDateError
from pipeline_db.cli import main
from pipeline_db.migrations import (
    EXPRESSION_INDEXES,
    downgrade,
    head_revision,
    include_object,
    require_current,
    status,
    upgrade,
)
from pipeline_db.schema import metadata


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"include_object": include_object, "compare_type": True}
    )
    with warnings.catch_warnings():
        # SQLite's reflection skips expression indexes and says so; they are
        # left out of the comparison and checked by name below.
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
        return list(compare_metadata(context, metadata))


async def test_the_migrated_schema_is_exactly_the_metadata(db: Database) -> None:
    async with db.connection() as conn:
        differences = await conn.run_sync(_diff)
    assert differences == []


async def test_every_table_of_the_metadata_exists_with_its_indexes(db: Database) -> None:
    def tables(connection: Connection) -> dict[str, set[str]]:
        if connection.dialect.name == "sqlite":
            rows = connection.execute(
                text("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'")
            )
        else:
            rows = connection.execute(
                text("SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'")
            )
        found: dict[str, set[str]] = {}
        for table, index in rows:
            found.setdefault(table, set()).add(index)
        return found

    async with db.connection() as conn:
        present = await conn.run_sync(tables)
    assert "ix_episodes_file_name" in EXPRESSION_INDEXES
    for table in metadata.sorted_tables:
        for index in table.indexes:
            assert index.name in present.get(table.name, set()), (table.name, index.name)


async def test_downgrade_to_nothing_and_back(db: Database) -> None:
    await downgrade(db, "base")
    assert (await status(db)).current is None
    await upgrade(db)
    found = await status(db)
    assert found.current == head_revision() and found.is_current
    async with db.connection() as conn:
        assert await conn.run_sync(_diff) == []


async def test_a_schema_behind_is_refused_naming_the_command(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config()) as db:
        await downgrade(db, "0001")
        with pytest.raises(SchemaOutOfDateError, match="pipeline-db db upgrade") as caught:
            await require_current(db)
        assert caught.value.context["current"] == "0001"
        await upgrade(db)
        await require_current(db)


async def test_concurrent_upgrades_apply_once(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    import asyncio

    async with Database(make_config()) as first, Database(make_config()) as second:
        await downgrade(first, "base")
        results = await asyncio.gather(upgrade(first), upgrade(second), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        async with first.connection() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert [r[0] for r in rows] == [head_revision()]


def test_cli_db_current_exits_non_zero_when_behind(
    make_config: Callable[..., DatabaseConfig], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import asyncio

    config = make_config()

    async def step_back() -> None:
        async with Database(config) as db:
            await downgrade(db, "0002")

    asyncio.run(step_back())
    monkeypatch.setenv("PIPELINE_DATABASE_URL", config.sqlalchemy_url().render_as_string(False))
    monkeypatch.setenv("PIPELINE_CONFIG", "/nonexistent/on/purpose.yaml")
    monkeypatch.delenv("PIPELINE_CONFIG")
    assert main(["db", "current"]) == 1
    assert "run `pipeline-db db upgrade`" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "current"]) == 0
