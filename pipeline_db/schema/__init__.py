"""The one schema source: a SQLAlchemy Core ``MetaData`` for both backends.

It matches the pipeline's existing ``pipeline.db`` so data moves between the
backends; Alembic's migrations, the migration copier and the tests read it.
Differences between the backends live in the types (:mod:`.types`) and the
DDL (:mod:`.ddl`):

* JSON is JSONB on PostgreSQL and JSON text on SQLite;
* timestamps are ``timestamptz`` on PostgreSQL and UTC text
  (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts and compares as text) on SQLite;
  both read back as timezone-aware UTC datetimes;
* full-text search is a generated, weighted ``tsvector`` column with a GIN index
  on PostgreSQL and an FTS5 table kept in sync by triggers on SQLite;
* ``updated_at`` is maintained by a trigger on each backend.

The tables are in :mod:`.pipeline` (episodes, their history, clips) and
:mod:`.queue` (jobs, webhook deliveries, idempotency keys); import them from
here. Importing this package defines every table (those of :mod:`.pipeline`
first, as before the split) and registers the listener that adds the dialect
DDL when ``metadata`` is created.
"""

from __future__ import annotations

from pipeline_db.schema._base import metadata
from pipeline_db.schema.ddl import (
    POSTGRES_FUNCTIONS,
    POSTGRES_SEARCH,
    POSTGRES_SEARCH_COLUMN,
    POSTGRES_SEARCH_CONFIG,
    SEARCH_COLUMNS,
    SQLITE_FTS_TABLE,
    SQLITE_SEARCH,
    TOUCHED_TABLES,
    dialect_ddl,
)
from pipeline_db.schema.pipeline import (
    ASPECT_RATIOS,
    ASSET_VARIANTS,
    CLIP_STATUSES,
    STAGES,
    backup_log,
    clip_assets,
    clips,
    episode_dependencies,
    episodes,
    file_name,
    json_metadata_index,
    processing_log,
    processing_metrics,
    social_jobs,
)
from pipeline_db.schema.queue import (
    JOB_STATUSES,
    WEBHOOK_STATUSES,
    idempotency_keys,
    jobs,
    webhook_deliveries,
)
from pipeline_db.schema.types import (
    SQLITE_NOW,
    SQLITE_TIMESTAMP_FORMAT,
    IdentityKey,
    JSONType,
    UTCDateTime,
    utc_after,
    utcnow,
)

__all__ = [
    "ASPECT_RATIOS",
    "ASSET_VARIANTS",
    "CLIP_STATUSES",
    "JOB_STATUSES",
    "POSTGRES_FUNCTIONS",
    "POSTGRES_SEARCH",
    "POSTGRES_SEARCH_COLUMN",
    "POSTGRES_SEARCH_CONFIG",
    "SEARCH_COLUMNS",
    "SQLITE_FTS_TABLE",
    "SQLITE_NOW",
    "SQLITE_SEARCH",
    "SQLITE_TIMESTAMP_FORMAT",
    "STAGES",
    "TOUCHED_TABLES",
    "WEBHOOK_STATUSES",
    "IdentityKey",
    "JSONType",
    "UTCDateTime",
    "backup_log",
    "clip_assets",
    "clips",
    "dialect_ddl",
    "episode_dependencies",
    "episodes",
    "file_name",
    "idempotency_keys",
    "jobs",
    "json_metadata_index",
    "metadata",
    "processing_log",
    "processing_metrics",
    "social_jobs",
    "utc_after",
    "utcnow",
    "webhook_deliveries",
]
