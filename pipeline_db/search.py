"""The metadata index: filters, facets and full-text search over episodes' metadata.

Each episode has one row in ``json_metadata_index``, derived from its metadata
document by :func:`index_values` and kept current by every write of the
episodes API. Full-text search runs on FTS5 (SQLite) or a weighted tsvector
with ``websearch_to_tsquery`` (PostgreSQL). User input is never parsed as
query syntax by either engine: :func:`parse_query` reduces it to words and
the operators both engines agree on (implicit AND, ``or``, a leading ``-``
for NOT), drops PostgreSQL's English stop words, and renders the same query
for each engine, so both return the same episodes and no input can raise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db._stopwords import ENGLISH_STOP_WORDS
from pipeline_db.database import Database
from pipeline_db.errors import InvalidInputError, NotFoundError
from pipeline_db.models import Facet, IndexEntry, SearchHit
from pipeline_db.queries import episodes as eq
from pipeline_db.queries import search as q
from pipeline_db.schema import json_metadata_index

MAX_QUERY_TERMS = 32
SEARCH_LIMIT = 20
MAX_SEARCH_LIMIT = 200
FACET_LIMIT = 100
REBUILD_BATCH = 500
FLAGS = ("has_transcript", "has_enrichment", "has_editorial")

_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """A search query reduced to what both engines agree on.

    Attributes:
        groups: alternatives (OR) of conjunctions (AND) of words.
        excluded: words no result may contain.
    """

    groups: list[list[str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(self.groups)

    def websearch(self, *, exclusions: bool = True) -> str:
        """The query as ``websearch_to_tsquery`` input (PostgreSQL).

        Args:
            exclusions: include the ``-word`` exclusions. ``ts_rank`` scores
                every match of a query with a negated word alike, so the rank
                is computed from the query without them.
        """
        negated = " ".join(f"-{word}" for word in self.excluded) if exclusions else ""
        return " or ".join(" ".join(g) + (f" {negated}" if negated else "") for g in self.groups)

    def fts5(self) -> str:
        """The query as an FTS5 expression, every word a quoted string (SQLite)."""
        negated = "".join(f' NOT "{word}"' for word in self.excluded)
        return " OR ".join(
            "(" + " AND ".join(f'"{word}"' for word in group) + negated + ")"
            for group in self.groups
        )


def parse_query(text: str) -> ParsedQuery:
    """Reduce free text to words, ``or`` and ``-word``; never raises.

    Words are runs of letters and digits (quotes, ``*``, parentheses, ``NEAR``
    and other syntax are not operators), lower-cased, without stop words, at
    most :data:`MAX_QUERY_TERMS` of them. A whitespace-separated ``or`` joins
    alternatives. A ``-`` before a chunk of text excludes every word of it
    (``-well-known`` excludes "well" and "known"); a hyphen inside a chunk only
    separates words (``well-known`` requires both), as both engines split
    such compounds when indexing.
    """
    groups: list[list[str]] = [[]]
    excluded: list[str] = []
    terms = 0
    for chunk in text.lower().split():
        words = _WORD.findall(chunk)
        if not words:
            continue
        negate = "-" in chunk[: chunk.index(words[0])]
        if words == ["or"] and not negate:
            if groups[-1]:
                groups.append([])
            continue
        for word in words:
            if word in ENGLISH_STOP_WORDS or terms >= MAX_QUERY_TERMS:
                continue
            terms += 1
            (excluded if negate else groups[-1]).append(word)
    return ParsedQuery([g for g in groups if g], excluded)


def index_values(
    episode_id: str, source_path: str | None, file_size: int | None, metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The index row of an episode, derived from its metadata document.

    Looks for each field at the top level first, then where the pipeline's
    stages put it (``enrichment``, ``editorial``, ``transcript``).
    """
    transcript = _first(metadata, "transcript_text", "transcript.text", "transcription.text")
    if transcript is None and isinstance(metadata.get("transcript"), str):
        transcript = metadata["transcript"]
    return {
        "episode_id": episode_id,
        "file_path": source_path,
        "file_size": file_size,
        "show_name": _text(_first(metadata, "show_name", "show", "episode.show_name")),
        "title": _text(_first(metadata, "title", "editorial.title", "episode.title")),
        "summary": _text(_first(metadata, "summary", "enrichment.summary", "editorial.summary")),
        "transcript_text": _text(transcript),
        "date": _date(_first(metadata, "date", "published_date", "episode.date")),
        "duration_seconds": _number(_first(metadata, "duration_seconds", "duration")),
        "guest_names": _names(_first(metadata, "guest_names", "guests", "enrichment.guests")),
        "topics": _names(_first(metadata, "topics", "enrichment.topics", "tags")),
        "has_transcript": bool(transcript),
        "has_enrichment": bool(metadata.get("enrichment")),
        "has_editorial": bool(metadata.get("editorial")),
    }


async def upsert_index(
    conn: AsyncConnection,
    dialect: str,
    episode_id: str,
    source_path: str | None,
    file_size: int | None,
    metadata: Mapping[str, Any],
) -> None:
    """Write an episode's index row inside the caller's transaction."""
    values = index_values(episode_id, source_path, file_size, metadata)
    await conn.execute(q.upsert(dialect), values)


class MetadataIndex:
    """Filters, facets and full-text search over the metadata index."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert(self, episode_id: str) -> IndexEntry:
        """Recompute an episode's index row from its metadata.

        Raises:
            NotFoundError: no such episode.
        """

        async def work(conn: AsyncConnection) -> IndexEntry:
            row = (await conn.execute(eq.by_id(episode_id))).mappings().first()
            if row is None:
                raise NotFoundError(f"episode {episode_id!r} does not exist")
            await upsert_index(
                conn,
                self._db.dialect,
                episode_id,
                row["source_path"],
                row["file_size"],
                row["metadata"],
            )
            return IndexEntry.model_validate(
                (await conn.execute(q.entry(episode_id))).mappings().one()
            )

        return await self._db.transaction(work)

    async def filter(
        self,
        *,
        show: str | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
        min_duration: float | None = None,
        max_duration: float | None = None,
        guest: str | None = None,
        topic: str | None = None,
        has_transcript: bool | None = None,
        has_enrichment: bool | None = None,
        has_editorial: bool | None = None,
        limit: int = FACET_LIMIT,
    ) -> list[IndexEntry]:
        """Index rows matching every given filter, newest date first, undated last.

        ``show`` matches exactly; ``guest`` and ``topic`` match one element of
        the episode's list, ignoring case (on SQLite, only ASCII letters' case:
        its ``lower()`` leaves other letters as they are). Date and duration
        bounds are inclusive.

        Raises:
            InvalidInputError: a value of the wrong type, a NaN bound, text
                with NUL characters, or a limit out of range (naming the field).
        """
        for name, text in (("show", show), ("guest", guest), ("topic", topic)):
            _check_text(text, name)
        date_from = _check_date(date_from, "date_from")
        date_to = _check_date(date_to, "date_to")
        _check_number(min_duration, "min_duration")
        _check_number(max_duration, "max_duration")
        for name, flag in zip(FLAGS, (has_transcript, has_enrichment, has_editorial), strict=True):
            if flag is not None and not isinstance(flag, bool):
                raise InvalidInputError(f"{name} must be true or false", field=name)
        flags = {
            name: value
            for name, value in zip(
                FLAGS, (has_transcript, has_enrichment, has_editorial), strict=True
            )
            if value is not None
        }
        dialect = self._db.dialect
        ids = None
        if guest is not None:
            ids = q.with_array_value(dialect, "guest_names", guest)
        if topic is not None:
            topic_ids = q.with_array_value(dialect, "topics", topic)
            ids = (
                topic_ids
                if ids is None
                else ids.where(json_metadata_index.c.episode_id.in_(topic_ids))
            )
        query = q.filtered(
            show=show,
            date_from=date_from,
            date_to=date_to,
            min_duration=min_duration,
            max_duration=max_duration,
            flags=flags,
            episode_ids=ids,
            limit=_limit(limit),
        )
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [IndexEntry.model_validate(row) for row in rows]

    async def search(
        self, text: str, *, show: str | None = None, limit: int = SEARCH_LIMIT
    ) -> list[SearchHit]:
        """Full-text search over title, summary, transcript, topics and guests, best first.

        Any text is accepted; text with no searchable word returns ``[]``.

        Raises:
            InvalidInputError: text that is not a string, a ``show`` with NUL
                characters, a limit outside 1..200 (naming the field).
        """
        if not isinstance(text, str):
            raise InvalidInputError("the search text must be a string", field="q")
        _check_text(show, "show")
        size = _limit(limit, MAX_SEARCH_LIMIT)
        parsed = parse_query(text)
        if not parsed:
            return []
        if self._db.dialect == "postgresql":
            statement = q.fulltext_postgresql(
                parsed.websearch(), parsed.websearch(exclusions=False), show, size
            )
        else:
            statement = q.fulltext_sqlite(parsed.fts5(), show, size)
        async with self._db.read() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [SearchHit.model_validate(row) for row in rows]

    async def shows(self, *, limit: int = FACET_LIMIT) -> list[Facet]:
        """Shows with their episode counts, most episodes first."""
        async with self._db.read() as conn:
            rows = (await conn.execute(q.show_facet(_limit(limit)))).all()
        return [Facet(value=value, count=n) for value, n in rows]

    async def guests(self, *, limit: int = FACET_LIMIT) -> list[Facet]:
        """Guests with their episode counts, most episodes first."""
        return await self._array_facet("guest_names", limit)

    async def topics(self, *, limit: int = FACET_LIMIT) -> list[Facet]:
        """Topics with their episode counts, most episodes first."""
        return await self._array_facet("topics", limit)

    async def rebuild(self) -> int:
        """Recompute every index row from the episodes, in batches; returns the count.

        On SQLite the FTS5 table is first rebuilt from the index rows: its
        triggers update it by deleting each row's old terms, which corrupts
        it if it no longer holds them, so it must be in step before rows
        change. Rows are then replaced in place (searches keep working
        meanwhile).
        """
        dialect = self._db.dialect
        if dialect == "sqlite":
            await self._db.transaction(lambda conn: conn.execute(q.rebuild_sqlite_fts()))
        done, after = 0, None
        while True:
            async with self._db.read() as conn:
                batch = (await conn.execute(q.all_episodes_after(after, REBUILD_BATCH))).all()
            if not batch:
                break

            async def work(conn: AsyncConnection, batch: Any = batch) -> None:
                for episode_id, path, size, metadata in batch:
                    await upsert_index(conn, dialect, episode_id, path, size, metadata)

            await self._db.transaction(work)
            done += len(batch)
            after = batch[-1][0]
        return done

    async def _array_facet(self, column: str, limit: int) -> list[Facet]:
        statement = q.array_facet(self._db.dialect, column, _limit(limit))
        async with self._db.read() as conn:
            rows = (await conn.execute(statement)).all()
        return [Facet(value=str(value), count=int(n)) for value, n in rows]


def _first(metadata: Mapping[str, Any], *paths: str) -> Any:
    for path in paths:
        node: Any = metadata
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node not in (None, "", [], {}):
            return node
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _names(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    names = [
        item if isinstance(item, str) else item.get("name")
        for item in value
        if isinstance(item, str) or isinstance(item, Mapping)
    ]
    return [n for n in names if isinstance(n, str) and n]


def _check_text(value: Any, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidInputError(f"{name} must be text without NUL characters", field=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{name} is not valid Unicode text", field=name) from None


def _check_date(value: Any, name: str) -> date | None:
    if value is None:
        return None
    if not isinstance(value, date):
        raise InvalidInputError(f"{name} must be a date", field=name)
    # A datetime is a date too, but each backend would compare it differently.
    return value.date() if isinstance(value, datetime) else value


def _check_number(value: Any, name: str) -> None:
    if value is None:
        return
    # NaN compares differently on each backend (PostgreSQL sorts it above
    # every number, SQLite binds it as NULL), so it is refused.
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidInputError(f"{name} must be a number of seconds", field=name)


def _limit(limit: int, most: int = FACET_LIMIT * 5) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidInputError(f"limit must be between 1 and {most}", field="limit")
    return limit
