"""Verification: row counts and a checksum per table, computed independently on each side.

The source side is what the copy read and converted, hashed as it went (or,
for a resumed migration and for ``--verify-only``, the source read again and
converted the same way, leaving out the rows the copy left out); the target
side is read back from the target and decoded on its own. Each side hashes
every row's values (:func:`~pipeline_db.transfer.columns.canonical_column`:
a float by its exact value, a timestamp by its UTC instant, JSON with sorted
keys and numbers as doubles) and sums the hashes, so row order does not
matter. Hashes are Python's, so both sides are computed in one process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import tzinfo

from pipeline_db.transfer.display import Display
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.policy import RowConverter, target_digester
from pipeline_db.transfer.report import TableCheck
from pipeline_db.transfer.source import BatchSizer, Source
from pipeline_db.transfer.target import OnError, Target

_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Verifier:
    """How to verify tables: the pair, the copy's policy, the rows it left out.

    Attributes:
        source: the source (read again for tables without a known digest).
        target: the target.
        on_error: the policy the copy ran with (``abort`` reads as ``skip``:
            a copy under abort left out nothing, so no row has a problem).
        zone: the time zone of naive local timestamps.
        skipped: keys of rows the copy left out, by table (shared, growing).
        batch_size: rows per fetch at most.
        display: told of progress.
    """

    source: Source
    target: Target
    on_error: OnError
    zone: tzinfo
    skipped: dict[str, set[str]]
    batch_size: int
    display: Display

    async def table(self, plan: TablePlan, known: tuple[int, int] | None = None) -> TableCheck:
        """Compare one table; ``known``: the source digest the copy computed as it read."""
        self.display.log(f"verifying {plan.name}")
        target_side = _total(
            self.target.scan(
                plan, target_digester(plan, self.target.dialect), BatchSizer(self.batch_size)
            )
        )
        if known is not None:
            source_rows, source_sum = known
            target_rows, target_sum = await target_side
            return _check(plan.name, source_rows, source_sum, target_rows, target_sum)
        converter = RowConverter(
            plan,
            source=self.source.dialect,
            target=self.target.dialect,
            on_error="repair" if self.on_error == "repair" else "skip",
            zone=self.zone,
            flagged=True,
            duplicates=await self.source.duplicates(plan),
            skipped=self.skipped,
        )
        source_side = _total(
            self.source.scan(
                plan, converter.digest, sizer=BatchSizer(self.batch_size), checked=True
            )
        )
        (source_rows, source_sum), (target_rows, target_sum) = await asyncio.gather(
            source_side, target_side
        )
        return _check(plan.name, source_rows, source_sum, target_rows, target_sum)

    async def tables(self, plans: list[TablePlan]) -> list[TableCheck]:
        """Compare every table, in foreign-key order (a parent's left-out rows leave
        their children out)."""
        return [await self.table(plan) for plan in plans]


def _check(
    name: str, source_rows: int, source_sum: int, target_rows: int, target_sum: int
) -> TableCheck:
    return TableCheck(name, source_rows, target_rows, f"{source_sum:016x}", f"{target_sum:016x}")


async def _total(batches: AsyncIterator[tuple[int, int]]) -> tuple[int, int]:
    rows = total = 0
    async for count, digest in batches:
        rows += count
        total = (total + digest) & _MASK
    return rows, total
