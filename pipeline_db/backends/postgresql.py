"""PostgreSQL through asyncpg: engine, error classification, transactions.

Behind PgBouncer in transaction pooling mode (``pgbouncer: true``) each
transaction may run on another server connection, so nothing may outlive one:

* statements are prepared unnamed, with asyncpg's and SQLAlchemy's statement
  caches off. asyncpg sends Parse/Describe with Flush, not Sync, so the
  statement and its execution stay on one server connection even outside a
  transaction; a named statement is closed later, in a batch that PgBouncer
  may send to another server connection ("prepared statement ... does not
  exist", and the statement leaks where it was made);
* ``statement_timeout`` and ``idle_in_transaction_session_timeout`` are not
  startup parameters (PgBouncer refuses those it does not track, SQLSTATE
  08P01) but ``set_config(..., true)`` at the start of each transaction, which
  costs one statement per transaction: set them to 0 here and on the role
  (``ALTER ROLE ... SET``) to save it. With a ``statement_timeout``,
  autocommit work runs in a transaction so that the timeout applies to it;
* LISTEN needs a session of its own: it goes to ``listen_url``, directly to
  PostgreSQL, or is off (the job runners poll; a warning says so once).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, TypeVar

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import greenlet_spawn

from pipeline_db._json import dumps, loads
from pipeline_db.backends import Fault, Listener, run_unit
from pipeline_db.config import DatabaseConfig

T = TypeVar("T")
logger = logging.getLogger("pipeline_db")

# SQLSTATEs that are safe to retry, by cause.
# https://www.postgresql.org/docs/current/errcodes-appendix.html
_TRANSIENT = {
    "40001": "serialization",
    "40P01": "deadlock",
    "57P01": "shutdown",  # admin_shutdown, also pg_terminate_backend
    "57P02": "shutdown",  # crash_shutdown
    "57P03": "shutdown",  # cannot_connect_now: starting up
    "53300": "connection",  # too_many_connections
    "25P03": "connection",  # idle_in_transaction_session_timeout closed it
}
_CONFLICT = {"23505": "unique", "23503": "foreign_key", "23P01": "exclusion"}
_INVALID = {"23502": "not_null", "23514": "check"}
_CONFIG_CLASSES = {"28": "authentication", "3D": "database"}


def _session_settings(config: DatabaseConfig) -> dict[str, str]:
    """The settings every session gets, beside ``application_name``."""
    settings = {}
    if config.statement_timeout:
        settings["statement_timeout"] = str(config.statement_timeout)
    if config.idle_in_transaction_session_timeout:
        settings["idle_in_transaction_session_timeout"] = str(
            config.idle_in_transaction_session_timeout
        )
    return settings


def _set_local(settings: dict[str, str]) -> TextClause:
    """One statement that applies ``settings`` until the end of the transaction."""
    calls = ", ".join(f"set_config('{name}', '{value}', true)" for name, value in settings.items())
    return text(f"SELECT {calls}")


class PostgreSQLBackend:
    """PostgreSQL through asyncpg."""

    name: Literal["postgresql"] = "postgresql"
    writable_ctes = True

    def __init__(self) -> None:
        self._warned_polling = False
        # Behind PgBouncer: the statement run first in every transaction, and
        # whether autocommit work needs a transaction for it (statement_timeout).
        self._per_transaction: TextClause | None = None
        self._no_autocommit = False

    def create_engine(self, config: DatabaseConfig) -> AsyncEngine:
        """Build an asyncpg-backed engine with the configured pool and server settings.

        With ``pgbouncer``, see the module docstring.
        """
        server_settings = {"application_name": config.application_name}
        settings = _session_settings(config)
        connect_args: dict[str, Any] = {"timeout": config.connection_timeout}
        if config.pgbouncer:
            # No prepared_statement_name_func (SQLAlchemy's docs suggest unique names
            # against name clashes): any name makes a named statement, which fails
            # outside transactions (module docstring; test_pgbouncer.py shows it).
            connect_args |= {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
            self._per_transaction = _set_local(settings) if settings else None
            self._no_autocommit = "statement_timeout" in settings
        else:
            server_settings |= settings
        connect_args["server_settings"] = server_settings
        return create_async_engine(
            config.sqlalchemy_url(),
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            pool_timeout=config.pool_timeout,
            pool_recycle=config.pool_recycle,
            pool_pre_ping=config.pool_pre_ping,
            connect_args=connect_args,
            json_serializer=dumps,
            json_deserializer=loads,
        )

    def classify(self, error: BaseException) -> Fault | None:
        """Classify by SQLSTATE, then by asyncpg's connection errors; never by message."""
        driver = error.__cause__ if _is_sqlalchemy_adapted(error) else error
        sqlstate = getattr(error, "sqlstate", None) or getattr(driver, "sqlstate", None)
        message = _message(driver if driver is not None else error)
        if sqlstate:
            if sqlstate in _TRANSIENT:
                return Fault("transient", _TRANSIENT[sqlstate], sqlstate, message)
            if sqlstate.startswith("08"):
                return Fault("transient", "connection", sqlstate, message)
            if sqlstate in _CONFLICT:
                return Fault("conflict", _CONFLICT[sqlstate], sqlstate, message)
            if sqlstate in _INVALID or sqlstate.startswith("22"):
                return Fault("invalid", _INVALID.get(sqlstate, "data"), sqlstate, message)
            if sqlstate[:2] in _CONFIG_CLASSES:
                return Fault("config", _CONFIG_CLASSES[sqlstate[:2]], sqlstate, message)
            if sqlstate.startswith("42") or sqlstate == "25006":
                return Fault("misuse", "statement", sqlstate, message)
            return Fault("other", "database", sqlstate, message)
        if isinstance(driver, (OSError, TimeoutError)):
            return Fault("transient", "connection", None, f"cannot reach the server: {message}")
        if isinstance(driver, asyncpg.exceptions.InterfaceError):
            return Fault("misuse", "interface", None, message)
        return None

    def begin_options(
        self, *, write: bool, isolation: str | None, readonly: bool, autocommit: bool
    ) -> dict[str, Any]:
        """Execution options that make the next BEGIN what was asked for."""
        if autocommit and not self._no_autocommit:
            return {"isolation_level": "AUTOCOMMIT"}
        options: dict[str, Any] = {}
        if isolation is not None:
            options["isolation_level"] = isolation
        if readonly:
            options["postgresql_readonly"] = True
        return options

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
        """Run ``work`` in ONE greenlet: one switch per transaction, not per statement."""
        options = self.begin_options(
            write=write, isolation=isolation, readonly=readonly, autocommit=autocommit
        )
        if self._per_transaction is not None and options.get("isolation_level") != "AUTOCOMMIT":
            work = _after(self._per_transaction, work)
        result: T = await greenlet_spawn(run_unit, engine.sync_engine, work, options)
        return result

    async def dispose(self) -> None:
        """Nothing beyond the engine."""

    def extra_engines(self) -> list[Engine]:
        """None: run_sync works on the async engine's own pool."""
        return []

    def notify(self, conn: Connection, channel: str, payload: str) -> None:
        """``pg_notify``: delivered to listeners when the transaction commits."""
        conn.execute(select(func.pg_notify(channel, payload)))

    async def listen(
        self, config: DatabaseConfig, channel: str, wake: Callable[[], None]
    ) -> Listener | None:
        """LISTEN on a dedicated connection, never through PgBouncer.

        Behind PgBouncer (``pgbouncer: true``) it needs ``listen_url``, a direct
        connection to PostgreSQL; without one it returns None, once warning
        that runners fall back to polling.
        """
        if config.listen_url is not None:
            url = make_url(config.listen_url.get_secret_value())
        elif config.pgbouncer:
            if not self._warned_polling:
                self._warned_polling = True
                logger.warning(
                    "pgbouncer is on and no listen_url is set: LISTEN/NOTIFY is off, "
                    "job runners poll the queue instead"
                )
            return None
        else:
            url = config.sqlalchemy_url()
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(
            dsn,
            timeout=config.connection_timeout,
            server_settings={"application_name": f"{config.application_name} listener"[:63]},
        )
        listener = _Listener(conn, channel, wake)
        try:
            await listener.start()
        except BaseException:
            await listener.close()
            raise
        return listener

    async def begin(
        self,
        conn: AsyncConnection,
        *,
        write: bool,
        isolation: str | None,
        readonly: bool,
        autocommit: bool = False,
    ) -> None:
        """BEGIN with the requested isolation level and access mode.

        With ``autocommit`` no BEGIN is sent: each statement is its own transaction.
        """
        options = self.begin_options(
            write=write, isolation=isolation, readonly=readonly, autocommit=autocommit
        )
        if options:
            await conn.execution_options(**options)
        if options.get("isolation_level") != "AUTOCOMMIT":
            await conn.begin()
            if self._per_transaction is not None:
                await conn.execute(self._per_transaction)

    @contextlib.asynccontextmanager
    async def writer_slot(self) -> AsyncIterator[None]:
        """PostgreSQL has row locks: writers need no queue of their own."""
        yield


class _Listener:
    """A LISTEN subscription on its own asyncpg connection."""

    def __init__(self, conn: asyncpg.Connection, channel: str, wake: Callable[[], None]) -> None:
        self._conn = conn
        self._channel = channel
        self._wake = wake
        self._alive = True
        conn.add_termination_listener(self._terminated)

    async def start(self) -> None:
        await self._conn.add_listener(self._channel, self._notified)

    @property
    def alive(self) -> bool:
        return self._alive and not self._conn.is_closed()

    async def close(self) -> None:
        self._alive = False
        if not self._conn.is_closed():
            try:
                await self._conn.close(timeout=2)
            except Exception:
                self._conn.terminate()

    def _notified(self, *_: object) -> None:
        self._wake()

    def _terminated(self, *_: object) -> None:
        self._alive = False
        self._wake()


def _after(first: TextClause, work: Callable[[Connection], T]) -> Callable[[Connection], T]:
    """``work``, preceded by the statement ``first`` in the same transaction."""

    def both(conn: Connection) -> T:
        conn.execute(first)
        return work(conn)

    return both


def _is_sqlalchemy_adapted(error: BaseException) -> bool:
    return type(error).__module__.startswith("sqlalchemy")


def _message(error: BaseException) -> str:
    if error.args and isinstance(error.args[0], str):
        return error.args[0].splitlines()[0] if error.args[0] else type(error).__name__
    return type(error).__name__
