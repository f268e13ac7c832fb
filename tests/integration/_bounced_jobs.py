"""Job runners for the PgBouncer tests: one handler, in-process runners, worker processes.

``record`` appends one JSON line per execution, in one ``write`` on an
``O_APPEND`` descriptor, to the file named by its job's ``log`` parameter, so
"ran exactly once" is read from what really ran, across processes.
Worker processes load it by dotted path (``HANDLER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_db import Database, DatabaseConfig
from pipeline_db.handlers import Handlers, JobContext
from pipeline_db.jobs import JobQueue
from pipeline_db.models import Job
from pipeline_db.runner import Runner, RunnerOptions

HANDLER = "tests.integration._bounced_jobs:record"
PIPELINE_DB = Path(sys.executable).with_name("pipeline-db")
REPO = Path(__file__).parents[2]
#: Upper bound on any wait; reached only when a test fails.
STEP_TIMEOUT_S = 30.0


async def record(ctx: JobContext) -> int:
    """Record this execution (job, pid, time) in the job's log file."""
    line = {"job": ctx.job.id, "pid": os.getpid(), "t": time.time()}
    fd = os.open(ctx.job.params["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)
    return os.getpid()


def events(log: Path) -> list[dict[str, Any]]:
    """The executions recorded in ``log``, in write order."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds; fail the test after STEP_TIMEOUT_S."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def settled(queue: JobQueue, job_id: int) -> Job:
    """Wait until the job has finished; return it."""
    found: list[Job] = []

    async def check() -> bool:
        found[:] = [await queue.get(job_id)]
        return found[0].status in ("succeeded", "failed", "cancelled")

    await eventually(check, f"job {job_id} to finish")
    return found[0]


@contextlib.asynccontextmanager
async def running(db: Database, **options: Any) -> AsyncIterator[Runner]:
    """A runner of ``record`` jobs in this process, stopped gracefully on exit."""
    runner = Runner(db, Handlers({"record": record}), RunnerOptions(**options))
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)


def worker_config(config: DatabaseConfig, path: Path, **worker: Any) -> Path:
    """A configuration file for `pipeline-db worker`: ``config``'s database, ``record`` jobs."""
    assert config.url is not None
    database: dict[str, Any] = {
        "type": "postgresql",
        "url": config.url.get_secret_value(),
        "pgbouncer": config.pgbouncer,
    }
    if config.listen_url is not None:
        database["listen_url"] = config.listen_url.get_secret_value()
    section = {"handlers": {"record": HANDLER}, **worker}
    path.write_text(yaml.safe_dump({"database": database, "worker": section}))
    return path


class Worker:
    """A `pipeline-db worker` process, its output in a file (a full pipe cannot stall it)."""

    def __init__(self, process: asyncio.subprocess.Process, output: Path) -> None:
        self.process = process
        self.output = output

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    async def stop(self) -> int:
        """SIGTERM, then wait for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT_S)


@contextlib.asynccontextmanager
async def workers(config: Path, count: int, folder: Path) -> AsyncIterator[list[Worker]]:
    """Start ``count`` `pipeline-db worker` processes; kill those still running on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    started: list[Worker] = []
    try:
        for n in range(count):
            output = folder / f"worker-{n}.out"
            with output.open("wb") as sink:
                process = await asyncio.create_subprocess_exec(
                    str(PIPELINE_DB), "--config", str(config), "worker", "--kind", "record",
                    stdout=sink, stderr=sink, env=env, cwd=folder,
                )  # fmt: skip
            worker = Worker(process, output)
            started.append(worker)

            async def ready(worker: Worker = worker) -> bool:
                return " slots, kinds " in worker.text() or worker.process.returncode is not None

            await eventually(ready, f"worker {n} to start")
            assert worker.process.returncode is None, worker.text()
        yield started
    finally:
        for worker in started:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
