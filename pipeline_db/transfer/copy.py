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
import time
from concurrent.futures import ProcessPoolExecutor
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
from pipeline_db.transfer.verify import Verifier

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
        states, resumed = await _start(target, settings, plans)
        scheduler = _Scheduler(
            source_config,
            target_config,
            options,
            display,
            workers,
            snapshot=await source.export_snapshot(),
            resumed=resumed,
            skipped=await target.skipped_keys(),
        )
        results = await scheduler.run(await _order(source, plans), states)
        counters = {p.name: p.counter for p in plans if p.counter is not None}
        await target.finish(plans, counters)
        report = MigrationReport(
            source=source.description,
            flavour=source.info.flavour,
            target=target.description,
            tables=[_table_report(p, results[p.name].state) for p in plans],
            checks=[results[p.name].check for p in plans],
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


class _Scheduler:
    """Runs the table jobs: parents before children, several at once."""

    def __init__(
        self,
        source: DatabaseConfig,
        target: DatabaseConfig,
        options: MigrateOptions,
        display: Display,
        workers: ProcessPoolExecutor | None,
        *,
        snapshot: str | None,
        resumed: bool,
        skipped: dict[str, set[str]],
    ) -> None:
        self.source = source
        self.target = target
        self.options = options
        self.display = display
        self.workers = workers
        self.snapshot = snapshot
        self.resumed = resumed
        self.skipped = skipped

    async def run(
        self, plans: list[TablePlan], states: dict[str, TableProgress]
    ) -> dict[str, TableResult]:
        """Run every table's job, in ``plans`` order as slots free up; their results."""
        names = {p.name for p in plans}
        finished = {p.name: asyncio.Event() for p in plans}
        slots = asyncio.Semaphore(self.options.workers or TABLES_AT_ONCE)
        results: dict[str, TableResult] = {}
        relay = ProgressRelay(self.display) if self.workers is not None else None

        async def one(plan: TablePlan) -> None:
            parents = {link.parent for link in plan.parents} & names - {plan.name}
            for parent in parents:
                await finished[parent].wait()
            job = TableJob(
                source=self.source,
                target=self.target,
                plan=plan,
                options=self.options,
                state=states[plan.name],
                skipped={n: self.skipped.get(n, set()) for n in {plan.name, *parents}},
                resumed=self.resumed,
                snapshot=self.snapshot,
            )
            async with slots:
                results[plan.name] = result = await self._run(job)
            self.skipped[plan.name] = result.left_out
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

    async def _run(self, job: TableJob) -> TableResult:
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


async def _start(
    target: Target, settings: dict[str, Any], plans: list[TablePlan]
) -> tuple[dict[str, TableProgress], bool]:
    """Each table's progress, and whether an earlier run had started (a resume)."""
    found, rows, records = await target.start(settings)
    if found is not None and found != settings:
        differing = ", ".join(
            f"{k} {found.get(k)!r} (now {v!r})" for k, v in settings.items() if found.get(k) != v
        )
        raise MigrationError(
            f"the interrupted migration into this target ran with {differing}: resume it "
            "with the same options, or start over with --replace"
        )
    tables = {row[0]: row[1:] for row in rows}
    batches: dict[str, list[Any]] = {}
    for record in records:
        batches.setdefault(record[0], []).append(record[1:])
    states = {
        p.name: TableProgress.read(p.name, tables.get(p.name), batches.get(p.name, []), p.key_kind)
        for p in plans
    }
    return states, found is not None


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
