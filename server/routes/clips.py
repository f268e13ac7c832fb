"""Clips of episodes, their rendered assets, and social-media jobs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pipeline_db.models import Clip, ClipAsset, SocialJob
from server.api import operation, parse_body, parse_query, path_param
from server.context import json_response, location, services
from server.schemas import (
    CreateAsset,
    CreateClip,
    CreateSocialJob,
    Deleted,
    Items,
    PatchClip,
    PatchSocialJob,
    SocialQuery,
    SocialStats,
)

TAG = "clips"
SOCIAL = "social"


@operation(
    "POST",
    "/episodes/{episode_id}/clips",
    summary="Register a clip of an episode",
    tag=TAG,
    body=CreateClip,
    responses={201: ("The clip", Clip)},
)
async def create_clip(request: Request) -> Response:
    body = await parse_body(request, CreateClip)
    clip = await services(request).clips.register(
        episode_id=path_param(request, "episode_id"), **body.model_dump()
    )
    return json_response(clip, 201, headers={"Location": location("/clips", clip.id)})


@operation(
    "GET", "/clips/{clip_id}", summary="A clip", tag=TAG, responses={200: ("The clip", Clip)}
)
async def get_clip(request: Request) -> Response:
    return json_response(await services(request).clips.get(path_param(request, "clip_id")))


@operation(
    "PATCH",
    "/clips/{clip_id}",
    summary="Update a clip's status, title, caption or hashtags",
    tag=TAG,
    body=PatchClip,
    responses={200: ("The clip", Clip)},
)
async def patch_clip(request: Request) -> Response:
    clip_id = path_param(request, "clip_id")
    body = await parse_body(request, PatchClip)
    clips = services(request).clips
    changes = body.model_dump(exclude_unset=True)
    status = changes.pop("status", None)
    clip = await clips.update(clip_id, **changes) if changes else None
    if status is not None:
        clip = await clips.set_status(clip_id, status)
    return json_response(clip or await clips.get(clip_id))


@operation(
    "DELETE",
    "/clips/{clip_id}",
    summary="Delete a clip and its assets",
    tag=TAG,
    responses={200: ("Deleted", Deleted)},
)
async def delete_clip(request: Request) -> Response:
    clip_id = path_param(request, "clip_id")
    await services(request).clips.delete(clip_id)
    return json_response({"deleted": clip_id})


@operation(
    "POST",
    "/clips/{clip_id}/assets",
    summary="Register a rendered file of a clip (replaces the same variant and ratio)",
    tag=TAG,
    body=CreateAsset,
    responses={201: ("The asset", ClipAsset)},
)
async def add_asset(request: Request) -> Response:
    body = await parse_body(request, CreateAsset)
    asset = await services(request).clips.add_asset(
        path_param(request, "clip_id"), **body.model_dump()
    )
    return json_response(asset, 201)


@operation(
    "POST",
    "/social/jobs",
    summary="Create a social-media packaging job",
    tag=SOCIAL,
    body=CreateSocialJob,
    responses={201: ("The job", SocialJob), 404: ("No such episode", None)},
)
async def create_social_job(request: Request) -> Response:
    body = await parse_body(request, CreateSocialJob)
    job = await services(request).social.create(**body.model_dump())
    return json_response(job, 201, headers={"Location": location("/social/jobs", job.job_id)})


@operation(
    "GET",
    "/social/jobs",
    summary="List social jobs, newest first",
    tag=SOCIAL,
    query=SocialQuery,
    responses={200: ("Jobs", Items[SocialJob])},
)
async def list_social_jobs(request: Request) -> Response:
    query = parse_query(request, SocialQuery)
    found = await services(request).social.list(
        episode_id=query.episode_id, status=query.status, limit=query.limit
    )
    return json_response({"items": found})


@operation(
    "GET",
    "/social/jobs/{job_id}",
    summary="A social job",
    tag=SOCIAL,
    responses={200: ("The job", SocialJob)},
)
async def get_social_job(request: Request) -> Response:
    return json_response(await services(request).social.get(path_param(request, "job_id")))


@operation(
    "PATCH",
    "/social/jobs/{job_id}",
    summary="Update a social job's status, progress, packages, errors or warnings",
    tag=SOCIAL,
    body=PatchSocialJob,
    responses={200: ("The job", SocialJob)},
)
async def patch_social_job(request: Request) -> Response:
    body = await parse_body(request, PatchSocialJob)
    job = await services(request).social.update(
        path_param(request, "job_id"), **body.model_dump(exclude_unset=True)
    )
    return json_response(job)


@operation(
    "DELETE",
    "/social/jobs/{job_id}",
    summary="Delete a social job",
    tag=SOCIAL,
    responses={200: ("Deleted", Deleted)},
)
async def delete_social_job(request: Request) -> Response:
    job_id = path_param(request, "job_id")
    await services(request).social.delete(job_id)
    return json_response({"deleted": job_id})


@operation(
    "GET",
    "/social/stats",
    summary="Social jobs by status",
    tag=SOCIAL,
    responses={200: ("Counts by status", SocialStats)},
)
async def social_stats(request: Request) -> Response:
    return json_response(await services(request).social.stats())
