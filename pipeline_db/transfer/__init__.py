"""Moving a pipeline between SQLite and PostgreSQL without losing or changing a value.

``pipeline-db migrate SOURCE TARGET`` runs :func:`migrate`: the target's
schema comes from Alembic, the tables are copied parents first, several at
once in worker processes (:mod:`.schedule`, :mod:`.job`), in batches (COPY
into PostgreSQL), values converted column by column (:mod:`.convert`,
:mod:`.columns`), bad rows following ``--on-error`` (:mod:`.policy`), each
batch committing with its progress record (:mod:`.progress`, ``--resume``),
and both sides of every table are checksummed (:mod:`.verify`). Sources: a
legacy ``pipeline.db`` (schema_version 1 to 5, :mod:`.legacy`) or
pipeline-db's own database on either backend.
"""

from pipeline_db.transfer.copy import migrate, plan, verify_only
from pipeline_db.transfer.endpoints import endpoint_config
from pipeline_db.transfer.errors import (
    MigrationError,
    RowRejectedError,
    TargetNotEmptyError,
    VerificationError,
)
from pipeline_db.transfer.options import MigrateOptions
from pipeline_db.transfer.plan import MigrationPlan
from pipeline_db.transfer.report import MigrationReport, TableCheck, TableReport

__all__ = [
    "MigrateOptions",
    "MigrationError",
    "MigrationPlan",
    "MigrationReport",
    "RowRejectedError",
    "TableCheck",
    "TableReport",
    "TargetNotEmptyError",
    "VerificationError",
    "endpoint_config",
    "migrate",
    "plan",
    "verify_only",
]
