"""The plan of a migration (``--dry-run``): tables, row counts, conversions, estimated time.

Making the plan reads the source and looks at the target without changing
either; :func:`pipeline_db.transfer.migrate` starts from the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo

from pipeline_db import schema
from pipeline_db.transfer.convert import Dialect, Kind
from pipeline_db.transfer.errors import MigrationError
from pipeline_db.transfer.layout import TablePlan, plan_table
from pipeline_db.transfer.source import Source
from pipeline_db.transfer.target import OnError, TargetState

#: Copy speed assumed for the estimate (rows/s, verification included), by direction;
#: measured by ``make bench`` on a generated legacy database.
ESTIMATED_ROWS_PER_S: dict[tuple[Dialect, Dialect], float] = {
    ("sqlite", "postgresql"): 60_000.0,
    ("postgresql", "sqlite"): 60_000.0,
    ("sqlite", "sqlite"): 60_000.0,
    ("postgresql", "postgresql"): 60_000.0,
}


@dataclass(slots=True)
class MigrationPlan:
    """What a migration would do.

    Attributes:
        source: the source, described without secrets.
        flavour: what the source is.
        target: the target, described without secrets.
        target_state: what the target holds now.
        tables: the tables to copy, in order, with their row counts.
        notes: things worth knowing before starting.
        not_copied: tables and columns of the source the schema has no place for.
        zone: the zone naive local timestamps are read in.
        source_dialect: the source's backend.
        target_dialect: the target's backend.
    """

    source: str
    flavour: str
    target: str
    target_state: TargetState
    tables: list[TablePlan]
    notes: list[str] = field(default_factory=list)
    not_copied: list[str] = field(default_factory=list)
    zone: str = "UTC"
    source_dialect: Dialect = "sqlite"
    target_dialect: Dialect = "postgresql"

    @property
    def rows(self) -> int:
        """Rows to copy in all."""
        return sum(t.rows for t in self.tables)

    @property
    def estimated_seconds(self) -> float:
        """The estimated time, verification included."""
        return self.rows / ESTIMATED_ROWS_PER_S[(self.source_dialect, self.target_dialect)]


async def discover(
    source: Source, on_error: OnError
) -> tuple[list[TablePlan], list[str], list[str]]:
    """The tables to copy in foreign-key order, with notes and what is not copied.

    Raises:
        MigrationError: a table lacks its key or a required column; or, under
            ``abort``, the source has columns the schema has no place for.
    """
    plans: list[TablePlan] = []
    notes = list(source.info.notes)
    not_copied = list(source.info.not_copied)
    for table in schema.metadata.sorted_tables:
        columns = source.info.tables.get(table.name)
        if columns is None:
            continue
        try:
            plan = plan_table(table, columns)
        except ValueError as error:
            raise MigrationError(f"{source.description}: {error}") from None
        plan.rows = await source.count(table.name)
        plan.counter = source.info.counters.get(table.name)
        if plan.defaulted and plan.rows:
            notes.append(
                f"{plan.name}: the source has no {', '.join(plan.defaulted)}; "
                "the target's defaults fill them"
            )
        not_copied.extend(
            f"column {plan.name}.{c} (not in pipeline-db's schema)" for c in plan.extra
        )
        plans.append(plan)
    extra = [f"{p.name}.{c}" for p in plans for c in p.extra if p.rows]
    if extra and on_error == "abort":
        raise MigrationError(
            f"the source has columns pipeline-db's schema has no place for: {', '.join(extra)}; "
            "their values would be lost (--on-error skip or repair copies the rest and "
            "lists them in the report)"
        )
    return plans, notes, not_copied


def conversions(plan: TablePlan, source: Dialect, target: Dialect, zone: tzinfo) -> list[str]:
    """What happens to each column's values on the way, in words."""
    grouped: dict[str, list[str]] = {}
    for column in plan.columns:
        text = _CONVERSIONS.get((source, target, column.kind))
        if text:
            grouped.setdefault(text.format(zone=zone), []).append(column.name)
    described = [f"{', '.join(columns)}: {text}" for text, columns in grouped.items()]
    if plan.parents and source == "sqlite":
        links = ", ".join(f"{p.column} -> {p.parent}" for p in plan.parents)
        described.append(f"orphans ({links}) per --on-error")
    if plan.checks and source == "sqlite":
        described.append(f"{len(plan.checks)} CHECK constraint(s) checked per --on-error")
    return described


_CONVERSIONS: dict[tuple[Dialect, Dialect, Kind], str] = {
    ("sqlite", "postgresql", "json"): "JSON text -> jsonb (NaN, Infinity, NUL per --on-error)",
    ("sqlite", "postgresql", "bool"): "0/1 -> boolean",
    ("sqlite", "postgresql", "timestamp"): (
        "'YYYY-MM-DD HH:MM:SS' as UTC, 'YYYY-MM-DDTHH:MM:SS' as local time in {zone} -> timestamptz"
    ),
    ("sqlite", "postgresql", "float"): "REAL -> double precision, bit for bit",
    ("sqlite", "postgresql", "text"): "text (NUL characters per --on-error)",
    ("sqlite", "postgresql", "date"): "'YYYY-MM-DD' -> date",
    ("postgresql", "sqlite", "json"): "jsonb -> JSON text",
    ("postgresql", "sqlite", "bool"): "boolean -> 0/1",
    ("postgresql", "sqlite", "timestamp"): "timestamptz -> UTC 'YYYY-MM-DD HH:MM:SS.ffffff'",
    ("postgresql", "sqlite", "float"): "double precision -> REAL (NaN, -0.0 per --on-error)",
    ("postgresql", "sqlite", "date"): "date -> 'YYYY-MM-DD'",
}


def render_plan(plan: MigrationPlan, zone: tzinfo) -> str:
    """The plan as text."""
    state = plan.target_state
    if not state.exists:
        where = "does not exist yet: Alembic creates its schema"
    elif state.filled:
        where = f"holds rows in {', '.join(state.filled)}"
    else:
        where = f"is empty (schema {state.revision or 'none'}; Alembic brings it to the newest)"
    lines = [
        f"source: {plan.source} ({plan.flavour})",
        f"target: {plan.target}, which {where}"
        + ("; an interrupted migration can be resumed" if state.in_progress else ""),
        "",
    ]
    width = max([len(t.name) for t in plan.tables] + [5])
    for table in plan.tables:
        lines.append(f"{table.name.ljust(width)}  {table.rows:>12,} rows")
        for text in conversions(table, plan.source_dialect, plan.target_dialect, zone):
            lines.append(f"{''.ljust(width)}    {text}")
    lines.append(f"{'total'.ljust(width)}  {plan.rows:>12,} rows")
    lines.extend(f"note: {note}" for note in plan.notes)
    lines.extend(f"not copied: {item}" for item in plan.not_copied)
    lines.append(
        f"estimated time: {_duration(plan.estimated_seconds)} "
        f"(at {ESTIMATED_ROWS_PER_S[(plan.source_dialect, plan.target_dialect)]:,.0f} rows/s, "
        "verification included)"
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
