"""The job queue's tables and the HTTP service's: jobs, webhook deliveries, idempotency keys.

Named ``queue``, not ``jobs``: a submodule ``pipeline_db.schema.jobs`` would share
its name with the ``jobs`` table the package re-exports.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Table,
    Text,
    false,
    text,
)

from pipeline_db.schema._base import metadata
from pipeline_db.schema._columns import _created_at, _episode_fk, _in
from pipeline_db.schema.types import IdentityKey, JSONType, UTCDateTime, utcnow

#: Job states: queued -> running -> succeeded | failed | cancelled (a retry re-queues).
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
WEBHOOK_STATUSES = ("pending", "delivered", "expired")

jobs = Table(
    "jobs",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("episode_id", Text, _episode_fk()),
    Column("params", JSONType, nullable=False, server_default=text("'{}'")),
    Column("status", Text, nullable=False, server_default=JOB_STATUSES[0]),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("run_after", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("3")),
    Column("idempotency_key", Text, unique=True),
    Column("worker_id", Text),
    Column("lease_expires_at", UTCDateTime()),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("progress_percent", Double),
    Column("progress_stage", Text),
    Column("progress_message", Text),
    Column("result", JSONType),
    Column("error", Text),
    Column("error_traceback", Text),
    Column("webhook_url", Text),
    _created_at(),
    Column("updated_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    CheckConstraint(_in("status", JOB_STATUSES), name="status"),
    CheckConstraint("max_attempts >= 1", name="max_attempts"),
    CheckConstraint("attempts >= 0", name="attempts"),
    # Per-episode exclusivity: at most one running job per episode, enforced here.
    Index(
        "uq_jobs_running_episode",
        "episode_id",
        unique=True,
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(
        "ix_jobs_lease",
        "lease_expires_at",
        postgresql_where=text("status = 'running'"),
        sqlite_where=text("status = 'running'"),
    ),
    Index(None, "status", "kind"),
    Index(None, "episode_id"),
    Index(None, "finished_at"),
    sqlite_autoincrement=True,
)

# The claim order (priority first, then age), over queued jobs only.
Index(
    "ix_jobs_claim",
    jobs.c.priority.desc(),
    jobs.c.id,
    postgresql_where=jobs.c.status == "queued",
    sqlite_where=jobs.c.status == "queued",
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", IdentityKey, Identity(), primary_key=True),
    Column("job_id", IdentityKey, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("status", Text, nullable=False, server_default=WEBHOOK_STATUSES[0]),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime(), nullable=False, server_default=utcnow()),
    Column("last_error", Text),
    Column("expires_at", UTCDateTime(), nullable=False),
    _created_at(),
    Column("delivered_at", UTCDateTime()),
    CheckConstraint(_in("status", WEBHOOK_STATUSES), name="status"),
    Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    sqlite_autoincrement=True,
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True),
    #: A hash of what the request asked (method, path, body): a reused key must match.
    Column("fingerprint", Text, nullable=False),
    #: NULL while the first request is still being answered.
    Column("status_code", Integer),
    Column("response_body", Text),
    Column("content_type", Text),
    Column("headers", JSONType),
    _created_at(),
    Index(None, "created_at"),
)
