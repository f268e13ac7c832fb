"""The one schema source: a SQLAlchemy Core ``MetaData`` for both backends.

It matches the pipeline's existing ``pipeline.db`` so data moves between the
backends; Alembic's migrations, the migration copier and the tests read it.
Differences between the backends live in the types and DDL below:

* JSON is JSONB on PostgreSQL and JSON text on SQLite;
* timestamps are ``timestamptz`` on PostgreSQL and UTC text
  (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts and compares as text) on SQLite;
  both read back as timezone-aware UTC datetimes;
* full-text search is a generated, weighted ``tsvector`` column with a GIN index
  on PostgreSQL and an FTS5 table kept in sync by triggers on SQLite;
* ``updated_at`` is maintained by a trigger on each backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    event,
    false,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDL
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

#: The pipeline's stages, in order.
STAGES = ("discovered", "prepped", "transcribed", "enriched", "rendered", "clips_discovered")
CLIP_STATUSES = ("pending", "rendered", "failed")
ASSET_VARIANTS = ("clean", "subtitled")
ASPECT_RATIOS = ("9x16", "16x9", "1x1")

#: The SQLite text format of a timestamp (UTC).
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} (give it a timezone)")
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None
        if dialect.name != "sqlite":
            return value
        # Not strftime(SQLITE_TIMESTAMP_FORMAT): glibc's %Y does not zero-pad years
        # before 1000, and "332-07-27 ..." neither sorts as text nor reads back.
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


class utcnow(FunctionElement[datetime]):
    """The current UTC time as a server-side default, in each backend's format."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


# %f is SS.SSS; three more digits give the microsecond format Python writes.
SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW


class utc_after(FunctionElement[datetime]):
    """The database's current UTC time plus a number of seconds (a bound value)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utc_after, "postgresql")
def _utc_after_postgresql(element: utc_after, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(now() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(utc_after, "sqlite")
def _utc_after_sqlite(element: utc_after, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    offset = f"printf('%+.6f seconds', {compiler.process(seconds, **kw)})"
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', {offset}) || '000')"


JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
#: A 64-bit identity key that is SQLite's rowid (INTEGER PRIMARY KEY AUTOINCREMENT).
IdentityKey = BigInteger().with_variant(Integer(), "sqlite")


def _episode_fk(**kw: Any) -> ForeignKey:
    return ForeignKey("episodes.id", ondelete="CASCADE", onupdate="CASCADE", **kw)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _created_at() -> Column[datetime]:
    return Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow())


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

#: Job states: queued -> running -> succeeded | failed | cancelled (a retry re-queues).
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
WEBHOOK_STATUSES = ("pending", "delivered", "expired")

jobs = Table(
    "jobs",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("episode_id", Text, _episode_fk()),
    Column("params", JSONType, nullable=False, server_default=text("'{}'")),
    Column("status", Text, nullable=False, server_default=JOB_STATUSES[0]),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("run_after", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("3")),
    Column("idempotency_key", Text, unique=True),
    Column("worker_id", Text),
    Column("lease_expires_at", UTCDateTime()),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("progress_percent", Double),
    Column("progress_stage", Text),
    Column("progress_message", Text),
    Column("result", JSONType),
    Column("error", Text),
    Column("error_traceback", Text),
    Column("webhook_url", Text),
    _created_at(),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    CheckConstraint(_in("status", JOB_STATUSES), name="status"),
    CheckConstraint("max_attempts >= 1", name="max_attempts"),
    CheckConstraint("attempts >= 0", name="attempts"),
    # Per-episode exclusivity: at most one running job per episode, enforced here.
    Index(
        "uq_jobs_running_episode",
        "episode_id",
        unique=True,
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(
        "ix_jobs_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(None, "status", "kind"),
    Index(None, "episode_id"),
    Index(None, "finished_at"),
    sqlite_autoincrement=True,
)

# The claim order (priority first, then age), over queued jobs only.
Index(
    "ix_jobs_claim",
    jobs.c.priority.desc(),
    jobs.c.id,
    postgresql_where=jobs.c.status == "queued",
    sqlite_where=jobs.c.status == "queued",
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("job_id", IdentityKey, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("status", Text, nullable=False, server_default=WEBHOOK_STATUSES[0]),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("last_error", Text),
    Column("expires_at", UTCDateTime(), nullable=False),
    _created_at(),
    Column("delivered_at", UTCDateTime()),
    CheckConstraint(_in("status", WEBHOOK_STATUSES), name="status"),
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    sqlite_autoincrement=True,
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True),
    #: A hash of what the request asked (method, path, body): a reused key must match.
    Column("fingerprint", Text, nullable=False),
    #: NULL while the first request is still being answered.
    Column("status_code", Integer),
    Column("response_body", Text),
    Column("content_type", Text),
    Column("headers", JSONType),
    _created_at(),
    Index(None, "created_at"),
)

#: Tables that keep ``updated_at`` current through a trigger.
TOUCHED_TABLES = ("episodes", "social_jobs")
#: Columns of the metadata index that full-text search covers, heaviest first.
SEARCH_COLUMNS = ("title", "guest_names", "topics", "summary", "transcript_text")
#: The SQLite FTS5 table mirroring the metadata index.
SQLITE_FTS_TABLE = "json_metadata_fts"
#: The PostgreSQL generated column holding the weighted tsvector.
POSTGRES_SEARCH_COLUMN = "search_vector"


def _postgres_updated_at(table: str, key: str) -> list[str]:
    return [
        f"CREATE TRIGGER trg_{table}_updated_at BEFORE UPDATE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION pipeline_db_touch_updated_at()"
    ]


def _sqlite_updated_at(table: str, key: str) -> list[str]:
    return [
        f"CREATE TRIGGER trg_{table}_updated_at AFTER UPDATE ON {table} FOR EACH ROW "
        "WHEN NEW.updated_at IS OLD.updated_at BEGIN "
        f"UPDATE {table} SET updated_at = {SQLITE_NOW} "
        f"WHERE {key} = NEW.{key}; END"
    ]


POSTGRES_FUNCTIONS = [
    # An explicit new value (a migration's copy) is kept; otherwise now().
    "CREATE OR REPLACE FUNCTION pipeline_db_touch_updated_at() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN NEW.updated_at := now(); END IF; "
    "RETURN NEW; END $$"
]

_WEIGHTS = dict(zip(SEARCH_COLUMNS, "ABBCD", strict=True))
#: PostgreSQL's text search configuration: english, with Snowball's original Porter
#: stemmer, the one SQLite's FTS5 ``porter`` tokenizer uses, so the two backends
#: reduce words alike ("news" -> "new", "honestly" -> "honestli").
POSTGRES_SEARCH_CONFIG = "pipeline_db_search"
POSTGRES_SEARCH = [
    "CREATE TEXT SEARCH DICTIONARY pipeline_db_porter "
    "(TEMPLATE = snowball, LANGUAGE = porter, StopWords = english)",
    f"CREATE TEXT SEARCH CONFIGURATION {POSTGRES_SEARCH_CONFIG} (COPY = english)",
    f"ALTER TEXT SEARCH CONFIGURATION {POSTGRES_SEARCH_CONFIG} ALTER MAPPING FOR "
    "asciiword, asciihword, hword_asciipart, word, hword, hword_part WITH pipeline_db_porter",
    # Punctuation becomes space before parsing, as FTS5's unicode61 tokenizer
    # splits on it: "example.com", "3.5" and "covid-19" are several words on both.
    f"ALTER TABLE json_metadata_index ADD COLUMN {POSTGRES_SEARCH_COLUMN} tsvector "
    "GENERATED ALWAYS AS ("
    + " || ".join(
        f"setweight(to_tsvector('{POSTGRES_SEARCH_CONFIG}'::regconfig, regexp_replace("
        f"coalesce({column}{'::text' if column in ('guest_names', 'topics') else ''}, ''), "
        "'[[:punct:]]+', ' ', 'g')), "
        f"'{weight}')"
        for column, weight in _WEIGHTS.items()
    )
    + ") STORED",
    # ts_rank reads the tsvector of every match. Kept in the row (the texts are
    # moved out first), that is not a TOAST index probe and chunk fetch per match:
    # 2-4x faster ranking of queries matching 5,000-8,000 episodes (bench/reads.py).
    f"ALTER TABLE json_metadata_index ALTER COLUMN {POSTGRES_SEARCH_COLUMN} SET STORAGE MAIN",
    f"CREATE INDEX ix_json_metadata_index_{POSTGRES_SEARCH_COLUMN} ON json_metadata_index "
    f"USING gin ({POSTGRES_SEARCH_COLUMN})",
]

_FTS_COLUMNS = ", ".join(SEARCH_COLUMNS)
_NEW = ", ".join(f"new.{c}" for c in SEARCH_COLUMNS)
_OLD = ", ".join(f"old.{c}" for c in SEARCH_COLUMNS)
SQLITE_SEARCH = [
    f"CREATE VIRTUAL TABLE {SQLITE_FTS_TABLE} USING fts5({_FTS_COLUMNS}, "
    "content='json_metadata_index', content_rowid='rowid', "
    "tokenize='porter unicode61 remove_diacritics 0')",
    "CREATE TRIGGER trg_json_metadata_index_fts_insert AFTER INSERT ON json_metadata_index BEGIN "
    f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, {_FTS_COLUMNS}) VALUES (new.rowid, {_NEW}); END",
    "CREATE TRIGGER trg_json_metadata_index_fts_delete AFTER DELETE ON json_metadata_index BEGIN "
    f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rowid, {_FTS_COLUMNS}) "
    f"VALUES ('delete', old.rowid, {_OLD}); END",
    "CREATE TRIGGER trg_json_metadata_index_fts_update AFTER UPDATE ON json_metadata_index BEGIN "
    f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rowid, {_FTS_COLUMNS}) "
    f"VALUES ('delete', old.rowid, {_OLD}); "
    f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, {_FTS_COLUMNS}) VALUES (new.rowid, {_NEW}); END",
]

_KEYS = {"episodes": "id", "social_jobs": "job_id"}


def dialect_ddl(dialect: str) -> list[str]:
    """The backend-specific DDL that follows ``metadata.create_all``: triggers and search."""
    if dialect == "postgresql":
        return [
            *POSTGRES_FUNCTIONS,
            *(s for t in TOUCHED_TABLES for s in _postgres_updated_at(t, _KEYS[t])),
            *POSTGRES_SEARCH,
        ]
    return [
        *(s for t in TOUCHED_TABLES for s in _sqlite_updated_at(t, _KEYS[t])),
        *SQLITE_SEARCH,
    ]


@event.listens_for(metadata, "after_create")
def _after_create(target: MetaData, connection: Any, **kw: Any) -> None:
    tables = {t.name for t in kw.get("tables") or target.sorted_tables}
    if "json_metadata_index" not in tables:  # the extras belong with the base tables
        return
    for statement in dialect_ddl(connection.dialect.name):
        connection.execute(DDL(statement.replace("%", "%%")))  # type: ignore[no-untyped-call]
