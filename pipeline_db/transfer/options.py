"""The options of a migration, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline_db.errors import ConfigurationError
from pipeline_db.transfer.source import BATCH_ROWS
from pipeline_db.transfer.target import OnError

ON_ERROR: tuple[OnError, ...] = ("abort", "skip", "repair")
#: Worker processes copying tables at once (0: every table in this process).
WORKERS = 3
#: Tables with more rows are copied in key ranges by several workers at once.
SPLIT_ROWS = 250_000


@dataclass(frozen=True, slots=True)
class MigrateOptions:
    """How to migrate.

    Attributes:
        on_error: a row the target cannot take: ``abort`` the migration (default),
            ``skip`` it, or ``repair`` what has a safe fix (and leave out the rest).
        resume: continue an interrupted migration into the target.
        replace: delete what the target holds first.
        source_timezone: the IANA zone of naive local timestamps in a legacy
            file (None: the machine's zone).
        batch_size: rows per batch at most.
        report: where the report file goes (None: ``pipeline-db-migrate-<time>.json``).
        workers: worker processes copying tables at once (0: all in this process).
        split_rows: tables with more rows are split into key ranges copied at
            once (0: never split).
    """

    on_error: OnError = "abort"
    resume: bool = False
    replace: bool = False
    source_timezone: str | None = None
    batch_size: int = BATCH_ROWS
    report: Path | None = None
    workers: int = WORKERS
    split_rows: int = SPLIT_ROWS

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ConfigurationError(f"on_error must be one of {', '.join(ON_ERROR)}")
        if self.split_rows < 0:
            raise ConfigurationError("split_rows must be 0 or more")
        if self.workers < 0:
            raise ConfigurationError("workers must be 0 or more")
        if self.batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        if self.resume and self.replace:
            raise ConfigurationError("--resume and --replace exclude each other")
