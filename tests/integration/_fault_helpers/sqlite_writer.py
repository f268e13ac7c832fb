"""Write a SQLite file through ``pipeline_db.Database`` from another OS process.

Usage: ``python sqlite_writer.py PATH WORKER TASKS TRANSACTIONS``. Prints
``ready``, waits for a line on stdin (so every process starts writing at
once), then runs ``TASKS`` concurrent tasks of ``TRANSACTIONS`` read-then-write
transactions each, and prints one JSON line: the errors that reached the
caller and the retries by cause.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import Database, database_config


async def main(path: str, worker: str, tasks: int, transactions: int) -> None:
    config = database_config({"type": "sqlite", "path": path}, environ={})
    errors: list[str] = []
    async with Database(config) as db:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

        async def writer(task: int) -> None:
            for n in range(transactions):
                label = f"{worker}-{task}-{n}"

                async def work(conn: AsyncConnection, label: str = label) -> None:
                    # Read, then write what was read: a lost update would show in the total.
                    value = (
                        await conn.execute(
                            text("SELECT value FROM fault_counters WHERE name = 'total'")
                        )
                    ).scalar_one()
                    await conn.execute(
                        text("UPDATE fault_counters SET value = :v WHERE name = 'total'"),
                        {"v": value + 1},
                    )
                    await conn.execute(
                        text("INSERT INTO fault_log (label) VALUES (:label)"), {"label": label}
                    )

                try:
                    await db.transaction(work)
                except Exception as error:
                    errors.append(f"{type(error).__name__}: {error}")

        await asyncio.gather(*(writer(task) for task in range(tasks)))
        print(json.dumps({"errors": errors, "retries": dict(db.retries)}), flush=True)


if __name__ == "__main__":
    path, worker, tasks, transactions = sys.argv[1:5]
    asyncio.run(main(str(Path(path)), worker, int(tasks), int(transactions)))
