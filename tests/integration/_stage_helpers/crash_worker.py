"""Run one ``process_episode`` job in another OS process, to be SIGKILLed mid-stage.

Usage: ``python crash_worker.py BACKEND URL MARKERS``. Claims the queued job
(with a 1-second lease), runs it with :func:`counting_handlers`, whose
``transcribed`` handler prints ``transcribing`` and then sleeps for a minute:
the test kills the process there, after ``prepped`` was recorded.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline_db import Database, database_config
from pipeline_db.handlers import JobContext
from pipeline_db.jobs import JobQueue
from pipeline_db.stages import EpisodeProcessor, StageContext, StageHandler

WORKER = "crash-worker"


def counting_handlers(markers: Path, *, hang_in: str | None = None) -> dict[str, StageHandler]:
    """Handlers for prepped and transcribed that leave one marker file per invocation.

    Each returns ``{"token": <the marker's name>}``; the one of ``hang_in``
    prints ``transcribing`` and sleeps for a minute after leaving its marker.
    """

    def handler(stage: str) -> StageHandler:
        async def run(ctx: StageContext) -> Mapping[str, Any]:
            token = f"{stage}-{uuid.uuid4().hex}"
            (markers / token).touch()
            if stage == hang_in:
                print("transcribing", flush=True)
                await asyncio.sleep(60)
            return {"token": token}

        return run

    return {stage: handler(stage) for stage in ("prepped", "transcribed")}


async def main(backend: str, url: str, markers: Path) -> None:
    config = database_config({"type": backend, "url": url}, environ={})
    async with Database(config) as db:
        queue = JobQueue(db)
        [job] = await queue.claim(WORKER, kinds=["process_episode"], lease_s=1.0)
        processor = EpisodeProcessor(counting_handlers(markers, hang_in="transcribed"))
        await processor(JobContext(job, db, queue, WORKER, {}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
