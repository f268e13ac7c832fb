"""Every statement of clips and their assets, in SQLAlchemy Core."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, delete, desc, func, insert, select, update
from sqlalchemy.sql.dml import ReturningDelete, ReturningInsert, ReturningUpdate

from pipeline_db.queries import insert_for
from pipeline_db.schema import clip_assets, clips

CLIP_COLUMNS = tuple(clips.c)
ASSET_COLUMNS = tuple(clip_assets.c)


def insert_clip(values: dict[str, Any]) -> ReturningInsert[Any]:
    """Insert one clip."""
    return insert(clips).values(**values).returning(*CLIP_COLUMNS)


def by_id(clip_id: str) -> Select[Any]:
    """The clip with this id."""
    return select(*CLIP_COLUMNS).where(clips.c.id == clip_id)


def of_episode(episode_id: str) -> Select[Any]:
    """An episode's clips by start time."""
    return (
        select(*CLIP_COLUMNS)
        .where(clips.c.episode_id == episode_id)
        .order_by(clips.c.start_ms, clips.c.id)
    )


def by_status(status: str, limit: int) -> Select[Any]:
    """Clips with this status, best score first."""
    return (
        select(*CLIP_COLUMNS)
        .where(clips.c.status == status)
        .order_by(desc(clips.c.score).nulls_last(), clips.c.id)
        .limit(limit)
    )


def set_values(clip_id: str, values: dict[str, Any]) -> ReturningUpdate[Any]:
    """Update the given columns of a clip."""
    return update(clips).where(clips.c.id == clip_id).values(**values).returning(*CLIP_COLUMNS)


def remove(clip_id: str) -> ReturningDelete[Any]:
    """Delete a clip (its assets cascade)."""
    return delete(clips).where(clips.c.id == clip_id).returning(clips.c.id)


def upsert_asset(dialect: str, values: dict[str, Any]) -> ReturningInsert[Any]:
    """Insert an asset, or replace the one with the same clip, variant and aspect ratio."""
    statement = insert_for(dialect, clip_assets).values(**values)
    return statement.on_conflict_do_update(
        index_elements=["clip_id", "variant", "aspect_ratio"],
        set_={"path": statement.excluded.path, "size_bytes": statement.excluded.size_bytes},
    ).returning(*ASSET_COLUMNS)


def assets_of(clip_id: str) -> Select[Any]:
    """A clip's assets by variant and aspect ratio."""
    return (
        select(*ASSET_COLUMNS)
        .where(clip_assets.c.clip_id == clip_id)
        .order_by(clip_assets.c.variant, clip_assets.c.aspect_ratio)
    )


def count_by(column: Any) -> Select[Any]:
    """(value, count) grouped by one column of clips or clip_assets."""
    return select(column, func.count()).group_by(column)
