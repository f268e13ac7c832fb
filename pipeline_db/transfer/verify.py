"""Verification: row counts and a checksum per table, computed independently on each side.

The source side reads the source again and converts each row as the copy
does (same error policy, leaving out the rows the copy left out); the target
side reads what the target stores and decodes it on its own. Each side hashes
every row's normalised values (:func:`~pipeline_db.transfer.convert.canonical`:
REAL by its bits, timestamps in UTC, JSON with sorted keys and normalised
numbers) and sums the hashes, so row order does not matter. Both sides of a
table are read at once.
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

    Returns:
        One check per table, in order.
    """
    policy: OnError = "repair" if on_error == "repair" else "skip"
    checks = []
    for plan in plans:
        display.log(f"verifying {plan.name}")
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
        target_side = _total(
            target.scan(plan, target_digester(plan, target.dialect), BatchSizer(batch_size))
        )
        (source_rows, source_sum), (target_rows, target_sum) = await asyncio.gather(
            source_side, target_side
        )
        checks.append(
            TableCheck(
                plan.name, source_rows, target_rows, f"{source_sum:016x}", f"{target_sum:016x}"
            )
        )
    return checks


async def _total(batches: AsyncIterator[tuple[int, int]]) -> tuple[int, int]:
    rows = total = 0
    async for count, digest in batches:
        rows += count
        total = (total + digest) & _MASK
    return rows, total
