"""Job handlers for the queue and runner tests, loaded by dotted path in and out of process.

Every handler appends what it does as one JSON line, in one ``write`` on an
``O_APPEND`` descriptor, to the file named by its job's ``log`` parameter:
runners in several processes interleave whole lines, a SIGKILL loses nothing
already written, and a job run twice shows twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline_db.handlers import FailJob, JobContext, RetryLater

LONG_S = 60.0


def note(ctx: JobContext, event: str, **extra: Any) -> None:
    """Append one event of this execution to the job's log file."""
    job = ctx.job
    line = {
        "job": job.id,
        "event": event,
        "attempt": job.attempts,
        "episode": job.episode_id,
        "worker": ctx.worker_id,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    fd = os.open(job.params["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def events(log: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The events in ``log`` (of one kind, if ``event`` is given), in write order."""
    if not log.exists():
        return []
    found = [json.loads(line) for line in log.read_text().splitlines()]
    return [e for e in found if event is None or e["event"] == event]


async def record(ctx: JobContext) -> dict[str, Any]:
    """Record the execution (after holding its slot ``params["hold"]`` seconds, if given)."""
    await asyncio.sleep(float(ctx.job.params.get("hold", 0)))
    note(ctx, "done")
    return {"pid": os.getpid()}


async def slow(ctx: JobContext) -> str:
    """Record start and end around a sleep of ``params["seconds"]``; record a cancellation."""
    note(ctx, "start")
    try:
        await asyncio.sleep(float(ctx.job.params.get("seconds", LONG_S)))
    except asyncio.CancelledError:
        note(ctx, "cancelled")
        raise
    note(ctx, "end")
    return "slept"


async def stall_once(ctx: JobContext) -> str:
    """Hang on the first attempt (for the runner to be killed in); complete on the next."""
    note(ctx, "start")
    if ctx.job.attempts == 1:
        await asyncio.sleep(LONG_S)
    note(ctx, "done")
    return "completed"


async def fail(ctx: JobContext) -> None:
    """Raise an unexpected error on every attempt."""
    note(ctx, "start", run_after=ctx.job.run_after.isoformat())
    raise RuntimeError(f"boom on attempt {ctx.job.attempts}")


async def fail_job(ctx: JobContext) -> None:
    """Fail for good at once."""
    note(ctx, "start")
    raise FailJob("the input is unusable")


async def retry_later(ctx: JobContext) -> str:
    """On the first attempt ask to run again ``params["delay"]`` seconds from now."""
    note(ctx, "start")
    if ctx.job.attempts == 1:
        at = datetime.now(UTC) + timedelta(seconds=float(ctx.job.params["delay"]))
        note(ctx, "retry", at=at.isoformat())
        raise RetryLater(at, "the upstream is not ready")
    note(ctx, "done")
    return "ready"
