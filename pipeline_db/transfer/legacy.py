"""Reading a SQLite file: a legacy ``pipeline.db`` (schema_version 1 to 5) or pipeline-db's own.

The file is opened through a ``file:...?mode=ro`` URI with ``query_only`` on,
so no statement can write it and SQLite never rolls back, checkpoints or
rewrites it: its bytes stay as they were. One read transaction spans the
whole copy (a consistent snapshot even while the pipeline writes, in WAL
mode). What the file holds is discovered, not assumed: which of the schema's
tables and columns exist, the schema version, the AUTOINCREMENT counters, a
``social_jobs`` whose foreign key points at a column that does not exist, an
FTS5 table that cannot be queried (never read: the target's index is rebuilt
from the copied rows).

All calls run on one worker thread, which owns the sqlite3 connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pipeline_db import schema
from pipeline_db.config import DatabaseConfig
from pipeline_db.errors import ConfigurationError, PipelineDBError
from pipeline_db.transfer import _sql, _target_sql
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.source import (
    BatchSizer,
    SourceInfo,
    Transform,
    average_width,
    driver_error,
)

T = TypeVar("T")

#: Tables of a pipeline.db that are bookkeeping, not data.
_BOOKKEEPING = {
    "schema_version",
    "alembic_version",
    "sqlite_sequence",
    *_target_sql.PROGRESS_TABLES,
}
#: The legacy versions, by the newest table each one added.
_VERSION_TABLES = (
    (4, "clips"),
    (3, "json_metadata_index"),
    (2, "processing_metrics"),
    (1, "episodes"),
)


class SQLiteSource:
    """A SQLite file, read-only (see the module docstring)."""

    dialect: Dialect = "sqlite"

    def __init__(self, config: DatabaseConfig, path: Path) -> None:
        self.config = config
        self.description = config.describe()
        self.path = path
        self.info = SourceInfo("SQLite")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pipeline-db-migrate-source")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, config: DatabaseConfig) -> SQLiteSource:
        """Open the file read-only, start the snapshot and discover its tables.

        Raises:
            ConfigurationError: the file does not exist or is not a SQLite database.
        """
        path = Path(config.sqlalchemy_url().database or "")
        if not await asyncio.to_thread(path.is_file):
            raise ConfigurationError(f"the source {path} does not exist")
        source = cls(config, path)
        try:
            await source._call(source._connect)
            source.info = await source._call(source._discover)
        except BaseException:
            await source.close()
            raise
        return source

    async def count(self, name: str) -> int:
        """How many rows a table holds."""
        statement = _sql.count_rows(name, "sqlite")
        rows = await self._call(lambda: self._db.execute(statement.sql).fetchall())
        return int(rows[0][0])

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
        """The table's rows in key order after ``after``, transformed on the reader thread.

        With ``checked`` each row carries a flag per foreign key (parent row
        missing) and per CHECK constraint (failing), after its columns.
        """
        bounded = upper is not None
        present = set(self.info.tables)
        statement = _sql.select_rows(
            plan, "sqlite", after=after is not None, present=present, flags=checked, upper=bounded
        )
        resume_at = _sql.select_rows(
            plan, "sqlite", after=True, present=present, flags=checked, upper=bounded
        )
        args = statement.args({"after": after, "upper": upper})
        cursors = [await self._call(lambda: self._db.execute(statement.sql, args))]
        last = [after]

        def fetch() -> tuple[T, int] | None:
            try:
                batch = cursors[-1].fetchmany(sizer.next)
            except sqlite3.OperationalError:
                if self._db.text_factory is _lenient_text:
                    raise
                # Text that is not UTF-8 (sqlite3 cannot decode it): read on from the
                # last key with its bytes kept as lone surrogates; the target refuses
                # such a value, and the row is reported like any other bad row.
                self._db.text_factory = _lenient_text
                cursors[-1].close()
                if last[0] is None:
                    cursors.append(self._db.execute(statement.sql, args))
                else:
                    cursors.append(
                        self._db.execute(
                            resume_at.sql, resume_at.args({"after": last[0], "upper": upper})
                        )
                    )
                batch = cursors[-1].fetchmany(sizer.next)
            if not batch:
                return None
            sizer.observe(batch)
            last[0] = batch[-1][plan.key_index]
            return transform(batch), len(batch)

        try:
            while (result := await self._call(fetch)) is not None:
                yield result[0]
        finally:
            await self._call(cursors[-1].close)

    async def key_at(self, plan: TablePlan, offset: int) -> Any:
        """The key of the row at ``offset`` in key order (to split a table)."""
        statement = _sql.key_at(plan, "sqlite")
        args = statement.args({"offset": offset})
        rows = await self._call(lambda: self._db.execute(statement.sql, args).fetchall())
        return rows[0][0] if rows else None

    async def row_width(self, plan: TablePlan) -> float:
        """The average width in bytes of the table's first rows (to schedule the copy)."""
        statement = _sql.first_rows(plan, "sqlite")
        try:
            rows = await self._call(self._fetcher(statement))
        except PipelineDBError:
            return 0.0  # text that is not UTF-8: the copy reads it leniently
        return average_width(rows)

    async def null_keys(self, plan: TablePlan) -> list[int]:
        """Rowids of rows whose key is NULL."""
        statement = _sql.null_keys(plan)
        rows = await self._call(lambda: self._db.execute(statement.sql).fetchall())
        return [int(row[0]) for row in rows]

    async def duplicates(self, plan: TablePlan) -> dict[Any, str]:
        """Keys of rows that repeat an earlier row's values of a unique column set."""
        found: dict[Any, str] = {}
        for columns in plan.uniques:
            statement = _sql.duplicates(plan, columns, "sqlite")
            rows = await self._call(self._fetcher(statement))
            for key, first in rows:
                found.setdefault(key, f"duplicate of {plan.key} {first} on ({', '.join(columns)})")
        return found

    async def export_snapshot(self) -> str | None:
        """None: SQLite cannot share a snapshot between connections."""
        return None

    async def close(self) -> None:
        """End the snapshot, close the file and stop the thread."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)

    # -- on the reader thread --------------------------------------------------------

    def _fetcher(self, statement: _sql.Statement) -> Callable[[], list[Any]]:
        return lambda: self._db.execute(statement.sql, statement.args()).fetchall()

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    async def _call(self, work: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except sqlite3.Error as error:
            raise driver_error(error, self.config) from error

    def _connect(self) -> None:
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            conn.execute("BEGIN")  # deferred: the first read takes the snapshot
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as error:
            conn.close()
            if getattr(error, "sqlite_errorname", "") == "SQLITE_NOTADB":
                raise ConfigurationError(
                    f"the source {self.path} is not a SQLite database"
                ) from None
            raise
        self._conn = conn

    def _discover(self) -> SourceInfo:
        db = self._db
        entries = db.execute("SELECT type, name, sql FROM sqlite_master WHERE type = 'table'")
        tables = {name: sql or "" for _, name, sql in entries.fetchall()}
        virtual = [n for n, sql in tables.items() if sql.upper().startswith("CREATE VIRTUAL")]
        info = SourceInfo(self._flavour(tables))
        for name in sorted(tables):
            if name in schema.metadata.tables:
                columns = db.execute(f'PRAGMA table_info("{_ident(name)}")').fetchall()
                info.tables[name] = [str(c[1]) for c in columns]
            elif name in virtual:
                info.notes.append(self._describe_fts(name))
            elif not (
                name in _BOOKKEEPING
                or name.startswith("sqlite_")
                or any(name.startswith(f"{v}_") for v in virtual)
            ):
                info.not_copied.append(f"{name} (not part of pipeline-db's schema)")
        if "sqlite_sequence" in tables:
            for name, seq in db.execute(_sql.sqlite_counters().sql).fetchall():
                if name in info.tables and isinstance(seq, int):
                    info.counters[name] = seq
        info.notes.extend(self._foreign_key_notes(info.tables))
        return info

    def _flavour(self, tables: dict[str, str]) -> str:
        db = self._db
        if "alembic_version" in tables:
            revision = db.execute("SELECT version_num FROM alembic_version").fetchall()
            return f"pipeline-db SQLite database (revision {revision[0][0] if revision else '?'})"
        if "schema_version" in tables:
            found = db.execute("SELECT max(version) FROM schema_version").fetchall()
            if found and found[0][0] is not None:
                return f"legacy pipeline.db, schema_version {found[0][0]}"
        version = next((v for v, t in _VERSION_TABLES if t in tables), None)
        if version is None:
            return "SQLite database without pipeline tables"
        return f"legacy pipeline.db, schema_version {version} (from its tables)"

    def _describe_fts(self, name: str) -> str:
        try:
            # One row tells a broken table (a shadow table lost) as well as all
            # of them would; count(*) read the whole index, in every job.
            self._db.execute(f'SELECT rowid FROM "{_ident(name)}" LIMIT 1').fetchall()
        except sqlite3.Error as error:
            return (
                f"full-text table {name} cannot be queried ({error}); it is not read: "
                "the target's index is rebuilt from the copied rows"
            )
        return f"full-text table {name} is not copied: the target's index is rebuilt"

    def _foreign_key_notes(self, tables: dict[str, list[str]]) -> list[str]:
        notes = []
        for name in tables:
            for fk in self._db.execute(f'PRAGMA foreign_key_list("{_ident(name)}")').fetchall():
                parent, column, to = str(fk[2]), str(fk[3]), fk[4]
                if to is not None and parent in tables and to not in tables[parent]:
                    notes.append(
                        f"{name}.{column} references {parent}.{to}, a column that does not "
                        f"exist; pipeline-db's {name} references {parent} by its key"
                    )
        return notes


def _lenient_text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _ident(name: str) -> str:
    return name.replace('"', '""')
