"""Jobs: submit processing and discovery, read, list, cancel, retry; and the legacy route."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from pipeline_db import NotFoundError
from pipeline_db.jobs import FINISHED_CHANNEL
from pipeline_db.models import Job
from server.api import operation, parse_body, parse_query, path_param
from server.context import Services, json_response, location, page, services
from server.errors import RequestInvalid
from server.schemas import (
    INT64_MAX,
    CreateJob,
    Discover,
    JobQuery,
    LegacyProcess,
    LegacyQuery,
    LegacyResult,
    Page,
    ProcessEpisode,
)

TAG = "jobs"
POLL_S = 0.5


def _accepted(job: Job, created: bool = True) -> Response:
    headers = {"Location": location("/jobs", job.id)}
    return json_response(job, 202 if created else 200, headers=headers)


@operation(
    "POST",
    "/episodes/{episode_id}/process",
    summary="Process an episode up to a stage, in the background (202 + Location)",
    tag=TAG,
    body=ProcessEpisode,
    responses={202: ("The job", Job)},
)
async def process_episode(request: Request) -> Response:
    episode_id = path_param(request, "episode_id")
    body = await parse_body(request, ProcessEpisode)
    enqueued = await services(request).jobs.enqueue(
        "process_episode",
        episode_id=episode_id,
        params={"target_stage": body.target_stage, "force": body.force},
        priority=body.priority,
        webhook_url=body.webhook_url,
    )
    return _accepted(enqueued.job)


@operation(
    "POST",
    "/episodes/discover",
    summary="Scan the source folders for new videos, in the background",
    tag=TAG,
    body=Discover,
    responses={202: ("The job", Job)},
)
async def discover(request: Request) -> Response:
    body = await parse_body(request, Discover)
    enqueued = await services(request).jobs.enqueue("discover", webhook_url=body.webhook_url)
    return _accepted(enqueued.job)


@operation(
    "POST",
    "/jobs",
    summary="Submit a job of any registered kind",
    tag=TAG,
    body=CreateJob,
    responses={202: ("The job", Job), 404: ("No such episode", None)},
)
async def create_job(request: Request) -> Response:
    body = await parse_body(request, CreateJob)
    enqueued = await services(request).jobs.enqueue(**body.model_dump())
    return _accepted(enqueued.job)


@operation(
    "GET",
    "/jobs",
    summary="List jobs, newest first (filters, cursor pagination)",
    tag=TAG,
    query=JobQuery,
    responses={200: ("A page of jobs", Page[Job])},
)
async def list_jobs(request: Request) -> Response:
    query = parse_query(request, JobQuery)
    found = await services(request).jobs.list(
        statuses=list(query.status) if query.status else None,
        kind=query.kind,
        episode_id=query.episode_id,
        cursor=query.cursor,
        limit=query.limit,
    )
    return json_response(page(request, list(found.items), found.next_cursor))


def _job_id(request: Request) -> int:
    raw = path_param(request, "job_id")
    # Plain ASCII digits only: int() would also take " 7", "1_0" and Arabic-Indic digits.
    if not raw.isascii() or not raw.isdigit():
        raise RequestInvalid(
            f"job_id must be a positive integer, not {raw!r}", [("job_id", "not an integer")]
        )
    job_id = int(raw)
    if job_id > INT64_MAX:  # past the id column's range: no such job can exist
        raise NotFoundError(f"job {raw} does not exist", job_id=raw)
    return job_id


@operation("GET", "/jobs/{job_id}", summary="A job", tag=TAG, responses={200: ("The job", Job)})
async def get_job(request: Request) -> Response:
    return json_response(await services(request).jobs.get(_job_id(request)))


@operation(
    "DELETE",
    "/jobs/{job_id}",
    summary="Cancel a job (a running one stops at its next heartbeat)",
    tag=TAG,
    responses={200: ("The job", Job)},
)
async def cancel_job(request: Request) -> Response:
    return json_response(await services(request).jobs.cancel(_job_id(request)))


@operation(
    "POST",
    "/jobs/{job_id}/retry",
    summary="Queue a failed or cancelled job again",
    tag=TAG,
    responses={200: ("The job", Job)},
)
async def retry_job(request: Request) -> Response:
    return json_response(await services(request).jobs.retry(_job_id(request)))


@operation(
    "POST",
    "/episodes/process",
    summary="Legacy: process and wait (the existing n8n workflows' route)",
    tag="legacy",
    query=LegacyQuery,
    body=LegacyProcess,
    responses={
        200: ("Finished (success or not)", LegacyResult),
        202: ("Still running", Job),
        404: ("No such episode", None),
    },
)
async def legacy_process(request: Request) -> Response:
    """Enqueue ``process_episode`` and wait up to ``wait`` seconds, answering in the old shape."""
    query = parse_query(request, LegacyQuery)
    body = await parse_body(request, LegacyProcess)
    found = services(request)
    await found.episodes.get(body.episode_id)  # 404 before anything is queued
    enqueued = await found.jobs.enqueue(
        "process_episode",
        episode_id=body.episode_id,
        params={"target_stage": body.target_stage, "force": body.force_reprocess},
    )
    wait = found.config.process_wait if query.wait is None else query.wait
    job = await _wait_for(found, enqueued.job, wait)
    if not job.finished:
        return _accepted(job)
    episode = await found.episodes.get(body.episode_id)
    duration = None
    if job.started_at is not None and job.finished_at is not None:
        duration = (job.finished_at - job.started_at).total_seconds()
    result = job.result if isinstance(job.result, dict) else {}
    return json_response(
        LegacyResult(
            success=job.status == "succeeded",
            episode_id=body.episode_id,
            stage=episode.stage,
            duration=duration,
            metrics=result.get("metrics", {}) if isinstance(result.get("metrics"), dict) else {},
            error=job.error if job.status != "succeeded" else None,
            job_id=job.id,
        )
    )


async def _wait_for(found: Services, job: Job, wait: float) -> Job:
    """Poll the job until it finishes or ``wait`` seconds pass (woken early in-process)."""
    deadline = time.monotonic() + wait
    wake = found.db.signals.subscribe(FINISHED_CHANNEL)
    try:
        while not job.finished and time.monotonic() < deadline:
            wake.clear()
            timeout = min(POLL_S, max(0.0, deadline - time.monotonic()))
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except TimeoutError:
                pass
            job = await found.jobs.get(job.id)
    finally:
        found.db.signals.unsubscribe(FINISHED_CHANNEL, wake)
    return job
