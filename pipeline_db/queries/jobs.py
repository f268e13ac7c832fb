"""Every statement of the job queue and its webhook outbox, in SQLAlchemy Core.

Times come from the database (``utcnow``, ``utc_after``), never from the
runner's clock, so runners on several hosts agree on leases.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    Delete,
    Double,
    Insert,
    Select,
    and_,
    bindparam,
    case,
    delete,
    desc,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import aliased
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate, Update

from pipeline_db.queries import insert_for
from pipeline_db.schema import episodes, jobs, utc_after, utcnow, webhook_deliveries

JOB_COLUMNS = tuple(jobs.c)
FINISHED = ("succeeded", "failed", "cancelled")
CANCELLED_ERROR = "cancelled on request"
LEASE_EXPIRED_ERROR = "the job's lease expired: its runner stopped heartbeating (killed?)"
_j = jobs.c


def insert_job(dialect: str) -> ReturningInsert[Any]:
    """Insert a job unless its idempotency key is taken (then no row is returned)."""
    return (
        insert_for(dialect, jobs)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(*JOB_COLUMNS)
    )


#: The columns :func:`enqueue_notifying` takes as parameters (``run_after`` when scheduled).
ENQUEUED_COLUMNS = (
    "kind",
    "episode_id",
    "params",
    "priority",
    "max_attempts",
    "idempotency_key",
    "webhook_url",
)


@functools.cache
def enqueue_notifying(*, scheduled: bool) -> Select[Any]:
    """:func:`insert_job` and its ``pg_notify`` in ONE statement (writable CTE, PostgreSQL).

    The job is inserted only when its episode (if any) exists and its
    idempotency key is free; the notification goes out with the row, at commit.
    No row: the episode is missing or the key is taken (the caller asks which).
    Parameters: the :data:`ENQUEUED_COLUMNS` (and ``run_after`` when
    ``scheduled``), and ``channel``.
    """
    names = [*ENQUEUED_COLUMNS, *(["run_after"] if scheduled else [])]
    values = [bindparam(name, type_=jobs.c[name].type) for name in names]
    episode = values[names.index("episode_id")]
    source = select(*values).where(or_(episode.is_(None), exists().where(episodes.c.id == episode)))
    inserted = (
        postgresql.insert(jobs)
        .from_select(names, source)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(*JOB_COLUMNS)
        .cte("inserted")
    )
    notified = func.pg_notify(bindparam("channel"), inserted.c.kind).label("notified")
    return select(*inserted.c, notified)


def insert_jobs() -> Insert:
    """Insert many jobs (executemany)."""
    return insert(jobs)


def by_id(job_id: int) -> Select[Any]:
    """The job with this id."""
    return select(*JOB_COLUMNS).where(_j.id == job_id)


def by_key(key: str) -> Select[Any]:
    """The job with this idempotency key."""
    return select(*JOB_COLUMNS).where(_j.idempotency_key == key)


def page(
    *,
    statuses: list[str] | None,
    kind: str | None,
    episode_id: str | None,
    before: int | None,
    limit: int,
) -> Select[Any]:
    """Jobs newest first (keyset on id), filtered."""
    query = select(*JOB_COLUMNS)
    if statuses:
        query = query.where(_j.status.in_(statuses))
    if kind is not None:
        query = query.where(_j.kind == kind)
    if episode_id is not None:
        query = query.where(_j.episode_id == episode_id)
    if before is not None:
        query = query.where(_j.id < before)
    return query.order_by(desc(_j.id)).limit(limit)


@functools.cache
def claim(dialect: str, *, by_kind: bool) -> ReturningUpdate[Any]:
    """Take up to :p_limit runnable jobs for :p_worker_id, best priority then oldest first.

    Runnable: queued, due, and the first queued job of its episode with no job
    of that episode running (per-episode exclusivity, in order). On PostgreSQL
    the candidates are locked ``FOR UPDATE SKIP LOCKED`` so concurrent claimers
    never wait on each other; SQLite has no row locks (SQLAlchemy would silently
    drop the clause) and relies on ``BEGIN IMMEDIATE`` serialising writers.
    """
    other = aliased(jobs, name="other")
    candidates = select(_j.id).where(
        _j.status == "queued",
        _j.run_after <= utcnow(),
        or_(
            _j.episode_id.is_(None),
            ~exists().where(
                other.c.episode_id == _j.episode_id,
                or_(
                    other.c.status == "running",
                    and_(
                        other.c.status == "queued",
                        or_(
                            other.c.priority > _j.priority,
                            and_(other.c.priority == _j.priority, other.c.id < _j.id),
                        ),
                    ),
                ),
            ),
        ),
    )
    if by_kind:
        candidates = candidates.where(_j.kind.in_(bindparam("p_kinds", expanding=True)))
    candidates = candidates.order_by(desc(_j.priority), _j.id).limit(bindparam("p_limit"))
    if dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    now = utcnow()
    return (
        update(jobs)
        .where(_j.id.in_(candidates.scalar_subquery()))
        .values(
            status="running",
            worker_id=bindparam("p_worker_id"),
            attempts=_j.attempts + 1,
            lease_expires_at=utc_after(bindparam("p_lease", type_=Double())),
            cancel_requested=False,
            started_at=now,
            updated_at=now,
        )
        .returning(*JOB_COLUMNS)
    )


@functools.cache
def heartbeat() -> ReturningUpdate[Any]:
    """Extend the leases of :p_ids held by :p_worker_id; returns (id, cancel_requested)."""
    return (
        update(jobs)
        .where(
            _j.id.in_(bindparam("p_ids", expanding=True)),
            _j.worker_id == bindparam("p_worker_id"),
            _j.status == "running",
        )
        .values(
            lease_expires_at=utc_after(bindparam("p_lease", type_=Double())), updated_at=utcnow()
        )
        .returning(_j.id, _j.cancel_requested)
    )


@functools.cache
def progress() -> Update:
    """Record :p_percent, :p_stage and :p_message on a running job of :p_worker_id."""
    return (
        update(jobs)
        .where(
            _j.id == bindparam("p_job_id"),
            _j.worker_id == bindparam("p_worker_id"),
            _j.status == "running",
        )
        .values(
            progress_percent=bindparam("p_percent"),
            progress_stage=bindparam("p_stage"),
            progress_message=bindparam("p_message"),
            updated_at=utcnow(),
        )
    )


@functools.cache
def finish() -> Update:
    """Finish a running job of :p_worker_id as :p_status with :p_result / :p_error (executemany)."""
    now = utcnow()
    return (
        update(jobs)
        .where(
            _j.id == bindparam("p_job_id"),
            _j.worker_id == bindparam("p_worker_id"),
            _j.status == "running",
        )
        .values(
            status=bindparam("p_status"),
            result=bindparam("p_result", type_=jobs.c.result.type),
            error=bindparam("p_error"),
            error_traceback=bindparam("p_error_traceback"),
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
    )


@functools.cache
def requeue() -> ReturningUpdate[Any]:
    """Put a running job of :p_worker_id back in the queue, due in :p_delay seconds.

    :p_uncount (0 or 1) takes back the attempt that the claim counted (a job
    handed back unfinished at shutdown did not really try). A job whose
    cancellation was requested is cancelled instead: the next claim would
    clear the request and run it again.
    """
    now = utcnow()
    cancel = _j.cancel_requested
    return (
        update(jobs)
        .where(
            _j.id == bindparam("p_job_id"),
            _j.worker_id == bindparam("p_worker_id"),
            _j.status == "running",
        )
        .values(
            status=case((cancel, "cancelled"), else_="queued"),
            worker_id=None,
            lease_expires_at=None,
            attempts=_j.attempts - bindparam("p_uncount"),
            run_after=utc_after(bindparam("p_delay", type_=Double())),
            error=case((cancel, CANCELLED_ERROR), else_=bindparam("p_error")),
            error_traceback=bindparam("p_error_traceback"),
            finished_at=case((cancel, now), else_=None),
            updated_at=now,
        )
        .returning(*JOB_COLUMNS)
    )


def reap_expired() -> ReturningUpdate[Any]:
    """Jobs whose lease ran out go back to the queue, or fail when out of attempts.

    A job whose cancellation was requested is cancelled instead (see :func:`requeue`).
    """
    now = utcnow()
    cancel = _j.cancel_requested
    exhausted = _j.attempts >= _j.max_attempts
    return (
        update(jobs)
        .where(_j.status == "running", _j.lease_expires_at < now)
        .values(
            status=case((cancel, "cancelled"), (exhausted, "failed"), else_="queued"),
            worker_id=None,
            lease_expires_at=None,
            error=case((cancel, CANCELLED_ERROR), else_=LEASE_EXPIRED_ERROR),
            finished_at=case((or_(cancel, exhausted), now), else_=None),
            run_after=now,
            updated_at=now,
        )
        .returning(*JOB_COLUMNS)
    )


def cancel_queued(job_id: int) -> ReturningUpdate[Any]:
    """Cancel a queued job at once."""
    now = utcnow()
    return (
        update(jobs)
        .where(_j.id == job_id, _j.status == "queued")
        .values(status="cancelled", finished_at=now, updated_at=now)
        .returning(*JOB_COLUMNS)
    )


def request_cancel(job_id: int) -> ReturningUpdate[Any]:
    """Ask the runner of a running job to stop it at its next heartbeat."""
    return (
        update(jobs)
        .where(_j.id == job_id, _j.status == "running")
        .values(cancel_requested=True, updated_at=utcnow())
        .returning(*JOB_COLUMNS)
    )


def retry(job_id: int) -> ReturningUpdate[Any]:
    """Queue a failed or cancelled job again, with its attempts reset."""
    now = utcnow()
    return (
        update(jobs)
        .where(_j.id == job_id, _j.status.in_(("failed", "cancelled")))
        .values(
            status="queued",
            attempts=0,
            run_after=now,
            cancel_requested=False,
            worker_id=None,
            finished_at=None,
            updated_at=now,
        )
        .returning(*JOB_COLUMNS)
    )


def count_by_status_kind() -> Select[Any]:
    """(status, kind, count) over all jobs."""
    return select(_j.status, _j.kind, func.count()).group_by(_j.status, _j.kind)


def oldest_queued() -> Select[Any]:
    """The creation time of the oldest queued job."""
    return select(func.min(_j.created_at)).where(_j.status == "queued")


def prune(before: Any) -> Delete:
    """Delete finished jobs that finished before ``before``."""
    return delete(jobs).where(_j.status.in_(FINISHED), _j.finished_at < before)


def insert_deliveries() -> Insert:
    """Queue webhook deliveries (executemany)."""
    return insert(webhook_deliveries)


@functools.cache
def running_count() -> Select[Any]:
    """How many jobs are running."""
    return select(func.count()).where(_j.status == "running")
