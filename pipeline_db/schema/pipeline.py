"""The pipeline's tables: episodes, their history, metadata index, clips and social jobs."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Double,
    ForeignKey,
    Identity,
    Index,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    literal_column,
    text,
)
from sqlalchemy.sql.elements import ColumnElement

from pipeline_db.schema._base import metadata
from pipeline_db.schema._columns import _created_at, _episode_fk, _in
from pipeline_db.schema.types import IdentityKey, JSONType, UTCDateTime, utcnow

#: The pipeline's stages, in order.
STAGES = ("discovered", "prepped", "transcribed", "enriched", "rendered", "clips_discovered")
CLIP_STATUSES = ("pending", "rendered", "failed")
ASSET_VARIANTS = ("clean", "subtitled")
ASPECT_RATIOS = ("9x16", "16x9", "1x1")

episodes = Table(
    "episodes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("hash", Text, nullable=False, unique=True),
    Column("stage", Text, nullable=False, server_default=STAGES[0]),
    Column("source_path", Text, nullable=False),
    Column("metadata", JSONType, nullable=False, server_default=text("'{}'")),
    Column("errors", Text),
    Column("file_size", BigInteger),
    Column("duration_seconds", Double),
    Column("last_modified", UTCDateTime()),
    _created_at(),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    CheckConstraint(_in("stage", STAGES), name="stage"),
    Index(None, "stage"),
    Index(None, "updated_at"),
    # Keyset pages by stage, in the listing's (updated_at, id) order.
    Index(None, "stage", "updated_at", "id"),
)


def file_name(path: ColumnElement[str]) -> ColumnElement[str]:
    """The lower-cased file name of a path, in SQL both backends share (indexed).

    ``rtrim(path, <every character but '/'>)`` leaves the folder part, so what
    follows it is the file name: no regexp needed, so SQLite can index it too.
    """
    # Literal SQL, not bound parameters: SQLite matches an expression index
    # only against the same expression with the same constants.
    slash: ColumnElement[str] = literal_column("'/'")
    empty: ColumnElement[str] = literal_column("''")
    one: ColumnElement[int] = literal_column("1")
    folder = func.rtrim(path, func.replace(path, slash, empty))
    return func.lower(func.substr(path, func.length(folder) + one))


Index("ix_episodes_file_name", file_name(episodes.c.source_path))

processing_log = Table(
    "processing_log",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("episode_id", Text, _episode_fk(), nullable=False),
    Column("stage", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("duration_seconds", Double),
    Column("error_message", Text),
    Column("timestamp", UTCDateTime(), nullable=False, server_default=utcnow()),
    Index(None, "episode_id"),
    Index(None, "timestamp"),
    # Covers stats()'s mean durations per stage over the last 24 h. With a bare
    # (stage, status) index SQLite's planner skip-scans it for GROUP BY stage
    # and reads every completed event (0.6 s at 2M rows, bench/reads.py);
    # with timestamp and duration in it, the skip-scan reads only the window.
    Index(None, "stage", "status", "timestamp", "duration_seconds"),
    sqlite_autoincrement=True,
)

processing_metrics = Table(
    "processing_metrics",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("episode_id", Text, _episode_fk(), nullable=False),
    Column("stage", Text, nullable=False),
    Column("metric_name", Text, nullable=False),
    Column("metric_value", Double, nullable=False),
    Column("timestamp", UTCDateTime(), nullable=False, server_default=utcnow()),
    Index(None, "episode_id", "stage"),
    sqlite_autoincrement=True,
)

episode_dependencies = Table(
    "episode_dependencies",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("episode_id", Text, _episode_fk(), nullable=False),
    Column("depends_on_episode_id", Text, _episode_fk(), nullable=False),
    Column("dependency_type", Text, nullable=False, server_default="requires"),
    _created_at(),
    UniqueConstraint("episode_id", "depends_on_episode_id", "dependency_type"),
    Index(None, "depends_on_episode_id"),
    sqlite_autoincrement=True,
)

json_metadata_index = Table(
    "json_metadata_index",
    metadata,
    Column("episode_id", Text, _episode_fk(), primary_key=True),
    Column("file_path", Text),
    Column("file_size", BigInteger),
    Column("last_updated", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("show_name", Text),
    Column("title", Text),
    Column("summary", Text),
    Column("transcript_text", Text),
    Column("date", Date),
    Column("duration_seconds", Double),
    Column("guest_names", JSONType),
    Column("topics", JSONType),
    Column("has_transcript", Boolean, nullable=False, server_default=false()),
    Column("has_enrichment", Boolean, nullable=False, server_default=false()),
    Column("has_editorial", Boolean, nullable=False, server_default=false()),
    Index(None, "show_name"),
    Index(None, "date"),
)

clips = Table(
    "clips",
    metadata,
    Column("id", Text, primary_key=True),
    Column("episode_id", Text, _episode_fk(), nullable=False),
    Column("start_ms", BigInteger, nullable=False),
    Column("end_ms", BigInteger, nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    Column("score", Double),
    Column("title", Text),
    Column("caption", Text),
    Column("hashtags", JSONType),
    Column("status", Text, nullable=False, server_default=CLIP_STATUSES[0]),
    _created_at(),
    CheckConstraint(_in("status", CLIP_STATUSES), name="status"),
    CheckConstraint("score >= 0 AND score <= 1", name="score"),
    CheckConstraint("end_ms > start_ms", name="end_after_start"),
    Index(None, "episode_id"),
    Index(None, "status"),
    Index(None, "score"),
)

clip_assets = Table(
    "clip_assets",
    metadata,
    Column("id", Text, primary_key=True),
    Column(
        "clip_id",
        Text,
        ForeignKey("clips.id", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
    ),
    Column("path", Text, nullable=False),
    Column("variant", Text, nullable=False),
    Column("aspect_ratio", Text, nullable=False),
    Column("size_bytes", BigInteger),
    _created_at(),
    UniqueConstraint("clip_id", "variant", "aspect_ratio"),
    CheckConstraint(_in("variant", ASSET_VARIANTS), name="variant"),
    CheckConstraint(_in("aspect_ratio", ASPECT_RATIOS), name="aspect_ratio"),
)

backup_log = Table(
    "backup_log",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("backup_path", Text, nullable=False),
    Column("backup_size", BigInteger),
    Column("checksum", Text),
    _created_at(),
    Column("restored_at", UTCDateTime()),
    sqlite_autoincrement=True,
)

social_jobs = Table(
    "social_jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("episode_id", Text, _episode_fk(), nullable=False),
    Column("platforms", JSONType),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("progress", Double, nullable=False, server_default=text("0")),
    Column("packages_generated", JSONType),
    Column("errors", JSONType),
    Column("warnings", JSONType),
    Column("metadata", JSONType),
    _created_at(),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("completed_at", UTCDateTime()),
    Index(None, "episode_id"),
    Index(None, "status"),
)
