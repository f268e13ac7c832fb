"""Every statement of the webhook outbox (``webhook_deliveries``), in SQLAlchemy Core.

Rows are written by :meth:`pipeline_db.jobs.JobQueue.finish` (see
:func:`pipeline_db.queries.jobs.insert_deliveries`); these statements are the
deliverer's. Times come from the database (``utcnow``, ``utc_after``), never
from a deliverer's clock, so deliverers on several hosts agree on leases.

A claim pushes ``next_attempt_at`` forward by a lease and returns the new
value: it is the claim's token. Recording a failure or releasing a claim
compares it (compare-and-set), so a deliverer whose lease ran out cannot
reschedule a row another deliverer has claimed since.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Double, Select, bindparam, case, select, update
from sqlalchemy.sql.dml import ReturningUpdate, Update

from pipeline_db.schema import UTCDateTime, utc_after, utcnow, webhook_deliveries

_w = webhook_deliveries.c
CLAIMED_COLUMNS = (_w.id, _w.job_id, _w.url, _w.payload, _w.attempts, _w.next_attempt_at)


@functools.cache
def claim(dialect: str) -> ReturningUpdate[Any]:
    """Lease up to :p_limit due, unexpired pending deliveries for :p_lease seconds, oldest first.

    On PostgreSQL the candidates are locked ``FOR UPDATE SKIP LOCKED`` so
    concurrent deliverers never wait on each other nor take the same row;
    SQLite has no row locks (SQLAlchemy would silently drop the clause) and
    relies on ``BEGIN IMMEDIATE`` serialising writers.
    """
    now = utcnow()
    candidates = (
        select(_w.id)
        .where(_w.status == "pending", _w.next_attempt_at <= now, _w.expires_at > now)
        .order_by(_w.next_attempt_at, _w.id)
        .limit(bindparam("p_limit"))
    )
    if dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    return (
        update(webhook_deliveries)
        .where(_w.id.in_(candidates.scalar_subquery()))
        .values(next_attempt_at=utc_after(bindparam("p_lease", type_=Double())))
        .returning(*CLAIMED_COLUMNS)
    )


@functools.cache
def expire(dialect: str) -> ReturningUpdate[Any]:
    """Expire the pending deliveries past ``expires_at`` that no deliverer holds; returns ids.

    On PostgreSQL rows another deliverer is claiming are skipped, not waited
    for (the next pass expires them), so concurrent deliverers never deadlock here.
    """
    now = utcnow()
    due = select(_w.id).where(
        _w.status == "pending", _w.expires_at <= now, _w.next_attempt_at <= now
    )
    if dialect == "postgresql":
        due = due.with_for_update(skip_locked=True)
    return (
        update(webhook_deliveries)
        .where(_w.id.in_(due.scalar_subquery()))
        .values(
            status="expired",
            last_error=case(
                (_w.last_error.is_(None), "expired before any delivery was attempted"),
                else_=_w.last_error,
            ),
        )
        .returning(_w.id)
    )


@functools.cache
def delivered() -> Update:
    """Mark delivery :p_id delivered (its receiver answered 2xx), counting the attempt."""
    return (
        update(webhook_deliveries)
        .where(_w.id == bindparam("p_id"), _w.status == "pending")
        .values(
            status="delivered",
            attempts=_w.attempts + 1,
            last_error=None,
            delivered_at=utcnow(),
        )
    )


@functools.cache
def failed() -> Update:
    """Record a failed attempt of claim (:p_id, :p_claim): retry in :p_delay s, or expire.

    The delivery expires now when its next attempt would fall past ``expires_at``.
    """
    retry_at = utc_after(bindparam("p_delay", type_=Double()))
    return (
        update(webhook_deliveries)
        .where(
            _w.id == bindparam("p_id"),
            _w.status == "pending",
            _w.next_attempt_at == bindparam("p_claim", type_=UTCDateTime()),
        )
        .values(
            status=case((_w.expires_at <= retry_at, "expired"), else_="pending"),
            attempts=_w.attempts + 1,
            last_error=bindparam("p_error"),
            next_attempt_at=retry_at,
        )
    )


@functools.cache
def release() -> Update:
    """Give back claim (:p_id, :p_claim) unattempted: due again at once (shutdown)."""
    return (
        update(webhook_deliveries)
        .where(
            _w.id == bindparam("p_id"),
            _w.status == "pending",
            _w.next_attempt_at == bindparam("p_claim", type_=UTCDateTime()),
        )
        .values(next_attempt_at=utcnow())
    )


def by_job(job_id: int) -> Select[Any]:
    """The deliveries of one job, oldest first."""
    return select(webhook_deliveries).where(_w.job_id == job_id).order_by(_w.id)
