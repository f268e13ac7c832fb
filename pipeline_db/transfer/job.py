"""One table's copy and verification, self-contained: in a worker process or in this one.

A :class:`TableJob` carries all the copy of a table, or of one key range of
a large table, needs (both configurations, the table's plan, the range's
progress, the keys of rows left out so far); the job opens its own
connections, copies the range in batches and verifies it, returning a
:class:`TableResult`. What concerns the whole table (setting indexes aside
and building them back) is the migrating process's (:mod:`.copy`).

Within a job, a reader streams the table's rows in key order and converts
them where they are read (the SQLite reader's thread), while
``target.writers`` writers load earlier batches at once: at most
:data:`QUEUE_DEPTH` converted batches per writer wait between them, so
memory does not grow with the database. Each batch commits with its record
(:mod:`pipeline_db.transfer.progress`), so ``--resume`` continues exactly
where the commits stopped. A lost target connection (a restart) is retried
from the records that committed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline_db.config import DatabaseConfig
from pipeline_db.errors import TransientError
from pipeline_db.transfer._zone import resolve_zone
from pipeline_db.transfer.display import Display
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.options import MigrateOptions
from pipeline_db.transfer.policy import RowConverter
from pipeline_db.transfer.progress import BatchRecord, TableProgress
from pipeline_db.transfer.source import BatchSizer, Source, open_source
from pipeline_db.transfer.target import Batch, Target, open_target
from pipeline_db.transfer.verify import Digests, Verifier

#: Converted batches waiting per writer of a table, at most.
QUEUE_DEPTH = 1
#: Attempts at a table when the target connection is lost, and the pause between them.
RECONNECT_ATTEMPTS = 5
RECONNECT_DELAY_S = 2.0
_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class TableJob:
    """Everything one table's copy needs (picklable, for a worker process).

    Attributes:
        source: where to read.
        target: where to write (its schema ready, the migration lock held elsewhere).
        plan: the table.
        options: the migration's options.
        state: the table's progress so far.
        skipped: keys of rows left out so far, of this table and its parents.
        resumed: whether an earlier run started the migration (the source is
            then read again for the verification).
        snapshot: a PostgreSQL source's exported snapshot, so every job reads
            the same moment.
        lower: the range's lower bound, excluded (None: the table's start).
        upper: the range's upper bound, included (None: the table's end).
    """

    source: DatabaseConfig
    target: DatabaseConfig
    plan: TablePlan
    options: MigrateOptions
    state: TableProgress
    skipped: dict[str, set[str]] = field(default_factory=dict)
    resumed: bool = False
    snapshot: str | None = None
    lower: Any = None
    upper: Any = None


@dataclass(frozen=True, slots=True)
class TableResult:
    """What a table's job did.

    Attributes:
        state: the range's progress at the end (every row copied).
        digests: its verification's counts and hash sums, both sides.
        left_out: keys of its rows left out (its children leave theirs out).
        check_seconds: time the verification took.
    """

    state: TableProgress
    digests: Digests
    left_out: set[str]
    check_seconds: float = 0.0


async def run_table(job: TableJob, display: Display) -> TableResult:
    """Copy and verify one table on connections of its own."""
    source = await open_source(job.source, snapshot=job.snapshot)
    target = open_target(job.target, locking=False)
    try:
        await target.reconnect()
        copier = _TableCopier(job, source, target, display)
        state = await copier.copy()
        verifier = Verifier(
            source,
            target,
            job.options.on_error,
            copier.zone,
            copier.skipped,
            job.options.batch_size,
            display,
        )
        started = time.perf_counter()
        known = None if job.resumed else copier.digest
        digests = await verifier.digests(job.plan, known, lower=job.lower, upper=job.upper)
        left_out = copier.skipped.get(job.plan.name, set())
        return TableResult(state, digests, left_out, time.perf_counter() - started)
    finally:
        await source.close()
        await target.close()


class _TableCopier:
    def __init__(self, job: TableJob, source: Source, target: Target, display: Display) -> None:
        self.job = job
        self.plan = job.plan
        self.source = source
        self.target = target
        self.display = display
        self.zone = resolve_zone(job.options.source_timezone)
        self.skipped = {name: set(keys) for name, keys in job.skipped.items()}
        #: The source digest from the rows read, when the whole table was copied here.
        self.digest: tuple[int, int] | None = None

    async def copy(self) -> TableProgress:
        """Copy the table to the end, from where its progress says it stopped."""
        state = self.job.state
        started = time.perf_counter()
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            try:
                state = await self._copy(state)
                break
            except TransientError as error:
                self.digest = None  # batches will be read twice: read the source again
                if attempt == RECONNECT_ATTEMPTS:
                    raise
                self.display.log(
                    f"{self.plan.name}: {error.message}; reconnecting to the target "
                    f"(attempt {attempt + 1} of {RECONNECT_ATTEMPTS})"
                )
                await asyncio.sleep(RECONNECT_DELAY_S * attempt)
                await self.target.reconnect()
                state = await self._committed()
        return replace(state, seconds=time.perf_counter() - started)

    async def _committed(self) -> TableProgress:
        """The table's progress as the target's records tell it."""
        _, rows, records = await self.target.start({})
        table = next((row[1:] for row in rows if row[0] == self.plan.name), None)
        batches = [r[1:] for r in records if r[0] == self.plan.name]
        left_out = await self.target.skipped_keys()
        self.skipped[self.plan.name] = left_out.get(self.plan.name, set())
        return TableProgress.read(
            self.plan.name,
            table,
            batches,
            self.plan.key_kind,
            lower=self.job.lower,
            upper=self.job.upper,
        )

    async def _copy(self, state: TableProgress) -> TableProgress:
        if state.done:
            return state
        plan = self.plan
        fresh = not state.started
        converter = RowConverter(
            plan,
            source=self.source.dialect,
            target=self.target.dialect,
            on_error=self.job.options.on_error,
            zone=self.zone,
            flagged=True,
            duplicates=await self.source.duplicates(plan),
            skipped=self.skipped,
            after=state.last_key,
            committed=state.committed if state.beyond else None,
        )
        if fresh and self.job.lower is None:  # the first range reports NULL keys
            nulls = await self.source.null_keys(plan)
            if nulls:
                state = state.added(await self._write(converter.null_keys(nulls)))
        writers = self.target.writers
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(QUEUE_DEPTH * writers)
        sizer = BatchSizer(self.job.options.batch_size)
        digest = [0, 0]
        refused = False

        async def read() -> None:
            scan = self.source.scan(
                plan, converter, after=state.last_key, upper=self.job.upper, sizer=sizer
            )
            async for batch in scan:
                await queue.put(batch)
            for _ in range(writers):
                await queue.put(None)

        async def write() -> None:
            nonlocal state, refused
            while (batch := await queue.get()) is not None:
                record = await self._write(batch)
                state = state.added(record)  # after the await: the writers take turns
                digest[0] += batch.digest[0]
                digest[1] += batch.digest[1]
                # Rows the target refused were counted: the source is read again.
                refused = refused or batch.refused > 0

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                for _ in range(writers):
                    group.create_task(write())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        if fresh and not refused:
            self.digest = (digest[0], digest[1] & _MASK)
        return state

    async def _write(self, batch: Batch) -> BatchRecord:
        record = await self.target.write(self.plan, batch, self.job.options.on_error)
        batch.refused = record.skipped - batch.skipped
        for issue in batch.issues:
            if issue.action == "skipped" and issue.key is not None:
                self.skipped.setdefault(self.plan.name, set()).add(issue.key)
        self.display.advance(self.plan.name, batch.read)
        return record
