"""What a migration did: per table rows copied, skipped, repaired, time, rows/s; the verification.

:class:`MigrationReport` is returned by :func:`pipeline_db.transfer.migrate`,
rendered as a table at the end of the command, and written to the report
file (JSON) together with every skipped or repaired row (table, key,
column, reason), streamed from the target so a long list never sits in memory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_db.transfer.progress import Issue


@dataclass(frozen=True, slots=True)
class TableCheck:
    """One table's verification: row count and checksum on each side.

    Attributes:
        name: the table.
        source_rows: rows the target should hold (source rows less those left out).
        target_rows: rows it holds.
        source_checksum: hash sum over the source's normalised values (hex).
        target_checksum: the same over the target's.
    """

    name: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def ok(self) -> bool:
        """Whether both sides agree."""
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum

    def describe(self) -> str:
        """What differs, in words."""
        if self.source_rows != self.target_rows:
            return f"{self.name}: {self.source_rows} rows expected, {self.target_rows} found"
        if self.source_checksum != self.target_checksum:
            return f"{self.name}: the same row count but different values (checksums differ)"
        return f"{self.name}: equal"


@dataclass(slots=True)
class TableReport:
    """One table's copy.

    Attributes:
        name: the table.
        source_rows: rows in the source.
        copied: rows written.
        skipped: rows left out.
        repaired: rows written with a repair.
        seconds: time spent copying it (over every run, with ``--resume``).
        conversions: per column, how many values each conversion applied to.
        defaulted: columns the source lacks, filled by the target's defaults.
    """

    name: str
    source_rows: int
    copied: int = 0
    skipped: int = 0
    repaired: int = 0
    seconds: float = 0.0
    conversions: dict[str, Counter[str]] = field(default_factory=dict)
    defaulted: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Rows copied or passed over per second."""
        return (self.copied + self.skipped) / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class MigrationReport:
    """The whole migration.

    Attributes:
        source: the source, described without secrets.
        flavour: what the source is (legacy version, pipeline-db revision).
        target: the target, described without secrets.
        tables: per-table copy reports, in copy order.
        checks: per-table verification, in copy order.
        notes: things worth knowing (broken FTS5 table, bad foreign key, columns defaulted).
        not_copied: tables and columns of the source with no place in the schema.
        seconds: wall time of the whole command.
        verify_seconds: time the jobs spent verifying, summed (they run at once).
        issues: how many issues the report file lists.
        report_file: where they are listed.
    """

    source: str
    flavour: str
    target: str
    tables: list[TableReport] = field(default_factory=list)
    checks: list[TableCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    not_copied: list[str] = field(default_factory=list)
    seconds: float = 0.0
    verify_seconds: float = 0.0
    issues: int = 0
    report_file: Path | None = None

    @property
    def verified(self) -> bool:
        """Whether every table verified equal."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def rows(self) -> int:
        """Rows copied or passed over, in all."""
        return sum(t.copied + t.skipped for t in self.tables)

    def summary(self) -> dict[str, Any]:
        """The report as JSON-ready data (without the issues)."""
        return {
            "source": self.source,
            "source_kind": self.flavour,
            "target": self.target,
            "seconds": round(self.seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "rows_per_second": round(self.rows / self.seconds, 1) if self.seconds else 0,
            "verified": self.verified,
            "tables": [
                {
                    **{k: v for k, v in asdict(t).items() if k != "conversions"},
                    "conversions": {c: dict(n) for c, n in t.conversions.items()},
                    "rows_per_second": round(t.rows_per_second, 1),
                }
                for t in self.tables
            ],
            "verification": [{**asdict(c), "ok": c.ok} for c in self.checks],
            "notes": self.notes,
            "not_copied": self.not_copied,
        }


async def write_report(path: Path, report: MigrationReport, issues: AsyncIterator[Issue]) -> int:
    """Write the report file (JSON): the summary, then every issue; returns how many."""
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        head = json.dumps(report.summary(), indent=2, ensure_ascii=False)
        file.write(head[: head.rindex("}")].rstrip() + ',\n  "issues": [')
        async for issue in issues:
            file.write(("\n    " if count == 0 else ",\n    ") + json.dumps(asdict(issue)))
            count += 1
        file.write("\n  ]\n}\n" if count else "]\n}\n")
    return count


def render(report: MigrationReport) -> str:
    """The report as a plain-text table."""
    header = ("table", "rows", "copied", "skipped", "repaired", "seconds", "rows/s", "verified")
    checks = {c.name: c for c in report.checks}
    lines = [header]
    for t in report.tables:
        check = checks.get(t.name)
        lines.append(
            (
                t.name,
                str(t.source_rows),
                str(t.copied),
                str(t.skipped),
                str(t.repaired),
                f"{t.seconds:.2f}",
                f"{t.rows_per_second:,.0f}",
                "-" if check is None else ("equal" if check.ok else "DIFFERS"),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.extend(_conversions(report))
    text.extend(f"note: {note}" for note in report.notes)
    text.extend(f"not copied: {item}" for item in report.not_copied)
    rate = report.rows / report.seconds if report.seconds else 0.0
    if report.rows:
        text.append(
            f"{report.rows:,} rows in {report.seconds:.1f} s ({rate:,.0f} rows/s verification "
            f"included; the jobs spent {report.verify_seconds:.1f} s verifying)"
        )
    else:
        verified = sum(c.target_rows for c in report.checks)
        text.append(f"{verified:,} rows verified in {report.seconds:.1f} s")
    if report.checks:
        differing = [c.describe() for c in report.checks if not c.ok]
        text.append("verification: every table equal" if not differing else "verification FAILED:")
        text.extend(f"  {line}" for line in differing)
    if report.report_file is not None:
        text.append(
            f"{report.issues} skipped or repaired row entries listed in {report.report_file}"
        )
    return "\n".join(text)


def _conversions(report: MigrationReport) -> list[str]:
    lines = []
    for t in report.tables:
        for column, counts in sorted(t.conversions.items()):
            described = ", ".join(f"{n:,} {label}" for label, n in counts.most_common() if n)
            lines.append(f"{t.name}.{column}: {described}")
    return ["conversions:", *(f"  {line}" for line in lines)] if lines else []
