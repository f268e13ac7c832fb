"""The migration: plan, prepare the target, copy the tables in parallel, verify, report.

This module runs in the migrating process: it discovers the source, makes
the target's schema (Alembic) and holds the migration lock, has the tables
copied (:mod:`.schedule`: one job per table or key range of a large table,
up to :data:`~pipeline_db.transfer.options.WORKERS` at once in worker
processes), moves the identity sequences past the source's counters, and
writes the report. Each job copies and verifies its rows on connections of
its own; a PostgreSQL source's jobs all read the snapshot this process
exported, while a SQLite file is read by each job in a snapshot of its own
(stop the pipeline's writers while it migrates).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from pipeline_db.config import DatabaseConfig
from pipeline_db.transfer._workers import start_workers, stop_workers
from pipeline_db.transfer._zone import resolve_zone
from pipeline_db.transfer.display import Display, display_for
from pipeline_db.transfer.errors import MigrationError, TargetNotEmptyError, VerificationError
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.options import MigrateOptions
from pipeline_db.transfer.plan import MigrationPlan, discover
from pipeline_db.transfer.progress import TableProgress
from pipeline_db.transfer.report import MigrationReport, TableReport, write_report
from pipeline_db.transfer.schedule import Scheduler, order, parents_first, start
from pipeline_db.transfer.source import open_source
from pipeline_db.transfer.target import Target, TargetState, open_target
from pipeline_db.transfer.verify import Verifier, check_of


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
        progress = await start(target, settings)
        scheduler = Scheduler(
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
        ordered = await order(source, plans, parents_first=parents_first(options, target))
        results = await scheduler.run(ordered)
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
    except BaseException:
        if workers is not None:
            stop_workers(workers, failed=True)
            workers = None
        raise
    finally:
        display.close()
        await source.close()
        await target.close()
        if workers is not None:
            stop_workers(workers, failed=False)
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
