"""Writing into PostgreSQL: the schema by Alembic, rows by COPY on a raw asyncpg connection.

COPY (``copy_records_to_table``, binary format) is PostgreSQL's fastest way
in. While a table loads, its plain indexes and its foreign keys are set
aside (checking a foreign key and inserting into four btrees per row made
COPY ten times slower than into the bare table); their definitions, as the
catalog prints them, are kept with the table's progress and run again when
the table is done: one sort per index, one join per foreign key, and the
schema is exactly Alembic's again. The primary key and unique constraints
stay. The copier checks orphans itself, so the foreign keys come back valid.
A session advisory lock keeps a second migration out of the same target;
behind PgBouncer (``pgbouncer: true``), where a session lock would stay on
whichever server connection ran that one statement, the lock is
transaction-scoped and held by an open transaction on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, TypeVar

import asyncpg

from pipeline_db import schema
from pipeline_db.config import DatabaseConfig
from pipeline_db.database import Database
from pipeline_db.migrations import upgrade
from pipeline_db.transfer import _sql, _target_sql
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.errors import MigrationError
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.pg_source import connect, create_pool
from pipeline_db.transfer.progress import (
    BatchRecord,
    Issue,
    TableProgress,
    read_settings,
    settings_row,
)
from pipeline_db.transfer.source import BatchSizer, Transform, driver_error
from pipeline_db.transfer.target import (
    Batch,
    OnError,
    TargetState,
    constraint_column,
    record_of,
    rejected,
)

T = TypeVar("T")
#: Batches of one table written at once, each on its own connection (PostgreSQL
#: computes search vectors and parses rows on as many cores).
WRITERS_PER_TABLE = 2
#: Connections for the tables loading at once, their index builds and verifications.
POOL_SIZE = WRITERS_PER_TABLE + 2
#: maintenance_work_mem while indexes are built back after a table's load.
INDEX_BUILD_MEMORY = "256MB"
# pg_try_advisory_lock key held while a migration writes ("pdbmig").
_LOCK_KEY = 0x70_64_62_6D_69_67
# What a refused row raises: the server's data and constraint errors, and the
# client's encoding errors (an integer out of range, a lone surrogate).
_REFUSALS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    OverflowError,
    TypeError,
)


class PostgreSQLTarget:
    """A PostgreSQL database written with COPY, several tables at once."""

    dialect: Dialect = "postgresql"
    writers = WRITERS_PER_TABLE
    keys_set_aside = True

    def __init__(self, config: DatabaseConfig, *, locking: bool = True) -> None:
        self.config = config
        self.description = config.describe()
        self.locking = locking
        self._pool: asyncpg.Pool | None = None
        self._lock: asyncpg.Connection | None = None

    async def inspect(self) -> TargetState:
        """What the database holds (it must exist: pipeline-db does not create databases)."""
        try:
            conn = await asyncpg.connect(
                self.config.sqlalchemy_url()
                .set(drivername="postgresql")
                .render_as_string(hide_password=False),
                timeout=self.config.connection_timeout,
                **({"statement_cache_size": 0} if self.config.pgbouncer else {}),
            )
        except asyncpg.InvalidCatalogNameError:
            return TargetState(exists=False)
        except (asyncpg.PostgresError, OSError, TimeoutError) as error:
            raise driver_error(error, self.config) from None
        try:
            return await self._look(conn)
        except (asyncpg.PostgresError, OSError) as error:
            raise driver_error(error, self.config) from error
        finally:
            await conn.close()

    async def _look(self, conn: asyncpg.Connection) -> TargetState:
        names = {
            r[0]
            for r in await conn.fetch(
                "SELECT table_name::text FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        }
        revision = None
        if "alembic_version" in names:
            revision = await conn.fetchval("SELECT version_num FROM alembic_version")
        filled = []
        for name in schema.metadata.tables:
            if name in names and await conn.fetchval(_sql.any_row(name, "postgresql").sql):
                filled.append(name)
        return TargetState(True, revision, tuple(filled), _target_sql.progress.name in names)

    async def prepare(self) -> None:
        """Create or upgrade the schema with Alembic, then connect and take the lock."""
        async with Database(self.config) as db:
            await upgrade(db)
        await self.reconnect()

    async def reconnect(self) -> None:
        """Fresh copying connections, the migration lock held on a connection of its own."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        if self.locking:
            await self._hold_lock()
        self._pool = await create_pool(self.config, POOL_SIZE)

    async def _hold_lock(self) -> None:
        """Take the lock (kept while its connection lives).

        A session lock; behind PgBouncer, a transaction lock in a transaction
        left open, which pins one server connection for the whole migration.
        """
        if self._lock is not None and not self._lock.is_closed():
            return
        self._lock = conn = await connect(self.config)
        try:
            if self.config.pgbouncer:
                # Open for the whole migration: exempt it from an idle-in-transaction timeout.
                await conn.execute("BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0")
                locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _LOCK_KEY)
            else:
                locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY)
        except (asyncpg.PostgresError, OSError) as error:
            conn.terminate()
            raise driver_error(error, self.config) from error
        if not locked:
            conn.terminate()
            raise MigrationError(f"another migration is writing into {self.description}")

    async def empty(self) -> None:
        """TRUNCATE the schema's tables (identities restart) and drop any progress."""
        names = [t.name for t in schema.metadata.sorted_tables]
        listed = ", ".join(f'"{name}"' for name in names)
        statements = [f"TRUNCATE TABLE {listed} RESTART IDENTITY CASCADE"]
        statements += [s.sql for s in _target_sql.drop_progress("postgresql")]
        async with self._connection() as db, db.transaction():
            for statement in statements:
                await db.execute(statement)

    async def start(
        self, settings: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[Any], list[Any]]:
        """Create the progress tables; return the settings and records already there."""
        async with self._connection() as db:
            for statement in _target_sql.create_progress("postgresql"):
                await db.execute(statement.sql)
            rows = [tuple(r) for r in await db.fetch(_target_sql.read_progress(self.dialect).sql)]
            records = [tuple(r) for r in await db.fetch(_target_sql.read_batches(self.dialect).sql)]
            found = read_settings(rows)
            if found is None:
                save = _target_sql.save_progress(self.dialect)
                await db.execute(save.sql, *save.args(settings_row(settings)))
        return found, rows, records

    async def skipped_keys(self) -> dict[str, set[str]]:
        """Keys of the rows left out so far, by table."""
        statement = _target_sql.read_issues(self.dialect, skipped_only=True)
        found: dict[str, set[str]] = {}
        async with self._connection() as db:
            for name, key in await db.fetch(statement.sql, *statement.args()):
                found.setdefault(name, set()).add(key)
        return found

    async def write(self, plan: TablePlan, batch: Batch, on_error: OnError) -> BatchRecord:
        """COPY a batch, bisecting it to the refused rows if the server refuses it."""
        started = time.perf_counter()
        async with self._connection() as db, db.transaction():
            refused = await self._copy(db, plan, batch.rows, on_error)
            batch.issues.extend(refused)
            record = record_of(plan, batch, refused, time.perf_counter() - started)
            add = _target_sql.add_batch(self.dialect)
            await db.execute(add.sql, *add.args(record.row()))
            if batch.issues:
                statement = _target_sql.add_issue(self.dialect)
                await db.executemany(
                    statement.sql, [statement.args(issue.row()) for issue in batch.issues]
                )
        return record

    async def start_table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Set the table's plain indexes and foreign keys aside for the load.

        Their definitions, as the catalog prints them, are saved with the
        table's progress in the same transaction, so they come back exactly
        (and even after a crash, when the resumed load finishes).
        """
        if state.done or state.deferred or state.started:
            return state  # set aside by an earlier run already
        async with self._connection() as db, db.transaction():
            indexes = await db.fetch(_target_sql.set_aside_indexes().sql, plan.name)
            keys = await db.fetch(_target_sql.set_aside_foreign_keys().sql, plan.name)
            for name, _ in keys:
                await db.execute(_target_sql.drop_constraint(plan.name, name).sql)
            for name, _ in indexes:
                await db.execute(_target_sql.drop_index(name).sql)
            restore = [_target_sql.add_constraint(plan.name, n, d).sql for n, d in keys]
            new = replace(state, deferred=(*restore, *(d for _, d in indexes)))
            await _save(db, new)
        return new

    async def finish_table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Build the indexes and foreign keys back and mark the table done, in one go.

        Statistics are refreshed after (ANALYZE), so the planner knows the
        loaded table from the first query on.
        """
        started = time.perf_counter()
        async with self._connection() as db:
            async with db.transaction():
                # Index builds sort in memory this large (the server's, not ours).
                await db.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
                for statement in state.deferred:
                    await db.execute(statement)
                await _save(db, replace(state, done=True, deferred=()))
            new = replace(
                state, done=True, deferred=(), seconds=state.seconds + time.perf_counter() - started
            )
            await db.execute(_target_sql.analyze(plan.name).sql)
        return new

    async def finish(self, plans: list[TablePlan], counters: dict[str, int]) -> None:
        """Move each identity past the source's counter and its largest key."""
        async with self._connection() as db:
            for plan in plans:
                if plan.identity:
                    statement = _target_sql.set_identity(plan)
                    args = statement.args({"floor": counters.get(plan.name, 0)})
                    await db.execute(statement.sql, *args)

    async def issues(self) -> AsyncIterator[Issue]:
        """Every recorded issue, in the order found."""
        statement = _target_sql.read_issues(self.dialect, skipped_only=False)
        async with self._connection() as db, db.transaction(readonly=True):
            # Through a prepared statement: unnamed when the statement cache is
            # off (PgBouncer), where asyncpg's own cursors would use a name that
            # another process's connection may already have prepared.
            prepared = await db.prepare(statement.sql)
            async for row in prepared.cursor(*statement.args()):
                yield Issue(*row)

    async def complete(self) -> None:
        """Drop the progress tables."""
        async with self._connection() as db:
            for statement in _target_sql.drop_progress(self.dialect):
                await db.execute(statement.sql)

    async def scan(
        self,
        plan: TablePlan,
        transform: Transform[T],
        sizer: BatchSizer,
        *,
        lower: Any = None,
        upper: Any = None,
    ) -> AsyncIterator[T]:
        """The table's copied columns in ``(lower, upper]``, in no order, in one snapshot."""
        statement = _sql.select_unordered(
            plan, self.dialect, lower=lower is not None, upper=upper is not None
        )
        args = statement.args({"lower": lower, "upper": upper})
        async with self._connection() as db, db.transaction(readonly=True):
            cursor = await (await db.prepare(statement.sql)).cursor(*args)
            while batch := await cursor.fetch(sizer.next):
                sizer.observe(batch)
                yield transform(batch)

    async def close(self) -> None:
        """Close every connection (the lock goes with its own)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:
                pool.terminate()
        if self._lock is not None:
            lock, self._lock = self._lock, None
            try:
                await lock.close(timeout=5)
            except Exception:
                lock.terminate()

    # -- helpers ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; driver errors leave as pipeline-db's."""
        if self._pool is None:
            raise MigrationError("the target is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            raise driver_error(error, self.config) from error

    async def _copy(
        self,
        db: asyncpg.Connection,
        plan: TablePlan,
        rows: list[tuple[Any, ...]],
        on_error: OnError,
    ) -> list[Issue]:
        """COPY rows in a savepoint; on refusal, halve until the refused rows are found."""
        if not rows:
            return []
        try:
            async with db.transaction():
                await db.copy_records_to_table(plan.name, records=rows, columns=plan.names)
            return []
        except _REFUSALS as error:
            if len(rows) == 1:
                column = getattr(error, "column_name", None) or constraint_column(
                    plan, getattr(error, "constraint_name", None)
                )
                return [rejected(plan, rows[0], column, _reason(error), on_error)]
        middle = len(rows) // 2
        return [
            *await self._copy(db, plan, rows[:middle], on_error),
            *await self._copy(db, plan, rows[middle:], on_error),
        ]


async def _save(db: asyncpg.Connection, state: TableProgress) -> None:
    statement = _target_sql.save_progress("postgresql")
    await db.execute(statement.sql, *statement.args(state.table_row()))


def _reason(error: BaseException) -> str:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    constraint = getattr(error, "constraint_name", None)
    return f"{message} ({constraint})" if constraint and constraint not in message else message
