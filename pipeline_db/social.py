"""Social-media packaging jobs of episodes, and the backup log."""

from __future__ import annotations

import builtins
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import _json
from pipeline_db.database import Database
from pipeline_db.errors import ConflictError, InvalidInputError, NotFoundError
from pipeline_db.models import BackupRecord, SocialJob
from pipeline_db.queries import episodes as eq
from pipeline_db.queries import social as q

SOCIAL_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FINISHED = frozenset({"completed", "failed"})
LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
#: BIGINT's range: larger integers cannot be stored by either backend.
_INT64 = range(-(2**63), 2**63)
_UNSET: Any = object()


class SocialJobs:
    """Create, update, read, list and delete social jobs."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        *,
        episode_id: str,
        platforms: builtins.list[str],
        job_id: str | None = None,
        metadata: Any = None,
    ) -> SocialJob:
        """Create a pending social job for an episode.

        Creating a job with a ``job_id`` that exists with the same episode,
        platforms and metadata returns that job (a retry is safe).

        Raises:
            NotFoundError: no such episode.
            InvalidInputError: platforms is not a non-empty list of strings, a bad
                job id, or metadata that is not JSON (naming the field).
            ConflictError: a job with this id exists with other values.
        """
        if (
            not isinstance(platforms, builtins.list)
            or not platforms
            or not all(isinstance(p, str) and p and "\x00" not in p for p in platforms)
        ):
            raise InvalidInputError(
                "platforms must be a non-empty list of strings", field="platforms"
            )
        if job_id is not None:
            _check_text(job_id, "job_id")
        _check_json(metadata, "metadata")
        values = {
            "job_id": job_id or uuid.uuid4().hex,
            "episode_id": episode_id,
            "platforms": platforms,
            "status": "pending",
            "progress": 0.0,
            "metadata": metadata,
        }

        async def work(conn: AsyncConnection) -> SocialJob:
            if (await conn.execute(eq.exists(episode_id))).first() is None:
                raise NotFoundError.episode(episode_id)
            existing = (await conn.execute(q.job(values["job_id"]))).mappings().first()
            if existing is not None:  # a retry after a COMMIT that landed, or a clash
                job = SocialJob.model_validate(existing)
                if (job.episode_id, job.platforms, job.metadata) != (
                    episode_id,
                    platforms,
                    _json.loads(_json.dumps(metadata)),
                ):
                    raise ConflictError(
                        f"social job {job.job_id!r} exists with other values", field="job_id"
                    )
                return job
            return SocialJob.model_validate(
                (await conn.execute(q.insert_job(values))).mappings().one()
            )

        return await self._db.transaction(work)

    async def update(
        self,
        job_id: str,
        *,
        status: str | None = None,
        progress: float | None = None,
        packages_generated: Any = _UNSET,
        errors: Any = _UNSET,
        warnings: Any = _UNSET,
    ) -> SocialJob:
        """Update a job; ``completed_at`` is set when it completes or fails.

        Raises:
            NotFoundError: no such job.
            InvalidInputError: an unknown status, a progress outside [0, 100].
        """
        values: dict[str, Any] = {}
        if status is not None:
            if status not in SOCIAL_STATUSES:
                raise InvalidInputError(
                    f"status must be one of {', '.join(SOCIAL_STATUSES)}, not {status!r}",
                    field="status",
                )
            values["status"] = status
            values["completed_at"] = datetime.now(UTC) if status in FINISHED else None
        if progress is not None:
            if (
                isinstance(progress, bool)
                or not isinstance(progress, int | float)
                or not (math.isfinite(progress) and 0 <= progress <= 100)
            ):
                raise InvalidInputError("progress must be between 0 and 100", field="progress")
            values["progress"] = float(progress)
        for name, value in (
            ("packages_generated", packages_generated),
            ("errors", errors),
            ("warnings", warnings),
        ):
            if value is not _UNSET:
                _check_json(value, name)
                values[name] = value

        async def work(conn: AsyncConnection) -> SocialJob:
            if not values:
                row = (await conn.execute(q.job(job_id))).mappings().first()
            else:
                row = (await conn.execute(q.set_job(job_id, values))).mappings().first()
            if row is None:
                raise _not_found(job_id)
            return SocialJob.model_validate(row)

        return await self._db.transaction(work)

    async def get(self, job_id: str) -> SocialJob:
        """The job with this id.

        Raises:
            NotFoundError: no such job.
        """
        async with self._db.read() as conn:
            row = (await conn.execute(q.job(job_id))).mappings().first()
        if row is None:
            raise _not_found(job_id)
        return SocialJob.model_validate(row)

    async def list(
        self, *, episode_id: str | None = None, status: str | None = None, limit: int = LIST_LIMIT
    ) -> builtins.list[SocialJob]:
        """Jobs, newest first, optionally of one episode and/or status.

        Raises:
            InvalidInputError: a limit outside 1..1000.
        """
        _check_limit(limit)
        async with self._db.read() as conn:
            rows = (await conn.execute(q.jobs(episode_id, status, limit))).mappings().all()
        return [SocialJob.model_validate(row) for row in rows]

    async def delete(self, job_id: str) -> None:
        """Delete a job.

        Raises:
            NotFoundError: no such job.
        """
        deleted = False
        async for attempt in self._db.retrying():
            async with attempt as conn:
                deleted = (await conn.execute(q.remove_job(job_id))).first() is not None or deleted
        if not deleted:
            raise _not_found(job_id)

    async def stats(self) -> dict[str, int]:
        """Jobs per status."""
        async with self._db.read() as conn:
            counts = {status: n for status, n in (await conn.execute(q.jobs_by_status())).all()}
        return {status: int(counts.get(status, 0)) for status in SOCIAL_STATUSES} | {
            str(k): int(v) for k, v in counts.items() if k not in SOCIAL_STATUSES
        }


class BackupLog:
    """The record of backups taken and restored."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, path: str, *, size: int | None, checksum: str | None) -> BackupRecord:
        """Record a backup file with its size in bytes and checksum.

        Raises:
            InvalidInputError: an empty path, a negative size, a checksum that is
                not text (naming the record's field).
        """
        _check_text(path, "backup_path")
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or size < 0 or size not in _INT64
        ):
            raise InvalidInputError("size must be a number of bytes", field="backup_size")
        if checksum is not None:
            _check_text(checksum, "checksum")
        values = {"backup_path": path, "backup_size": size, "checksum": checksum}

        async def work(conn: AsyncConnection) -> BackupRecord:
            return BackupRecord.model_validate(
                (await conn.execute(q.insert_backup(values))).mappings().one()
            )

        return await self._db.transaction(work, idempotent=False)

    async def mark_restored(self, backup_id: int) -> BackupRecord:
        """Mark a backup as restored now.

        Raises:
            NotFoundError: no such backup.
            InvalidInputError: the id is not an integer.
        """
        if isinstance(backup_id, bool) or not isinstance(backup_id, int) or backup_id not in _INT64:
            raise InvalidInputError("a backup id is an integer", field="backup_id")

        async def work(conn: AsyncConnection) -> BackupRecord:
            row = (
                (await conn.execute(q.mark_restored(backup_id, datetime.now(UTC))))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(f"backup {backup_id} does not exist", backup_id=backup_id)
            return BackupRecord.model_validate(row)

        return await self._db.transaction(work)

    async def list(self, *, limit: int = LIST_LIMIT) -> builtins.list[BackupRecord]:
        """Backups, newest first.

        Raises:
            InvalidInputError: a limit outside 1..1000.
        """
        _check_limit(limit)
        async with self._db.read() as conn:
            rows = (await conn.execute(q.backups(limit))).mappings().all()
        return [BackupRecord.model_validate(row) for row in rows]

    async def delete(self, backup_ids: builtins.list[int]) -> int:
        """Delete backup_log rows (not their files); returns how many."""

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(q.remove_backups(backup_ids))).rowcount)

        return await self._db.transaction(work)


def _not_found(job_id: str) -> NotFoundError:
    return NotFoundError(f"social job {job_id!r} does not exist", job_id=job_id)


def _check_text(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidInputError(f"{field} must be a non-empty string", field=field)


def _check_limit(limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")


def _check_json(value: Any, field: str) -> None:
    try:
        _json.dumps(value)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"{field} is not JSON-serialisable: {error}", field=field) from None
    if _has_nul(value):  # PostgreSQL's jsonb cannot hold U+0000
        raise InvalidInputError(f"{field} must not contain NUL characters", field=field)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, builtins.list | tuple):
        return any(_has_nul(item) for item in value)
    return False
