"""The statements of the target: progress records, loading, and the maintenance around it.

Rendered like :mod:`._sql`'s, for sqlite3 and asyncpg. The progress tables
live beside pipeline-db's own while a migration runs, described here in a
separate ``MetaData`` (they are not part of the schema, and are dropped at
the end).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    column,
    delete,
    exists,
    func,
    insert,
    literal_column,
    select,
    table,
    update,
)
from sqlalchemy.schema import CreateTable, DropTable

from pipeline_db.queries import insert_for
from pipeline_db.schema import SQLITE_FTS_TABLE
from pipeline_db.transfer._sql import Statement, render
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.layout import TablePlan

progress_metadata = MetaData()
#: The progress of a migration, kept in the target until it is done (``--resume``):
#: one record per table (done, DDL set aside) and one for the settings ...
progress = Table(
    "_pipeline_db_migration",
    progress_metadata,
    Column("table_name", Text, primary_key=True),
    Column("done", Boolean, nullable=False),
    Column("deferred", Text, nullable=False),
    Column("splits", Text),
    Column("settings", Text),
)
#: ... and one per committed batch: the key range it covered and its counts.
batches = Table(
    "_pipeline_db_migration_batches",
    progress_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("table_name", Text, nullable=False),
    Column("after_key", Text),
    Column("last_key", Text),
    Column("copied", BigInteger, nullable=False),
    Column("skipped", BigInteger, nullable=False),
    Column("repaired", BigInteger, nullable=False),
    Column("seconds", Double, nullable=False),
    Column("conversions", Text, nullable=False),
)
#: Every skipped or repaired row, written in the same transaction as its batch.
issues = Table(
    "_pipeline_db_migration_issues",
    progress_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("table_name", Text, nullable=False),
    Column("row_key", Text),
    Column("column_name", Text),
    Column("reason", Text, nullable=False),
    Column("action", Text, nullable=False),
)
PROGRESS_TABLES = (progress.name, batches.name, issues.name)


def create_progress(dialect: Dialect) -> list[Statement]:
    """Create the progress tables when missing."""
    return [
        render(CreateTable(t, if_not_exists=True), dialect) for t in progress_metadata.sorted_tables
    ]


def drop_progress(dialect: Dialect) -> list[Statement]:
    """Drop the progress tables (the migration is done)."""
    return [
        render(DropTable(t, if_exists=True), dialect)
        for t in reversed(progress_metadata.sorted_tables)
    ]


def read_progress(dialect: Dialect) -> Statement:
    """Every table's record (and the settings')."""
    return render(select(progress), dialect)


def read_batches(dialect: Dialect) -> Statement:
    """Every committed batch's record: table, range, counts."""
    return render(
        select(
            batches.c.table_name,
            batches.c.after_key,
            batches.c.last_key,
            batches.c.copied,
            batches.c.skipped,
            batches.c.repaired,
            batches.c.seconds,
            batches.c.conversions,
        ).order_by(batches.c.id),
        dialect,
    )


def save_progress(dialect: Dialect) -> Statement:
    """Insert or replace a table's record."""
    values: dict[str, Any] = {c.name: bindparam(c.name) for c in progress.columns}
    statement = insert_for(dialect, progress).values(values)
    changed = {name: statement.excluded[name] for name in values if name != "table_name"}
    return render(
        statement.on_conflict_do_update(index_elements=["table_name"], set_=changed), dialect
    )


def add_batch(dialect: Dialect) -> Statement:
    """Record a committed batch."""
    names = [c.name for c in batches.columns if c.name != "id"]
    return render(insert(batches).values({n: bindparam(n) for n in names}), dialect)


def add_issue(dialect: Dialect) -> Statement:
    """Record a skipped or repaired row."""
    names = ("table_name", "row_key", "column_name", "reason", "action")
    return render(insert(issues).values({n: bindparam(n) for n in names}), dialect)


def read_issues(dialect: Dialect, *, skipped_only: bool) -> Statement:
    """The recorded issues in the order they were found (or only the skipped rows' keys)."""
    if skipped_only:
        query = select(issues.c.table_name, issues.c.row_key).where(issues.c.action == "skipped")
    else:
        query = select(
            issues.c.table_name,
            issues.c.row_key,
            issues.c.column_name,
            issues.c.reason,
            issues.c.action,
        )
    return render(query.order_by(issues.c.id), dialect)


def insert_rows(plan: TablePlan) -> Statement:
    """Insert one row of the copied columns (SQLite's executemany)."""
    target = table(plan.name, *(column(c.name) for c in plan.columns))
    values: dict[str, Any] = {c.name: bindparam(c.name) for c in plan.columns}
    return render(insert(target).values(values), "sqlite")


def empty_table(name: str, dialect: Dialect) -> Statement:
    """Delete every row of a table (``--replace``); PostgreSQL also resets its identity."""
    if dialect == "postgresql":
        return Statement(f'TRUNCATE TABLE "{name}" RESTART IDENTITY CASCADE')
    return render(delete(table(name)), dialect)


def reset_sqlite_sequences() -> Statement:
    """Forget every AUTOINCREMENT counter (``--replace`` on SQLite)."""
    return render(delete(table("sqlite_sequence")), "sqlite")


def set_identity(plan: TablePlan) -> Statement:
    """Move a table's identity sequence past its largest key and ``floor`` (PostgreSQL).

    The next key is the larger of the two plus one; an empty table with no
    floor starts at 1.
    """
    target = table(plan.name, column(plan.key))
    sequence = func.pg_get_serial_sequence(literal_column(f"'{plan.name}'"), plan.key)
    largest = func.greatest(
        select(func.max(target.c[plan.key])).scalar_subquery(), bindparam("floor")
    )
    value = func.coalesce(largest, literal_column("0"))
    query = select(
        func.setval(
            sequence,
            func.greatest(value, literal_column("1")),
            value > literal_column("0"),
        )
    )
    return render(query, "postgresql")


def sqlite_counter(dialect: Dialect = "sqlite") -> list[Statement]:
    """Raise a table's AUTOINCREMENT counter to at least ``floor`` (update, then insert)."""
    counters = table("sqlite_sequence", column("name"), column("seq"))
    name: Any = bindparam("name")
    floor: Any = bindparam("floor")
    return [
        render(
            update(counters)
            .where(counters.c.name == name)
            .values(seq=func.max(counters.c.seq, floor)),
            dialect,
        ),
        render(
            insert(counters).from_select(
                ["name", "seq"],
                select(name, floor).where(~exists().where(counters.c.name == name)),
            ),
            dialect,
        ),
    ]


def rebuild_fts() -> Statement:
    """Rebuild SQLite's full-text table from the metadata index rows."""
    return Statement(f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}) VALUES ('rebuild')")


def set_aside_indexes() -> Statement:
    """A table's plain indexes (no key, no unique, no constraint's): name and definition."""
    return Statement(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = $1::text::regclass AND NOT i.indisunique AND NOT i.indisprimary "
        "AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
        "ORDER BY 1",
        ("table",),
    )


def set_aside_foreign_keys() -> Statement:
    """A table's foreign keys: name and definition."""
    return Statement(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = $1::text::regclass AND contype = 'f' ORDER BY 1",
        ("table",),
    )


def drop_index(name: str) -> Statement:
    """Drop an index (set aside for the load)."""
    return Statement(f'DROP INDEX "{name}"')


def drop_constraint(table_name: str, name: str) -> Statement:
    """Drop a constraint (set aside for the load)."""
    return Statement(f'ALTER TABLE "{table_name}" DROP CONSTRAINT "{name}"')


def add_constraint(table_name: str, name: str, definition: str) -> Statement:
    """Add a constraint back as ``pg_get_constraintdef`` described it."""
    return Statement(f'ALTER TABLE "{table_name}" ADD CONSTRAINT "{name}" {definition}')


def analyze(name: str) -> Statement:
    """Refresh the planner's statistics of a table (PostgreSQL, after a bulk load)."""
    return Statement(f'ANALYZE "{name}"')
