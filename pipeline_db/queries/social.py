"""Every statement of social jobs and the backup log, in SQLAlchemy Core."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Delete, Select, delete, desc, func, insert, select, update
from sqlalchemy.sql.dml import ReturningDelete, ReturningInsert, ReturningUpdate

from pipeline_db.schema import backup_log, social_jobs, utcnow

JOB_COLUMNS = tuple(social_jobs.c)
BACKUP_COLUMNS = tuple(backup_log.c)


def insert_job(values: dict[str, Any]) -> ReturningInsert[Any]:
    """Insert one social job."""
    return insert(social_jobs).values(**values).returning(*JOB_COLUMNS)


def job(job_id: str) -> Select[Any]:
    """The social job with this id."""
    return select(*JOB_COLUMNS).where(social_jobs.c.job_id == job_id)


def jobs(episode_id: str | None, status: str | None, limit: int) -> Select[Any]:
    """Social jobs, newest first, optionally of one episode and/or status."""
    query = select(*JOB_COLUMNS)
    if episode_id is not None:
        query = query.where(social_jobs.c.episode_id == episode_id)
    if status is not None:
        query = query.where(social_jobs.c.status == status)
    return query.order_by(desc(social_jobs.c.created_at), social_jobs.c.job_id).limit(limit)


def set_job(job_id: str, values: dict[str, Any]) -> ReturningUpdate[Any]:
    """Update the given columns of a social job, and its ``updated_at``.

    ``updated_at`` is set here, not left to the trigger: SQLite's trigger runs
    after the update, so RETURNING would report the old value.
    """
    return (
        update(social_jobs)
        .where(social_jobs.c.job_id == job_id)
        .values({"updated_at": utcnow(), **values})
        .returning(*JOB_COLUMNS)
    )


def remove_job(job_id: str) -> ReturningDelete[Any]:
    """Delete a social job."""
    return delete(social_jobs).where(social_jobs.c.job_id == job_id).returning(social_jobs.c.job_id)


def jobs_by_status() -> Select[Any]:
    """(status, count) of social jobs."""
    return select(social_jobs.c.status, func.count()).group_by(social_jobs.c.status)


def insert_backup(values: dict[str, Any]) -> ReturningInsert[Any]:
    """Record a backup."""
    return insert(backup_log).values(**values).returning(*BACKUP_COLUMNS)


def mark_restored(backup_id: int, when: Any) -> ReturningUpdate[Any]:
    """Set a backup's restored_at."""
    return (
        update(backup_log)
        .where(backup_log.c.id == backup_id)
        .values(restored_at=when)
        .returning(*BACKUP_COLUMNS)
    )


def backups(limit: int) -> Select[Any]:
    """Backups, newest first."""
    return (
        select(*BACKUP_COLUMNS)
        .order_by(desc(backup_log.c.created_at), desc(backup_log.c.id))
        .limit(limit)
    )


def remove_backups(backup_ids: list[int]) -> Delete:
    """Delete backup_log rows."""
    return delete(backup_log).where(backup_log.c.id.in_(backup_ids))
