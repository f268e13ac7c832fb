"""How far a migration got, kept in the target so ``--resume`` can finish it.

Every batch of rows commits in one transaction with a record of itself: the
key range it covered (after the previous batch's last key, up to its own),
its counts, and the issues found in it. Several batches of a table may be
written at once and commit out of order; the records still say exactly which
rows the target holds. After a crash (Ctrl-C, SIGKILL, the target
restarting) a rerun continues after the end of the unbroken chain of
committed ranges from the table's start, leaving out the rows of ranges
committed beyond it: no duplicate and no missing row. A table's own record
says when it is done and what DDL it set aside. The progress tables are
dropped once the migration is verified, leaving exactly Alembic's schema.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline_db.transfer.convert import Kind

#: The table record that holds the migration's own settings.
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
class BatchRecord:
    """What one committed batch did.

    Attributes:
        table: the table.
        after_key: the key the batch read after (None: from the start).
        last_key: the last key it read (None: a batch of rows with no key).
        copied: rows written.
        skipped: rows left out.
        repaired: rows written with a repair.
        seconds: wall time it took.
        conversions: per column, how many values each conversion applied to.
    """

    table: str
    after_key: Any
    last_key: Any
    copied: int
    skipped: int
    repaired: int
    seconds: float
    conversions: dict[str, Counter[str]]

    def row(self) -> dict[str, Any]:
        """The record as a row of the batches table."""
        return {
            "table_name": self.table,
            "after_key": None if self.after_key is None else str(self.after_key),
            "last_key": None if self.last_key is None else str(self.last_key),
            "copied": self.copied,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "seconds": self.seconds,
            "conversions": json.dumps(self.conversions, sort_keys=True),
        }


@dataclass(frozen=True, slots=True)
class TableProgress:
    """A table's progress, from the records that committed.

    Attributes:
        name: the table.
        last_key: where the unbroken chain of committed ranges ends (None: at the start).
        beyond: ranges ``(after, last]`` committed past that end, sorted.
        started: whether any batch committed.
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
    beyond: tuple[tuple[Any, Any], ...] = ()
    started: bool = False
    copied: int = 0
    skipped: int = 0
    repaired: int = 0
    seconds: float = 0.0
    done: bool = False
    conversions: dict[str, Counter[str]] = field(default_factory=dict)
    deferred: tuple[str, ...] = ()

    def added(self, record: BatchRecord) -> TableProgress:
        """The progress with one more committed batch (its counts; the chain is read back)."""
        merged = {c: Counter(n) for c, n in self.conversions.items()}
        for column, counts in record.conversions.items():
            merged.setdefault(column, Counter()).update(counts)
        return replace(
            self,
            started=True,
            copied=self.copied + record.copied,
            skipped=self.skipped + record.skipped,
            repaired=self.repaired + record.repaired,
            seconds=self.seconds + record.seconds,
            conversions=merged,
        )

    def committed(self, key: Any) -> bool:
        """Whether a key past the chain's end lies in a range that committed already."""
        index = bisect.bisect_left(self.beyond, (key,)) - 1  # the last range starting below
        return index >= 0 and self.beyond[index][0] < key <= self.beyond[index][1]

    def table_row(self) -> dict[str, Any]:
        """The table's own record: done, and the DDL set aside."""
        return {
            "table_name": self.name,
            "done": self.done,
            "deferred": json.dumps(list(self.deferred)),
            "settings": None,
        }

    @classmethod
    def read(
        cls, name: str, table_row: Any | None, batch_rows: list[Any], key_kind: Kind
    ) -> TableProgress:
        """The progress of a table from its record and its batches' records."""

        def key(text: Any) -> Any:
            return text if text is None or key_kind == "text" else int(text)

        counts: Counter[str] = Counter()
        conversions: dict[str, Counter[str]] = {}
        ranges: dict[Any, Any] = {}
        for after, last, copied, skipped, repaired, seconds, converted in batch_rows:
            counts.update(copied=copied, skipped=skipped, repaired=repaired)
            counts["microseconds"] += int(seconds * 1e6)
            for column, n in json.loads(converted).items():
                conversions.setdefault(column, Counter()).update(n)
            if last is not None:
                ranges[key(after)] = key(last)
        end = None
        while end in ranges:
            end = ranges.pop(end)
        done, deferred = (
            (bool(table_row[0]), tuple(json.loads(table_row[1]))) if table_row else (False, ())
        )
        return cls(
            name=name,
            last_key=end,
            beyond=tuple(sorted(ranges.items())),
            started=bool(batch_rows),
            copied=counts["copied"],
            skipped=counts["skipped"],
            repaired=counts["repaired"],
            seconds=counts["microseconds"] / 1e6,
            done=done,
            conversions=conversions,
            deferred=deferred,
        )


def settings_row(settings: dict[str, Any]) -> dict[str, Any]:
    """The record holding a migration's settings (checked on ``--resume``)."""
    return {
        "table_name": SETTINGS_ROW,
        "done": False,
        "deferred": "[]",
        "settings": json.dumps(settings, sort_keys=True),
    }


def read_settings(rows: list[Any]) -> dict[str, Any] | None:
    """The settings a migration in progress was started with, if any (from table records)."""
    for row in rows:
        if row[0] == SETTINGS_ROW and row[3] is not None:
            settings: dict[str, Any] = json.loads(row[3])
            return settings
    return None
