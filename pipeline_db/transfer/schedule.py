"""Running the table jobs: parents before children, several at once, large tables in ranges.

The scheduler works in the migrating process. It reads where an interrupted
migration stopped (:func:`start`), orders the tables (:func:`order`: the most
bytes to move first, after their parents when those must finish first),
splits large tables into key ranges, sets each table's indexes aside before
its jobs and builds them back after the last, and runs the jobs (:mod:`.job`)
in the worker processes, or in this process where there are none, as slots
free up, a free slot going to the earliest table in that order.

Under ``--on-error abort`` no row is ever left out (the first bad one stops
the migration), so a child table's rows never depend on which of its
parent's rows were copied: on PostgreSQL, which sets foreign keys aside
during a load, its jobs start at once, and only its foreign keys, built back
after its load, wait for the parents' rows. Under skip and repair (and into
SQLite, whose foreign keys stay on), a child waits for its parents, whose
left-out keys make its rows orphans.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from pipeline_db.config import DatabaseConfig
from pipeline_db.transfer._workers import ProgressRelay, run_in_worker
from pipeline_db.transfer.display import Display
from pipeline_db.transfer.errors import MigrationError, RowRejectedError
from pipeline_db.transfer.job import TableJob, TableResult, run_table
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.options import MigrateOptions
from pipeline_db.transfer.progress import TableProgress
from pipeline_db.transfer.source import Source
from pipeline_db.transfer.target import Target

#: Jobs run at once when no worker process can be forked (in this process).
TABLES_AT_ONCE = 3


@dataclass(frozen=True, slots=True)
class Progress:
    """What the target's progress records say at the start of a run."""

    resumed: bool
    tables: dict[str, Any]
    batches: dict[str, list[Any]]

    def of(self, plan: TablePlan, lower: Any = None, upper: Any = None) -> TableProgress:
        """A table's progress, or its key range's."""
        return TableProgress.read(
            plan.name,
            self.tables.get(plan.name),
            self.batches.get(plan.name, []),
            plan.key_kind,
            lower=lower,
            upper=upper,
        )


class Scheduler:
    """Runs the jobs: parents before children, several at once, large tables in ranges.

    The table-wide work is done here, on the migration's own target: setting
    indexes aside before a table's jobs, building them back after the last.
    """

    def __init__(
        self,
        source: Source,
        target: Target,
        source_config: DatabaseConfig,
        target_config: DatabaseConfig,
        options: MigrateOptions,
        display: Display,
        workers: ProcessPoolExecutor | None,
        progress: Progress,
        *,
        snapshot: str | None,
        skipped: dict[str, set[str]],
    ) -> None:
        self.source = source
        self.target = target
        self.source_config = source_config
        self.target_config = target_config
        self.options = options
        self.display = display
        self.workers = workers
        self.progress = progress
        self.snapshot = snapshot
        self.skipped = skipped
        self.slots = _Slots(options.workers or TABLES_AT_ONCE)
        self.finished: dict[str, asyncio.Event] = {}

    async def run(self, plans: list[TablePlan]) -> dict[str, TableResult]:
        """Run every table's jobs, in ``plans`` order as slots free up; their results."""
        names = {p.name for p in plans}
        self.finished = {p.name: asyncio.Event() for p in plans}
        results: dict[str, TableResult] = {}
        relay = ProgressRelay(self.display) if self.workers is not None else None

        async def one(rank: int, plan: TablePlan) -> None:
            parents = {link.parent for link in plan.parents} & names - {plan.name}
            if parents_first(self.options, self.target):
                await self._parents(parents)
            try:
                results[plan.name] = await self._table(plan, parents, rank)
            except RowRejectedError:
                # Report a parent's bad row first, as a copy in foreign-key order
                # would: the parents' own failure cancels this wait.
                await self._parents(parents)
                raise
            self.finished[plan.name].set()

        try:
            async with asyncio.TaskGroup() as group:
                for rank, plan in enumerate(plans):
                    group.create_task(one(rank, plan))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            if relay is not None:
                relay.stop()
        return results

    async def _parents(self, parents: set[str]) -> None:
        """Wait until the parent tables are done (their rows all in, keys rebuilt)."""
        for parent in parents:
            await self.finished[parent].wait()

    async def _table(self, plan: TablePlan, parents: set[str], rank: int) -> TableResult:
        started = time.perf_counter()
        state = self.progress.of(plan)
        if not state.done:
            if not state.started and not state.splits:
                state = replace(state, splits=await self._splits(plan))
            state = await self.target.start_table(plan, state)
        self.display.start(plan.name, plan.rows, state.copied + state.skipped)
        bounds = list(zip((None, *state.splits), (*state.splits, None), strict=True))
        skipped = {n: self.skipped.get(n, set()) for n in {plan.name, *parents}}
        jobs = [
            TableJob(
                source=self.source_config,
                target=self.target_config,
                plan=plan,
                options=self.options,
                state=self.progress.of(plan, lower, upper),
                skipped=skipped,
                resumed=self.progress.resumed,
                snapshot=self.snapshot,
                lower=lower,
                upper=upper,
            )
            for lower, upper in bounds
        ]
        parts = await asyncio.gather(*(self._run(job, rank) for job in jobs))
        whole = parts[0]
        for part in parts[1:]:
            whole = TableResult(
                whole.state.merged(part.state),
                whole.digests + part.digests,
                whole.left_out | part.left_out,
                whole.check_seconds + part.check_seconds,
            )
        table_state = replace(
            whole.state, splits=state.splits, deferred=state.deferred, done=state.done
        )
        if not table_state.done:
            await self._parents(parents)  # its foreign keys need their rows
            table_state = await self.target.finish_table(plan, table_state)
        self.skipped[plan.name] = whole.left_out
        self.display.finish(plan.name)
        seconds = time.perf_counter() - started
        return replace(whole, state=replace(table_state, seconds=seconds))

    async def _splits(self, plan: TablePlan) -> tuple[Any, ...]:
        """Keys splitting a large table into ranges of about ``split_rows`` rows each."""
        if self.options.split_rows < 1:
            return ()
        concurrency = self.options.workers or TABLES_AT_ONCE
        parts = min(concurrency, math.ceil(plan.rows / self.options.split_rows))
        if parts < 2:
            return ()
        keys = [await self.source.key_at(plan, plan.rows * i // parts) for i in range(1, parts)]
        return tuple(sorted({k for k in keys if k is not None}))

    async def _run(self, job: TableJob, rank: int) -> TableResult:
        async with self.slots.hold(rank):
            if self.workers is None:
                return await run_table(job, self.display)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.workers, run_in_worker, job)


def parents_first(options: MigrateOptions, target: Target) -> bool:
    """Whether a child table's copy must wait for its parents' to end.

    Under abort no row is ever left out, so on a target that sets foreign keys
    aside while a table loads, children need their parents' rows only when
    their keys are built back.
    """
    return options.on_error != "abort" or not target.keys_set_aside


class _Slots:
    """Up to ``size`` jobs at once; a slot that frees up goes to the waiting job of lowest rank.

    The jobs of every table ask for slots as soon as their table is set up,
    in no particular order: ranking them keeps the largest tables first.
    """

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    @asynccontextmanager
    async def hold(self, rank: int) -> AsyncIterator[None]:
        """Hold a slot for the body."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self.waiting, (rank, next(self.arrivals), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed a slot just as it was cancelled
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            _, _, turn = heapq.heappop(self.waiting)
            if not turn.done():  # not cancelled while waiting
                turn.set_result(None)
                return
        self.free += 1


async def order(source: Source, plans: list[TablePlan], *, parents_first: bool) -> list[TablePlan]:
    """The tables with the most bytes to move first, after their parents if ``parents_first``."""
    levels: dict[str, int] = {}
    for plan in plans:  # sorted_tables order: parents come first
        parents = [levels.get(link.parent, -1) for link in plan.parents if link.parent != plan.name]
        levels[plan.name] = 1 + max(parents, default=-1) if parents_first else 0
    sizes = {p.name: p.rows * (await source.row_width(p) if p.rows else 0) for p in plans}
    return sorted(plans, key=lambda p: (levels[p.name], -sizes[p.name]))


async def start(target: Target, settings: dict[str, Any]) -> Progress:
    """The progress records of the target (and whether an earlier run had started)."""
    found, rows, records = await target.start(settings)
    if found is not None and found != settings:
        differing = ", ".join(
            f"{k} {found.get(k)!r} (now {v!r})" for k, v in settings.items() if found.get(k) != v
        )
        raise MigrationError(
            f"the interrupted migration into this target ran with {differing}: resume it "
            "with the same options, or start over with --replace"
        )
    batches: dict[str, list[Any]] = {}
    for record in records:
        batches.setdefault(record[0], []).append(record[1:])
    return Progress(found is not None, {row[0]: row[1:] for row in rows}, batches)
