"""Episodes: register, read, list, patch (metadata and stage), delete, history, search, stats."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pipeline_db.models import Clip, Dependency, EpisodeStats, LogEntry, SearchHit
from server.api import operation, parse_body, parse_query, path_param
from server.context import episode_out, json_response, location, page, services
from server.schemas import (
    AddDependency,
    Deleted,
    EpisodeOut,
    EpisodeQuery,
    HistoryQuery,
    Items,
    LogEvent,
    Page,
    PatchEpisode,
    RegisterEpisode,
    SearchQuery,
)

TAG = "episodes"


@operation(
    "GET",
    "/episodes",
    summary="List episodes (filters, cursor pagination)",
    tag=TAG,
    query=EpisodeQuery,
    responses={200: ("A page of episodes", Page[EpisodeOut])},
)
async def list_episodes(request: Request) -> Response:
    query = parse_query(request, EpisodeQuery)
    found = await services(request).episodes.list(
        stages=list(query.stage) if query.stage else None,
        show=query.show,
        updated_since=query.updated_since,
        cursor=query.cursor,
        limit=query.limit,
    )
    return json_response(page(request, [episode_out(e) for e in found.items], found.next_cursor))


@operation(
    "POST",
    "/episodes",
    summary="Register an episode (200 with the existing one for a known hash)",
    tag=TAG,
    body=RegisterEpisode,
    responses={201: ("Registered", EpisodeOut), 200: ("Duplicate hash", EpisodeOut)},
)
async def register_episode(request: Request) -> Response:
    body = await parse_body(request, RegisterEpisode)
    registration = await services(request).episodes.register(**body.model_dump())
    episode = registration.episode
    return json_response(
        episode_out(episode) | {"duplicate": registration.duplicate},
        200 if registration.duplicate else 201,
        headers={"Location": location("/episodes", episode.id)},
    )


@operation(
    "GET",
    "/episodes/{episode_id}",
    summary="An episode with its metadata",
    tag=TAG,
    responses={200: ("The episode", EpisodeOut)},
)
async def get_episode(request: Request) -> Response:
    episode = await services(request).episodes.get(path_param(request, "episode_id"))
    return json_response(episode_out(episode))


@operation(
    "PATCH",
    "/episodes/{episode_id}",
    summary="Merge-patch metadata and/or advance the stage (409 if it moved)",
    tag=TAG,
    body=PatchEpisode,
    responses={200: ("The episode", EpisodeOut)},
)
async def patch_episode(request: Request) -> Response:
    episode_id = path_param(request, "episode_id")
    body = await parse_body(request, PatchEpisode)
    episodes = services(request).episodes
    episode = None
    if body.metadata is not None:
        episode = await episodes.patch_metadata(episode_id, body.metadata)
    if body.stage is not None:
        episode = await episodes.advance_stage(
            episode_id, body.stage, expected=body.expected_stage, force=body.force
        )
    if episode is None:
        episode = await episodes.get(episode_id)
    return json_response(episode_out(episode))


@operation(
    "DELETE",
    "/episodes/{episode_id}",
    summary="Delete an episode and everything hanging off it",
    tag=TAG,
    responses={200: ("Deleted", Deleted)},
)
async def delete_episode(request: Request) -> Response:
    episode_id = path_param(request, "episode_id")
    await services(request).episodes.delete(episode_id)
    return json_response({"deleted": episode_id})


@operation(
    "GET",
    "/episodes/{episode_id}/history",
    summary="The episode's processing log in time order",
    tag=TAG,
    query=HistoryQuery,
    responses={200: ("Events", Items[LogEntry])},
)
async def episode_history(request: Request) -> Response:
    query = parse_query(request, HistoryQuery)
    events = await services(request).history.of(
        path_param(request, "episode_id"), limit=query.limit
    )
    return json_response({"items": events})


@operation(
    "POST",
    "/episodes/{episode_id}/history",
    summary="Append a processing event",
    tag=TAG,
    body=LogEvent,
    responses={201: ("The event", LogEntry)},
)
async def append_event(request: Request) -> Response:
    body = await parse_body(request, LogEvent)
    entry = await services(request).history.append(
        path_param(request, "episode_id"),
        body.stage,
        body.status,
        duration_seconds=body.duration_seconds,
        error_message=body.error_message,
    )
    return json_response(entry, 201)


@operation(
    "GET",
    "/episodes/{episode_id}/clips",
    summary="The episode's clips by start time",
    tag=TAG,
    responses={200: ("Clips", Items[Clip])},
)
async def episode_clips(request: Request) -> Response:
    clips = await services(request).clips.of_episode(path_param(request, "episode_id"))
    return json_response({"items": clips})


@operation(
    "POST",
    "/episodes/{episode_id}/dependencies",
    summary="Make the episode depend on another (a cycle is refused, named)",
    tag=TAG,
    body=AddDependency,
    responses={201: ("The dependency", Dependency)},
)
async def add_dependency(request: Request) -> Response:
    body = await parse_body(request, AddDependency)
    dependency = await services(request).dependencies.add(
        path_param(request, "episode_id"),
        body.depends_on_episode_id,
        dependency_type=body.dependency_type,
    )
    return json_response(dependency, 201)


@operation(
    "GET",
    "/search",
    summary="Full-text search over titles, summaries, transcripts, topics and guests",
    tag=TAG,
    query=SearchQuery,
    responses={200: ("Hits, best first", Items[SearchHit])},
)
async def search(request: Request) -> Response:
    query = parse_query(request, SearchQuery)
    hits = await services(request).index.search(query.q, show=query.show, limit=query.limit)
    return json_response({"items": hits})


@operation(
    "GET",
    "/stats",
    summary="Episodes by stage, recent activity and failure rate",
    tag=TAG,
    responses={200: ("Statistics", EpisodeStats)},
)
async def stats(request: Request) -> Response:
    return json_response(await services(request).episodes.stats())
