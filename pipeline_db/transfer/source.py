"""Where a migration reads: a SQLite file (legacy or pipeline-db's) or PostgreSQL.

A :class:`Source` discovers what it holds (:class:`SourceInfo`) and streams a
table's rows in key order, batch by batch, each batch handed to a transform
(the conversion) where it was read, so memory holds a few batches at most.
It never writes: SQLite is opened read-only, PostgreSQL in a read-only
REPEATABLE READ transaction, so a whole copy sees one snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pipeline_db._translate import translate
from pipeline_db.backends import backend_for
from pipeline_db.config import DatabaseConfig
from pipeline_db.errors import PipelineDBError
from pipeline_db.transfer.convert import Dialect
from pipeline_db.transfer.layout import TablePlan

T = TypeVar("T")
#: Rows of one batch at most (``--batch-size``).
BATCH_ROWS = 10_000
#: Bytes of text one batch aims at, so wide rows (transcripts) come fewer at a time.
BATCH_BYTES = 2 * 1024 * 1024
Transform = Callable[[list[tuple[Any, ...]]], T]


@dataclass(slots=True)
class SourceInfo:
    """What a source holds.

    Attributes:
        flavour: what it is ("legacy pipeline.db, schema_version 3", "pipeline-db 0003").
        tables: the schema's tables it holds, with their columns.
        counters: AUTOINCREMENT counters or sequence positions, by table.
        not_copied: tables outside pipeline-db's schema, with why they stay behind.
        notes: anything else worth reporting (a broken FTS5 table, a bad foreign key).
    """

    flavour: str
    tables: dict[str, list[str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    not_copied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class BatchSizer:
    """How many rows the next fetch asks for: at most ``rows``, about ``BATCH_BYTES``."""

    def __init__(self, rows: int = BATCH_ROWS, budget: int = BATCH_BYTES) -> None:
        self.limit = max(1, rows)
        self.budget = budget
        self.next = min(self.limit, 100)  # a first small fetch measures the rows

    def observe(self, batch: list[tuple[Any, ...]]) -> None:
        """Learn the rows' width from a sample of the batch just read."""
        if not batch:
            return
        width = average_width(batch[:: max(1, len(batch) // 32)])
        self.next = int(min(self.limit, max(1, self.budget // max(width, 1))))


def average_width(rows: Any) -> float:
    """The average width in bytes of rows (text and BLOBs by length, the rest 8)."""
    if not rows:
        return 0.0
    total = sum(len(v) if isinstance(v, str | bytes) else 8 for row in rows for v in row)
    return total / len(rows)


class Source(Protocol):
    """A database a migration reads."""

    dialect: Dialect
    description: str
    info: SourceInfo

    async def count(self, name: str) -> int:
        """How many rows a table holds."""
        ...

    def scan(
        self,
        plan: TablePlan,
        transform: Transform[T],
        *,
        after: Any = None,
        upper: Any = None,
        sizer: BatchSizer,
        checked: bool = True,
    ) -> AsyncIterator[T]:
        """The table's rows in key order after ``after``, batch by batch, transformed.

        Args:
            plan: the table and its columns.
            transform: applied to each batch of raw rows where they were read.
            after: the last key already copied (None: from the start).
            upper: the last key to read (None: to the end).
            sizer: sizes the fetches.
            checked: on SQLite, append a flag per foreign key and CHECK constraint.
        """
        ...

    async def key_at(self, plan: TablePlan, offset: int) -> Any:
        """The key of the row at ``offset`` in key order (to split a table)."""
        ...

    async def row_width(self, plan: TablePlan) -> float:
        """The average width in bytes of the table's first rows (to schedule the copy)."""
        ...

    async def null_keys(self, plan: TablePlan) -> list[int]:
        """Rowids of rows whose key is NULL (SQLite allows it in legacy tables)."""
        ...

    async def duplicates(self, plan: TablePlan) -> dict[Any, str]:
        """Keys of rows that repeat an earlier row's unique values, with why."""
        ...

    async def export_snapshot(self) -> str | None:
        """An id other connections read this source's snapshot by (None: SQLite has none)."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


async def open_source(config: DatabaseConfig, *, snapshot: str | None = None) -> Source:
    """Open a source read-only and discover what it holds.

    Args:
        config: the source.
        snapshot: a PostgreSQL snapshot another connection exported
            (:meth:`Source.export_snapshot`), to read the same moment.

    Raises:
        ConfigurationError: it does not exist or cannot be read.
    """
    source: Source
    if config.type == "sqlite":
        from pipeline_db.transfer.legacy import SQLiteSource

        source = await SQLiteSource.open(config)
    else:
        from pipeline_db.transfer.pg_source import PostgreSQLSource

        source = await PostgreSQLSource.open(config, snapshot=snapshot)
    return source


def driver_error(error: Exception, config: DatabaseConfig) -> PipelineDBError:
    """The pipeline-db error for a driver exception, naming the database (never a secret)."""
    translated = translate(error, backend_for(config))
    if translated is None:
        return PipelineDBError(f"{config.describe()}: {type(error).__name__}: {error}")
    translated.message = f"{config.describe()}: {translated.message}"
    translated.args = (translated.message,)
    return translated
