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
        splits: keys splitting the table into ranges copied at once (kept, so
            a resumed copy splits it alike).
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
    splits: tuple[Any, ...] = ()

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

    def merged(self, other: TableProgress) -> TableProgress:
        """The progress of two key ranges of the table together (counts and conversions)."""
        conversions = {c: Counter(n) for c, n in self.conversions.items()}
        for column, counts in other.conversions.items():
            conversions.setdefault(column, Counter()).update(counts)
        return replace(
            self,
            started=self.started or other.started,
            copied=self.copied + other.copied,
            skipped=self.skipped + other.skipped,
            repaired=self.repaired + other.repaired,
            seconds=max(self.seconds, other.seconds),
            conversions=conversions,
        )

    def table_row(self) -> dict[str, Any]:
        """The table's own record: done, the DDL set aside, the split keys."""
        return {
            "table_name": self.name,
            "done": self.done,
            "deferred": json.dumps(list(self.deferred)),
            "splits": json.dumps([str(k) for k in self.splits]),
            "settings": None,
        }

    @classmethod
    def read(
        cls,
        name: str,
        table_row: Any | None,
        batch_rows: list[Any],
        key_kind: Kind,
        *,
        lower: Any = None,
        upper: Any = None,
    ) -> TableProgress:
        """The progress of a table (or of its key range ``(lower, upper]``) from the records.

        A batch belongs to the range its ``after_key`` falls in (batches never
        cross a range's bounds); the chain of committed ranges starts at ``lower``.
        """

        def key(text: Any) -> Any:
            return text if text is None or key_kind == "text" else int(text)

        def within(after: Any) -> bool:
            if lower is not None and (after is None or after < lower):
                return False
            return upper is None or after is None or after < upper

        counts: Counter[str] = Counter()
        conversions: dict[str, Counter[str]] = {}
        ranges: dict[Any, Any] = {}
        for raw_after, last, copied, skipped, repaired, seconds, converted in batch_rows:
            after = key(raw_after)
            if not within(after):
                continue
            counts.update(copied=copied, skipped=skipped, repaired=repaired, batches=1)
            counts["microseconds"] += int(seconds * 1e6)
            for column, n in json.loads(converted).items():
                conversions.setdefault(column, Counter()).update(n)
            if last is not None:
                ranges[after] = key(last)
        end = lower
        while end in ranges:
            end = ranges.pop(end)
        done, deferred, splits = False, (), ()
        if table_row:
            done, deferred = bool(table_row[0]), tuple(json.loads(table_row[1]))
            splits = tuple(key(k) for k in json.loads(table_row[2] or "[]"))
        return cls(
            name=name,
            last_key=end,
            beyond=tuple(sorted(ranges.items())),
            started=counts["batches"] > 0,
            copied=counts["copied"],
            skipped=counts["skipped"],
            repaired=counts["repaired"],
            seconds=counts["microseconds"] / 1e6,
            done=done,
            conversions=conversions,
            deferred=deferred,
            splits=splits,
        )


def settings_row(settings: dict[str, Any]) -> dict[str, Any]:
    """The record holding a migration's settings (checked on ``--resume``)."""
    return {
        "table_name": SETTINGS_ROW,
        "done": False,
        "deferred": "[]",
        "splits": None,
        "settings": json.dumps(settings, sort_keys=True),
    }


def read_settings(rows: list[Any]) -> dict[str, Any] | None:
    """The settings a migration in progress was started with, if any (from table records)."""
    for row in rows:
        if row[0] == SETTINGS_ROW and row[4] is not None:
            settings: dict[str, Any] = json.loads(row[4])
            return settings
    return None
