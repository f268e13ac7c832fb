"""The copy: every table in foreign-key order, streamed in batches, then verified.

Per table, a reader streams rows in key order and converts them where they
are read (the SQLite reader's thread), while the writer loads the previous
batch: at most :data:`QUEUE_DEPTH` converted batches wait between them, so
memory does not grow with the database. Each batch commits with the
table's progress, so ``--resume`` continues after the last key that
committed. A lost target connection (a restart) is retried from there.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_db.config import DatabaseConfig
from pipeline_db.errors import TransientError
from pipeline_db.transfer._zone import resolve_zone
from pipeline_db.transfer.display import Display, display_for
from pipeline_db.transfer.errors import MigrationError, TargetNotEmptyError, VerificationError
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.options import MigrateOptions
from pipeline_db.transfer.plan import MigrationPlan, discover
from pipeline_db.transfer.policy import RowConverter
from pipeline_db.transfer.progress import TableProgress
from pipeline_db.transfer.report import MigrationReport, TableCheck, TableReport, write_report
from pipeline_db.transfer.source import BatchSizer, Source, open_source
from pipeline_db.transfer.target import Batch, Target, TargetState, open_target
from pipeline_db.transfer.verify import Verifier

#: Converted batches waiting for the writer of a table, at most.
QUEUE_DEPTH = 2
#: Tables loading at the same time.
TABLES_AT_ONCE = 4
#: Attempts at a table when the target connection is lost, and the pause between them.
RECONNECT_ATTEMPTS = 5
RECONNECT_DELAY_S = 2.0


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
        verifier = Verifier(
            source,
            target,
            options.on_error,
            zone,
            await target.skipped_keys(),
            options.batch_size,
            display,
        )
        copier = _Copier(source, target, options, zone, display, settings, verifier, resumed)
        try:
            await copier.run(plans, states)
            counters = {p.name: p.counter for p in plans if p.counter is not None}
            await target.finish(plans, counters)
            verify_started = time.perf_counter()
            checks = [await copier.checks[p.name] for p in plans]
        finally:
            await copier.cancel()
        report = MigrationReport(
            source=source.description,
            flavour=source.info.flavour,
            target=target.description,
            tables=[_table_report(p, states[p.name]) for p in plans],
            checks=checks,
            notes=notes,
            not_copied=not_copied,
            verify_seconds=copier.verify_seconds + time.perf_counter() - verify_started,
        )
        report.report_file = options.report or _default_report_path()
        report.seconds = time.perf_counter() - started
        report.issues = await write_report(report.report_file, report, target.issues())
        await target.complete()
    finally:
        display.close()
        await source.close()
        await target.close()
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


class _Copier:
    """Copies the tables, several at once, parents before children.

    Up to :data:`TABLES_AT_ONCE` tables load at the same time (one may keep
    PostgreSQL busy building search vectors while another keeps this process
    converting), the widest first; each is verified as soon as it is done,
    while the others load. A lost target connection (a restart) is retried
    from the progress that committed.
    """

    def __init__(
        self,
        source: Source,
        target: Target,
        options: MigrateOptions,
        zone: Any,
        display: Display,
        settings: dict[str, Any],
        verifier: Verifier,
        resumed: bool,
    ) -> None:
        self.source = source
        self.target = target
        self.options = options
        self.zone = zone
        self.display = display
        self.settings = settings
        self.verifier = verifier
        self.resumed = resumed
        #: Keys of rows left out, by table: their children are left out too.
        self.skipped = verifier.skipped
        #: Each table's verification, started when the table is done.
        self.checks: dict[str, asyncio.Task[TableCheck]] = {}
        #: Seconds spent verifying while no table was loading.
        self.verify_seconds = 0.0
        self._digests: dict[str, tuple[int, int]] = {}
        self._generation = 0
        self._reconnecting = asyncio.Lock()

    async def run(self, plans: list[TablePlan], states: dict[str, TableProgress]) -> None:
        """Copy every table to the end and start its verification."""
        names = {p.name for p in plans}
        finished = {p.name: asyncio.Event() for p in plans}
        slots = asyncio.Semaphore(TABLES_AT_ONCE)

        async def one(plan: TablePlan) -> None:
            for parent in {link.parent for link in plan.parents} & names - {plan.name}:
                await finished[parent].wait()
            async with slots:
                states[plan.name] = await self.table(plan, states[plan.name])
            finished[plan.name].set()
            known = None if self.resumed else self._digests.get(plan.name)
            self.checks[plan.name] = asyncio.create_task(self.verifier.table(plan, known))

        try:
            async with asyncio.TaskGroup() as group:
                for plan in await self._order(plans):
                    group.create_task(one(plan))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    async def cancel(self) -> None:
        """Stop verifications still running (the migration failed)."""
        for task in self.checks.values():
            task.cancel()
        await asyncio.gather(*self.checks.values(), return_exceptions=True)

    async def _order(self, plans: list[TablePlan]) -> list[TablePlan]:
        """Parents first, then the tables with the most bytes to move."""
        levels: dict[str, int] = {}
        for plan in plans:  # sorted_tables order: parents come first
            parents = [levels.get(link.parent, -1) for link in plan.parents]
            levels[plan.name] = 1 + max(parents, default=-1)
        sizes = {p.name: p.rows * (await self.source.row_width(p) if p.rows else 0) for p in plans}
        return sorted(plans, key=lambda p: (levels[p.name], -sizes[p.name]))

    async def table(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        """Copy one table to the end, from where ``state`` says it stopped."""
        self.display.start(plan.name, plan.rows, state.copied + state.skipped)
        for attempt in range(1, RECONNECT_ATTEMPTS + 1):
            generation = self._generation
            try:
                state = await self._copy(plan, state)
                break
            except TransientError as error:
                self._digests.pop(plan.name, None)  # batches will be read twice: read again
                self.resumed = True
                if attempt == RECONNECT_ATTEMPTS:
                    raise
                self.display.log(
                    f"{plan.name}: {error.message}; reconnecting to the target "
                    f"(attempt {attempt + 1} of {RECONNECT_ATTEMPTS})"
                )
                await asyncio.sleep(RECONNECT_DELAY_S * attempt)
                async with self._reconnecting:
                    if generation == self._generation:  # not yet done by another table
                        await self.target.reconnect()
                        self._generation += 1
                states, _ = await _start(self.target, self.settings, [plan])
                state = states[plan.name]
                self.skipped.update(await self.target.skipped_keys())
        self.display.finish(plan.name)
        return state

    async def _copy(self, plan: TablePlan, state: TableProgress) -> TableProgress:
        if state.done:
            return state
        fresh = not state.started
        state = await self.target.start_table(plan, state)
        converter = RowConverter(
            plan,
            source=self.source.dialect,
            target=self.target.dialect,
            on_error=self.options.on_error,
            zone=self.zone,
            flagged=True,
            duplicates=await self.source.duplicates(plan),
            skipped=self.skipped,
            after=state.last_key,
            committed=state.committed if state.beyond else None,
        )
        last = [time.perf_counter()]
        if fresh:
            nulls = await self.source.null_keys(plan)
            if nulls:
                state = await self._write(plan, converter.null_keys(nulls), state, last)
        writers = self.target.writers
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(QUEUE_DEPTH * writers)
        sizer = BatchSizer(self.options.batch_size)
        digest = [0, 0]
        refused = False

        async def read() -> None:
            scan = self.source.scan(plan, converter, after=state.last_key, sizer=sizer)
            async for batch in scan:
                await queue.put(batch)
            for _ in range(writers):
                await queue.put(None)

        async def write() -> None:
            nonlocal state, refused
            while (batch := await queue.get()) is not None:
                record = await self.target.write(plan, batch, self.options.on_error)
                state = state.added(record)
                self._account(plan, batch, last)
                digest[0] += batch.digest[0]
                digest[1] += batch.digest[1]
                # Rows the target refused were counted: that table's source is read again.
                refused = refused or record.skipped != batch.skipped

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                for _ in range(writers):
                    group.create_task(write())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        state = await self.target.finish_table(plan, state)
        if fresh and not refused:
            self._digests[plan.name] = (digest[0], digest[1] & ((1 << 64) - 1))
        return state

    async def _write(
        self, plan: TablePlan, batch: Batch, state: TableProgress, last: list[float]
    ) -> TableProgress:
        record = await self.target.write(plan, batch, self.options.on_error)
        self._account(plan, batch, last)
        return state.added(record)

    def _account(self, plan: TablePlan, batch: Batch, last: list[float]) -> None:
        """After a batch committed: its left-out keys, its time, the display."""
        now = time.perf_counter()
        batch.seconds, last[0] = now - last[0], now
        for issue in batch.issues:
            if issue.action == "skipped" and issue.key is not None:
                self.skipped.setdefault(plan.name, set()).add(issue.key)
        self.display.advance(plan.name, batch.read)


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
