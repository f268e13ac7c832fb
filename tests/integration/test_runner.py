"""Job runners on SQLite and PostgreSQL: in this process, and as real `pipeline-db worker`s.

The handlers (``_queue_helpers/handlers.py``) append each execution to a log
file, so "ran exactly once" is read from what really ran, not from the jobs
table. Worker processes are the venv's ``pipeline-db`` console script with a
configuration file naming those handlers by dotted path; they are stopped with
real SIGTERM and killed with real SIGKILL.

Steps wait on observed state (a log line, a job's status) with a deadline,
never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline_db import ConflictError, Database, DatabaseConfig, Episodes
from pipeline_db import runner as runner_module
from pipeline_db.handlers import Handlers
from pipeline_db.jobs import JobQueue
from pipeline_db.models import Job
from pipeline_db.runner import Runner, RunnerOptions

from ._queue_helpers import handlers as helpers
from ._queue_helpers.handlers import events

REPO = Path(__file__).parents[2]
HANDLERS = "tests.integration._queue_helpers.handlers"
KINDS = ("record", "slow", "stall_once", "fail", "fail_job", "retry_later")
PIPELINE_DB = Path(sys.executable).with_name("pipeline-db")
#: Upper bound on any wait; reached only when a test fails.
STEP_TIMEOUT_S = 15.0

postgresql_only = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
sqlite_only = pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)])


def handlers() -> Handlers:
    """The helper handlers, registered by kind."""
    return Handlers({kind: getattr(helpers, kind) for kind in KINDS})


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """The handlers' execution log."""
    return tmp_path / "executions.log"


@contextlib.asynccontextmanager
async def running(db: Database, **options: Any) -> AsyncIterator[Runner]:
    """A runner in this process, stopped (gracefully) on exit."""
    options.setdefault("poll_interval", 0.1)
    runner = Runner(db, handlers(), RunnerOptions(**options))
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], what: str, within: float = STEP_TIMEOUT_S
) -> None:
    """Poll ``check`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def settled(queue: JobQueue, job_id: int, *statuses: str) -> Job:
    """Wait until the job is in one of ``statuses`` (default: finished); return it."""
    wanted = statuses or ("succeeded", "failed", "cancelled")
    found: list[Job] = []

    async def check() -> bool:
        found[:] = [await queue.get(job_id)]
        return found[0].status in wanted

    await eventually(check, f"job {job_id} to be {' or '.join(wanted)}")
    return found[0]


async def register(db: Database, episode_id: str) -> str:
    await Episodes(db).register(
        id=episode_id, hash=f"hash-{episode_id}", source_path=f"/videos/{episode_id}.mp4"
    )
    return episode_id


# -- worker processes -------------------------------------------------------------


class Worker:
    """A `pipeline-db worker` process, its output in files (a full pipe cannot stall it)."""

    def __init__(self, process: asyncio.subprocess.Process, output: Path) -> None:
        self.process = process
        self.output = output

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    async def ready(self) -> None:
        """Wait until the runner has started (it logs its slots)."""
        await eventually(
            lambda: " slots, kinds " in self.text() or self.process.returncode is not None,
            f"worker {self.pid} to start",
        )
        assert self.process.returncode is None, self.text()

    async def exited(self) -> int:
        """Wait for the process to end; return its exit status."""
        return await asyncio.wait_for(self.process.wait(), STEP_TIMEOUT_S)


def worker_config(config: DatabaseConfig, path: Path, **worker: Any) -> Path:
    """Write a configuration file for the database under test and these worker settings."""
    if config.type == "sqlite":
        database: dict[str, Any] = {"type": "sqlite", "path": str(config.path)}
    else:
        assert config.url is not None
        database = {"type": "postgresql", "url": config.url.get_secret_value()}
    section = {"handlers": {kind: f"{HANDLERS}:{kind}" for kind in KINDS}, **worker}
    path.write_text(yaml.safe_dump({"database": database, "worker": section}))
    return path


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start `pipeline-db worker` processes; any still running at teardown are killed."""
    started: list[Worker] = []
    # The helper handlers import as tests.integration..., from the repository root.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

    async def start(config: Path, *args: str) -> Worker:
        output = tmp_path / f"worker-{len(started)}.out"
        with output.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                str(PIPELINE_DB),
                "--config",
                str(config),
                "worker",
                *args,
                stdout=sink,
                stderr=sink,
                env=env,
                cwd=tmp_path,
            )
        worker = Worker(process, output)
        started.append(worker)
        await worker.ready()
        return worker

    yield start
    for worker in started:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()


# -- running jobs -------------------------------------------------------------------


async def test_runner_runs_each_job_once_and_keeps_its_result(
    queue: JobQueue, db: Database, log: Path
) -> None:
    ids = [(await queue.enqueue("record", params={"log": str(log)})).job.id for _ in range(20)]

    async with running(db, concurrency=4, prefetch=2) as runner:
        for job_id in ids:
            job = await settled(queue, job_id)
            assert (job.status, job.attempts, job.result) == ("succeeded", 1, {"pid": os.getpid()})
            assert job.worker_id == runner.worker_id and job.lease_expires_at is None

    assert Counter(e["job"] for e in events(log)) == dict.fromkeys(ids, 1)
    assert runner.finished == {"succeeded": 20}
    assert runner.active == 0


async def test_retries_back_off_and_end_failed_after_max_attempts(
    queue: JobQueue, db: Database, log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = 0.3
    monkeypatch.setattr(runner_module, "RETRY_BASE_S", base)
    job = (await queue.enqueue("fail", params={"log": str(log)}, max_attempts=3)).job

    async with running(db) as runner:
        failed = await settled(queue, job.id)

    assert (failed.status, failed.attempts) == ("failed", 3)
    assert failed.error == "RuntimeError: boom on attempt 3"
    assert failed.error_traceback is not None
    assert "Traceback" in failed.error_traceback
    assert "RuntimeError: boom on attempt 3" in failed.error_traceback
    assert failed.finished_at is not None
    assert runner.finished == {"retried": 2, "failed": 1}

    starts = events(log, "start")
    assert [e["attempt"] for e in starts] == [1, 2, 3]
    # Attempt n+1 is due a random delay in [0, base * 2**(n-1)] after attempt n failed
    # (full jitter); it starts once due (within a poll interval).
    due = [datetime.fromisoformat(e["run_after"]).timestamp() for e in starts]
    for n in (1, 2):
        ceiling = base * 2 ** (n - 1)
        assert starts[n - 1]["t"] - 0.05 <= due[n] <= starts[n - 1]["t"] + ceiling + 0.5
        assert due[n] - 0.05 <= starts[n]["t"] <= due[n] + 1.5


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    random.seed(7)
    for attempts in (1, 2, 3, 5, 12):
        ceiling = min(runner_module.RETRY_MAX_S, runner_module.RETRY_BASE_S * 2 ** (attempts - 1))
        delays = [runner_module._backoff(attempts) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.05 and max(delays) > ceiling * 0.95


async def test_retry_later_requeues_the_job_at_the_time_asked(
    queue: JobQueue, db: Database, log: Path
) -> None:
    job = (await queue.enqueue("retry_later", params={"log": str(log), "delay": 1.0})).job

    async with running(db):
        await eventually(lambda: bool(events(log, "retry")), "the handler to ask for a retry")
        [asked] = events(log, "retry")
        at = datetime.fromisoformat(asked["at"])

        async def requeued() -> bool:
            return (await queue.get(job.id)).status == "queued"

        await eventually(requeued, "the job to be requeued")  # due 1 s later
        waiting = await queue.get(job.id)
        assert waiting.attempts == 1
        assert waiting.error == "the upstream is not ready"
        assert abs((waiting.run_after - at).total_seconds()) < 0.5
        done = await settled(queue, job.id)

    assert (done.status, done.attempts, done.result) == ("succeeded", 2, "ready")
    second = events(log, "start")[1]
    assert second["t"] >= at.timestamp() - 0.05


async def test_fail_job_fails_at_once(queue: JobQueue, db: Database, log: Path) -> None:
    job = (await queue.enqueue("fail_job", params={"log": str(log)}, max_attempts=5)).job

    async with running(db):
        failed = await settled(queue, job.id)

    assert (failed.status, failed.attempts) == ("failed", 1)
    assert failed.error == "the input is unusable"
    assert len(events(log)) == 1


async def test_a_kind_without_handler_fails_the_job(queue: JobQueue, db: Database) -> None:
    job = (await queue.enqueue("unheard-of")).job

    async with running(db, kinds=["unheard-of"]):
        failed = await settled(queue, job.id)

    assert failed.status == "failed"
    assert failed.error is not None and "unheard-of" in failed.error


async def test_jobs_of_one_episode_never_overlap_and_others_do(
    make_config: Callable[..., DatabaseConfig], log: Path
) -> None:
    # Two runners of 4 slots each, on two Database instances, competing for the jobs.
    async with Database(make_config()) as one, Database(make_config()) as two:
        queue = JobQueue(one)
        episodes = [await register(one, name) for name in ("ep-a", "ep-b", "ep-c")]
        params = {"log": str(log), "seconds": 0.3}
        ids = [
            (await queue.enqueue("slow", episode_id=episode, params=params)).job.id
            for _ in range(3)
            for episode in episodes
        ]

        async with running(one, concurrency=4, prefetch=2), running(two, concurrency=4):
            for job_id in ids:
                assert (await settled(queue, job_id)).status == "succeeded"

    spans: dict[int, dict[str, float]] = {}
    episode_of: dict[int, str] = {}
    for event in events(log):
        spans.setdefault(event["job"], {})[event["event"]] = event["t"]
        episode_of[event["job"]] = event["episode"]
    assert sorted(spans) == sorted(ids)
    for episode in episodes:
        # In the order they were enqueued, each starting after the previous one ended.
        own = [spans[job_id] for job_id in sorted(ids) if episode_of[job_id] == episode]
        for before, after in itertools.pairwise(own):
            assert after["start"] >= before["end"]
    overlapping = [
        (a, b)
        for a in ids
        for b in ids
        if episode_of[a] != episode_of[b]
        and spans[a]["start"] < spans[b]["end"]
        and spans[b]["start"] < spans[a]["end"]
    ]
    assert overlapping, "jobs of different episodes never ran at the same time"


# -- cancelling ---------------------------------------------------------------------


async def test_cancel_of_a_queued_job_means_it_never_runs(
    queue: JobQueue, db: Database, log: Path
) -> None:
    doomed = (await queue.enqueue("record", params={"log": str(log)})).job
    assert (await queue.cancel(doomed.id)).status == "cancelled"
    marker = (await queue.enqueue("record", params={"log": str(log)})).job

    async with running(db):
        await settled(queue, marker.id)

    assert [e["job"] for e in events(log)] == [marker.id]
    assert (await queue.get(doomed.id)).status == "cancelled"


async def test_cancel_of_a_running_job_stops_its_handler_at_the_next_heartbeat(
    queue: JobQueue, db: Database, log: Path
) -> None:
    job = (await queue.enqueue("slow", params={"log": str(log), "seconds": 60})).job

    async with running(db, lease=0.6) as runner:  # heartbeats every 0.2 s
        await eventually(lambda: bool(events(log, "start")), "the handler to start")
        requested = time.monotonic()
        assert (await queue.cancel(job.id)).cancel_requested
        cancelled = await settled(queue, job.id)
        took = time.monotonic() - requested

    assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled on request")
    assert [e["event"] for e in events(log)] == ["start", "cancelled"]
    assert took < 3
    assert runner.finished == {"cancelled": 1}


async def test_cancel_of_a_succeeded_job_is_a_conflict(
    queue: JobQueue, db: Database, log: Path
) -> None:
    job = (await queue.enqueue("record", params={"log": str(log)})).job
    async with running(db):
        await settled(queue, job.id)

    with pytest.raises(ConflictError):
        await queue.cancel(job.id)
    assert (await queue.get(job.id)).status == "succeeded"


# -- graceful shutdown -----------------------------------------------------------------


async def test_stop_lets_short_jobs_finish_and_hands_back_the_rest(
    queue: JobQueue, db: Database, log: Path
) -> None:
    short = (await queue.enqueue("slow", params={"log": str(log), "seconds": 0.8})).job
    long = (await queue.enqueue("slow", params={"log": str(log), "seconds": 60})).job
    spare = (await queue.enqueue("slow", params={"log": str(log), "seconds": 0})).job

    runner = Runner(
        db,
        handlers(),
        RunnerOptions(concurrency=2, prefetch=1, shutdown_grace=2.0, poll_interval=0.1),
    )
    task = asyncio.create_task(runner.run())
    await eventually(lambda: len(events(log, "start")) == 2, "two jobs to start")
    assert (await queue.get(spare.id)).status == "running"  # prefetched, not started
    stopping = time.monotonic()
    runner.stop()
    await asyncio.wait_for(task, STEP_TIMEOUT_S)
    took = time.monotonic() - stopping

    assert (await queue.get(short.id)).status == "succeeded"
    for job_id in (long.id, spare.id):
        back = await queue.get(job_id)
        assert (back.status, back.attempts, back.worker_id) == ("queued", 0, None)
        assert back.error == "handed back at shutdown"
        assert back.lease_expires_at is None
    assert 1.5 < took < 5
    assert runner.finished == {"succeeded": 1, "handed_back": 1}
    assert {e["job"] for e in events(log, "cancelled")} == {long.id}
    assert spare.id not in {e["job"] for e in events(log)}


async def test_stop_honours_the_grace_when_every_slot_is_busy(
    queue: JobQueue, db: Database, log: Path
) -> None:
    # The claim loop waits for a free slot; stop() must end that wait, or the
    # runner keeps going until some job finishes (here 60 s), grace or not.
    job = (await queue.enqueue("slow", params={"log": str(log), "seconds": 60})).job
    runner = Runner(db, handlers(), RunnerOptions(concurrency=1, shutdown_grace=0.5))
    task = asyncio.create_task(runner.run())
    await eventually(lambda: bool(events(log, "start")), "the job to start")

    stopping = time.monotonic()
    runner.stop()
    await asyncio.wait_for(task, STEP_TIMEOUT_S)

    assert time.monotonic() - stopping < 3
    back = await queue.get(job.id)
    assert (back.status, back.attempts) == ("queued", 0)


async def test_cancel_during_the_shutdown_grace_cancels_the_job(
    queue: JobQueue, db: Database, log: Path
) -> None:
    job = (await queue.enqueue("slow", params={"log": str(log), "seconds": 60})).job
    options = RunnerOptions(concurrency=2, lease=0.6, shutdown_grace=10, poll_interval=0.1)
    runner = Runner(db, handlers(), options)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: bool(events(log, "start")), "the job to start")

    runner.stop()
    stopping = time.monotonic()
    await queue.cancel(job.id)
    await asyncio.wait_for(task, STEP_TIMEOUT_S)

    assert time.monotonic() - stopping < 3  # at the next heartbeat, not at the grace's end
    got = await queue.get(job.id)
    assert (got.status, got.error) == ("cancelled", "cancelled on request")
    assert [e["event"] for e in events(log)] == ["start", "cancelled"]
    assert runner.finished == {"cancelled": 1}


@pytest.mark.slow
async def test_sigterm_to_a_worker_process_shuts_it_down_gracefully(
    queue: JobQueue,
    make_config: Callable[..., DatabaseConfig],
    spawn: Callable[..., Awaitable[Worker]],
    log: Path,
    tmp_path: Path,
) -> None:
    config = worker_config(
        make_config(), tmp_path / "pipeline.yaml", shutdown_grace=2.5, poll_interval=0.1
    )
    worker = await spawn(config, "--concurrency", "2")
    short = (await queue.enqueue("slow", params={"log": str(log), "seconds": 1.0})).job
    long = (await queue.enqueue("slow", params={"log": str(log), "seconds": 60})).job
    await eventually(lambda: len(events(log, "start")) == 2, "both jobs to start")

    worker.process.send_signal(signal.SIGTERM)
    assert await worker.exited() == 0, worker.text()

    assert (await queue.get(short.id)).status == "succeeded"
    back = await queue.get(long.id)
    assert (back.status, back.attempts, back.worker_id) == ("queued", 0, None)
    assert back.error == "handed back at shutdown"
    assert {e["job"] for e in events(log, "cancelled")} == {long.id}
    assert "SIGTERM" in worker.text()


# -- processes: crashes and scale ----------------------------------------------------------


@pytest.mark.slow
async def test_a_job_of_a_sigkilled_runner_runs_again_after_its_lease_and_completes_once(
    queue: JobQueue,
    make_config: Callable[..., DatabaseConfig],
    spawn: Callable[..., Awaitable[Worker]],
    log: Path,
    tmp_path: Path,
) -> None:
    config = worker_config(
        make_config(), tmp_path / "pipeline.yaml", lease=2, poll_interval=0.1, shutdown_grace=1
    )
    first = await spawn(config, "--kind", "stall_once")
    job = (await queue.enqueue("stall_once", params={"log": str(log)})).job
    await eventually(lambda: bool(events(log, "start")), "the first attempt to start")

    first.process.send_signal(signal.SIGKILL)
    assert await first.exited() == -signal.SIGKILL
    held = await queue.get(job.id)
    assert held.status == "running" and held.lease_expires_at is not None
    # The second runner starts once the lease is over: its reaper runs at start-up
    # (its next round would be 5 s later: reap_interval is not configurable yet).
    await eventually(
        lambda: datetime.now(UTC) > held.lease_expires_at,  # type: ignore[operator]
        "the lease to expire",
    )
    second = await spawn(config, "--kind", "stall_once")
    done = await settled(queue, job.id)

    assert (done.status, done.attempts, done.result) == ("succeeded", 2, "completed")
    starts = events(log, "start")
    assert [(e["attempt"], e["pid"]) for e in starts] == [(1, first.pid), (2, second.pid)]
    assert starts[1]["t"] >= held.lease_expires_at.timestamp()
    [completion] = events(log, "done")
    assert completion["pid"] == second.pid
    second.process.send_signal(signal.SIGTERM)
    assert await second.exited() == 0, second.text()


@pytest.mark.slow
async def test_two_worker_processes_run_1000_jobs_exactly_once(
    queue: JobQueue,
    make_config: Callable[..., DatabaseConfig],
    spawn: Callable[..., Awaitable[Worker]],
    log: Path,
    tmp_path: Path,
) -> None:
    config = worker_config(
        make_config(),
        tmp_path / "pipeline.yaml",
        concurrency=8,
        prefetch=8,
        poll_interval=0.1,
        shutdown_grace=2,
    )
    workers = [await spawn(config, "--kind", "record") for _ in range(2)]

    # Holding each slot 10 ms makes the work last over half a second even with
    # 16 slots, so a worker that starts a little late still gets its share.
    assert await queue.enqueue_many("record", [{"log": str(log), "hold": 0.01}] * 1000) == 1000

    async def all_done() -> bool:
        return (await queue.stats()).by_status["succeeded"] == 1000

    await eventually(all_done, "1000 jobs to succeed", within=60)  # ~2 s on an idle machine
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        assert await worker.exited() == 0, worker.text()
    outputs = "\n".join(w.text() for w in workers)

    stats = await queue.stats()
    assert stats.by_status == {
        "queued": 0,
        "running": 0,
        "succeeded": 1000,
        "failed": 0,
        "cancelled": 0,
    }, outputs
    runs = Counter(e["job"] for e in events(log))
    assert len(runs) == 1000, outputs
    assert [job_id for job_id, n in runs.items() if n > 1] == [], outputs
    by_process = Counter(e["pid"] for e in events(log))
    assert set(by_process) == {w.pid for w in workers}, (by_process, outputs)
    first = await queue.list(limit=500)
    rest = await queue.list(limit=500, cursor=first.next_cursor)
    assert rest.next_cursor is None
    assert {j.attempts for j in first.items + rest.items} == {1}


# -- wake-ups ------------------------------------------------------------------------------


@postgresql_only
async def test_notify_from_another_connection_wakes_a_polling_runner(
    make_config: Callable[..., DatabaseConfig], db: Database, log: Path
) -> None:
    queue = JobQueue(db)
    async with Database(make_config()) as producer:
        other = JobQueue(producer)  # its in-process signal reaches no runner
        async with running(db, poll_interval=30):
            first = (await other.enqueue("record", params={"log": str(log)})).job
            await settled(queue, first.id)  # the runner is now waiting (up to 30 s)
            enqueued = time.time()
            second = (await other.enqueue("record", params={"log": str(log)})).job
            await settled(queue, second.id)

    [ran] = [e for e in events(log) if e["job"] == second.id]
    assert ran["t"] - enqueued < 5


@sqlite_only
async def test_an_enqueue_in_this_process_wakes_a_polling_runner(
    queue: JobQueue, db: Database, log: Path
) -> None:
    async with running(db, poll_interval=30):
        first = (await queue.enqueue("record", params={"log": str(log)})).job
        await settled(queue, first.id)  # the runner is now waiting (up to 30 s)
        enqueued = time.time()
        second = (await queue.enqueue("record", params={"log": str(log)})).job
        await settled(queue, second.id)

    [ran] = [e for e in events(log) if e["job"] == second.id]
    assert ran["t"] - enqueued < 5
