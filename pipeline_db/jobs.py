"""The durable job queue: jobs survive restarts, crashed work is resumed, nothing runs twice.

:class:`JobQueue` is what producers (the HTTP server, the CLI) use: enqueue,
read, list, cancel, retry, stats, prune. The runner side (claim, heartbeat,
finish, hand back, reap) lives in :class:`JobQueue` too and is used by
:class:`pipeline_db.runner.Runner`.

No transaction is held open while a job runs: a claim commits, the handler
works, then the result is recorded in a second short transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from pipeline_db import _json
from pipeline_db.database import Database
from pipeline_db.errors import ConflictError, InvalidInputError, NotFoundError
from pipeline_db.models import Enqueued, Job, JobStats, Page
from pipeline_db.queries import episodes as eq
from pipeline_db.queries import jobs as q
from pipeline_db.schema import JOB_STATUSES

CHANNEL = "pipeline_db_jobs"
#: In-process signal: some job finished (waiters re-read their job).
FINISHED_CHANNEL = "pipeline_db_jobs_finished"
MAX_ATTEMPTS = 3
LEASE_S = 30.0
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
WEBHOOK_TTL = timedelta(hours=24)


class JobQueue:
    """The job queue of a :class:`~pipeline_db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- producers -------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        *,
        episode_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        priority: int = 0,
        run_after: datetime | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
    ) -> Enqueued:
        """Queue a job; the same ``idempotency_key`` returns the same job, never a second.

        Args:
            kind: which handler runs it.
            episode_id: the episode it works on; jobs of one episode never run at once.
            params: JSON parameters for the handler.
            priority: higher runs first.
            run_after: not before this time (timezone-aware).
            max_attempts: attempts before it fails for good.
            idempotency_key: deduplicates submissions (n8n's retries).
            webhook_url: POSTed the job's final state when it completes or fails.

        Raises:
            InvalidInputError: a bad field (named); NotFoundError: no such episode.
        """
        values = self._values(
            kind,
            episode_id,
            params,
            priority,
            run_after,
            max_attempts,
            idempotency_key,
            webhook_url,
        )
        dialect = self._db.dialect
        # Where the backend has writable CTEs, the checks, the insert and the
        # notification are one statement committing on its own: one round trip
        # instead of five (BEGIN, episode check, INSERT, pg_notify, COMMIT).
        one_statement = self._db.backend.writable_ctes

        def work(conn: Connection) -> Enqueued:
            if one_statement:
                statement = q.enqueue_notifying(scheduled="run_after" in values)
                row = conn.execute(statement, {**values, "channel": CHANNEL}).mappings().first()
            else:
                if episode_id is not None and conn.execute(eq.exists(episode_id)).first() is None:
                    raise NotFoundError.episode(episode_id)
                row = conn.execute(q.insert_job(dialect), values).mappings().first()
            if row is None:
                existing = None
                if idempotency_key is not None:
                    existing = conn.execute(q.by_key(idempotency_key)).mappings().first()
                if existing is None:  # the key was free: the episode was missing
                    raise NotFoundError.episode(str(episode_id))
                return Enqueued(job=Job.model_validate(existing), created=False)
            if not one_statement:
                self._db.backend.notify(conn, CHANNEL, kind)
            return Enqueued(job=Job.model_validate(row), created=True)

        result = await self._db.run_sync(work, autocommit=one_statement)
        if result.created:
            self._db.signals.notify(CHANNEL)
        return result

    async def enqueue_many(self, kind: str, params: Sequence[Mapping[str, Any]]) -> int:
        """Queue many jobs of one kind at once (no idempotency keys); returns how many."""
        rows = [self._values(kind, None, p, 0, None, MAX_ATTEMPTS, None, None) for p in params]
        if not rows:
            return 0

        def work(conn: Connection) -> int:
            conn.execute(q.insert_jobs(), rows)
            self._db.backend.notify(conn, CHANNEL, kind)
            return len(rows)

        count = await self._db.run_sync(work, idempotent=False)
        self._db.signals.notify(CHANNEL)
        return count

    async def get(self, job_id: int) -> Job:
        """The job with this id.

        Raises:
            NotFoundError: no such job.
        """

        def work(conn: Connection) -> Job:
            return _one(conn, job_id)

        return await self._db.run_sync(work, readonly=True)

    async def list(
        self,
        *,
        statuses: builtins.list[str] | None = None,
        kind: str | None = None,
        episode_id: str | None = None,
        cursor: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> Page[Job]:
        """Jobs newest first, filtered; pass ``next_cursor`` back for the next page."""
        for status in statuses or []:
            if status not in JOB_STATUSES:
                raise InvalidInputError(
                    f"status must be one of {', '.join(JOB_STATUSES)}, not {status!r}",
                    field="status",
                )
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
        before = _decode_cursor(cursor) if cursor else None
        query = q.page(
            statuses=statuses, kind=kind, episode_id=episode_id, before=before, limit=limit + 1
        )

        def work(conn: Connection) -> builtins.list[Job]:
            return [Job.model_validate(row) for row in conn.execute(query).mappings()]

        found = await self._db.run_sync(work, readonly=True)
        items = found[:limit]
        more = len(found) > limit
        return Page(items=items, next_cursor=str(items[-1].id) if more else None)

    async def cancel(self, job_id: int) -> Job:
        """Cancel a job: a queued one at once, a running one at its next heartbeat.

        Raises:
            NotFoundError: no such job.
            ConflictError: the job already succeeded or failed.
        """

        def work(conn: Connection) -> Job:
            row = conn.execute(q.cancel_queued(job_id)).mappings().first()
            row = row or conn.execute(q.request_cancel(job_id)).mappings().first()
            if row is not None:
                return Job.model_validate(row)
            job = _one(conn, job_id)
            if job.status == "cancelled":
                return job
            raise ConflictError(f"job {job_id} already {job.status}", job_id=job_id)

        return await self._db.run_sync(work)

    async def retry(self, job_id: int) -> Job:
        """Queue a failed or cancelled job again, with its attempts reset.

        Raises:
            NotFoundError: no such job.
            ConflictError: the job is queued, running or succeeded.
        """

        def work(conn: Connection) -> Job:
            row = conn.execute(q.retry(job_id)).mappings().first()
            if row is not None:
                return Job.model_validate(row)
            job = _one(conn, job_id)
            raise ConflictError(
                f"job {job_id} is {job.status}: only failed or cancelled jobs can be retried",
                job_id=job_id,
            )

        job = await self._db.run_sync(work)
        self._db.signals.notify(CHANNEL)
        return job

    async def stats(self) -> JobStats:
        """Counts by status and by kind, and the age of the oldest queued job."""

        def work(conn: Connection) -> JobStats:
            by_status = dict.fromkeys(JOB_STATUSES, 0)
            by_kind: dict[str, dict[str, int]] = {}
            for status, kind, n in conn.execute(q.count_by_status_kind()):
                by_status[status] = by_status.get(status, 0) + n
                by_kind.setdefault(kind, {})[status] = n
            oldest = conn.execute(q.oldest_queued()).scalar()
            age = None
            if oldest is not None:
                age = max(0.0, (datetime.now(UTC) - _aware(oldest)).total_seconds())
            return JobStats(by_status=by_status, by_kind=by_kind, oldest_queued_age_seconds=age)

        return await self._db.run_sync(work, readonly=True)

    async def prune(self, *, older_than_days: float) -> int:
        """Delete jobs that finished over ``older_than_days`` ago; returns how many."""
        if older_than_days < 0:
            raise InvalidInputError("older_than_days must be >= 0", field="older_than_days")
        before = datetime.now(UTC) - timedelta(days=older_than_days)

        def work(conn: Connection) -> int:
            return int(conn.execute(q.prune(before)).rowcount)

        return await self._db.run_sync(work)

    # -- runners ---------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        *,
        kinds: Sequence[str] | None = None,
        limit: int = 1,
        lease_s: float = LEASE_S,
    ) -> builtins.list[Job]:
        """Take up to ``limit`` runnable jobs, each leased to ``worker_id`` for ``lease_s``."""
        statement = q.claim(self._db.dialect, by_kind=bool(kinds))
        params: dict[str, Any] = {"p_worker_id": worker_id, "p_limit": limit, "p_lease": lease_s}
        if kinds:
            params["p_kinds"] = builtins.list(kinds)

        def work(conn: Connection) -> builtins.list[Job]:
            return [Job.model_validate(row) for row in conn.execute(statement, params).mappings()]

        # One statement: on PostgreSQL it runs without BEGIN/COMMIT (one round
        # trip). Retrying after a lost connection may leave jobs claimed by us
        # that we never saw; their lease expires and they are requeued.
        return await self._db.run_sync(work, autocommit=True)

    async def heartbeat(
        self, worker_id: str, job_ids: Iterable[int], *, lease_s: float = LEASE_S
    ) -> tuple[set[int], set[int]]:
        """Extend the leases of ``job_ids``; returns (ids to cancel, ids no longer ours)."""
        ids = builtins.list(job_ids)
        if not ids:
            return set(), set()
        params = {"p_ids": ids, "p_worker_id": worker_id, "p_lease": lease_s}

        def work(conn: Connection) -> builtins.list[Any]:
            return builtins.list(conn.execute(q.heartbeat(), params).all())

        rows = await self._db.run_sync(work)
        held = {row[0] for row in rows}
        cancel = {row[0] for row in rows if row[1]}
        return cancel, set(ids) - held

    async def progress(
        self,
        worker_id: str,
        job_id: int,
        *,
        percent: float | None = None,
        stage: str | None = None,
        message: str | None = None,
    ) -> None:
        """Record a running job's progress."""
        if percent is not None and not 0 <= percent <= 100:
            raise InvalidInputError("percent must be between 0 and 100", field="percent")
        params = {
            "p_job_id": job_id,
            "p_worker_id": worker_id,
            "p_percent": percent,
            "p_stage": stage,
            "p_message": message,
        }
        await self._db.run_sync(lambda conn: conn.execute(q.progress(), params))

    async def finish(self, worker_id: str, outcomes: Sequence[Outcome]) -> None:
        """Record finished jobs in one transaction, with their webhook deliveries."""
        if not outcomes:
            return
        rows = [o.row(worker_id) for o in outcomes]
        deliveries = [o.delivery() for o in outcomes if o.job.webhook_url]

        def work(conn: Connection) -> None:
            conn.execute(q.finish(), rows)
            if deliveries:
                conn.execute(q.insert_deliveries(), deliveries)

        # Re-running is harmless: the guard status='running' makes it a no-op.
        await self._db.run_sync(work)
        self._db.signals.notify(FINISHED_CHANNEL)

    async def requeue(
        self,
        worker_id: str,
        job_id: int,
        *,
        delay_s: float = 0.0,
        error: str | None = None,
        traceback: str | None = None,
        count_attempt: bool = True,
    ) -> None:
        """Put a running job back in the queue, due in ``delay_s`` seconds.

        A job whose cancellation was requested is cancelled instead.
        """
        params = {
            "p_job_id": job_id,
            "p_worker_id": worker_id,
            "p_delay": delay_s,
            "p_error": error,
            "p_error_traceback": traceback,
            "p_uncount": 0 if count_attempt else 1,
        }

        def work(conn: Connection) -> None:
            row = conn.execute(q.requeue(), params).mappings().first()
            job = Job.model_validate(row) if row is not None else None
            if job is not None and job.status == "cancelled" and job.webhook_url:
                outcome = Outcome(job, "cancelled", error=job.error)
                conn.execute(q.insert_deliveries(), [outcome.delivery()])

        await self._db.run_sync(work)
        if delay_s <= 0:
            self._db.signals.notify(CHANNEL)

    async def reap(self) -> builtins.list[Job]:
        """Requeue (or fail when out of attempts, or cancel on request) jobs whose lease expired."""

        def work(conn: Connection) -> builtins.list[Job]:
            reaped = [Job.model_validate(row) for row in conn.execute(q.reap_expired()).mappings()]
            deliveries = [
                Outcome(job, job.status, error=job.error).delivery()
                for job in reaped
                if job.status != "queued" and job.webhook_url
            ]
            if deliveries:
                conn.execute(q.insert_deliveries(), deliveries)
            return reaped

        reaped = await self._db.run_sync(work)
        if any(job.status == "queued" for job in reaped):
            self._db.signals.notify(CHANNEL)
        return reaped

    def _values(
        self,
        kind: str,
        episode_id: str | None,
        params: Mapping[str, Any] | None,
        priority: int,
        run_after: datetime | None,
        max_attempts: int,
        idempotency_key: str | None,
        webhook_url: str | None,
    ) -> dict[str, Any]:
        if not isinstance(kind, str) or not kind.strip():
            raise InvalidInputError("kind must be a non-empty string", field="kind")
        if params is not None and not isinstance(params, Mapping):
            raise InvalidInputError("params must be a JSON object", field="params")
        document = dict(params or {})
        try:
            _json.dumps(document)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(
                f"params is not JSON-serialisable: {error}", field="params"
            ) from None
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidInputError("priority must be an integer", field="priority")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInputError("max_attempts must be an integer >= 1", field="max_attempts")
        if run_after is not None and run_after.tzinfo is None:
            raise InvalidInputError("run_after must carry a timezone", field="run_after")
        if webhook_url is not None and not webhook_url.startswith(("http://", "https://")):
            raise InvalidInputError("webhook_url must be an http(s) URL", field="webhook_url")
        values: dict[str, Any] = {
            "kind": kind,
            "episode_id": episode_id,
            "params": document,
            "priority": priority,
            "max_attempts": max_attempts,
            "idempotency_key": idempotency_key,
            "webhook_url": webhook_url,
        }
        if run_after is not None:
            values["run_after"] = run_after
        return values


class Outcome:
    """How a job ended, as a runner reports it to :meth:`JobQueue.finish`."""

    def __init__(
        self,
        job: Job,
        status: str,
        *,
        result: Any = None,
        error: str | None = None,
        traceback: str | None = None,
    ) -> None:
        self.job = job
        self.status = status
        self.result = result
        self.error = error
        self.traceback = traceback

    def row(self, worker_id: str) -> dict[str, Any]:
        """The parameters of :func:`pipeline_db.queries.jobs.finish`."""
        return {
            "p_job_id": self.job.id,
            "p_worker_id": worker_id,
            "p_status": self.status,
            "p_result": self.result,
            "p_error": self.error,
            "p_error_traceback": self.traceback,
        }

    def delivery(self) -> dict[str, Any]:
        """The webhook outbox row announcing this outcome."""
        now = datetime.now(UTC)
        return {
            "job_id": self.job.id,
            "url": self.job.webhook_url,
            "payload": {
                "job_id": self.job.id,
                "kind": self.job.kind,
                "episode_id": self.job.episode_id,
                "status": self.status,
                "result": self.result,
                "error": self.error,
                "attempts": self.job.attempts,
                "finished_at": now.isoformat(),
            },
            "expires_at": now + WEBHOOK_TTL,
        }


def _one(conn: Connection, job_id: int) -> Job:
    row = conn.execute(q.by_id(job_id)).mappings().first()
    if row is None:
        raise NotFoundError(f"job {job_id} does not exist", job_id=job_id)
    return Job.model_validate(row)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _decode_cursor(cursor: str) -> int:
    try:
        return int(cursor)
    except ValueError:
        raise InvalidInputError("cursor is not one this API returned", field="cursor") from None
