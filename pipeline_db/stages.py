"""Episode processing: the ``process_episode`` job runs stage handlers in order.

A stage handler is ``async def handler(ctx: StageContext) -> Mapping[str, Any]``,
registered by stage in the configuration
(``worker: stages: {transcribed: "package.module:function"}``). The job's
params are ``{"target_stage": <stage>, "force": <bool>}`` (the target defaults
to the last stage); it must be enqueued with the episode's ``episode_id``, so
two jobs never process one episode at once.

For each stage after the episode's current one, up to the target:

1. if a dependency of the episode has not reached that stage, the job waits:
   it raises :class:`~pipeline_db.handlers.RetryLater` and runs again later;
2. a ``started`` event is logged and the handler runs (no transaction open);
3. in ONE transaction, its output is stored as ``metadata[<stage>]``, the
   episode moves to the stage (only from the stage it was at), and a
   ``completed`` event with the duration and a ``duration_seconds`` metric
   are recorded. A crash before that commit re-runs only this stage; a crash
   after it resumes at the next stage with this output in place.

A handler that raises gets a ``failed`` event with the error and its
exception goes to the runner, which retries the job with backoff (the retry
resumes at the same stage). A stage with no handler fails the job at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db._metadata import check_document, locked_episode, write_episode
from pipeline_db.config import WorkerConfig
from pipeline_db.database import Database
from pipeline_db.dependencies import Dependencies
from pipeline_db.episodes import Episodes, merge_patch
from pipeline_db.errors import (
    ConfigurationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PipelineDBError,
)
from pipeline_db.handlers import FailJob, JobContext, RetryLater, load_object
from pipeline_db.history import History
from pipeline_db.models import Episode
from pipeline_db.queries import history as hq
from pipeline_db.schema import STAGES

#: The stage an episode starts at (registration); no handler runs for it.
FIRST_STAGE = STAGES[0]
#: The stages a handler can be registered for, in order.
HANDLED_STAGES = STAGES[1:]
#: Seconds a job waiting for its episode's dependencies sleeps between checks.
DEPENDENCY_POLL_S = 30.0
#: An output key whose value is merged (RFC 7396) into the top level of the
#: metadata instead of being stored under the stage, for what other readers
#: look for there (the search index reads ``transcript``, ``enrichment``...).
METADATA_PATCH_KEY = "metadata_patch"
#: The metadata key where a forced run notes that it restarted the episode.
RESTART_KEY = "processing"
ERROR_MESSAGE_CHARS = 2_000


@dataclass(frozen=True)
class StageContext:
    """What a stage handler gets: the episode, its earlier outputs, and progress reporting.

    Attributes:
        job: the ``process_episode`` job's context (its params, settings, queue).
        episode: the episode as it was when the stage started.
        stage: the stage this handler is to reach.
        position: the stage's place among the stages of this run (0-based).
        count: how many stages this run goes through.
    """

    job: JobContext
    episode: Episode
    stage: str
    position: int = 0
    count: int = 1

    @property
    def db(self) -> Database:
        """The database."""
        return self.job.db

    @property
    def metadata(self) -> Mapping[str, Any]:
        """The episode's metadata: earlier stages' outputs are under their stage names."""
        return self.episode.metadata

    @property
    def settings(self) -> Mapping[str, Any]:
        """The configuration's ``worker`` section."""
        return self.job.settings

    async def progress(self, *, percent: float | None = None, message: str | None = None) -> None:
        """Report progress within this stage; ``percent`` (0-100) is of this stage alone.

        The job's percent is computed over all the stages of the run.
        """
        overall = None
        if percent is not None:
            share = min(100.0, max(0.0, percent)) / 100
            overall = 100 * (self.position + share) / self.count
        await self.job.progress(percent=overall, stage=self.stage, message=message)


StageHandler = Callable[[StageContext], Awaitable[Mapping[str, Any]]]


def load_stage_handlers(paths: Mapping[str, str]) -> dict[str, StageHandler]:
    """Import the stage handlers named by dotted path (``package.module:function``).

    Raises:
        ConfigurationError: an unknown stage, or a path that does not import.
    """
    handlers: dict[str, StageHandler] = {}
    for stage, path in paths.items():
        key = f"worker.stages.{stage}"
        if stage not in HANDLED_STAGES:
            raise ConfigurationError(
                f"{key}: {stage!r} is not a stage a handler runs for; "
                f"those are {', '.join(HANDLED_STAGES)}",
                key=key,
            )
        handlers[stage] = load_object(path, key)
    return handlers


def missing_handler_message(stage: str) -> str:
    """The error of a job that reached a stage with no handler: what to register, and where."""
    return (
        f"no handler is registered for stage {stage!r}: pipeline-db runs the application's "
        f"stage handlers; register one in the configuration as "
        f'worker: stages: {{{stage}: "package.module:function"}} '
        f"(an async function taking a pipeline_db.stages.StageContext and returning a mapping)"
    )


class EpisodeProcessor:
    """The ``process_episode`` job handler (see the module docstring).

    Args:
        stages: the handler of each stage.
        dependency_poll: seconds between checks while dependencies are unmet.
    """

    def __init__(
        self, stages: Mapping[str, StageHandler], *, dependency_poll: float = DEPENDENCY_POLL_S
    ) -> None:
        unknown = sorted(set(stages) - set(HANDLED_STAGES))
        if unknown:
            raise ConfigurationError(f"no such stages: {', '.join(unknown)}", key="worker.stages")
        self._stages = dict(stages)
        self._poll = dependency_poll

    @classmethod
    def from_config(cls, config: WorkerConfig) -> EpisodeProcessor:
        """The processor of the ``worker.stages`` handlers.

        Raises:
            ConfigurationError: see :func:`load_stage_handlers`.
        """
        return cls(load_stage_handlers(config.stages))

    async def __call__(self, ctx: JobContext) -> dict[str, Any]:
        """Run the episode's stages up to the target.

        Returns:
            ``{"episode_id", "stage"}`` (the stage reached), ``"ran"`` (each
            stage run with its ``duration_seconds``) and ``"metrics"`` (stage
            -> seconds).

        Raises:
            RetryLater: a dependency has not reached the next stage yet.
            FailJob: bad params, no such episode, or a stage without a handler.
        """
        episode_id, target, force = _params(ctx)
        history = History(ctx.db)
        try:
            episode = await Episodes(ctx.db).get(episode_id)
        except NotFoundError as error:
            raise FailJob(error.message) from None
        if force:
            episode = await _restart(ctx.db, episode, ctx.job.id)
        todo = STAGES[STAGES.index(episode.stage) + 1 : STAGES.index(target) + 1]
        for stage in todo:
            if stage not in self._stages:
                message = missing_handler_message(stage)
                await history.append(episode.id, stage, "failed", error_message=message)
                raise FailJob(message)
        ran: list[dict[str, Any]] = []
        for position, stage in enumerate(todo):
            await self._wait_for_dependencies(ctx, episode.id, stage)
            episode, duration = await self._run_stage(
                ctx, history, episode, stage, position, len(todo)
            )
            ran.append({"stage": stage, "duration_seconds": duration})
        await ctx.progress(percent=100.0, stage=episode.stage, message=f"at {episode.stage}")
        return {
            "episode_id": episode.id,
            "stage": episode.stage,
            "ran": ran,
            # The answer of the legacy POST /episodes/process route reads these.
            "metrics": {run["stage"]: run["duration_seconds"] for run in ran},
        }

    async def _wait_for_dependencies(self, ctx: JobContext, episode_id: str, stage: str) -> None:
        unmet = await Dependencies(ctx.db).unmet(episode_id, stage)
        if not unmet:
            return
        message = (
            f"waiting: {stage} needs {', '.join(unmet)} to reach {stage} first; "
            f"checking again in {self._poll:g}s"
        )
        await ctx.progress(stage=stage, message=message)
        raise RetryLater(datetime.now(UTC) + timedelta(seconds=self._poll), message)

    async def _run_stage(
        self,
        ctx: JobContext,
        history: History,
        episode: Episode,
        stage: str,
        position: int,
        count: int,
    ) -> tuple[Episode, float]:
        await history.append(episode.id, stage, "started")
        await ctx.progress(
            percent=100 * position / count,
            stage=stage,
            message=f"{stage}: started (stage {position + 1} of {count})",
        )
        started = time.perf_counter()
        try:
            output = await self._stages[stage](StageContext(ctx, episode, stage, position, count))
            duration = time.perf_counter() - started
            stored, patch = _split_output(stage, output)
            reached = await complete_stage(
                ctx.db, episode, stage, stored, patch=patch, duration_seconds=duration
            )
        except RetryLater:
            raise
        except InvalidInputError as error:  # the output breaks the contract: no retry fixes it
            await _log_failure(history, episode.id, stage, error)
            raise FailJob(f"stage {stage!r}: {error.message}") from error
        except Exception as error:
            await _log_failure(history, episode.id, stage, error)
            raise
        return reached, duration


async def complete_stage(
    db: Database,
    episode: Episode,
    stage: str,
    output: Mapping[str, Any],
    *,
    patch: Mapping[str, Any] | None = None,
    duration_seconds: float,
) -> Episode:
    """Record a finished stage in one transaction; returns the episode at ``stage``.

    Stores ``output`` as ``metadata[stage]`` (replacing an earlier run's),
    merges ``patch`` into the metadata's top level, moves the episode from
    ``episode.stage`` to ``stage``, and logs a ``completed`` event and a
    ``duration_seconds`` metric.

    Raises:
        ConflictError: the episode is no longer at ``episode.stage``.
        NotFoundError: the episode was deleted.
        InvalidInputError: the resulting metadata is invalid or too large.
    """
    previous = episode.stage
    attempts = 0

    async def work(conn: AsyncConnection) -> Episode:
        nonlocal attempts
        attempts += 1
        current = await locked_episode(conn, episode.id)
        if current.stage != previous:
            if attempts > 1 and current.stage == stage:
                return current  # our earlier attempt's COMMIT landed before its connection died
            raise ConflictError(
                f"episode {episode.id!r} moved from {previous!r} to {current.stage!r} while "
                f"stage {stage!r} ran; its output was not recorded",
                episode_id=episode.id,
                current=current.stage,
            )
        merged = merge_patch(current.metadata, patch) if patch else dict(current.metadata)
        merged[stage] = dict(output)
        document = check_document(merged, f"the metadata of episode {episode.id!r}")
        updated = await write_episode(
            conn, db.dialect, current, {"metadata": document, "stage": stage}
        )
        await conn.execute(hq.insert_event_returning(_event(episode.id, stage, duration_seconds)))
        metric = {"metric_name": "duration_seconds", "metric_value": duration_seconds}
        await conn.execute(
            hq.insert_metrics(), [{"episode_id": episode.id, "stage": stage, **metric}]
        )
        return updated

    return await db.transaction(work)


async def _restart(db: Database, episode: Episode, job_id: int) -> Episode:
    """Move the episode back to the first stage, once per job (a retry must not restart)."""
    if _restarted_by(episode) == job_id:
        return episode

    async def work(conn: AsyncConnection) -> Episode:
        current = await locked_episode(conn, episode.id)
        if _restarted_by(current) == job_id:
            return current
        note = {"restarted_by_job": job_id, "restarted_from": current.stage}
        document = check_document(
            {**current.metadata, RESTART_KEY: note}, f"the metadata of episode {episode.id!r}"
        )
        updated = await write_episode(
            conn, db.dialect, current, {"metadata": document, "stage": FIRST_STAGE}
        )
        # Logged as Episodes.advance_stage(force=True) logs a move back.
        await conn.execute(hq.insert_event_returning(_event(episode.id, FIRST_STAGE, None)))
        return updated

    return await db.transaction(work)


def _restarted_by(episode: Episode) -> Any:
    note = episode.metadata.get(RESTART_KEY)
    return note.get("restarted_by_job") if isinstance(note, Mapping) else None


def _event(episode_id: str, stage: str, duration: float | None) -> dict[str, Any]:
    return {
        "episode_id": episode_id,
        "stage": stage,
        "status": "completed",
        "duration_seconds": duration,
    }


def _params(ctx: JobContext) -> tuple[str, str, bool]:
    job = ctx.job
    if job.episode_id is None:
        raise FailJob("process_episode jobs must be enqueued with the episode's episode_id")
    target = job.params.get("target_stage", STAGES[-1])
    if target not in STAGES:
        raise FailJob(f"target_stage: unknown stage {target!r}; stages are {', '.join(STAGES)}")
    force = job.params.get("force", False)
    if not isinstance(force, bool):
        raise FailJob(f"force must be true or false, not {force!r}")
    return job.episode_id, target, force


def _split_output(stage: str, output: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The output to store under the stage, and the top-level metadata patch it carries."""
    if not isinstance(output, Mapping):
        raise InvalidInputError(
            f"the handler returned {type(output).__name__}, not a mapping (a JSON object)"
        )
    stored = dict(output)
    patch = stored.pop(METADATA_PATCH_KEY, None)
    if patch is not None:
        if not isinstance(patch, Mapping):
            raise InvalidInputError(f"{METADATA_PATCH_KEY} must be a mapping")
        reserved = sorted(set(patch) & {*STAGES, RESTART_KEY})
        if reserved:
            raise InvalidInputError(
                f"{METADATA_PATCH_KEY} must not set {', '.join(reserved)}: "
                "the stages' outputs are written by their own stages"
            )
    return check_document(stored, "the output"), dict(patch) if patch is not None else None


async def _log_failure(history: History, episode_id: str, stage: str, error: Exception) -> None:
    text = str(error).strip()
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    message = message.replace("\x00", "")[:ERROR_MESSAGE_CHARS]
    # The handler's error matters more than a failure to log it.
    with contextlib.suppress(PipelineDBError):
        await history.append(episode_id, stage, "failed", error_message=message)
