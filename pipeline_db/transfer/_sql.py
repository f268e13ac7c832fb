"""The statements that read (sources, and targets for verification), in SQLAlchemy Core.

The copier talks to sqlite3 and asyncpg directly (COPY, ``executemany``), so
each statement is rendered once per dialect to a :class:`Statement`: SQL text
with positional parameters (``?`` or ``$n``) and their names in order.
Source statements name tables and columns as the source has them (a legacy
file may lack some); identifiers are always quoted by the dialect. The
target's own statements are in :mod:`._target_sql`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    bindparam,
    column,
    exists,
    func,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import ColumnElement

from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.layout import TablePlan

_DIALECTS = {
    "sqlite": SQLiteDialect_pysqlite(),
    "postgresql": PGDialect_asyncpg(),  # type: ignore[no-untyped-call]
}


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


def sqlite_counters() -> Statement:
    """Every AUTOINCREMENT counter of a SQLite file."""
    counters = table("sqlite_sequence", column("name"), column("seq"))
    return render(select(counters.c.name, counters.c.seq), "sqlite")


def postgres_counter(plan: TablePlan) -> Statement:
    """The last value a table's identity sequence handed out (NULL: none yet)."""
    sequence = func.pg_get_serial_sequence(literal_column(f"'{plan.name}'"), plan.key)
    return render(select(func.pg_sequence_last_value(sequence)), "postgresql")
