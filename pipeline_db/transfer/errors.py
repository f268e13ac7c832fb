"""What a migration raises, under pipeline-db's one exception root."""

from __future__ import annotations

from typing import Any

from pipeline_db.errors import ConfigurationError, InvalidInputError, PipelineDBError


class MigrationError(PipelineDBError):
    """The migration could not be completed."""


class TargetNotEmptyError(MigrationError, ConfigurationError):
    """The target already holds data: give --resume or --replace."""


class RowRejectedError(MigrationError, InvalidInputError):
    """A source row cannot be copied as it is (``--on-error abort``)."""

    def __init__(self, table: str, key: Any, column: str | None, reason: str) -> None:
        where = f", column {column}" if column else ""
        super().__init__(
            f"{table} row {key!s}{where}: {reason} (--on-error skip leaves such rows out, "
            "repair fixes what has a safe fix; both list them in the report)",
            field=column,
        )
        self.table = table
        self.key = key
        self.column = column
        self.reason = reason

    def __reduce__(self) -> tuple[type[RowRejectedError], tuple[str, Any, str | None, str]]:
        # Raised in a worker process, it travels back pickled.
        return type(self), (self.table, self.key, self.column, self.reason)


class VerificationError(MigrationError):
    """The target does not hold what the source holds."""
