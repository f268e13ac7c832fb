"""Every statement of the metadata index and full-text search.

Full-text search and JSON-array facets are the two places the backends need
different SQL; each has a PostgreSQL and a SQLite function here, side by side.
"""

from __future__ import annotations

import functools
from datetime import date
from typing import Any

from sqlalchemy import (
    Insert,
    Select,
    TextClause,
    bindparam,
    desc,
    func,
    select,
    text,
)

from pipeline_db.queries import insert_for
from pipeline_db.schema import SQLITE_FTS_TABLE, episodes, json_metadata_index, utcnow

INDEX_COLUMNS = tuple(c for c in json_metadata_index.c if c.name != "transcript_text")

# FTS5 column weights, in SEARCH_COLUMNS order: title, guests, topics, summary, transcript.
_BM25_WEIGHTS = "10.0, 5.0, 5.0, 2.0, 1.0"


@functools.cache
def upsert(dialect: str) -> Insert:
    """Insert or replace an episode's index row (every column of ``index_values``).

    Values given at execution; built once per dialect: building the ``excluded``
    columns took an eighth of a registration's time (bench/http.py).
    """
    statement = insert_for(dialect, json_metadata_index)
    changed: dict[str, Any] = {
        c.name: statement.excluded[c.name]
        for c in json_metadata_index.c
        if c.name not in ("episode_id", "last_updated")
    }
    changed["last_updated"] = utcnow()
    return statement.on_conflict_do_update(index_elements=["episode_id"], set_=changed)


def entry(episode_id: str) -> Select[Any]:
    """An episode's index row (without the transcript)."""
    return select(*INDEX_COLUMNS).where(json_metadata_index.c.episode_id == episode_id)


def filtered(
    *,
    show: str | None,
    date_from: date | None,
    date_to: date | None,
    min_duration: float | None,
    max_duration: float | None,
    flags: dict[str, bool],
    episode_ids: Select[Any] | None,
    limit: int,
) -> Select[Any]:
    """Index rows matching every given filter, by date then id."""
    t = json_metadata_index.c
    query = select(*INDEX_COLUMNS)
    if show is not None:
        query = query.where(t.show_name == show)
    if date_from is not None:
        query = query.where(t.date >= date_from)
    if date_to is not None:
        query = query.where(t.date <= date_to)
    if min_duration is not None:
        query = query.where(t.duration_seconds >= min_duration)
    if max_duration is not None:
        query = query.where(t.duration_seconds <= max_duration)
    for flag, wanted in flags.items():
        query = query.where(t[flag].is_(wanted))
    if episode_ids is not None:
        query = query.where(t.episode_id.in_(episode_ids))
    # Explicit NULLS LAST: PostgreSQL puts NULLs first in descending order, SQLite last.
    return query.order_by(desc(t.date).nulls_last(), t.episode_id).limit(limit)


def with_array_value(dialect: str, column: str, value: str) -> Select[Any]:
    """Episode ids whose JSON array ``column`` holds ``value`` (case-insensitive).

    The parameter is named after the column: two of these in one statement
    (a guest and a topic filter) must not share a bind name.
    """
    param = f"{column}_value"
    if dialect == "postgresql":
        sql = (
            f"SELECT episode_id FROM json_metadata_index, jsonb_array_elements_text("
            f"CASE jsonb_typeof({column}) WHEN 'array' THEN {column} ELSE '[]' END) AS v(value) "
            f"WHERE lower(v.value) = lower(:{param})"
        )
    else:
        sql = (
            f"SELECT episode_id FROM json_metadata_index, json_each("
            f"CASE json_type({column}) WHEN 'array' THEN {column} ELSE '[]' END) AS v "
            f"WHERE lower(v.value) = lower(:{param})"
        )
    return select(json_metadata_index.c.episode_id).where(
        json_metadata_index.c.episode_id.in_(
            text(sql).bindparams(**{param: value}).columns(json_metadata_index.c.episode_id)
        )
    )


def array_facet(dialect: str, column: str, limit: int) -> TextClause:
    """(value, count) of the strings in JSON array ``column``, most frequent first."""
    if dialect == "postgresql":
        elements = (
            f"jsonb_array_elements_text(CASE jsonb_typeof({column}) "
            f"WHEN 'array' THEN {column} ELSE '[]' END) AS v(value)"
        )
    else:
        elements = (
            f"json_each(CASE json_type({column}) WHEN 'array' THEN {column} ELSE '[]' END) AS v"
        )
    return text(
        f"SELECT v.value AS value, count(DISTINCT episode_id) AS n "
        f"FROM json_metadata_index, {elements} "
        "WHERE v.value IS NOT NULL AND v.value <> '' "
        "GROUP BY v.value ORDER BY n DESC, v.value LIMIT :limit"
    ).bindparams(limit=limit)


def show_facet(limit: int) -> Select[Any]:
    """(show, count) over the index, most frequent first."""
    t = json_metadata_index.c
    n = func.count().label("n")
    return (
        select(t.show_name, n)
        .where(t.show_name.is_not(None))
        .group_by(t.show_name)
        .order_by(desc(n), t.show_name)
        .limit(limit)
    )


def fulltext_postgresql(query: str, rank_query: str, show: str | None, limit: int) -> TextClause:
    """Matches of a websearch query against the weighted tsvector, ranked by ``rank_query``.

    ``ts_rank`` of a query with a negated word scores every match alike, so
    the caller ranks with the query's positive words only (PostgreSQL).
    """
    return text(
        "SELECT i.episode_id, i.title, i.show_name, ts_rank(i.search_vector, r) AS rank "
        "FROM json_metadata_index AS i, websearch_to_tsquery('pipeline_db_search', :query) AS q, "
        "websearch_to_tsquery('pipeline_db_search', :rank_query) AS r "
        "WHERE i.search_vector @@ q AND (CAST(:show AS text) IS NULL OR i.show_name = :show) "
        "ORDER BY rank DESC, i.episode_id LIMIT :limit"
    ).bindparams(
        bindparam("query", query),
        bindparam("rank_query", rank_query),
        bindparam("show", show),
        bindparam("limit", limit),
    )


def fulltext_sqlite(match: str, show: str | None, limit: int) -> TextClause:
    """Ranked matches of an FTS5 query, best (lowest bm25) first (SQLite).

    Without a show filter, matches are ranked in the FTS table alone and only
    those ranking at or above the ``limit``-th (ties included) are joined to
    their index rows: joining every match before sorting took twice as long
    for a query matching 8,000 episodes (bench/reads.py).
    """
    if show is None:
        return text(
            f"WITH m AS (SELECT rowid AS r, -bm25({SQLITE_FTS_TABLE}, {_BM25_WEIGHTS}) AS rank "
            f"FROM {SQLITE_FTS_TABLE} WHERE {SQLITE_FTS_TABLE} MATCH :query), "
            "cut AS (SELECT rank FROM m ORDER BY rank DESC LIMIT 1 OFFSET :limit - 1) "
            "SELECT i.episode_id, i.title, i.show_name, m.rank "
            "FROM m JOIN json_metadata_index AS i ON i.rowid = m.r "
            "WHERE NOT EXISTS (SELECT 1 FROM cut) OR m.rank >= (SELECT rank FROM cut) "
            "ORDER BY m.rank DESC, i.episode_id LIMIT :limit"
        ).bindparams(bindparam("query", match), bindparam("limit", limit))
    return text(
        f"SELECT i.episode_id, i.title, i.show_name, "
        f"-bm25({SQLITE_FTS_TABLE}, {_BM25_WEIGHTS}) AS rank "
        f"FROM {SQLITE_FTS_TABLE} JOIN json_metadata_index AS i "
        f"ON i.rowid = {SQLITE_FTS_TABLE}.rowid "
        f"WHERE {SQLITE_FTS_TABLE} MATCH :query AND (:show IS NULL OR i.show_name = :show) "
        "ORDER BY rank DESC, i.episode_id LIMIT :limit"
    ).bindparams(bindparam("query", match), bindparam("show", show), bindparam("limit", limit))


def all_episodes_after(after: str | None, limit: int) -> Select[Any]:
    """(id, source_path, file_size, metadata) of episodes in id order, a batch at a time."""
    query = select(episodes.c.id, episodes.c.source_path, episodes.c.file_size, episodes.c.metadata)
    if after is not None:
        query = query.where(episodes.c.id > after)
    return query.order_by(episodes.c.id).limit(limit)


def rebuild_sqlite_fts() -> TextClause:
    """Rebuild the FTS5 table from the index rows (SQLite)."""
    return text(f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}) VALUES ('rebuild')")
