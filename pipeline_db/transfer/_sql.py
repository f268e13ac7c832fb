"""Every statement of the migration, in SQLAlchemy Core, rendered for the raw drivers.

The copier talks to sqlite3 and asyncpg directly (COPY, ``executemany``), so
each statement is rendered once per dialect to a :class:`Statement`: SQL text
with positional parameters (``?`` or ``$n``) and their names in order.
Source statements name tables and columns as the source has them (a legacy
file may lack some); identifiers are always quoted by the dialect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    text,
    update,
)
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.schema import CreateTable, DropTable
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import ColumnElement

from pipeline_db.queries import insert_for
from pipeline_db.schema import SQLITE_FTS_TABLE
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.layout import TablePlan

_DIALECTS = {
    "sqlite": SQLiteDialect_pysqlite(),
    "postgresql": PGDialect_asyncpg(),  # type: ignore[no-untyped-call]
}

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


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL text for a raw driver, with its positional parameters' names."""

    sql: str
    params: tuple[str, ...] = ()
    #: Values of the parameters the statement fixes itself (literals).
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def args(self, values: Mapping[str, Any] | None = None) -> list[Any]:
        """The parameters in the order the SQL takes them."""
        given = {**self.fixed, **(values or {})}
        return [given[name] for name in self.params]


def render(statement: ClauseElement, dialect: Dialect) -> Statement:
    """Render a Core statement for sqlite3 (``?``) or asyncpg (``$n``)."""
    compiled = statement.compile(dialect=_DIALECTS[dialect])
    params = tuple(getattr(compiled, "positiontup", None) or ())
    fixed = {k: v for k, v in compiled.params.items() if v is not None} if params else {}
    return Statement(str(compiled), params, fixed)


# -- sources ---------------------------------------------------------------------


def _key(plan: TablePlan, source: Any, dialect: Dialect) -> ColumnElement[Any]:
    key: ColumnElement[Any] = source.c[plan.key]
    # PostgreSQL sorts text by its collation; SQLite and the resume point compare bytes.
    if dialect == "postgresql" and plan.key_kind == "text":
        key = key.collate("C")
    return key


def select_rows(
    plan: TablePlan,
    dialect: Dialect,
    *,
    after: bool,
    present: set[str],
    flags: bool = True,
    upper: bool = False,
) -> Statement:
    """A table's rows in key order, after a key or from the start (up to ``upper``).

    On SQLite each row also carries a flag per foreign key (1: the parent row
    is missing) and per CHECK constraint (1: it fails): a legacy file enforced
    neither. ``present`` names the source's tables (a missing parent table
    makes every reference an orphan).
    """
    source = table(plan.name, *(column(c.name) for c in plan.columns))
    columns: list[ColumnElement[Any]] = [source.c[c.name] for c in plan.columns]
    if dialect == "sqlite" and flags:
        for link in plan.parents:
            referring = source.c[link.column]
            if link.parent in present:
                parent = table(link.parent, column(link.parent_column)).alias(f"p_{link.column}")
                found = exists().where(parent.c[link.parent_column] == referring)
                columns.append(referring.is_not(None) & ~found)
            else:
                columns.append(referring.is_not(None))
        for check in plan.checks:
            columns.append(literal_column(f"CASE WHEN NOT ({check.sql}) THEN 1 ELSE 0 END"))
    key = _key(plan, source, dialect)
    query = select(*columns).select_from(source).order_by(key)
    if after:
        query = query.where(key > bindparam("after"))
    if upper:
        query = query.where(key <= bindparam("upper"))
    return render(query, dialect)


def select_unordered(
    plan: TablePlan, dialect: Dialect, *, lower: bool = False, upper: bool = False
) -> Statement:
    """A table's copied columns in no order (a checksum needs none), within key bounds."""
    source = table(plan.name, *(column(c.name) for c in plan.columns))
    key = _key(plan, source, dialect)
    query = select(*source.c)
    if lower:
        query = query.where(key > bindparam("lower"))
    if upper:
        query = query.where(key <= bindparam("upper"))
    return render(query, dialect)


def key_at(plan: TablePlan, dialect: Dialect) -> Statement:
    """The key of the row at ``offset`` in key order (to split a table into ranges)."""
    source = table(plan.name, column(plan.key))
    key = _key(plan, source, dialect)
    query = (
        select(source.c[plan.key])
        .order_by(key)
        .limit(literal_column("1"))
        .offset(bindparam("offset"))
    )
    return render(query, dialect)


def first_rows(plan: TablePlan, dialect: Dialect) -> Statement:
    """A sample of a table's rows (its first 200, in no particular order)."""
    source = table(plan.name, *(column(c.name) for c in plan.columns))
    return render(select(*source.c).limit(literal_column("200")), dialect)


def count_rows(name: str, dialect: Dialect) -> Statement:
    """How many rows a table holds."""
    return render(select(func.count()).select_from(table(name)), dialect)


def any_row(name: str, dialect: Dialect) -> Statement:
    """Whether a table holds a row (true or 1; false or 0)."""
    return render(select(exists(select(literal_column("1")).select_from(table(name)))), dialect)


def null_keys(plan: TablePlan) -> Statement:
    """Rows of a legacy table whose key is NULL (SQLite allows it), with their rowid."""
    source = table(plan.name, column("rowid"), *(column(c.name) for c in plan.columns))
    query = select(source.c.rowid).where(source.c[plan.key].is_(None)).order_by(source.c.rowid)
    return render(query, "sqlite")


def duplicates(plan: TablePlan, columns: tuple[str, ...], dialect: Dialect) -> Statement:
    """Rows repeating an earlier row's values of a unique column set: (key, first key)."""
    source = table(plan.name, column(plan.key), *(column(c) for c in columns))
    key = _key(plan, source, dialect)
    first = (
        select(*(source.c[c] for c in columns), func.min(key).label("first"))
        .where(*(source.c[c].is_not(None) for c in columns))
        .group_by(*(source.c[c] for c in columns))
        .having(func.count() > literal_column("1"))
        .subquery("d")
    )
    query = (
        select(source.c[plan.key], first.c.first)
        .join_from(source, first, _all_equal(source, first, columns))
        .where(key != first.c.first)
        .order_by(key)
    )
    return render(query, dialect)


def _all_equal(left: Any, right: Any, columns: tuple[str, ...]) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = left.c[columns[0]] == right.c[columns[0]]
    for name in columns[1:]:
        condition = condition & (left.c[name] == right.c[name])
    return condition


# -- targets ---------------------------------------------------------------------


def insert_rows(plan: TablePlan) -> Statement:
    """Insert one row of the copied columns (SQLite's executemany)."""
    target = table(plan.name, *(column(c.name) for c in plan.columns))
    values: dict[str, Any] = {c.name: bindparam(c.name) for c in plan.columns}
    return render(insert(target).values(values), "sqlite")


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


def sqlite_counters() -> Statement:
    """Every AUTOINCREMENT counter of a SQLite file."""
    counters = table("sqlite_sequence", column("name"), column("seq"))
    return render(select(counters.c.name, counters.c.seq), "sqlite")


def postgres_counter(plan: TablePlan) -> Statement:
    """The last value a table's identity sequence handed out (NULL: none yet)."""
    sequence = func.pg_get_serial_sequence(literal_column(f"'{plan.name}'"), plan.key)
    return render(select(func.pg_sequence_last_value(sequence)), "postgresql")


def rebuild_fts() -> Statement:
    """Rebuild SQLite's full-text table from the metadata index rows."""
    return Statement(f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}) VALUES ('rebuild')")


def check_fts() -> Statement:
    """Run FTS5's integrity check (raises when the index is out of step)."""
    return Statement(
        f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rank) VALUES ('integrity-check', 1)"
    )


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


__all__ = ["PROGRESS_TABLES", "Statement", "render", "text"]
