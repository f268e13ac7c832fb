"""Periodic jobs: each interval's job is enqueued exactly once, however many runners run.

Every runner process runs a :class:`Scheduler`; each one, at every interval
boundary, enqueues the job with the idempotency key ``schedule:<kind>:<n>``
where ``n`` numbers the interval since the epoch. The queue's key dedupe lets
the first enqueue win and turns the others into no-ops, with no coordination
between runners beyond the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline_db.database import Database
from pipeline_db.errors import PipelineDBError
from pipeline_db.jobs import JobQueue

logger = logging.getLogger("pipeline_db.schedule")


@dataclass(frozen=True)
class Periodic:
    """A job kind to enqueue every ``interval`` seconds."""

    kind: str
    interval: float
    params: Mapping[str, Any] = field(default_factory=dict)

    def key(self, now: float) -> str:
        """The idempotency key of the interval that holds ``now`` (epoch seconds)."""
        return f"schedule:{self.kind}:{int(now // self.interval)}"


class Scheduler:
    """Enqueues periodic jobs at their interval boundaries until :meth:`stop`."""

    def __init__(self, db: Database, schedules: Sequence[Periodic]) -> None:
        for schedule in schedules:
            if schedule.interval <= 0:
                raise ValueError(f"{schedule.kind}: interval must be > 0")
        self._queue = JobQueue(db)
        self._schedules = list(schedules)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop at the next wake-up."""
        self._stopping.set()

    async def tick(self, now: float | None = None) -> list[int]:
        """Enqueue the current interval's job of every schedule; returns the new job ids."""
        moment = time.time() if now is None else now
        created = []
        for schedule in self._schedules:
            try:
                enqueued = await self._queue.enqueue(
                    schedule.kind,
                    params=dict(schedule.params),
                    idempotency_key=schedule.key(moment),
                )
            except PipelineDBError as error:
                logger.warning("could not schedule %s: %s", schedule.kind, error.message)
                continue
            if enqueued.created:
                created.append(enqueued.job.id)
        return created

    async def run(self) -> None:
        """Tick at every interval boundary until stopped."""
        if not self._schedules:
            return
        while not self._stopping.is_set():
            await self.tick()
            now = time.time()
            wait = min(s.interval - (now % s.interval) for s in self._schedules)
            try:
                await asyncio.wait_for(self._stopping.wait(), wait + 0.01)
            except TimeoutError:
                continue
