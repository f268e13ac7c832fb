"""pipeline-db: the async database layer of the video-processing pipeline."""

from pipeline_db.clips import Clips
from pipeline_db.config import (
    DatabaseConfig,
    RetryPolicy,
    database_config,
    load_config,
    load_database_config,
)
from pipeline_db.database import Database, PoolStatus
from pipeline_db.dependencies import Dependencies
from pipeline_db.episodes import Episodes
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
from pipeline_db.history import History
from pipeline_db.models import (
    BackupRecord,
    Clip,
    ClipAsset,
    ClipStats,
    Dependency,
    Episode,
    EpisodeStats,
    Facet,
    IndexEntry,
    LogEntry,
    MetricAggregate,
    Page,
    Registration,
    SearchHit,
    SocialJob,
)
from pipeline_db.retry import Attempt, Retrying
from pipeline_db.search import MetadataIndex
from pipeline_db.social import BackupLog, SocialJobs

__all__ = [
    "Attempt",
    "BackupLog",
    "BackupRecord",
    "Clip",
    "ClipAsset",
    "ClipStats",
    "Clips",
    "CommitOutcomeUnknownError",
    "ConfigurationError",
    "ConflictError",
    "Database",
    "DatabaseConfig",
    "DatabaseError",
    "Dependencies",
    "Dependency",
    "DomainError",
    "Episode",
    "EpisodeStats",
    "Episodes",
    "Facet",
    "History",
    "IndexEntry",
    "InterfaceError",
    "InvalidInputError",
    "LogEntry",
    "MetadataIndex",
    "MetricAggregate",
    "NotFoundError",
    "Page",
    "PipelineDBError",
    "PoolStatus",
    "Registration",
    "RetryPolicy",
    "Retrying",
    "SchemaOutOfDateError",
    "SearchHit",
    "SocialJob",
    "SocialJobs",
    "TransientError",
    "database_config",
    "load_config",
    "load_database_config",
]
