"""Checks and writes of an episode's metadata shared by the built-in jobs.

The built-in jobs write metadata together with other columns in one
transaction (a stage's output with the stage it reaches, a probe's result
with the duration column), which :class:`~pipeline_db.Episodes` offers no
single call for; they check documents by the same rules it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import _json
from pipeline_db.episodes import MAX_METADATA_BYTES
from pipeline_db.errors import InvalidInputError, NotFoundError
from pipeline_db.models import Episode
from pipeline_db.queries import episodes as q
from pipeline_db.search import upsert_index


def check_document(document: Any, what: str) -> dict[str, Any]:
    """``document`` as it will be stored: a JSON object without NUL, within the size limit.

    Raises:
        InvalidInputError: naming ``what`` and the problem.
    """
    if not isinstance(document, Mapping):
        raise InvalidInputError(f"{what} must be a JSON object, not {type(document).__name__}")
    try:
        text = _json.dumps(document)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as error:
        raise InvalidInputError(f"{what} is not JSON-serialisable: {error}") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(f"{what} is {size} bytes, over {MAX_METADATA_BYTES}")
    stored: dict[str, Any] = _json.loads(text)
    if _has_nul(stored):
        # PostgreSQL's jsonb refuses \u0000 (SQLite stores it): refuse it on both.
        raise InvalidInputError(f"{what} must not contain NUL characters")
    return stored


async def locked_episode(conn: AsyncConnection, episode_id: str) -> Episode:
    """The episode, its row locked for the rest of the transaction (PostgreSQL).

    Raises:
        NotFoundError: no such episode.
    """
    row = (await conn.execute(q.by_id(episode_id, for_update=True))).mappings().first()
    if row is None:
        raise NotFoundError.episode(episode_id)
    return Episode.model_validate(row)


async def write_episode(
    conn: AsyncConnection, dialect: str, episode: Episode, values: Mapping[str, Any]
) -> Episode:
    """Update the episode's columns (``metadata`` included) and its search index row."""
    row = (await conn.execute(q.set_values(episode.id, dict(values)))).mappings().one()
    updated = Episode.model_validate(row)
    await upsert_index(
        conn, dialect, updated.id, updated.source_path, updated.file_size, updated.metadata
    )
    return updated


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
