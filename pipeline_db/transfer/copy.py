"""The migration: plan, prepare the target, copy the tables in parallel, verify, report.

This module runs in the migrating process: it discovers the source, makes
the target's schema (Alembic) and holds the migration lock, then runs one
job per table (:mod:`pipeline_db.transfer.job`), parents before children,
up to :data:`~pipeline_db.transfer.options.WORKERS` at once in worker
processes, the widest tables first. Each job copies and verifies its table
on connections of its own; a PostgreSQL source's jobs all read the snapshot
this process exported, a SQLite file is read by each job in a snapshot of
its own (stop the pipeline's writers while it migrates).
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_db.config import DatabaseConfig
from pipeline_db.transfer._workers import ProgressRelay, run_in_worker, start_workers
from pipeline_db.transfer._zone import resolve_zone
from pipeline_db.transfer.display import Display, display_for
from pipeline_db.transfer.errors import MigrationError, TargetNotEmptyError, VerificationError
from pipeline_db.transfer.job import TableJob, TableResult, run_table
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.options import MigrateOptions
from pipeline_db.transfer.plan import MigrationPlan, discover
from pipeline_db.transfer.progress import TableProgress
from pipeline_db.transfer.report import MigrationReport, TableReport, write_report
from pipeline_db.transfer.source import Source, open_source
from pipeline_db.transfer.target import Target, TargetState, open_target
from pipeline_db.transfer.verify import Verifier, check_of

#: Tables copied at once when no worker process can be forked (in this process).
TABLES_AT_ONCE = 3


async def plan(
    source_config: DatabaseConfig, target_config: DatabaseConfig, options: MigrateOptions
) -> MigrationPlan:
    """The plan of a migration, changing nothing (``--dry-run``)."""
    _check_pair(source_config, target_config)
    zone = resolve_zone(options.source_timezone)
    source = await open_source(source_config)
    target = open_target(target_config)
    try:
        tables, notes, not_copied = await discover(source, options.on_error)
        return MigrationPlan(
            source=source.description,
            flavour=source.info.flavour,
            target=target.description,
            target_state=await target.inspect(),
            tables=tables,
            notes=notes,
            not_copied=not_copied,
            zone=str(zone),
            source_dialect=source.dialect,
            target_dialect=target.dialect,
        )
    finally:
        await source.close()
        await target.close()


async def migrate(
    source_config: DatabaseConfig,
    target_config: DatabaseConfig,
    options: MigrateOptions | None = None,
    *,
    display: Display | None = None,
) -> MigrationReport:
    """Copy every table from source to target, verify, and report.

    Args:
        source_config: where to read (never written).
        target_config: where to write; its schema is made by Alembic.
        options: see :class:`MigrateOptions`.
        display: progress output (default: bars on a terminal, log lines otherwise).

    Returns:
        The report (also written to ``options.report``).

    Raises:
        TargetNotEmptyError: the target holds data and neither resume nor replace was given.
        RowRejectedError: a row cannot be copied and ``on_error`` is abort.
        VerificationError: the target differs from the source (carries the report).
        PipelineDBError: anything else, translated.
    """
    options = options or MigrateOptions()
    _check_pair(source_config, target_config)
    started = time.perf_counter()
    zone = resolve_zone(options.source_timezone)
    display = display or display_for()
    workers = start_workers(options.workers)  # forked before anything is open
    source = await open_source(source_config)
    target = open_target(target_config)
    try:
        plans, notes, not_copied = await discover(source, options.on_error)
        _check_target(await target.inspect(), options, target)
        await target.prepare()
        if options.replace:
            await target.empty()
        settings = {
            "source": source.description,
            "on_error": options.on_error,
            "source_timezone": str(zone),
        }
        progress = await _start(target, settings)
        scheduler = _Scheduler(
            source,
            target,
            source_config,
            target_config,
            options,
            display,
            workers,
            progress,
            snapshot=await source.export_snapshot(),
            skipped=await target.skipped_keys(),
        )
        results = await scheduler.run(await _order(source, plans))
        counters = {p.name: p.counter for p in plans if p.counter is not None}
        await target.finish(plans, counters)
        report = MigrationReport(
            source=source.description,
            flavour=source.info.flavour,
            target=target.description,
            tables=[_table_report(p, results[p.name].state) for p in plans],
            checks=[check_of(p.name, results[p.name].digests) for p in plans],
            notes=notes,
            not_copied=not_copied,
            verify_seconds=sum(results[p.name].check_seconds for p in plans),
        )
        report.report_file = options.report or _default_report_path()
        report.seconds = time.perf_counter() - started
        report.issues = await write_report(report.report_file, report, target.issues())
        await target.complete()
    finally:
        display.close()
        await source.close()
        await target.close()
        if workers is not None:
            workers.shutdown(cancel_futures=True)
    if not report.verified:
        raise VerificationError(
            "verification failed: " + "; ".join(c.describe() for c in report.checks if not c.ok),
            report=report,
        )
    return report


async def verify_only(
    source_config: DatabaseConfig,
    target_config: DatabaseConfig,
    options: MigrateOptions | None = None,
    *,
    display: Display | None = None,
) -> MigrationReport:
    """Verify an existing pair (``--verify-only``), with the copy's ``on_error``.

    Raises:
        VerificationError: they differ (carries the report).
    """
    options = options or MigrateOptions()
    started = time.perf_counter()
    zone = resolve_zone(options.source_timezone)
    display = display or display_for()
    source = await open_source(source_config)
    target = open_target(target_config)
    try:
        plans, notes, not_copied = await discover(source, "skip")
        state = await target.inspect()
        if not state.exists or state.revision is None:
            raise MigrationError(f"{target.description} holds no pipeline-db schema to verify")
        await target.reconnect()
        verifier = Verifier(source, target, options.on_error, zone, {}, options.batch_size, display)
        checks = await verifier.tables(plans)
    finally:
        display.close()
        await source.close()
        await target.close()
    report = MigrationReport(
        source=source.description,
        flavour=source.info.flavour,
        target=target.description,
        tables=[TableReport(p.name, p.rows) for p in plans],
        checks=checks,
        notes=notes,
        not_copied=not_copied,
    )
    report.seconds = report.verify_seconds = time.perf_counter() - started
    if not report.verified:
        raise VerificationError(
            "verification failed: " + "; ".join(c.describe() for c in report.checks if not c.ok),
            report=report,
        )
    return report


@dataclass(frozen=True, slots=True)
class _Progress:
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


class _Scheduler:
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
        progress: _Progress,
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
        self.slots = asyncio.Semaphore(options.workers or TABLES_AT_ONCE)

    async def run(self, plans: list[TablePlan]) -> dict[str, TableResult]:
        """Run every table's jobs, in ``plans`` order as slots free up; their results."""
        names = {p.name for p in plans}
        finished = {p.name: asyncio.Event() for p in plans}
        results: dict[str, TableResult] = {}
        relay = ProgressRelay(self.display) if self.workers is not None else None

        async def one(plan: TablePlan) -> None:
            parents = {link.parent for link in plan.parents} & names - {plan.name}
            for parent in parents:
                await finished[parent].wait()
            results[plan.name] = await self._table(plan, parents)
            finished[plan.name].set()

        try:
            async with asyncio.TaskGroup() as group:
                for plan in plans:
                    group.create_task(one(plan))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            if relay is not None:
                relay.stop()
        return results

    async def _table(self, plan: TablePlan, parents: set[str]) -> TableResult:
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
        parts = await asyncio.gather(*(self._run(job) for job in jobs))
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

    async def _run(self, job: TableJob) -> TableResult:
        async with self.slots:
            if self.workers is None:
                return await run_table(job, self.display)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.workers, run_in_worker, job)


async def _order(source: Source, plans: list[TablePlan]) -> list[TablePlan]:
    """Parents first, then the tables with the most bytes to move."""
    levels: dict[str, int] = {}
    for plan in plans:  # sorted_tables order: parents come first
        parents = [levels.get(link.parent, -1) for link in plan.parents if link.parent != plan.name]
        levels[plan.name] = 1 + max(parents, default=-1)
    sizes = {p.name: p.rows * (await source.row_width(p) if p.rows else 0) for p in plans}
    return sorted(plans, key=lambda p: (levels[p.name], -sizes[p.name]))


async def _start(target: Target, settings: dict[str, Any]) -> _Progress:
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
    return _Progress(found is not None, {row[0]: row[1:] for row in rows}, batches)


def _check_pair(source: DatabaseConfig, target: DatabaseConfig) -> None:
    if source.describe() == target.describe():
        raise MigrationError(
            f"the source and the target are the same database ({source.describe()})"
        )


def _check_target(state: TargetState, options: MigrateOptions, target: Target) -> None:
    if options.replace:
        return
    if state.in_progress and not options.resume:
        raise TargetNotEmptyError(
            f"{target.description} holds an interrupted migration: rerun with --resume "
            "to finish it, or --replace to start over"
        )
    if state.filled and not state.in_progress:
        raise TargetNotEmptyError(
            f"{target.description} is not empty (rows in {', '.join(state.filled)}): "
            "--replace deletes them first"
            + ("; --resume only continues an interrupted migration" if options.resume else "")
        )


def _table_report(plan: TablePlan, state: TableProgress) -> TableReport:
    return TableReport(
        name=plan.name,
        source_rows=plan.rows,
        copied=state.copied,
        skipped=state.skipped,
        repaired=state.repaired,
        seconds=state.seconds,
        conversions=state.conversions,
        defaulted=plan.defaulted,
    )


def _default_report_path() -> Path:
    return Path(f"pipeline-db-migrate-{datetime.now():%Y%m%d-%H%M%S}.json")
