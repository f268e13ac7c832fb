"""Backend protocol: everything dialect-specific sits behind it.

One module per backend (:mod:`.postgresql`, :mod:`.sqlite`) implements
:class:`Backend`; code above this package is backend-neutral.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from pipeline_db.config import DatabaseConfig

T = TypeVar("T")

FaultKind = Literal["transient", "conflict", "invalid", "config", "misuse", "other"]


@dataclass(frozen=True, slots=True)
class Fault:
    """A driver error, classified.

    Attributes:
        kind: who is to blame, and whether retrying can help.
        cause: a short name ("serialization", "deadlock", "connection", "busy", ...).
        code: SQLSTATE on PostgreSQL, the result-code name on SQLite.
        message: the server's message, without statement parameters.
    """

    kind: FaultKind
    cause: str
    code: str | None
    message: str


class Backend(Protocol):
    """What the rest of pipeline-db needs from a database backend."""

    @property
    def name(self) -> Literal["sqlite", "postgresql"]:
        """The backend's name, as in the configuration's ``type``."""
        ...

    @property
    def writable_ctes(self) -> bool:
        """Whether INSERT/UPDATE may appear in a WITH clause (one statement, many writes)."""
        ...

    def create_engine(self, config: DatabaseConfig) -> AsyncEngine:
        """Build the engine, with its pool and per-connection settings."""
        ...

    def classify(self, error: BaseException) -> Fault | None:
        """Classify a driver exception (the DBAPI ``orig``), or None if it is not the driver's."""
        ...

    async def begin(
        self,
        conn: AsyncConnection,
        *,
        write: bool,
        isolation: str | None,
        readonly: bool,
        autocommit: bool = False,
    ) -> None:
        """Start a transaction on ``conn`` with the requested properties."""
        ...

    def writer_slot(self) -> AbstractAsyncContextManager[None]:
        """Held around every write transaction (SQLite queues writers here)."""
        ...

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
        """Run synchronous ``work`` in one transaction without blocking the event loop."""
        ...

    async def dispose(self) -> None:
        """Release what the backend holds beside the engine."""
        ...

    def extra_engines(self) -> list[Engine]:
        """Synchronous engines the backend runs statements on besides the main one."""
        ...

    def notify(self, conn: Connection, channel: str, payload: str) -> None:
        """Announce ``channel`` to other processes when ``conn``'s transaction commits."""
        ...

    async def listen(
        self, config: DatabaseConfig, channel: str, wake: Callable[[], None]
    ) -> Listener | None:
        """Call ``wake`` on every notification of ``channel`` from other processes.

        Returns None when the backend cannot listen (SQLite; PgBouncer without
        a ``listen_url``): callers then rely on polling.
        """
        ...


class Listener(Protocol):
    """A live subscription to notifications from other processes."""

    @property
    def alive(self) -> bool:
        """Whether notifications still arrive (False after the connection dropped)."""
        ...

    async def close(self) -> None:
        """Stop listening and close the connection."""
        ...


class CommitFailed(Exception):
    """Internal: COMMIT itself failed (``__cause__`` is why); the outcome may be unknown."""


class Cancelled(Exception):
    """Internal: the caller was cancelled; the work was rolled back, not committed."""


def run_unit(
    engine: Engine,
    work: Callable[[Connection], T],
    options: dict[str, Any],
    cancelled: threading.Event | None = None,
) -> T:
    """One transaction on a connection of a synchronous engine (shared by both backends).

    Runs in a greenlet (PostgreSQL) or a worker thread (SQLite). A failing
    ``work`` is rolled back; anything but an ``Exception`` (a cancellation)
    invalidates the connection, whose state is then unknown.
    """
    with engine.connect() as conn:
        if options:
            conn.execution_options(**options)
        transaction = conn.begin()
        try:
            result = work(conn)
            if cancelled is not None and cancelled.is_set():
                raise Cancelled
        except Exception:
            try:
                transaction.rollback()
            except Exception:
                conn.invalidate()
            raise
        except BaseException:
            conn.invalidate()
            raise
        try:
            transaction.commit()
        except Exception as error:
            raise CommitFailed from error
        return result


def backend_for(config: DatabaseConfig) -> Backend:
    """Return the backend implementation for ``config.type``."""
    if config.type == "postgresql":
        from pipeline_db.backends.postgresql import PostgreSQLBackend

        return PostgreSQLBackend()
    from pipeline_db.backends.sqlite import SQLiteBackend

    return SQLiteBackend()
