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
from datetime import tzinfo

from pipeline_db.transfer.display import Display
from pipeline_db.transfer.layout import TablePlan
from pipeline_db.transfer.policy import RowConverter, target_digester
from pipeline_db.transfer.report import TableCheck
from pipeline_db.transfer.source import BatchSizer, Source
from pipeline_db.transfer.target import OnError, Target

_MASK = (1 << 64) - 1


async def verify(
    source: Source,
    target: Target,
    plans: list[TablePlan],
    *,
    on_error: OnError,
    zone: tzinfo,
    skipped: dict[str, set[str]],
    batch_size: int,
    display: Display,
    known: dict[str, tuple[int, int]] | None = None,
) -> list[TableCheck]:
    """Compare every table of ``plans`` between source and target.

    Args:
        source: the source (read again).
        target: the target.
        plans: the tables.
        on_error: the policy the copy ran with (``abort`` reads as ``skip``:
            a copy under abort left out nothing, so no row has a problem).
        zone: the time zone of naive local timestamps.
        skipped: keys of rows the copy left out, by table.
        batch_size: rows per fetch at most.
        display: told of progress.
        known: source digests the copy computed from the rows it read, by
            table; other tables' sources are read again.

    Returns:
        One check per table, in order.
    """
    policy: OnError = "repair" if on_error == "repair" else "skip"
    checks = []
    known = known or {}
    for plan in plans:
        display.log(f"verifying {plan.name}")
        target_side = _total(
            target.scan(plan, target_digester(plan, target.dialect), BatchSizer(batch_size))
        )
        if plan.name in known:
            source_rows, source_sum = known[plan.name]
            target_rows, target_sum = await target_side
            checks.append(_check(plan.name, source_rows, source_sum, target_rows, target_sum))
            continue
        converter = RowConverter(
            plan,
            source=source.dialect,
            target=target.dialect,
            on_error=policy,
            zone=zone,
            flagged=True,
            duplicates=await source.duplicates(plan),
            skipped=skipped,
        )
        source_side = _total(
            source.scan(plan, converter.digest, sizer=BatchSizer(batch_size), checked=True)
        )
        (source_rows, source_sum), (target_rows, target_sum) = await asyncio.gather(
            source_side, target_side
        )
        checks.append(_check(plan.name, source_rows, source_sum, target_rows, target_sum))
    return checks


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
