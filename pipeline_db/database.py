"""`Database`: the object applications hold and pass around.

It owns the engine and its pool, and offers three ways in:

* :meth:`Database.transaction`: a retried write (or read) transaction that
  runs a callable, re-running it from the start after a transient failure;
* :meth:`Database.retrying`: the same retries as an attempt iterator;
* :meth:`Database.read`: a read-only unit of work (not retried).

**The retry rule for callers:** the callable (or the body of an attempt) may
run more than once, so its writes must be idempotent: compare-and-set
updates, inserts keyed by a natural or client-chosen key, upserts. A
connection lost during COMMIT leaves the outcome unknown; such a transaction
is retried only when declared ``idempotent=True`` (the default), and raises
:class:`~pipeline_db.errors.CommitOutcomeUnknownError` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, TypeGuard, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pipeline_db._signals import Signals
from pipeline_db._translate import translate
from pipeline_db.backends import Backend, CommitFailed, backend_for
from pipeline_db.config import DatabaseConfig
from pipeline_db.errors import InterfaceError, TransientError
from pipeline_db.retry import Retrying

logger = logging.getLogger("pipeline_db")

T = TypeVar("T")
Isolation = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]
ISOLATION_LEVELS: frozenset[str] = frozenset(Isolation.__args__)  # type: ignore[attr-defined]


class Observer(Protocol):
    """Something told what the database layer does (metrics exporters)."""

    def retried(self, cause: str) -> None:
        """A transient failure of this cause was retried."""

    def waited(self, seconds: float) -> None:
        """A task waited this long for a connection slot."""


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of the connection pool.

    Attributes:
        size: connections the pool keeps (``pool_size``).
        checked_in: idle connections in the pool.
        checked_out: connections in use.
        overflow: connections opened beyond ``size`` (negative while the pool fills).
        waiting: tasks of this process waiting for a connection.
    """

    size: int
    checked_in: int
    checked_out: int
    overflow: int
    waiting: int


class Database:
    """The pipeline's database: an engine, its pool, and retried transactions.

    Use it as an async context manager (``async with Database(config) as db``)
    or through :meth:`connect` and :meth:`dispose`. There is no global engine:
    pass the ``Database`` to whatever needs it.
    """

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.backend: Backend = backend_for(config)
        self._engine: AsyncEngine | None = None
        self._waiting = 0
        # Connections are handed out through this fair (FIFO) semaphore sized to
        # the pool, so tasks queue here in order instead of racing in the pool,
        # where a task returning a connection can take it straight back and
        # starve the others (p99 of seconds at 50 tasks on 20 connections).
        self._slots = asyncio.Semaphore(config.pool_size + config.max_overflow)
        #: Transient failures that were retried, by cause (exported as metrics).
        self.retries: Counter[str] = Counter()
        #: In-process wake-ups (job queue), beside PostgreSQL's LISTEN/NOTIFY.
        self.signals = Signals()
        #: Told of every retry (``retried(cause)``) and pool wait (``waited(seconds)``).
        self.observers: list[Observer] = []

    def __repr__(self) -> str:
        return f"<Database {self.config.describe()}>"

    @classmethod
    async def connect(cls, config: DatabaseConfig) -> Database:
        """Create a ``Database`` and open its engine (no connection is made yet)."""
        database = cls(config)
        await database.open()
        return database

    async def open(self) -> None:
        """Create the engine. Idempotent."""
        if self._engine is None:
            self._engine = self.backend.create_engine(self.config)

    async def dispose(self) -> None:
        """Close every pooled connection and drop the engine."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()
            await self.backend.dispose()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine (raises InterfaceError before ``open`` or after ``dispose``)."""
        if self._engine is None:
            raise InterfaceError("the Database is not open: use `async with Database(config)`")
        return self._engine

    @property
    def sync_engines(self) -> list[Engine]:
        """Every synchronous engine statements run on, for SQLAlchemy event listeners.

        The async engine's ``sync_engine``, plus on SQLite the engine that
        :meth:`run_sync` uses in its worker threads.
        """
        return [self.engine.sync_engine, *self.backend.extra_engines()]

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.backend.name

    async def transaction(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        idempotent: bool = True,
        autocommit: bool = False,
    ) -> T:
        """Run ``work(conn)`` in a transaction, retrying it on transient failures.

        Args:
            work: called with a connection inside a transaction; may be called
                more than once (see the retry rule in the module docstring).
            isolation: the isolation level (PostgreSQL; SQLite is always serializable).
            readonly: a read-only transaction (no write lock on SQLite).
            idempotent: whether re-running ``work`` after a COMMIT whose outcome
                is unknown is safe.
            autocommit: on PostgreSQL, send no BEGIN or COMMIT: every statement
                commits on its own. For work that is one statement (atomic by
                itself), this saves two round trips. SQLite ignores it.

        Returns:
            What ``work`` returned on the attempt that committed.

        Raises:
            TransientError: retries exhausted; ``code`` and ``cause`` name the last failure.
            CommitOutcomeUnknownError: see the module docstring.
            PipelineDBError: any other failure, translated, raised at once.
        """
        async for attempt in self.retrying(
            isolation=isolation, readonly=readonly, idempotent=idempotent, autocommit=autocommit
        ):
            async with attempt as conn:
                result = await work(conn)
        return result

    async def run_sync(
        self,
        work: Callable[[Connection], T],
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        idempotent: bool = True,
        autocommit: bool = False,
    ) -> T:
        """Run a synchronous ``work(conn)`` in a transaction, retried as :meth:`transaction`.

        ``conn`` is a SQLAlchemy ``Connection`` (as in ``AsyncConnection.run_sync``);
        ``work`` must not block on anything but its statements. The whole
        transaction runs in one greenlet over asyncpg (PostgreSQL) or in one
        worker thread on a sqlite3 connection (SQLite), so it costs one switch
        instead of one per statement: the library's own operations use it.
        Arguments, retries and errors are those of :meth:`transaction`.
        """
        retrying = self.retrying(
            isolation=isolation, readonly=readonly, idempotent=idempotent, autocommit=autocommit
        )
        write = not readonly
        slot = self.backend.writer_slot if write else contextlib.nullcontext

        async def attempt() -> T:
            async with slot():
                await self._acquire_slot()
                try:
                    return await self.backend.run_sync(
                        self.engine,
                        work,
                        write=write,
                        isolation=isolation,
                        readonly=readonly,
                        autocommit=autocommit,
                    )
                except CommitFailed as failed:
                    cause = failed.__cause__ if isinstance(failed.__cause__, Exception) else failed
                    translated = self._translate(cause)
                    if _lost(translated):
                        translated.context["during_commit"] = True
                    raise translated from cause
                except Exception as error:
                    translated = self._translate(error)
                    if autocommit and _lost(translated):
                        translated.context["during_commit"] = True
                    raise translated from error
                finally:
                    self._slots.release()

        return await retrying.call(attempt)

    def retrying(
        self,
        *,
        isolation: Isolation | None = None,
        readonly: bool = False,
        idempotent: bool = True,
        autocommit: bool = False,
    ) -> Retrying:
        """An iterator of attempts, each one transaction; see :mod:`pipeline_db.retry`."""
        _check_isolation(isolation)
        if autocommit and isolation is not None:
            raise InterfaceError("autocommit and isolation exclude each other")

        def unit() -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
            return self._unit(
                write=not readonly, isolation=isolation, readonly=readonly, autocommit=autocommit
            )

        return Retrying(unit, self.config.retry, idempotent=idempotent, on_retry=self._count_retry)

    def read(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A read-only transaction, not retried: ``async with db.read() as conn``."""
        return self._unit(write=False, isolation=None, readonly=True, autocommit=False)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection with no transaction management, errors translated.

        For administrative work (schema migrations, maintenance) that manages
        its own transactions; prefer :meth:`transaction` and :meth:`read`.
        """
        conn = await self._checkout(self.engine)
        try:
            yield conn
        except Exception as error:
            raise self._translate(error) from error
        finally:
            try:
                await asyncio.shield(conn.close())
            finally:
                self._slots.release()

    def pool_status(self) -> PoolStatus:
        """A snapshot of the pool: size, checked in and out, overflow, waiting."""
        pool = self.engine.pool
        return PoolStatus(
            size=getattr(pool, "size", lambda: 0)(),
            checked_in=getattr(pool, "checkedin", lambda: 0)(),
            checked_out=getattr(pool, "checkedout", lambda: 0)(),
            overflow=getattr(pool, "overflow", lambda: 0)(),
            waiting=self._waiting,
        )

    async def _acquire_slot(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: no wait to report
            return
        self._waiting += 1
        started = time.perf_counter()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            for observer in self.observers:
                observer.waited(time.perf_counter() - started)

    async def _checkout(self, engine: AsyncEngine) -> AsyncConnection:
        """Take a pool slot (fairly), then a connection; the caller releases the slot."""
        await self._acquire_slot()
        try:
            conn = await engine.connect()
        except BaseException as error:
            self._slots.release()
            if isinstance(error, Exception):
                raise self._translate(error) from error
            raise
        return conn

    def _count_retry(self, failure: TransientError) -> None:
        cause = failure.cause or "unknown"
        self.retries[cause] += 1
        for observer in self.observers:
            observer.retried(cause)

    @contextlib.asynccontextmanager
    async def _unit(
        self, *, write: bool, isolation: str | None, readonly: bool, autocommit: bool
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction on one pooled connection, with errors translated."""
        engine = self.engine
        slot = self.backend.writer_slot() if write and not readonly else contextlib.nullcontext()
        async with slot:
            conn = await self._checkout(engine)
            try:
                try:
                    await self.backend.begin(
                        conn,
                        write=write,
                        isolation=isolation,
                        readonly=readonly,
                        autocommit=autocommit,
                    )
                    yield conn
                except BaseException as error:
                    await _discard(conn, terminate=not isinstance(error, Exception))
                    if isinstance(error, Exception):
                        translated = self._translate(error)
                        if autocommit and _lost(translated):
                            # A statement that commits on its own may have committed.
                            translated.context["during_commit"] = True
                        raise translated from error
                    raise
                try:
                    await conn.commit()
                except BaseException as error:
                    await _discard(conn, terminate=True)
                    if isinstance(error, Exception):
                        translated = self._translate(error)
                        if _lost(translated):
                            translated.context["during_commit"] = True
                        raise translated from error
                    raise
                await conn.close()
            finally:
                self._slots.release()

    def _translate(self, error: Exception) -> Exception:
        return translate(error, self.backend) or error


def _lost(error: Exception) -> TypeGuard[TransientError]:
    """Whether the connection was lost, so the server's outcome is unknown."""
    return isinstance(error, TransientError) and error.cause in ("connection", "shutdown")


_cleanups: set[asyncio.Task[None]] = set()


async def _discard(conn: AsyncConnection, *, terminate: bool) -> None:
    """Roll back and return the connection; terminate it when its state is unknown.

    A task cancelled mid-statement leaves the driver connection in an unknown
    state, so it is invalidated (closed, the server rolls back) rather than
    returned. The cleanup is shielded so a second cancellation cannot leak it.
    """
    task = asyncio.ensure_future(_cleanup(conn, terminate))
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    await asyncio.shield(task)


async def _cleanup(conn: AsyncConnection, terminate: bool) -> None:
    try:
        if terminate:
            await conn.invalidate()
        else:
            await conn.rollback()
    except Exception:
        # The connection is unusable; make sure the pool does not keep it.
        with contextlib.suppress(Exception):
            await conn.invalidate()
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


def _check_isolation(isolation: str | None) -> None:
    if isolation is not None and isolation not in ISOLATION_LEVELS:
        raise InterfaceError(
            f"isolation must be one of {sorted(ISOLATION_LEVELS)}, not {isolation!r}"
        )
