"""Reading pipeline-db's PostgreSQL database (the rollback to SQLite).

One asyncpg connection in a ``REPEATABLE READ READ ONLY`` transaction: the
whole copy sees one snapshot and cannot write. Rows stream through
server-side cursors in key order (text keys in byte order, ``COLLATE "C"``,
the order SQLite and the resume point use).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import asyncpg

from pipeline_db import schema
from pipeline_db.config import DatabaseConfig
from pipeline_db.transfer import _sql, _target_sql
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.layout import TablePlan, plan_table
from pipeline_db.transfer.source import (
    BatchSizer,
    SourceInfo,
    Transform,
    average_width,
    driver_error,
)

T = TypeVar("T")
APPLICATION_NAME = "pipeline-db migrate"


async def connect(config: DatabaseConfig) -> asyncpg.Connection:
    """A raw asyncpg connection for ``config`` (the password never leaves the URL).

    Behind PgBouncer (``config.pgbouncer``) asyncpg's statement cache is off, so
    every statement is prepared unnamed, on the server connection that runs it.
    """
    url = config.sqlalchemy_url().set(drivername="postgresql")
    try:
        return await asyncpg.connect(
            url.render_as_string(hide_password=False),
            timeout=config.connection_timeout,
            server_settings={"application_name": APPLICATION_NAME},
            **({"statement_cache_size": 0} if config.pgbouncer else {}),
        )
    except (asyncpg.PostgresError, OSError, TimeoutError) as error:
        raise driver_error(error, config) from None


async def create_pool(config: DatabaseConfig, size: int) -> asyncpg.Pool:
    """A pool of raw asyncpg connections for ``config`` (see :func:`connect`)."""
    url = config.sqlalchemy_url().set(drivername="postgresql")
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            url.render_as_string(hide_password=False),
            min_size=1,
            max_size=size,
            timeout=config.connection_timeout,
            server_settings={"application_name": APPLICATION_NAME},
            **({"statement_cache_size": 0} if config.pgbouncer else {}),
        )
    except (asyncpg.PostgresError, OSError, TimeoutError) as error:
        raise driver_error(error, config) from None
    return pool


class PostgreSQLSource:
    """pipeline-db's PostgreSQL database, read in one snapshot."""

    dialect: Dialect = "postgresql"

    def __init__(self, config: DatabaseConfig, conn: asyncpg.Connection) -> None:
        self.config = config
        self.description = config.describe()
        self.info = SourceInfo("pipeline-db PostgreSQL database")
        self._conn = conn
        self._transaction = conn.transaction(isolation="repeatable_read", readonly=True)
        # Several tables are read at once, through one connection (one snapshot):
        # its statements and cursor fetches take turns.
        self._turn = asyncio.Lock()

    @classmethod
    async def open(cls, config: DatabaseConfig, *, snapshot: str | None = None) -> PostgreSQLSource:
        """Connect, start the snapshot (or import ``snapshot``) and discover the tables."""
        source = cls(config, await connect(config))
        try:
            await source._transaction.start()
            if snapshot is not None:
                await source._conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            source.info = await source._discover()
        except (asyncpg.PostgresError, OSError) as error:
            await source.close()
            raise driver_error(error, config) from error
        except BaseException:
            await source.close()
            raise
        return source

    async def count(self, name: str) -> int:
        """How many rows a table holds."""
        return int(await self._value(_sql.count_rows(name, "postgresql")))

    async def scan(
        self,
        plan: TablePlan,
        transform: Transform[T],
        *,
        after: Any = None,
        upper: Any = None,
        sizer: BatchSizer,
        checked: bool = True,
    ) -> AsyncIterator[T]:
        """The table's rows in key order after ``after``, batch by batch, transformed.

        PostgreSQL enforced every constraint, so rows carry no flags.
        """
        statement = _sql.select_rows(
            plan, "postgresql", after=after is not None, present=set(), upper=upper is not None
        )
        args = statement.args({"after": after, "upper": upper})
        try:
            async with self._turn:
                # Unnamed when the statement cache is off (PgBouncer): see pg_target.
                cursor = await (await self._conn.prepare(statement.sql)).cursor(*args)
            while True:
                async with self._turn:
                    batch = await cursor.fetch(sizer.next)
                if not batch:
                    break
                sizer.observe(batch)
                yield transform(batch)
        except (asyncpg.PostgresError, OSError) as error:
            raise driver_error(error, self.config) from error

    async def key_at(self, plan: TablePlan, offset: int) -> Any:
        """The key of the row at ``offset`` in key order (to split a table)."""
        statement = _sql.key_at(plan, "postgresql")
        return await self._value(
            _sql.Statement(statement.sql, statement.params, {"offset": offset})
        )

    async def row_width(self, plan: TablePlan) -> float:
        """The average width in bytes of the table's first rows (to schedule the copy)."""
        statement = _sql.first_rows(plan, "postgresql")
        async with self._turn:
            try:
                rows = await self._conn.fetch(statement.sql, *statement.args())
            except (asyncpg.PostgresError, OSError) as error:
                raise driver_error(error, self.config) from error
        return average_width(rows)

    async def null_keys(self, plan: TablePlan) -> list[int]:
        """None: primary keys are NOT NULL here."""
        return []

    async def duplicates(self, plan: TablePlan) -> dict[Any, str]:
        """None: unique constraints held."""
        return {}

    async def export_snapshot(self) -> str | None:
        """Export the snapshot, for workers to read the same moment (``pg_export_snapshot``)."""
        value = await self._value(_sql.Statement("SELECT pg_export_snapshot()"))
        return str(value)

    async def close(self) -> None:
        """End the snapshot and close the connection."""
        if not self._conn.is_closed():
            try:
                await self._conn.close(timeout=5)
            except Exception:
                self._conn.terminate()

    async def _value(self, statement: _sql.Statement) -> Any:
        try:
            async with self._turn:
                return await self._conn.fetchval(statement.sql, *statement.args())
        except (asyncpg.PostgresError, OSError) as error:
            raise driver_error(error, self.config) from error

    async def _discover(self) -> SourceInfo:
        rows = await self._conn.fetch(
            "SELECT table_name::text, column_name::text FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        columns: dict[str, list[str]] = {}
        for table_name, column_name in rows:
            columns.setdefault(table_name, []).append(column_name)
        revision = None
        if "alembic_version" in columns:
            revision = await self._conn.fetchval("SELECT version_num FROM alembic_version")
        info = SourceInfo(f"pipeline-db PostgreSQL database (revision {revision or 'none'})")
        for name, names in columns.items():
            if name in schema.metadata.tables:
                info.tables[name] = [c for c in names if c != schema.POSTGRES_SEARCH_COLUMN]
            elif name not in ("alembic_version", *_target_sql.PROGRESS_TABLES):
                info.not_copied.append(f"{name} (not part of pipeline-db's schema)")
        for name, names in info.tables.items():
            table = schema.metadata.tables[name]
            try:
                plan = plan_table(table, names)
            except ValueError:
                continue
            if plan.identity:
                last = await self._value(_sql.postgres_counter(plan))
                if last is not None:
                    info.counters[name] = int(last)
        return info
