"""What a migration copies: every table of the schema the source holds, column by column.

A :class:`TablePlan` pairs one table of :mod:`pipeline_db.schema` (the target)
with what the source has of it: which columns it holds (a legacy
``pipeline.db`` of an early version lacks some; the target's defaults fill
them), which it has beyond the schema, its row count and AUTOINCREMENT counter.
Tables come in foreign-key order (``metadata.sorted_tables``), parents first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CheckConstraint, Column, Identity, Table, UniqueConstraint

from pipeline_db import schema
from pipeline_db.transfer.convert import Kind, kind_of


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """One copied column.

    Attributes:
        name: its name (the same in source and target).
        kind: how its values convert.
        nullable: whether the target takes NULL.
    """

    name: str
    kind: Kind
    nullable: bool


@dataclass(frozen=True, slots=True)
class ParentLink:
    """A foreign key the copy checks itself (a legacy source may hold orphans).

    Attributes:
        column: the referring column.
        parent: the referred table.
        parent_column: the referred column.
    """

    column: str
    parent: str
    parent_column: str


@dataclass(frozen=True, slots=True)
class Check:
    """A CHECK constraint of the target, evaluated on the source's rows.

    Attributes:
        name: the constraint's name.
        sql: its condition, in SQL both backends read.
        columns: the columns it names (the first is reported as the culprit).
    """

    name: str
    sql: str
    columns: tuple[str, ...]


@dataclass(slots=True)
class TablePlan:
    """How one table is copied.

    Attributes:
        name: the table.
        key: its primary-key column; rows are copied in its order.
        columns: the copied columns, in copy order (the key among them).
        defaulted: target columns the source lacks (the target's default fills them).
        extra: source columns the schema has no place for (not copied).
        parents: foreign keys to check.
        checks: CHECK constraints to check.
        uniques: unique column sets to check for duplicates.
        identity: whether the key is an identity (an AUTOINCREMENT counter moves with it).
        rows: the source's row count.
        counter: the source's AUTOINCREMENT counter or sequence position, if any.
    """

    name: str
    key: str
    columns: list[ColumnPlan]
    defaulted: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    parents: list[ParentLink] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    uniques: list[tuple[str, ...]] = field(default_factory=list)
    identity: bool = False
    rows: int = 0
    counter: int | None = None

    @property
    def table(self) -> Table:
        """The schema's table."""
        return schema.metadata.tables[self.name]

    @property
    def key_index(self) -> int:
        """The key's position among :attr:`columns`."""
        return next(i for i, c in enumerate(self.columns) if c.name == self.key)

    @property
    def key_kind(self) -> Kind:
        """The key column's kind (``text`` or an integer)."""
        return self.columns[self.key_index].kind

    @property
    def names(self) -> list[str]:
        """The copied columns' names."""
        return [c.name for c in self.columns]


def plan_table(table: Table, source_columns: list[str]) -> TablePlan:
    """Pair a schema table with the columns a source holds of it.

    Raises:
        ValueError: the source lacks the key, or a NOT NULL column with no default.
    """
    present = set(source_columns)
    (key,) = [c.name for c in table.primary_key.columns]
    if key not in present:
        raise ValueError(f"{table.name} has no {key} column, the key of pipeline-db's table")
    columns: list[ColumnPlan] = []
    defaulted: list[str] = []
    for column in table.columns:
        if column.name in present:
            columns.append(ColumnPlan(column.name, kind_of(column), bool(column.nullable)))
        elif column.nullable or column.server_default is not None or _identity(column):
            defaulted.append(column.name)
        else:
            raise ValueError(
                f"{table.name} has no {column.name} column, which pipeline-db requires "
                "and has no default for"
            )
    copied = {c.name for c in columns}
    return TablePlan(
        name=table.name,
        key=key,
        columns=columns,
        defaulted=defaulted,
        extra=[c for c in source_columns if c not in table.columns],
        parents=[
            ParentLink(fk.parent.name, fk.column.table.name, fk.column.name)
            for fk in table.foreign_keys
            if fk.parent.name in copied
        ],
        checks=[c for c in _checks(table) if set(c.columns) <= copied],
        uniques=[u for u in _uniques(table) if set(u) <= copied],
        identity=_identity(table.columns[key]),
    )


def _identity(column: Column[Any]) -> bool:
    return isinstance(column.identity, Identity) or column.autoincrement is True


def _checks(table: Table) -> list[Check]:
    names = {c.name for c in table.columns}
    found = []
    for constraint in table.constraints:
        if isinstance(constraint, CheckConstraint):
            sql = str(constraint.sqltext)
            mentioned = tuple(w for w in dict.fromkeys(re.findall(r"[a-z_]+", sql)) if w in names)
            found.append(Check(str(constraint.name), sql, mentioned))
    return found


def _uniques(table: Table) -> list[tuple[str, ...]]:
    found = [
        tuple(c.name for c in constraint.columns)
        for constraint in table.constraints
        if isinstance(constraint, UniqueConstraint)
    ]
    for index in table.indexes:
        where = index.dialect_options["postgresql"].get("where")
        plain = all(isinstance(e, Column) for e in index.expressions)
        if index.unique and where is None and plain:
            found.append(tuple(str(getattr(e, "name", e)) for e in index.expressions))
    return found
