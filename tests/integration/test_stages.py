"""`process_episode`: stage handlers in order, persisted per stage, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from examples import demo_handlers
from pipeline_db import ConfigurationError, Database, Dependencies, Episodes, History
from pipeline_db.builtin_handlers import register_builtins
from pipeline_db.config import WorkerConfig, load_worker_config
from pipeline_db.handlers import FailJob, Handlers, JobContext, RetryLater
from pipeline_db.jobs import JobQueue, Outcome
from pipeline_db.models import Episode, Job
from pipeline_db.runner import Runner, RunnerOptions
from pipeline_db.schema import STAGES, processing_log, processing_metrics
from pipeline_db.search import MetadataIndex
from pipeline_db.stages import (
    EpisodeProcessor,
    StageContext,
    StageHandler,
    load_stage_handlers,
)
from tests.integration._stage_helpers.crash_worker import counting_handlers

HELPERS = Path(__file__).parent / "_stage_helpers"
WORKER = "test-worker"
HANDLED = STAGES[1:]


class Recorder:
    """Stage handlers that record their calls and what earlier stages they saw."""

    def __init__(self, fail_once: set[str] | None = None) -> None:
        self.calls: list[str] = []
        #: Stages whose handler raises on its next call.
        self.fail_once = set(fail_once or ())

    def handlers(self, stages: tuple[str, ...] = HANDLED) -> dict[str, StageHandler]:
        return {stage: self._handler(stage) for stage in stages}

    def _handler(self, stage: str) -> StageHandler:
        async def run(ctx: StageContext) -> Mapping[str, Any]:
            assert ctx.stage == stage
            self.calls.append(stage)
            await ctx.progress(percent=50, message=f"half of {stage}")
            if stage in self.fail_once:
                self.fail_once.discard(stage)
                raise RuntimeError(f"{stage} blew up")
            seen = [s for s in STAGES if s in ctx.metadata]
            return {"stage": stage, "seen": seen, "n": self.calls.count(stage)}

        return run


async def register(db: Database, episode_id: str = "ep1") -> Episode:
    registration = await Episodes(db).register(
        id=episode_id, hash=f"hash-{episode_id}", source_path=f"/videos/{episode_id}.mp4"
    )
    return registration.episode


async def claim(db: Database, **params: Any) -> JobContext:
    """Enqueue a process_episode job for ep1 (unless given one) and claim it."""
    queue = JobQueue(db)
    episode_id = params.pop("episode_id", "ep1")
    await queue.enqueue("process_episode", episode_id=episode_id, params=params)
    [job] = await queue.claim(WORKER, kinds=["process_episode"])
    return JobContext(job, db, queue, WORKER, {})


async def succeed(ctx: JobContext, result: Any = None) -> None:
    """Record the job as succeeded, as the runner would."""
    await ctx.queue.finish(WORKER, [Outcome(ctx.job, "succeeded", result=result)])


async def reclaim(db: Database, job: Job) -> JobContext:
    """Put a job back as the runner does after a failure, and claim it again."""
    queue = JobQueue(db)
    await queue.requeue(WORKER, job.id, error="retry")
    [again] = await queue.claim(WORKER, kinds=["process_episode"])
    assert again.id == job.id
    return JobContext(again, db, queue, WORKER, {})


async def events(db: Database, episode_id: str = "ep1") -> list[tuple[Any, ...]]:
    """(stage, status, duration_seconds, error_message) of the episode's log, in order."""
    log = processing_log.c
    query = (
        select(log.stage, log.status, log.duration_seconds, log.error_message)
        .where(log.episode_id == episode_id, log.stage != "registration")
        .order_by(log.id)
    )
    async with db.read() as conn:
        return [tuple(row) for row in await conn.execute(query)]


async def metrics(db: Database, episode_id: str = "ep1") -> list[tuple[Any, ...]]:
    m = processing_metrics.c
    query = (
        select(m.stage, m.metric_name, m.metric_value)
        .where(m.episode_id == episode_id)
        .order_by(m.id)
    )
    async with db.read() as conn:
        return [tuple(row) for row in await conn.execute(query)]


async def run_to_completion(db: Database, handlers: Handlers, job_id: int) -> Job:
    """Run a Runner until the job is finished."""
    runner = Runner(db, handlers, RunnerOptions(poll_interval=0.05, concurrency=2))
    task = asyncio.create_task(runner.run())
    queue = JobQueue(db)
    try:
        for _ in range(1_200):  # up to a minute
            job = await queue.get(job_id)
            if job.finished:
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish: {job}")
    finally:
        runner.stop()
        await task


async def test_runs_every_stage_in_order_persisting_each_output(db: Database) -> None:
    await register(db)
    recorder = Recorder()
    ctx = await claim(db)

    result = await EpisodeProcessor(recorder.handlers())(ctx)

    assert recorder.calls == list(HANDLED)
    episode = await Episodes(db).get("ep1")
    assert episode.stage == "clips_discovered"
    for position, stage in enumerate(HANDLED):
        # Each handler saw the outputs of every stage before it, and only those.
        assert episode.metadata[stage] == {"stage": stage, "seen": list(HANDLED[:position]), "n": 1}
    assert result["episode_id"] == "ep1"
    assert result["stage"] == "clips_discovered"
    assert [r["stage"] for r in result["ran"]] == list(HANDLED)
    assert list(result["metrics"]) == list(HANDLED)

    log = await events(db)
    assert [(stage, status) for stage, status, *_ in log] == [
        (stage, status) for stage in HANDLED for status in ("started", "completed")
    ]
    assert all(duration is not None and duration >= 0 for *_, duration, _ in log[1::2])
    recorded = await metrics(db)
    assert [(stage, name) for stage, name, _ in recorded] == [
        (stage, "duration_seconds") for stage in HANDLED
    ]
    completed = {stage: duration for stage, status, duration, _ in log if status == "completed"}
    assert {stage: value for stage, _, value in recorded} == completed
    aggregates = await History(db).aggregates("duration_seconds")
    assert sorted(a.stage for a in aggregates) == sorted(HANDLED)


async def test_target_stage_stops_there_and_a_later_job_resumes(db: Database) -> None:
    await register(db)
    recorder = Recorder()
    processor = EpisodeProcessor(recorder.handlers())

    first = await claim(db, target_stage="transcribed")
    await succeed(first, await processor(first))
    assert (await Episodes(db).get("ep1")).stage == "transcribed"

    result = await processor(await claim(db))

    assert recorder.calls == list(HANDLED)  # prepped and transcribed ran once
    assert [r["stage"] for r in result["ran"]] == list(HANDLED[2:])
    episode = await Episodes(db).get("ep1")
    assert episode.metadata["enriched"]["seen"] == ["prepped", "transcribed"]


async def test_nothing_to_do_when_already_at_the_target(db: Database) -> None:
    await register(db)
    await Episodes(db).advance_stage("ep1", "enriched")
    recorder = Recorder()

    result = await EpisodeProcessor(recorder.handlers())(await claim(db, target_stage="prepped"))

    assert result == {"episode_id": "ep1", "stage": "enriched", "ran": [], "metrics": {}}
    assert recorder.calls == []


async def test_a_stage_without_a_handler_fails_at_once_naming_it(db: Database) -> None:
    await register(db)
    recorder = Recorder()
    processor = EpisodeProcessor(recorder.handlers(("prepped",)))

    with pytest.raises(FailJob) as failure:
        await processor(await claim(db, target_stage="enriched"))

    message = str(failure.value)
    assert "'transcribed'" in message
    assert 'worker: stages: {transcribed: "package.module:function"}' in message
    assert recorder.calls == []  # failed before doing any work
    assert (await Episodes(db).get("ep1")).stage == "discovered"
    assert await events(db) == [("transcribed", "failed", None, message)]


async def test_a_runner_fails_the_job_of_a_stage_without_handler(db: Database) -> None:
    await register(db)
    handlers = Handlers()
    register_builtins(handlers, WorkerConfig())
    enqueued = await JobQueue(db).enqueue("process_episode", episode_id="ep1")

    job = await run_to_completion(db, handlers, enqueued.job.id)

    assert job.status == "failed"
    assert job.attempts == 1  # no retries
    assert job.error is not None
    assert "no handler is registered for stage 'prepped'" in job.error


async def test_a_failing_handler_logs_the_error_and_the_retry_resumes(db: Database) -> None:
    await register(db)
    recorder = Recorder(fail_once={"enriched"})
    processor = EpisodeProcessor(recorder.handlers())
    ctx = await claim(db)

    with pytest.raises(RuntimeError, match="enriched blew up"):
        await processor(ctx)

    episode = await Episodes(db).get("ep1")
    assert episode.stage == "transcribed"
    assert set(episode.metadata) == {"prepped", "transcribed"}
    assert (await events(db))[-1] == ("enriched", "failed", None, "RuntimeError: enriched blew up")

    await processor(await reclaim(db, ctx.job))

    assert recorder.calls == [*HANDLED[:3], "enriched", *HANDLED[3:]]
    episode = await Episodes(db).get("ep1")
    assert episode.stage == "clips_discovered"
    assert episode.metadata["enriched"]["n"] == 2


async def test_runner_retries_a_failing_stage_and_finishes(db: Database) -> None:
    await register(db)
    recorder = Recorder(fail_once={"transcribed"})
    handlers = Handlers({"process_episode": EpisodeProcessor(recorder.handlers())})
    enqueued = await JobQueue(db).enqueue("process_episode", episode_id="ep1", max_attempts=2)

    # The runner's backoff before attempt 2 is random in [0, 1s).
    job = await run_to_completion(db, handlers, enqueued.job.id)

    assert job.status == "succeeded"
    assert job.attempts == 2
    assert recorder.calls.count("prepped") == 1
    assert job.result is not None
    assert job.result["stage"] == "clips_discovered"


async def test_force_restarts_from_the_first_stage_once_per_job(db: Database) -> None:
    await register(db)
    recorder = Recorder()
    processor = EpisodeProcessor(recorder.handlers())
    first = await claim(db, target_stage="rendered")
    await succeed(first, await processor(first))

    recorder.fail_once = {"transcribed"}  # the forced run fails once, mid-way
    ctx = await claim(db, force=True, target_stage="transcribed")
    with pytest.raises(RuntimeError):
        await processor(ctx)
    episode = await Episodes(db).get("ep1")
    assert episode.stage == "prepped"
    assert episode.metadata["processing"] == {
        "restarted_by_job": ctx.job.id,
        "restarted_from": "rendered",
    }

    await processor(await reclaim(db, ctx.job))  # the retry resumes, it does not restart

    assert recorder.calls == [*HANDLED[:4], "prepped", "transcribed", "transcribed"]
    episode = await Episodes(db).get("ep1")
    assert episode.stage == "transcribed"
    assert episode.metadata["prepped"]["n"] == 2
    assert ("discovered", "completed", None, None) in await events(db)


async def test_waits_while_a_dependency_has_not_reached_the_stage(db: Database) -> None:
    await register(db, "ep1")
    await register(db, "base")
    await Dependencies(db).add("ep1", "base")
    recorder = Recorder()
    processor = EpisodeProcessor(recorder.handlers(), dependency_poll=5.0)
    await Episodes(db).advance_stage("base", "prepped")
    ctx = await claim(db)

    before = datetime.now(UTC)
    with pytest.raises(RetryLater) as later:
        await processor(ctx)

    # prepped ran (base reached it); transcribed waits for base to reach transcribed.
    assert recorder.calls == ["prepped"]
    assert before + timedelta(seconds=4) < later.value.at < before + timedelta(seconds=6)
    assert "base" in later.value.reason
    job = await JobQueue(db).get(ctx.job.id)
    assert job.progress_stage == "transcribed"
    assert job.progress_message is not None
    assert job.progress_message.startswith("waiting: transcribed needs base")

    await Episodes(db).advance_stage("base", "clips_discovered")
    await processor(await reclaim(db, ctx.job))
    assert recorder.calls == list(HANDLED)


async def test_a_non_mapping_output_fails_the_job(db: Database) -> None:
    await register(db)

    async def broken(ctx: StageContext) -> Any:
        return ["not", "a", "mapping"]

    with pytest.raises(FailJob, match="stage 'prepped': the handler returned list"):
        await EpisodeProcessor({"prepped": broken})(await claim(db, target_stage="prepped"))

    assert (await Episodes(db).get("ep1")).stage == "discovered"
    assert (await events(db))[-1][:2] == ("prepped", "failed")


async def test_metadata_patch_goes_to_the_top_level(db: Database) -> None:
    await register(db)

    async def transcribe(ctx: StageContext) -> Mapping[str, Any]:
        return {"words": 3, "metadata_patch": {"transcript": {"text": "hello quokka world"}}}

    async def prep(ctx: StageContext) -> Mapping[str, Any]:
        return {}

    handlers: dict[str, StageHandler] = {"prepped": prep, "transcribed": transcribe}
    await EpisodeProcessor(handlers)(await claim(db, target_stage="transcribed"))

    episode = await Episodes(db).get("ep1")
    assert episode.metadata["transcribed"] == {"words": 3}
    assert episode.metadata["transcript"] == {"text": "hello quokka world"}
    assert [hit.episode_id for hit in await MetadataIndex(db).search("quokka")] == ["ep1"]


async def test_a_metadata_patch_may_not_overwrite_a_stage_output(db: Database) -> None:
    await register(db)

    async def sneaky(ctx: StageContext) -> Mapping[str, Any]:
        return {"metadata_patch": {"transcribed": {"fake": True}}}

    with pytest.raises(FailJob, match="metadata_patch must not set transcribed"):
        await EpisodeProcessor({"prepped": sneaky})(await claim(db, target_stage="prepped"))


async def test_the_demo_handlers_take_an_episode_through_every_stage(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_handlers, "DEMO_SECONDS", 0.02)
    shipped = Path(__file__).parents[2] / "config" / "pipeline.yaml"
    config = load_worker_config(shipped, environ={})
    handlers = Handlers()
    register_builtins(handlers, config)
    await register(db)
    enqueued = await JobQueue(db).enqueue("process_episode", episode_id="ep1")

    job = await run_to_completion(db, handlers, enqueued.job.id)

    assert job.status == "succeeded", job.error
    episode = await Episodes(db).get("ep1")
    assert episode.stage == "clips_discovered"
    assert all(episode.metadata[stage]["demo"] is True for stage in HANDLED)
    assert [hit.episode_id for hit in await MetadataIndex(db).search("demo transcript")] == ["ep1"]


async def test_resumes_after_a_crash_between_stages(db: Database, tmp_path: Path) -> None:
    """SIGKILL a worker while stage 2 runs: stage 1's output survives and is not redone."""
    await register(db)
    params = {"target_stage": "transcribed"}
    await JobQueue(db).enqueue("process_episode", episode_id="ep1", params=params)
    markers = tmp_path / "markers"
    markers.mkdir()
    url = db.config.sqlalchemy_url().render_as_string(hide_password=False)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HELPERS / "crash_worker.py"),
        db.dialect,
        url,
        str(markers),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            line = await child.stdout.readline()
        assert line == b"transcribing\n", await child.stderr.read() if child.stderr else b""
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    crashed = await Episodes(db).get("ep1")
    assert crashed.stage == "prepped"
    token = crashed.metadata["prepped"]["token"]

    await asyncio.sleep(1.2)  # the killed worker's 1-second lease runs out
    queue = JobQueue(db)
    [reaped] = await queue.reap()
    assert reaped.status == "queued"
    [job] = await queue.claim(WORKER, kinds=["process_episode"])
    await EpisodeProcessor(counting_handlers(markers))(JobContext(job, db, queue, WORKER, {}))

    runs = sorted(path.name.split("-")[0] for path in markers.iterdir())
    assert runs == ["prepped", "transcribed", "transcribed"]
    episode = await Episodes(db).get("ep1")
    assert episode.stage == "transcribed"
    assert episode.metadata["prepped"] == {"token": token}
    assert [(stage, status) for stage, status, *_ in await events(db)] == [
        ("prepped", "started"),
        ("prepped", "completed"),
        ("transcribed", "started"),
        ("transcribed", "started"),
        ("transcribed", "completed"),
    ]


def test_stage_handlers_load_from_dotted_paths() -> None:
    loaded = load_stage_handlers({"transcribed": "examples.demo_handlers:transcribe"})
    assert loaded == {"transcribed": demo_handlers.transcribe}

    with pytest.raises(ConfigurationError, match=r"worker\.stages\.transcoded: 'transcoded' is"):
        load_stage_handlers({"transcoded": "examples.demo_handlers:transcribe"})
    with pytest.raises(ConfigurationError, match=r"worker\.stages\.discovered"):
        load_stage_handlers({"discovered": "examples.demo_handlers:transcribe"})
    with pytest.raises(ConfigurationError, match=r"worker\.stages\.prepped: cannot load"):
        load_stage_handlers({"prepped": "examples.nowhere:prep"})
