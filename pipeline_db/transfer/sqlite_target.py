"""Writing into a SQLite file (the rollback from PostgreSQL): Alembic's schema, executemany.

The schema comes from pipeline-db's Alembic migrations, so the file is one
pipeline-db serves. Rows go in with ``executemany`` inside ``BEGIN
IMMEDIATE`` transactions, one per batch, with foreign keys enforced. The FTS5
triggers keep the full-text table in step during the load; it is rebuilt
from the index rows at the end all the same, and the AUTOINCREMENT counters
are raised to the source's sequences so no id is ever handed out twice.

All calls run on one worker thread, which owns the sqlite3 connection.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pipeline_db import schema
from pipeline_db.config import DatabaseConfig
from pipeline_db.database import Database
from pipeline_db.migrations import upgrade
from pipeline_db.transfer import _sql, _target_sql
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.errors import MigrationError
from pipeline_db.transfer.layout import TablePlan
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
    record_of,
    rejected,
)

T = TypeVar("T")
#: Page cache of the loading connection (KiB): indexes with random keys (text ids)
#: otherwise go to the file for every page they touch.
LOAD_CACHE_KIB = 16 * 1024
# What a refused row raises: constraint failures and values sqlite3 cannot bind.
_REFUSALS = (sqlite3.IntegrityError, sqlite3.DataError, ValueError, OverflowError)
# "NOT NULL constraint failed: episodes.hash" names the column; nothing is classified by it.
_FAILED_COLUMN = re.compile(r"constraint failed: \w+\.(\w+)")


class SQLiteTarget:
    """A SQLite file written with executemany."""

    dialect: Dialect = "sqlite"
    writers = 1  # SQLite has one write lock
    keys_set_aside = False  # PRAGMA foreign_keys is on while it loads

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.description = config.describe()
        self.path = Path(config.sqlalchemy_url().database or "")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pipeline-db-migrate-target")
        self._conn: sqlite3.Connection | None = None

    async def inspect(self) -> TargetState:
        """What the file holds (read-only; a missing file stays missing)."""
        if not self.path.exists():
            return TargetState(exists=False)

        def look() -> TargetState:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            try:
                names = {
                    r[0]
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                revision = None
                if "alembic_version" in names:
                    found = conn.execute("SELECT version_num FROM alembic_version").fetchall()
                    revision = found[0][0] if found else None
                filled = tuple(
                    name
                    for name in schema.metadata.tables
                    if name in names and conn.execute(_sql.any_row(name, "sqlite").sql).fetchall()
                )
                return TargetState(True, revision, filled, _target_sql.progress.name in names)
            finally:
                conn.close()

        return await self._call(look)

    async def prepare(self) -> None:
        """Create or upgrade the schema with Alembic, then open the copying connection."""
        async with Database(self.config) as db:
            await upgrade(db)
        await self.reconnect()

    async def reconnect(self) -> None:
        """Open the copying connection (foreign keys on, as pipeline-db runs it)."""

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=self.config.busy_timeout / 1000,
            )
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            conn.execute(f"PRAGMA cache_size = -{LOAD_CACHE_KIB}")
            return conn

        await self.close_connection()
        self._conn = await self._call(connect)

    async def empty(self) -> None:
        """Delete every row of the schema's tables, reset the counters, drop any progress."""

        def work() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for table in reversed(schema.metadata.sorted_tables):
                    db.execute(_target_sql.empty_table(table.name, "sqlite").sql)
                db.execute(_target_sql.reset_sqlite_sequences().sql)
                db.execute(_target_sql.rebuild_fts().sql)
                for statement in _target_sql.drop_progress("sqlite"):
                    db.execute(statement.sql)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._call(work)

    async def start(
        self, settings: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[Any], list[Any]]:
        """Create the progress tables; return the settings and records already there."""

        def work() -> tuple[dict[str, Any] | None, list[Any], list[Any]]:
            db = self._db
            for statement in _target_sql.create_progress("sqlite"):
                db.execute(statement.sql)
            rows = db.execute(_target_sql.read_progress("sqlite").sql).fetchall()
            records = db.execute(_target_sql.read_batches("sqlite").sql).fetchall()
            found = read_settings(rows)
            if found is None:
                statement = _target_sql.save_progress("sqlite")
                db.execute(statement.sql, statement.args(settings_row(settings)))
            return found, rows, records

        return await self._call(work)

    async def skipped_keys(self) -> dict[str, set[str]]:
        """Keys of the rows left out so far, by table."""
        statement = _target_sql.read_issues("sqlite", skipped_only=True)
        rows = await self._call(
            lambda: self._db.execute(statement.sql, statement.args()).fetchall()
        )
        found: dict[str, set[str]] = {}
        for name, key in rows:
            found.setdefault(name, set()).add(key)
        return found

    async def write(self, plan: TablePlan, batch: Batch, on_error: OnError) -> BatchRecord:
        """Insert a batch, its record and its issues in one transaction, bisecting refusals."""
        insert = _target_sql.insert_rows(plan)
        add_issue = _target_sql.add_issue("sqlite")
        add_batch = _target_sql.add_batch("sqlite")

        def work() -> BatchRecord:
            started = time.perf_counter()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                refused = self._insert(db, plan, insert.sql, batch.rows, on_error)
                record = record_of(plan, batch, refused, time.perf_counter() - started)
                db.execute(add_batch.sql, add_batch.args(record.row()))
                batch.issues.extend(refused)
                db.executemany(add_issue.sql, [add_issue.args(i.row()) for i in batch.issues])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return record

        return await self._call(work)

    async def start_table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Record the split keys; nothing is set aside (indexes and triggers stay)."""
        statement = _target_sql.save_progress("sqlite")
        await self._call(lambda: self._db.execute(statement.sql, statement.args(state.table_row())))
        return state

    async def finish_table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Mark the table done."""
        new = replace(state, done=True)
        statement = _target_sql.save_progress("sqlite")
        await self._call(lambda: self._db.execute(statement.sql, statement.args(new.table_row())))
        return new

    async def finish(self, plans: list[TablePlan], counters: dict[str, int]) -> None:
        """Raise AUTOINCREMENT counters to the source's; rebuild the full-text table."""

        def work() -> None:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for plan in plans:
                    if plan.identity and plan.table.kwargs.get("sqlite_autoincrement"):
                        floor = counters.get(plan.name, 0)
                        if not floor:
                            continue  # the inserts moved it past the largest id already
                        for statement in _target_sql.sqlite_counter():
                            db.execute(
                                statement.sql, statement.args({"name": plan.name, "floor": floor})
                            )
                db.execute(_target_sql.rebuild_fts().sql)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self._call(work)

    async def issues(self) -> AsyncIterator[Issue]:
        """Every recorded issue, in the order found."""
        statement = _target_sql.read_issues("sqlite", skipped_only=False)
        cursor = await self._call(lambda: self._db.execute(statement.sql, statement.args()))
        try:
            while rows := await self._call(lambda: cursor.fetchmany(1000)):
                for row in rows:
                    yield Issue(*row)
        finally:
            await self._call(cursor.close)

    async def complete(self) -> None:
        """Drop the progress tables."""

        def work() -> None:
            for statement in _target_sql.drop_progress("sqlite"):
                self._db.execute(statement.sql)

        await self._call(work)

    async def scan(
        self,
        plan: TablePlan,
        transform: Transform[T],
        sizer: BatchSizer,
        *,
        lower: Any = None,
        upper: Any = None,
    ) -> AsyncIterator[T]:
        """The table's copied columns in ``(lower, upper]``, in no order, in one snapshot.

        Read on a connection and thread of their own, while other tables load.
        """
        statement = _sql.select_unordered(
            plan, "sqlite", lower=lower is not None, upper=upper is not None
        )
        args = statement.args({"lower": lower, "upper": upper})
        reader = ThreadPoolExecutor(1, thread_name_prefix="pipeline-db-migrate-verify")
        loop = asyncio.get_running_loop()

        def begin() -> tuple[sqlite3.Connection, sqlite3.Cursor]:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN")
            return conn, conn.execute(statement.sql, args)

        def fetch() -> T | None:
            batch = cursor.fetchmany(sizer.next)
            if not batch:
                return None
            sizer.observe(batch)
            return transform(batch)

        try:
            conn, cursor = await loop.run_in_executor(reader, begin)
            try:
                while (result := await loop.run_in_executor(reader, fetch)) is not None:
                    yield result
            finally:
                await loop.run_in_executor(reader, conn.close)
        except sqlite3.Error as error:
            raise driver_error(error, self.config) from error
        finally:
            reader.shutdown(wait=False)

    async def close_connection(self) -> None:
        """Close the copying connection, if open."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        await self.close_connection()
        self._thread.shutdown(wait=True)

    # -- on the writer thread ---------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise MigrationError("the target is not open")
        return self._conn

    async def _call(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except sqlite3.Error as error:
            raise driver_error(error, self.config) from error

    def _insert(
        self,
        db: sqlite3.Connection,
        plan: TablePlan,
        sql: str,
        rows: list[tuple[Any, ...]],
        on_error: OnError,
    ) -> list[Issue]:
        """Insert rows in a savepoint; on refusal, halve until the refused rows are found."""
        if not rows:
            return []
        db.execute("SAVEPOINT batch")
        try:
            db.executemany(sql, rows)
            db.execute("RELEASE batch")
            return []
        except _REFUSALS as error:
            db.execute("ROLLBACK TO batch")
            db.execute("RELEASE batch")
            if len(rows) == 1:
                found = _FAILED_COLUMN.search(str(error))
                column = found.group(1) if found else None
                return [rejected(plan, rows[0], column, str(error), on_error)]
        middle = len(rows) // 2
        return [
            *self._insert(db, plan, sql, rows[:middle], on_error),
            *self._insert(db, plan, sql, rows[middle:], on_error),
        ]
