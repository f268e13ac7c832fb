"""Where a migration writes: a PostgreSQL database (COPY) or a SQLite file (executemany).

The target's schema is always the one pipeline-db's Alembic migrations make
(created or upgraded before the copy). Each batch is written in one
transaction with its progress (:mod:`pipeline_db.transfer.progress`). A
batch the database refuses (a constraint, an encoding) is bisected to the
rows at fault, which are reported like any other bad row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pipeline_db.config import DatabaseConfig
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.errors import RowRejectedError
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.progress import BatchRecord, Issue, TableProgress
from pipeline_db.transfer.source import BatchSizer, Transform

T = TypeVar("T")
OnError = Literal["abort", "skip", "repair"]


@dataclass(slots=True)
class Batch:
    """Converted rows ready for the target, with what converting them found.

    Attributes:
        rows: the rows, in the target's storage format, in key order.
        after_key: the key the batch read after (None: the table's start).
        last_key: the largest key read (copied or not).
        issues: skipped and repaired rows.
        skipped: rows left out.
        repaired: keys of rows written with a repair.
        conversions: per column, counts of the conversions applied.
        read: rows read from the source.
        seconds: wall time spent on the batch before it was written.
        digest: row count and hash sum of what the batch should put in the target.
        refused: rows of it the target refused (set once written).
    """

    rows: list[tuple[Any, ...]]
    last_key: Any
    after_key: Any = None
    issues: list[Issue] = field(default_factory=list)
    skipped: int = 0
    repaired: set[Any] = field(default_factory=set)
    conversions: dict[str, Counter[str]] = field(default_factory=dict)
    read: int = 0
    seconds: float = 0.0
    digest: tuple[int, int] = (0, 0)
    refused: int = 0


@dataclass(frozen=True, slots=True)
class TargetState:
    """What a target holds before a migration.

    Attributes:
        exists: whether the database (file) exists.
        revision: its Alembic revision, if it has a schema.
        filled: the schema's tables that hold rows.
        in_progress: whether a migration into it was interrupted.
    """

    exists: bool
    revision: str | None = None
    filled: tuple[str, ...] = ()
    in_progress: bool = False


class Target(Protocol):
    """A database a migration writes."""

    dialect: Dialect
    description: str
    config: DatabaseConfig
    #: Batches of one table written at once (PostgreSQL: several connections).
    writers: int
    #: Whether a table's foreign keys are set aside while it loads (PostgreSQL),
    #: so its rows may go in before its parents' (not SQLite's: they stay on).
    keys_set_aside: bool

    async def inspect(self) -> TargetState:
        """What the target holds, without changing it."""
        ...

    async def prepare(self) -> None:
        """Create or upgrade the schema with Alembic, then open the copying connection."""
        ...

    async def empty(self) -> None:
        """Delete every row of the schema's tables and any migration progress (``--replace``)."""
        ...

    async def start(
        self, settings: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[Any], list[Any]]:
        """Create the progress tables; return the settings, table and batch records there."""
        ...

    async def skipped_keys(self) -> dict[str, set[str]]:
        """Keys of the rows left out so far, by table."""
        ...

    async def write(self, plan: TablePlan, batch: Batch, on_error: OnError) -> BatchRecord:
        """Write a batch, its record and its issues in one transaction; return the record.

        Raises:
            RowRejectedError: the database refused a row and ``on_error`` is abort.
        """
        ...

    async def start_table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Record the table's start and its split keys; PostgreSQL sets indexes aside."""
        ...

    async def finish_table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Mark a table done, restoring what ``start_table`` set aside, in one transaction."""
        ...

    async def finish(self, plans: list[TablePlan], counters: dict[str, int]) -> None:
        """Move identity counters past the source's, rebuild full-text search, refresh stats."""
        ...

    def issues(self) -> AsyncIterator[Issue]:
        """Every recorded issue, in the order found."""
        ...

    async def complete(self) -> None:
        """Drop the progress tables: the target's schema is Alembic's again."""
        ...

    def scan(
        self,
        plan: TablePlan,
        transform: Transform[T],
        sizer: BatchSizer,
        *,
        lower: Any = None,
        upper: Any = None,
    ) -> AsyncIterator[T]:
        """The copied columns of the keys in ``(lower, upper]``, in no order (verification)."""
        ...

    async def reconnect(self) -> None:
        """Open a new copying connection after the old one was lost."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


def open_target(config: DatabaseConfig, *, locking: bool = True) -> Target:
    """The target for ``config`` (nothing is opened yet).

    Args:
        config: the target.
        locking: take the migration lock when connecting (False: a job's
            target, whose migration holds the lock).
    """
    target: Target
    if config.type == "sqlite":
        from pipeline_db.transfer.sqlite_target import SQLiteTarget

        target = SQLiteTarget(config)
    else:
        from pipeline_db.transfer.pg_target import PostgreSQLTarget

        target = PostgreSQLTarget(config, locking=locking)
    return target


def rejected(
    plan: TablePlan,
    row: tuple[Any, ...],
    column: str | None,
    reason: str,
    on_error: OnError,
) -> Issue:
    """The issue for a row the database refused; raises under ``abort``."""
    key = row[plan.key_index]
    if on_error == "abort":
        raise RowRejectedError(plan.name, key, column, reason)
    return Issue(plan.name, str(key), column, f"the target refused it: {reason}", "skipped")


def record_of(plan: TablePlan, batch: Batch, refused: list[Issue], seconds: float) -> BatchRecord:
    """The record of a batch of which the database refused ``refused`` rows."""
    refused_keys = {issue.key for issue in refused}
    unrepaired = sum(1 for key in batch.repaired if str(key) in refused_keys)
    return BatchRecord(
        table=plan.name,
        after_key=batch.after_key,
        last_key=batch.last_key,
        copied=len(batch.rows) - len(refused),
        skipped=batch.skipped + len(refused),
        repaired=len(batch.repaired) - unrepaired,
        seconds=batch.seconds + seconds,
        conversions=batch.conversions,
    )


def constraint_column(plan: TablePlan, constraint: str | None) -> str | None:
    """The first column of a named constraint of the table, if it has one."""
    if not constraint:
        return None
    items: list[Any] = [*plan.table.constraints, *plan.table.indexes]
    for item in items:
        if item.name == constraint:
            columns: list[str] = [c.name for c in getattr(item, "columns", [])]
            if columns:
                return columns[0]
    for check in plan.checks:
        if check.name == constraint and check.columns:
            return check.columns[0]
    return None
