"""pipeline-db: the async database layer of the video-processing pipeline."""

from pipeline_db.config import (
    DatabaseConfig,
    RetryPolicy,
    database_config,
    load_config,
    load_database_config,
)
from pipeline_db.database import Database, PoolStatus
from pipeline_db.errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConflictError,
    DatabaseError,
    DomainError,
    InterfaceError,
    InvalidInputError,
    NotFoundError,
    PipelineDBError,
    SchemaOutOfDateError,
    TransientError,
)
from pipeline_db.retry import Attempt, Retrying

__all__ = [
    "Attempt",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConflictError",
    "Database",
    "DatabaseConfig",
    "DatabaseError",
    "DomainError",
    "InterfaceError",
    "InvalidInputError",
    "NotFoundError",
    "PipelineDBError",
    "PoolStatus",
    "RetryPolicy",
    "Retrying",
    "SchemaOutOfDateError",
    "TransientError",
    "database_config",
    "load_config",
    "load_database_config",
]
