"""SQLite through aiosqlite: engine, PRAGMAs, BEGIN IMMEDIATE, error classification."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy import QueuePool, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from pipeline_db._json import dumps, loads
from pipeline_db.backends import Fault, Listener, run_unit
from pipeline_db.config import DatabaseConfig

T = TypeVar("T")
READER_THREADS = 4
#: A writer's attempts at the write lock: every 0.2 ms at first, then every 1 ms.
FIRST_POLL_S = 0.0002
LAST_POLL_S = 0.001

# Execution option read by the "begin" listener: which BEGIN to emit.
BEGIN_MODE_OPTION = "pipeline_db_begin"

# Primary result codes (https://www.sqlite.org/rescode.html), extended codes
# are reduced to these with ``code & 0xFF`` unless listed in full below.
SQLITE_BUSY = 5
_TRANSIENT = {SQLITE_BUSY: "busy", 6: "locked"}
_EXTENDED = {
    2067: ("conflict", "unique"),  # SQLITE_CONSTRAINT_UNIQUE
    1555: ("conflict", "unique"),  # SQLITE_CONSTRAINT_PRIMARYKEY
    787: ("conflict", "foreign_key"),  # SQLITE_CONSTRAINT_FOREIGNKEY
    1299: ("invalid", "not_null"),  # SQLITE_CONSTRAINT_NOTNULL
    275: ("invalid", "check"),  # SQLITE_CONSTRAINT_CHECK
}
_PRIMARY = {
    1: ("misuse", "statement"),  # SQLITE_ERROR
    8: ("misuse", "readonly"),  # SQLITE_READONLY
    14: ("config", "cantopen"),  # SQLITE_CANTOPEN
    19: ("conflict", "constraint"),  # SQLITE_CONSTRAINT, other
    20: ("invalid", "mismatch"),  # SQLITE_MISMATCH
    26: ("config", "notadb"),  # SQLITE_NOTADB
}


class SQLiteBackend:
    """SQLite through aiosqlite.

    Write transactions start with ``BEGIN IMMEDIATE`` so they take the write
    lock up front and wait in SQLite's busy handler (``busy_timeout``) instead
    of failing later with SQLITE_BUSY on lock upgrade; read transactions use a
    deferred ``BEGIN`` and never take it. Within one process, writers queue on
    an asyncio lock so they do not spin on the busy handler against each other.
    The recipe is SQLAlchemy's ("Serializable isolation / Savepoints /
    Transactional DDL" in the SQLite dialect docs).
    """

    name: Literal["sqlite"] = "sqlite"
    writable_ctes = False

    def __init__(self) -> None:
        self._write_lock = asyncio.Lock()
        self._sync_engine: Engine | None = None
        # Whole transactions of run_sync() run here on sqlite3 connections: one
        # thread hop per transaction instead of several per statement through
        # aiosqlite. One writer thread (SQLite has one write lock anyway).
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None

    def create_engine(self, config: DatabaseConfig) -> AsyncEngine:
        """Build an aiosqlite engine; create the database file's folder when missing.

        A synchronous twin of the engine (same file, settings and BEGIN rules)
        serves :meth:`run_sync` from worker threads.
        """
        url = config.sqlalchemy_url()
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {
            "pool_size": config.pool_size,
            "max_overflow": config.max_overflow,
            "pool_timeout": config.pool_timeout,
            "pool_recycle": config.pool_recycle,
            "json_serializer": dumps,
            "json_deserializer": loads,
        }
        # isolation_level=None: the driver never BEGINs on its own; we do.
        connect_args = {"timeout": config.connection_timeout, "isolation_level": None}
        engine = create_async_engine(url, connect_args=connect_args, **options)
        self._sync_engine = sa_create_engine(
            url.set(drivername="sqlite+pysqlite"),
            connect_args=connect_args | {"check_same_thread": False},
            poolclass=QueuePool,
            **options,
        )
        pragmas = (
            f"PRAGMA journal_mode={config.journal_mode}",
            f"PRAGMA synchronous={config.synchronous}",
            f"PRAGMA busy_timeout={config.busy_timeout}",
            "PRAGMA foreign_keys=ON",
        )
        _configure(engine.sync_engine, pragmas, _begin)
        _configure(self._sync_engine, pragmas, _polling_begin(config.busy_timeout))

        @event.listens_for(engine.sync_engine, "invalidate")
        def _on_invalidate(dbapi_connection: Any, _record: Any, _error: Any) -> None:
            # A task cancelled mid-statement stops awaiting, but aiosqlite's
            # worker thread runs the statement on, and the close queues behind
            # it; and a cursor SQLAlchemy leaves open on a lost connection keeps
            # the closed connection (and its transaction's write lock) alive
            # until garbage collection. So stop the statement and roll back
            # before SQLAlchemy closes the connection. interrupt() is made to be
            # called from another thread; outside a greenlet (garbage
            # collection) neither can run, and the close is all there is.
            with contextlib.suppress(Exception):
                dbapi_connection.run_async(lambda driver: driver.interrupt())
                dbapi_connection.run_async(lambda driver: asyncio.shield(driver.rollback()))

        self._writer = ThreadPoolExecutor(1, thread_name_prefix="pipeline-db-sqlite-writer")
        self._readers = ThreadPoolExecutor(
            min(READER_THREADS, config.pool_size), thread_name_prefix="pipeline-db-sqlite-reader"
        )
        return engine

    async def run_sync(
        self,
        engine: AsyncEngine,
        work: Callable[[Connection], T],
        *,
        write: bool,
        isolation: str | None,
        readonly: bool,
        autocommit: bool,
    ) -> T:
        """Run the whole transaction in a worker thread on a sqlite3 connection.

        A cancelled caller waits for the thread to finish, which then rolls
        back instead of committing.
        """
        assert self._sync_engine is not None and self._writer and self._readers
        writes = write and not readonly
        options = {BEGIN_MODE_OPTION: "IMMEDIATE" if writes else "DEFERRED"}
        cancelled = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            self._writer if writes else self._readers,
            run_unit,
            self._sync_engine,
            work,
            options,
            cancelled,
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(future)
            raise

    def notify(self, conn: Connection, channel: str, payload: str) -> None:
        """SQLite cannot notify other processes: they poll."""

    async def listen(
        self, config: DatabaseConfig, channel: str, wake: Callable[[], None]
    ) -> Listener | None:
        """SQLite cannot listen: runners in other processes poll."""
        return None

    def extra_engines(self) -> list[Engine]:
        """The synchronous engine of :meth:`run_sync`'s worker threads."""
        return [self._sync_engine] if self._sync_engine is not None else []

    async def dispose(self) -> None:
        """Close the synchronous engine's connections and stop the worker threads."""
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        for executor in (self._writer, self._readers):
            if executor is not None:
                executor.shutdown(wait=True)

    def classify(self, error: BaseException) -> Fault | None:
        """Classify by SQLite result code (``sqlite_errorcode``); never by message."""
        if not isinstance(error, sqlite3.Error):
            return None
        code: int | None = getattr(error, "sqlite_errorcode", None)
        name: str | None = getattr(error, "sqlite_errorname", None)
        message = str(error)
        if code is None:
            return Fault("other", "database", name, message)
        if code in _EXTENDED:
            kind, cause = _EXTENDED[code]
            return Fault(kind, cause, name, message)  # type: ignore[arg-type]
        primary = code & 0xFF
        if primary in _TRANSIENT:
            return Fault("transient", _TRANSIENT[primary], name, message)
        if primary in _PRIMARY:
            kind, cause = _PRIMARY[primary]
            return Fault(kind, cause, name, message)  # type: ignore[arg-type]
        return Fault("other", "database", name, message)

    async def begin(
        self,
        conn: AsyncConnection,
        *,
        write: bool,
        isolation: str | None,
        readonly: bool,
        autocommit: bool = False,
    ) -> None:
        """BEGIN IMMEDIATE for writes, a deferred BEGIN for reads.

        SQLite transactions are always serializable, so every ``isolation``
        level is honoured (or exceeded) as is; ``autocommit`` is ignored (a
        write still takes the write lock up front).
        """
        mode = "IMMEDIATE" if write and not readonly else "DEFERRED"
        await conn.execution_options(**{BEGIN_MODE_OPTION: mode})
        await conn.begin()

    @contextlib.asynccontextmanager
    async def writer_slot(self) -> AsyncIterator[None]:
        """Queue in-process writers for SQLite's single write lock."""
        async with self._write_lock:
            yield


def _begin(conn: Connection, mode: str) -> None:
    conn.exec_driver_sql(f"BEGIN {mode}")


def _polling_begin(busy_timeout_ms: int) -> Callable[[Connection, str], None]:
    """BEGIN on a worker thread's connection; IMMEDIATE retried at least once a millisecond.

    SQLite's busy handler sleeps 1, 2, 5, 10, 15 ... up to 100 ms between
    attempts at the write lock, so a writer that waited a little sleeps on long
    after the lock is free, and with it every writer queued behind it in its
    process (measured with 4 server processes: BEGIN IMMEDIATE's p99 wait 34 ms,
    its worst 530 ms, for locks held under a millisecond). Here the attempts
    come every 0.2 to 1 ms, for as long as ``busy_timeout`` allows.
    """
    patience_s = busy_timeout_ms / 1000

    def begin(conn: Connection, mode: str) -> None:
        if mode != "IMMEDIATE":
            conn.exec_driver_sql(f"BEGIN {mode}")
            return
        driver = conn.connection.driver_connection
        assert driver is not None
        deadline = time.monotonic() + patience_s
        delay = FIRST_POLL_S
        driver.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                    return
                except DBAPIError as error:
                    code = getattr(error.orig, "sqlite_errorcode", None)
                    if code is None or code & 0xFF != SQLITE_BUSY or time.monotonic() >= deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 2, LAST_POLL_S)
        finally:
            driver.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")

    return begin


def _configure(
    engine: Engine, pragmas: tuple[str, ...], begin: Callable[[Connection, str], None]
) -> None:
    """PRAGMAs on every new connection, and our own BEGIN (the SQLAlchemy recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in pragmas:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        begin(conn, conn.get_execution_options().get(BEGIN_MODE_OPTION, "DEFERRED"))
