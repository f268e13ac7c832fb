"""The backend-specific DDL that follows ``metadata.create_all``: triggers and search.

Full-text search is a generated, weighted ``tsvector`` column with a GIN index on
PostgreSQL and an FTS5 table kept in sync by triggers on SQLite; ``updated_at``
is maintained by a trigger on each backend. The ``after_create`` listener on
``metadata`` runs it, so importing :mod:`pipeline_db.schema` registers it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.schema import DDL

from pipeline_db.schema._base import metadata
from pipeline_db.schema.types import SQLITE_NOW

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
