"""Claim one job like a runner, then hang without heartbeating until killed.

Usage: ``python claim_and_hang.py URL KIND LEASE_S``. Prints
``ready <job id> <worker id>`` once the job is claimed.
"""

from __future__ import annotations

import asyncio
import os
import sys

from pipeline_db import Database, database_config
from pipeline_db.jobs import JobQueue


async def main(url: str, kind: str, lease_s: float) -> None:
    config = database_config({"url": url, "type": url.split(":")[0].split("+")[0]}, environ={})
    async with Database(config) as db:
        worker_id = f"doomed-{os.getpid()}"
        jobs = await JobQueue(db).claim(worker_id, kinds=[kind], lease_s=lease_s)
        print(f"ready {jobs[0].id} {worker_id}", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
