"""How far a migration got, per table, kept in the target so ``--resume`` can finish it.

Each batch of rows is written in one transaction together with its table's
progress row (the last key copied, the counts) and the issues found in it,
so after a crash (Ctrl-C, SIGKILL, the target restarting) the target holds
exactly the batches that committed and knows where the next one starts: a
rerun continues after that key, with no duplicate and no missing row. The
progress tables are dropped once the migration is verified, leaving exactly
the schema Alembic makes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline_db.transfer.convert import Kind

#: The progress row that holds the migration's own settings.
SETTINGS_ROW = "*"


@dataclass(frozen=True, slots=True)
class Issue:
    """A row that was skipped or repaired.

    Attributes:
        table: the table.
        key: the row's primary key (as text), or ``rowid N`` for a NULL key.
        column: the column to blame, if one is.
        reason: what was wrong.
        action: ``skipped`` or ``repaired``.
    """

    table: str
    key: str | None
    column: str | None
    reason: str
    action: str

    def row(self) -> dict[str, Any]:
        """The issue as a row of the issues table."""
        return {
            "table_name": self.table,
            "row_key": self.key,
            "column_name": self.column,
            "reason": self.reason,
            "action": self.action,
        }


@dataclass(frozen=True, slots=True)
class TableProgress:
    """A table's progress, as committed with its last batch.

    Attributes:
        name: the table.
        last_key: the largest key copied or passed over (None: not started).
        copied: rows written to the target.
        skipped: rows left out.
        repaired: rows written with a repair.
        seconds: time spent copying it.
        done: whether every row was copied.
        conversions: per column, how many values each conversion applied to.
        deferred: DDL the target runs when the table is done (indexes and
            foreign keys it set aside for the load).
    """

    name: str
    last_key: Any = None
    copied: int = 0
    skipped: int = 0
    repaired: int = 0
    seconds: float = 0.0
    done: bool = False
    conversions: dict[str, Counter[str]] = field(default_factory=dict)
    deferred: tuple[str, ...] = ()

    def advanced(
        self,
        *,
        last_key: Any,
        copied: int,
        skipped: int,
        repaired: int,
        seconds: float,
        conversions: dict[str, Counter[str]],
        done: bool = False,
    ) -> TableProgress:
        """The progress after one more batch."""
        merged = {c: Counter(n) for c, n in self.conversions.items()}
        for column, counts in conversions.items():
            merged.setdefault(column, Counter()).update(counts)
        return replace(
            self,
            last_key=self.last_key if last_key is None else last_key,
            copied=self.copied + copied,
            skipped=self.skipped + skipped,
            repaired=self.repaired + repaired,
            seconds=self.seconds + seconds,
            done=done,
            conversions=merged,
        )

    def row(self) -> dict[str, Any]:
        """The progress as a row of the progress table."""
        return {
            "table_name": self.name,
            "last_key": None if self.last_key is None else str(self.last_key),
            "copied": self.copied,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "seconds": self.seconds,
            "done": self.done,
            "conversions": json.dumps(self.conversions, sort_keys=True),
            "deferred": json.dumps(list(self.deferred)),
        }

    @classmethod
    def from_row(cls, row: Any, key_kind: Kind) -> TableProgress:
        """Read a progress row back, the key in its column's type."""
        (name, last_key, copied, skipped, repaired, seconds, done, conversions, deferred) = row
        if last_key is not None and key_kind != "text":
            last_key = int(last_key)
        return cls(
            name=name,
            last_key=last_key,
            copied=int(copied),
            skipped=int(skipped),
            repaired=int(repaired),
            seconds=float(seconds),
            done=bool(done),
            conversions={c: Counter(n) for c, n in json.loads(conversions).items()},
            deferred=tuple(json.loads(deferred)),
        )


def settings_row(settings: dict[str, Any]) -> dict[str, Any]:
    """The progress row holding a migration's settings (checked on ``--resume``)."""
    return TableProgress(SETTINGS_ROW, json.dumps(settings, sort_keys=True)).row()


def read_settings(rows: list[Any]) -> dict[str, Any] | None:
    """The settings a migration in progress was started with, if any."""
    for row in rows:
        if row[0] == SETTINGS_ROW and row[1] is not None:
            settings: dict[str, Any] = json.loads(row[1])
            return settings
    return None
