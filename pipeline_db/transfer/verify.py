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
from typing import Any

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
        return check_of(plan.name, await self.digests(plan, known))

    async def digests(
        self,
        plan: TablePlan,
        known: tuple[int, int] | None = None,
        *,
        lower: Any = None,
        upper: Any = None,
    ) -> Digests:
        """Both sides' row counts and hash sums for the keys in ``(lower, upper]``.

        ``known``: the source side, as the copy computed it from the rows it read.
        """
        target_side = _total(
            self.target.scan(
                plan,
                target_digester(plan, self.target.dialect),
                BatchSizer(self.batch_size),
                lower=lower,
                upper=upper,
            )
        )
        if known is not None:
            return Digests(*known, *await target_side)
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
                plan,
                converter.digest,
                after=lower,
                upper=upper,
                sizer=BatchSizer(self.batch_size),
                checked=True,
            )
        )
        (source_rows, source_sum), (target_rows, target_sum) = await asyncio.gather(
            source_side, target_side
        )
        return Digests(source_rows, source_sum, target_rows, target_sum)

    async def tables(self, plans: list[TablePlan]) -> list[TableCheck]:
        """Compare every table, in foreign-key order (a parent's left-out rows leave
        their children out)."""
        return [await self.table(plan) for plan in plans]


@dataclass(frozen=True, slots=True)
class Digests:
    """Both sides of a table (or of a key range of it): row counts and hash sums."""

    source_rows: int
    source_sum: int
    target_rows: int
    target_sum: int

    def __add__(self, other: Digests) -> Digests:
        """Two key ranges of a table together."""
        return Digests(
            self.source_rows + other.source_rows,
            (self.source_sum + other.source_sum) & _MASK,
            self.target_rows + other.target_rows,
            (self.target_sum + other.target_sum) & _MASK,
        )


def check_of(name: str, digests: Digests) -> TableCheck:
    """The table's check from its digests."""
    return TableCheck(
        name,
        digests.source_rows,
        digests.target_rows,
        f"{digests.source_sum:016x}",
        f"{digests.target_sum:016x}",
    )


async def _total(batches: AsyncIterator[tuple[int, int]]) -> tuple[int, int]:
    rows = total = 0
    async for count, digest in batches:
        rows += count
        total = (total + digest) & _MASK
    return rows, total
