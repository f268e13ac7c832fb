"""Schema migrations through Alembic, on both backends.

``pipeline-db db upgrade`` and ``pipeline-db db current`` call these. Alembic
runs on a connection of the application's own :class:`~pipeline_db.Database`
(so the same engine settings apply), inside one transaction that also holds a
lock, so several processes starting at once upgrade the schema exactly once.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from pipeline_db import schema
from pipeline_db.errors import SchemaOutOfDateError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pipeline_db.database import Database

SCRIPT_LOCATION = str(Path(__file__).parent)
# An arbitrary, fixed key for pg_advisory_xact_lock while migrating.
_MIGRATION_LOCK_KEY = 0x70_69_70_65_64_62  # "pipedb"
_IGNORED_TABLES_PREFIX = schema.SQLITE_FTS_TABLE
_VERSION_TABLE = "alembic_version"
_IN_PROCESS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
#: Indexes on expressions, which SQLite's reflection skips.
EXPRESSION_INDEXES = frozenset(
    ix.name
    for table in schema.metadata.sorted_tables
    for ix in table.indexes
    if ix.name and any(not hasattr(e, "table") for e in ix.expressions)
)


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database's schema stands.

    Attributes:
        current: the revision the database is at (None: no schema yet).
        head: the newest revision this version of pipeline-db knows.
    """

    current: str | None
    head: str

    @property
    def is_current(self) -> bool:
        """Whether the database is at the newest revision."""
        return self.current == self.head


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` pointing at pipeline-db's migrations."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of pipeline-db knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave out what the schema adds through dialect DDL (FTS5 tables, the tsvector).

    Expression indexes are left out too: SQLite's reflection cannot read them
    (the tests check them by name instead).
    """
    if type_ == "table" and name and name.startswith(_IGNORED_TABLES_PREFIX):
        return False
    if type_ == "column" and name == schema.POSTGRES_SEARCH_COLUMN:
        return False
    if type_ == "index" and name == f"ix_json_metadata_index_{schema.POSTGRES_SEARCH_COLUMN}":
        return False
    return not (type_ == "index" and name in EXPRESSION_INDEXES)


def configure_context(context: Any, connection: Connection) -> None:
    """Configure Alembic's environment context (called from ``env.py``)."""
    context.configure(
        connection=connection,
        target_metadata=schema.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=include_object,
        compare_type=True,
    )


def _migrate(connection: Connection, direction: str, revision: str) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
    step = command.upgrade if direction == "upgrade" else command.downgrade
    step(alembic_config(connection), revision)


def _current(connection: Connection) -> str | None:
    # Read alembic_version directly: MigrationContext logs at INFO on every call,
    # and /ready asks on every probe.
    if not inspect(connection).has_table(_VERSION_TABLE):
        return None
    versions = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars()
    found = list(versions)
    if len(found) > 1:  # branches: let Alembic say what it means
        return MigrationContext.configure(connection).get_current_revision()
    return found[0] if found else None


async def upgrade(db: Database, revision: str = "head") -> SchemaStatus:
    """Upgrade the database's schema to ``revision`` (default: the newest).

    Returns:
        The schema status afterwards.
    """
    return await _run(db, "upgrade", revision)


async def downgrade(db: Database, revision: str) -> SchemaStatus:
    """Downgrade the database's schema to ``revision`` (``"base"``: nothing left).

    Returns:
        The schema status afterwards.
    """
    return await _run(db, "downgrade", revision)


async def _run(db: Database, direction: str, revision: str) -> SchemaStatus:
    # Alembic's migration context is process-global: one migration at a time
    # per process (other processes are held off by the database's own lock).
    loop = asyncio.get_running_loop()
    lock = _IN_PROCESS.setdefault(loop, asyncio.Lock())
    async with lock:
        return await _run_locked(db, direction, revision)


async def _run_locked(db: Database, direction: str, revision: str) -> SchemaStatus:
    async with db.connection() as conn:
        # SQLite: take the write lock up front; PostgreSQL: the advisory lock above.
        await conn.execution_options(pipeline_db_begin="IMMEDIATE")
        await conn.run_sync(_migrate, direction, revision)
        await conn.commit()
    return await status(db)


async def status(db: Database) -> SchemaStatus:
    """Read the database's current revision beside the newest known one."""
    async with db.connection() as conn:
        current = await conn.run_sync(_current)
        await conn.rollback()
    return SchemaStatus(current=current, head=head_revision())


async def require_current(db: Database) -> None:
    """Raise unless the database's schema is at the newest revision.

    Raises:
        SchemaOutOfDateError: naming the command that upgrades it.
    """
    found = await status(db)
    if not found.is_current:
        raise SchemaOutOfDateError(
            f"the database schema is at {found.current or 'no revision (empty database)'} "
            f"but this pipeline-db needs {found.head}: run `pipeline-db db upgrade`",
            current=found.current,
            head=found.head,
        )
