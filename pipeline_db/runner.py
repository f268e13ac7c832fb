"""Job runners: claim jobs, run their handlers, heartbeat, record outcomes, shut down cleanly.

A :class:`Runner` runs up to ``concurrency`` jobs at once in one process. It
claims in batches, records outcomes in batches, extends the leases of its jobs
by heartbeat (stopping those whose cancellation was requested), requeues jobs
whose runner died (expired leases), and wakes on PostgreSQL NOTIFY or an
in-process signal, polling every ``poll_interval`` seconds in any case so a
lost notification delays a job by at most that.

On :meth:`Runner.stop` (SIGTERM / SIGINT in ``pipeline-db worker``) it stops
claiming, lets running jobs finish within ``shutdown_grace`` seconds, then
cancels the rest and hands them back to the queue without counting the attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import socket
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline_db.backends import Listener
from pipeline_db.database import Database
from pipeline_db.errors import PipelineDBError
from pipeline_db.handlers import FailJob, Handlers, JobContext, RetryLater
from pipeline_db.jobs import CHANNEL, JobQueue, Outcome
from pipeline_db.models import Job

logger = logging.getLogger("pipeline_db.runner")

CONCURRENCY = 4
POLL_INTERVAL_S = 1.0
LEASE_S = 30.0
SHUTDOWN_GRACE_S = 30.0
REAP_INTERVAL_S = 5.0
RETRY_BASE_S = 1.0
RETRY_MAX_S = 300.0
TRACEBACK_LINES = 20


@dataclass(frozen=True)
class RunnerOptions:
    """How a runner runs.

    Attributes:
        concurrency: jobs run at once.
        prefetch: jobs claimed ahead of free slots, so short jobs do not wait
            for a claim round trip (they are leased, and handed back on stop).
        kinds: only these kinds (None: every registered kind).
        poll_interval: seconds between polls when no notification arrives.
        lease: seconds a claimed job stays ours without a heartbeat.
        shutdown_grace: seconds running jobs get to finish on stop.
        reap_interval: seconds between checks for jobs of dead runners.
        settings: application settings handed to handlers.
    """

    concurrency: int = CONCURRENCY
    prefetch: int = 0
    kinds: Sequence[str] | None = None
    poll_interval: float = POLL_INTERVAL_S
    lease: float = LEASE_S
    shutdown_grace: float = SHUTDOWN_GRACE_S
    reap_interval: float = REAP_INTERVAL_S
    settings: Mapping[str, Any] = field(default_factory=dict)


class Runner:
    """Runs jobs from the queue with the registered handlers."""

    def __init__(
        self,
        db: Database,
        handlers: Handlers,
        options: RunnerOptions | None = None,
        *,
        worker_id: str | None = None,
    ) -> None:
        self._db = db
        self._handlers = handlers
        self._options = options or RunnerOptions()
        if self._options.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._queue = JobQueue(db)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._kinds = list(self._options.kinds or handlers.kinds())
        self._active: dict[int, asyncio.Task[None]] = {}
        self._buffer: collections.deque[Job] = collections.deque()
        self._jobs: dict[int, Job] = {}
        self._cancelling: set[int] = set()  # running jobs whose cancellation was requested
        self._outcomes: list[Outcome] = []
        self._outcome_ready = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._wake = db.signals.subscribe(CHANNEL)
        self._listener: Listener | None = None
        #: Jobs this runner finished, by outcome status (for tests and metrics).
        self.finished: dict[str, int] = {}

    @property
    def active(self) -> int:
        """Jobs running now."""
        return len(self._active)

    def stop(self) -> None:
        """Stop claiming and shut down gracefully (see the module docstring)."""
        self._stopping.set()
        self._wake.set()
        self._slot_free.set()  # the claim loop may wait for a free slot: stop waiting

    async def run(self) -> None:
        """Run until :meth:`stop`; on return every claimed job is finished or handed back."""
        logger.info(
            "runner %s: %d slots, kinds %s", self.worker_id, self._options.concurrency, self._kinds
        )
        helpers = [
            asyncio.create_task(self._heartbeat_loop(), name="runner-heartbeat"),
            asyncio.create_task(self._reap_loop(), name="runner-reaper"),
            asyncio.create_task(self._flush_loop(), name="runner-flush"),
        ]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self._flush()
            if self._listener is not None:
                await self._listener.close()
            self._db.signals.unsubscribe(CHANNEL, self._wake)

    async def _claim_loop(self) -> None:
        capacity = self._options.concurrency + self._options.prefetch
        while not self._stopping.is_set():
            wanted = capacity - len(self._active) - len(self._buffer)
            if wanted <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            await self._ensure_listener()
            self._wake.clear()
            try:
                jobs = await self._queue.claim(
                    self.worker_id, kinds=self._kinds, limit=wanted, lease_s=self._options.lease
                )
            except PipelineDBError as error:
                logger.warning("runner %s: claim failed: %s", self.worker_id, error.message)
                jobs = []
            self._buffer.extend(sorted(jobs, key=lambda j: (-j.priority, j.id)))
            self._start_buffered()
            if len(jobs) < wanted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._options.poll_interval)

    def _start_buffered(self) -> None:
        while self._buffer and len(self._active) < self._options.concurrency:
            self._start(self._buffer.popleft())

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
        self._active[job.id] = task
        self._jobs[job.id] = job
        task.add_done_callback(lambda _: self._forget(job.id))

    def _forget(self, job_id: int) -> None:
        self._active.pop(job_id, None)
        self._jobs.pop(job_id, None)
        self._cancelling.discard(job_id)
        if not self._stopping.is_set():
            self._start_buffered()
        self._slot_free.set()

    async def _run_job(self, job: Job) -> None:
        handler = self._handlers.get(job.kind)
        context = JobContext(job, self._db, self._queue, self.worker_id, self._options.settings)
        started = time.perf_counter()
        try:
            if handler is None:
                raise FailJob(f"no handler is registered for job kind {job.kind!r}")
            result = await handler(context)
        except asyncio.CancelledError:
            if self._stopping.is_set() and job.id not in self._cancelling:
                raise  # handed back by _drain
            self._record(Outcome(job, "cancelled", error="cancelled on request"))
            return
        except RetryLater as later:
            delay = max(0.0, (later.at - datetime.now(UTC)).total_seconds())
            await self._requeue(job, delay, later.reason or "retry requested by the handler")
        except FailJob as failure:
            self._record(Outcome(job, "failed", error=str(failure) or "failed by the handler"))
        except Exception as error:
            summary = _traceback(error)
            if job.attempts < job.max_attempts:
                await self._requeue(job, _backoff(job.attempts), _describe(error), summary)
            else:
                self._record(Outcome(job, "failed", error=_describe(error), traceback=summary))
        else:
            self._record(Outcome(job, "succeeded", result=result))
        finally:
            logger.debug("job %d (%s) took %.3fs", job.id, job.kind, time.perf_counter() - started)

    def _record(self, outcome: Outcome) -> None:
        self.finished[outcome.status] = self.finished.get(outcome.status, 0) + 1
        self._outcomes.append(outcome)
        self._outcome_ready.set()

    async def _requeue(
        self, job: Job, delay: float, error: str, summary: str | None = None
    ) -> None:
        self.finished["retried"] = self.finished.get("retried", 0) + 1
        await self._queue.requeue(
            self.worker_id, job.id, delay_s=delay, error=error, traceback=summary
        )

    async def _flush_loop(self) -> None:
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        # Outcomes that piled up while the last batch was written go in one transaction.
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                await self._queue.finish(self.worker_id, batch)
            except asyncio.CancelledError:
                # run() cancels the flush loop at shutdown, maybe mid-write: keep the
                # batch for its last _flush (re-recording a committed one is a no-op).
                self._outcomes[:0] = batch
                raise
            except PipelineDBError as error:
                # The jobs stay running under our lease; if we cannot record them
                # before it expires, the reaper requeues them (at-least-once).
                logger.error("runner %s: recording outcomes failed: %s", self.worker_id, error)
                self._outcomes[:0] = batch
                await asyncio.sleep(self._options.poll_interval)

    async def _heartbeat_loop(self) -> None:
        interval = self._options.lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = [*self._active, *(job.id for job in self._buffer)]
                cancel, lost = await self._queue.heartbeat(
                    self.worker_id, held, lease_s=self._options.lease
                )
            except PipelineDBError as error:
                logger.warning("runner %s: heartbeat failed: %s", self.worker_id, error.message)
                continue
            if cancel | lost:
                self._drop_buffered(cancel, lost)
            self._cancelling |= (cancel - lost) & self._active.keys()
            for job_id in cancel | lost:
                task = self._active.get(job_id)
                if task is not None:
                    if job_id in lost:
                        logger.warning("job %d is no longer ours; stopping it", job_id)
                    task.cancel()

    def _drop_buffered(self, cancel: set[int], lost: set[int]) -> None:
        """Buffered jobs to cancel are finished as cancelled; lost ones are just dropped."""
        for job in [j for j in self._buffer if j.id in cancel | lost]:
            self._buffer.remove(job)
            if job.id in cancel and job.id not in lost:
                self._record(Outcome(job, "cancelled", error="cancelled on request"))

    async def _reap_loop(self) -> None:
        while True:
            try:
                reaped = await self._queue.reap()
            except PipelineDBError as error:
                logger.warning("runner %s: reaping failed: %s", self.worker_id, error.message)
            else:
                for job in reaped:
                    logger.warning("job %d's lease expired: now %s", job.id, job.status)
            await asyncio.sleep(self._options.reap_interval * random.uniform(0.8, 1.2))

    async def _ensure_listener(self) -> None:
        if self._listener is not None and self._listener.alive:
            return
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        try:
            self._listener = await self._db.backend.listen(self._db.config, CHANNEL, self._wake.set)
        except (OSError, TimeoutError, PipelineDBError) as error:
            logger.warning("runner %s: cannot LISTEN (%s); polling", self.worker_id, error)
        except Exception as error:  # asyncpg's own errors: poll, and try again later
            logger.warning("runner %s: cannot LISTEN (%s); polling", self.worker_id, error)

    async def _drain(self) -> None:
        while self._buffer:  # claimed but never started: hand back at once
            job = self._buffer.popleft()
            with contextlib.suppress(PipelineDBError):
                await self._queue.requeue(
                    self.worker_id, job.id, error="handed back at shutdown", count_attempt=False
                )
        if not self._active:
            return
        logger.info(
            "runner %s: stopping; %d jobs get %.0fs to finish",
            self.worker_id,
            len(self._active),
            self._options.shutdown_grace,
        )
        _, pending = await asyncio.wait(
            list(self._active.values()), timeout=self._options.shutdown_grace
        )
        unfinished = [
            job_id
            for job_id, task in self._active.items()
            if task in pending and job_id not in self._cancelling
        ]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self._flush()
        for job_id in unfinished:
            with contextlib.suppress(PipelineDBError):
                await self._queue.requeue(
                    self.worker_id,
                    job_id,
                    error="handed back at shutdown",
                    count_attempt=False,
                )
                self.finished["handed_back"] = self.finished.get("handed_back", 0) + 1


def _backoff(attempts: int) -> float:
    """Seconds before the next attempt: exponential, capped, with full jitter."""
    return random.uniform(0, min(RETRY_MAX_S, RETRY_BASE_S * 2 ** max(0, attempts - 1)))


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _traceback(error: BaseException) -> str:
    lines = traceback.format_exception(error)
    return "".join(lines[-TRACEBACK_LINES:])
