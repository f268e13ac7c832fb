"""Clips found in episodes, and the files rendered from them."""

from __future__ import annotations

import builtins
import math
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db.database import Database
from pipeline_db.errors import ConflictError, InvalidInputError, NotFoundError
from pipeline_db.models import Clip, ClipAsset, ClipStats
from pipeline_db.queries import clips as q
from pipeline_db.queries import episodes as eq
from pipeline_db.schema import ASPECT_RATIOS, ASSET_VARIANTS, CLIP_STATUSES, clip_assets, clips

CLIP_LIMIT = 100
MAX_CLIP_LIMIT = 1000
#: BIGINT's range: larger integers cannot be stored by either backend.
_INT64 = range(-(2**63), 2**63)
_UNSET: Any = object()


class Clips:
    """Register, read, update and delete clips; register and list their assets."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(
        self,
        *,
        id: str,
        episode_id: str,
        start_ms: int,
        end_ms: int,
        duration_ms: int | None = None,
        score: float | None = None,
        title: str | None = None,
        caption: str | None = None,
        hashtags: list[str] | None = None,
        status: str = "pending",
    ) -> Clip:
        """Register a clip of an episode; registering the same clip again returns it.

        Raises:
            InvalidInputError: end before start, a duration that disagrees,
                a score outside [0, 1], an unknown status (naming the field).
            NotFoundError: no such episode.
            ConflictError: a different clip already has this id.
        """
        _check_text(id, "id")
        _check_int(start_ms, "start_ms")
        _check_int(end_ms, "end_ms")
        if start_ms < 0:
            raise InvalidInputError("start_ms must be >= 0", field="start_ms")
        if end_ms <= start_ms:
            raise InvalidInputError(
                f"end_ms ({end_ms}) must be after start_ms ({start_ms})", field="end_ms"
            )
        if duration_ms is not None and duration_ms != end_ms - start_ms:
            raise InvalidInputError(
                f"duration_ms ({duration_ms}) must equal end_ms - start_ms ({end_ms - start_ms})",
                field="duration_ms",
            )
        _check_score(score)
        _check_status(status)
        _check_optional_text(title, "title")
        _check_optional_text(caption, "caption")
        _check_tags(hashtags)
        values = {
            "id": id,
            "episode_id": episode_id,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "duration_ms": end_ms - start_ms,
            "score": score,
            "title": title,
            "caption": caption,
            "hashtags": hashtags,
            "status": status,
        }

        async def work(conn: AsyncConnection) -> Clip:
            if (await conn.execute(eq.exists(episode_id))).first() is None:
                raise NotFoundError.episode(episode_id)
            existing = (await conn.execute(q.by_id(id))).mappings().first()
            if existing is not None:
                clip = Clip.model_validate(existing)
                if any(getattr(clip, k) != v for k, v in values.items()):
                    raise ConflictError(f"clip {id!r} exists with other values", field="id")
                return clip
            return Clip.model_validate((await conn.execute(q.insert_clip(values))).mappings().one())

        return await self._db.transaction(work)

    async def get(self, clip_id: str) -> Clip:
        """The clip with this id.

        Raises:
            NotFoundError: no such clip.
        """
        async with self._db.read() as conn:
            row = (await conn.execute(q.by_id(clip_id))).mappings().first()
        if row is None:
            raise _not_found(clip_id)
        return Clip.model_validate(row)

    async def of_episode(self, episode_id: str) -> builtins.list[Clip]:
        """An episode's clips by start time.

        Raises:
            NotFoundError: no such episode.
        """
        async with self._db.read() as conn:
            rows = (await conn.execute(q.of_episode(episode_id))).mappings().all()
            if not rows and (await conn.execute(eq.exists(episode_id))).first() is None:
                raise NotFoundError.episode(episode_id)
        return [Clip.model_validate(row) for row in rows]

    async def by_status(self, status: str, *, limit: int = CLIP_LIMIT) -> builtins.list[Clip]:
        """Clips with this status, best score first (unscored last).

        Raises:
            InvalidInputError: an unknown status, a limit outside 1..1000.
        """
        _check_status(status)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_CLIP_LIMIT
        ):
            raise InvalidInputError(f"limit must be between 1 and {MAX_CLIP_LIMIT}", field="limit")
        async with self._db.read() as conn:
            rows = (await conn.execute(q.by_status(status, limit))).mappings().all()
        return [Clip.model_validate(row) for row in rows]

    async def set_status(self, clip_id: str, status: str) -> Clip:
        """Set a clip's status (pending, rendered or failed).

        Raises:
            NotFoundError: no such clip.
            InvalidInputError: an unknown status.
        """
        _check_status(status)
        return await self._update(clip_id, {"status": status})

    async def update(
        self,
        clip_id: str,
        *,
        title: str | None = _UNSET,
        caption: str | None = _UNSET,
        hashtags: builtins.list[str] | None = _UNSET,
    ) -> Clip:
        """Update a clip's title, caption and/or hashtags (the ones given).

        Raises:
            NotFoundError: no such clip.
            InvalidInputError: a value that is not text (or a list of text).
        """
        values = {
            k: v
            for k, v in (("title", title), ("caption", caption), ("hashtags", hashtags))
            if v is not _UNSET
        }
        for name in ("title", "caption"):
            if name in values:
                _check_optional_text(values[name], name)
        if "hashtags" in values:
            _check_tags(values["hashtags"])
        if not values:
            return await self.get(clip_id)
        return await self._update(clip_id, values)

    async def delete(self, clip_id: str) -> None:
        """Delete a clip and its assets.

        Raises:
            NotFoundError: no such clip.
        """
        deleted = False
        async for attempt in self._db.retrying():
            async with attempt as conn:
                deleted = (await conn.execute(q.remove(clip_id))).first() is not None or deleted
        if not deleted:
            raise _not_found(clip_id)

    async def add_asset(
        self,
        clip_id: str,
        *,
        path: str,
        variant: str,
        aspect_ratio: str,
        size_bytes: int | None = None,
    ) -> ClipAsset:
        """Register a rendered file; replaces the asset of the same variant and aspect ratio.

        Raises:
            NotFoundError: no such clip.
            InvalidInputError: an unknown variant or aspect ratio, a bad size.
        """
        _check_text(path, "path")
        if variant not in ASSET_VARIANTS:
            raise InvalidInputError(
                f"variant must be one of {', '.join(ASSET_VARIANTS)}, not {variant!r}",
                field="variant",
            )
        if aspect_ratio not in ASPECT_RATIOS:
            raise InvalidInputError(
                f"aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}, not {aspect_ratio!r}",
                field="aspect_ratio",
            )
        if size_bytes is not None:
            _check_int(size_bytes, "size_bytes")
            if size_bytes < 0:
                raise InvalidInputError("size_bytes must be >= 0", field="size_bytes")
        values = {
            "id": f"{clip_id}:{variant}:{aspect_ratio}",
            "clip_id": clip_id,
            "path": path,
            "variant": variant,
            "aspect_ratio": aspect_ratio,
            "size_bytes": size_bytes,
        }

        async def work(conn: AsyncConnection) -> ClipAsset:
            if (await conn.execute(q.by_id(clip_id))).first() is None:
                raise _not_found(clip_id)
            row = (await conn.execute(q.upsert_asset(self._db.dialect, values))).mappings().one()
            return ClipAsset.model_validate(row)

        return await self._db.transaction(work)

    async def assets(self, clip_id: str) -> builtins.list[ClipAsset]:
        """A clip's assets by variant and aspect ratio.

        Raises:
            NotFoundError: no such clip.
        """
        async with self._db.read() as conn:
            rows = (await conn.execute(q.assets_of(clip_id))).mappings().all()
            if not rows and (await conn.execute(q.by_id(clip_id))).first() is None:
                raise _not_found(clip_id)
        return [ClipAsset.model_validate(row) for row in rows]

    async def stats(self) -> ClipStats:
        """Clips by status; assets by variant and by aspect ratio."""
        async with self._db.read() as conn:
            by_status = await _counts(conn, clips.c.status)
            by_variant = await _counts(conn, clip_assets.c.variant)
            by_ratio = await _counts(conn, clip_assets.c.aspect_ratio)
        return ClipStats(
            by_status={s: int(by_status.get(s, 0)) for s in CLIP_STATUSES},
            by_variant={v: int(by_variant.get(v, 0)) for v in ASSET_VARIANTS},
            by_aspect_ratio={r: int(by_ratio.get(r, 0)) for r in ASPECT_RATIOS},
        )

    async def _update(self, clip_id: str, values: dict[str, Any]) -> Clip:
        async def work(conn: AsyncConnection) -> Clip:
            row = (await conn.execute(q.set_values(clip_id, values))).mappings().first()
            if row is None:
                raise _not_found(clip_id)
            return Clip.model_validate(row)

        return await self._db.transaction(work)


async def _counts(conn: AsyncConnection, column: Any) -> dict[str, int]:
    return {str(value): int(n) for value, n in (await conn.execute(q.count_by(column))).all()}


def _not_found(clip_id: str) -> NotFoundError:
    return NotFoundError(f"clip {clip_id!r} does not exist", clip_id=clip_id)


def _check_text(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidInputError(f"{field} must be a non-empty string", field=field)


def _check_optional_text(value: Any, field: str) -> None:
    if value is not None and (not isinstance(value, str) or "\x00" in value):
        raise InvalidInputError(f"{field} must be text without NUL characters", field=field)


def _check_int(value: Any, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{field} must be an integer, not {value!r}", field=field)
    if value not in _INT64:
        raise InvalidInputError(f"{field} is out of the 64-bit integer range", field=field)


def _check_score(score: Any) -> None:
    if score is None:
        return
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise InvalidInputError(f"score must be a number, not {score!r}", field="score")
    if not 0 <= score <= 1:
        raise InvalidInputError(f"score must be between 0 and 1, not {score}", field="score")


def _check_status(status: Any) -> None:
    if status not in CLIP_STATUSES:
        raise InvalidInputError(
            f"status must be one of {', '.join(CLIP_STATUSES)}, not {status!r}", field="status"
        )


def _check_tags(tags: Any) -> None:
    if tags is not None and (
        not isinstance(tags, builtins.list)
        or not all(isinstance(t, str) and "\x00" not in t for t in tags)
    ):
        raise InvalidInputError(
            "hashtags must be a list of strings without NUL characters", field="hashtags"
        )
