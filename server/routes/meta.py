"""Health, readiness, metrics and the API's own description."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pipeline_db import PipelineDBError
from pipeline_db.migrations import status
from server import metrics
from server.api import operation
from server.context import json_response, services
from server.openapi import docs_page, openapi_document
from server.schemas import Health, Ready

TAG = "meta"


@operation(
    "GET",
    "/health",
    summary="Liveness: the process answers (the database is not touched)",
    tag=TAG,
    responses={200: ("Alive", Health)},
    public=True,
)
async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


@operation(
    "GET",
    "/ready",
    summary="Readiness: a database round trip, the schema version, the pool, the queue depth",
    tag=TAG,
    responses={200: ("Ready", Ready), 503: ("Not ready", Ready)},
)
async def ready(request: Request) -> Response:
    found = services(request)
    pool = found.db.pool_status()
    body: dict[str, Any] = {
        "status": "ok",
        "database": found.db.dialect,
        "schema_version": {"current": None, "head": None},
        "pool": {
            "size": pool.size,
            "checked_in": pool.checked_in,
            "checked_out": pool.checked_out,
            "overflow": pool.overflow,
            "waiting": pool.waiting,
        },
        "queue_depth": None,
    }
    try:
        schema = await status(found.db)
        stats = await found.jobs.stats()
    except PipelineDBError as error:
        body["status"] = "unavailable"
        body["detail"] = error.message
        return json_response(body, 503)
    body["schema_version"] = {"current": schema.current, "head": schema.head}
    body["queue_depth"] = stats.by_status.get("queued", 0)
    if not schema.is_current:
        body["status"] = "schema behind: run `pipeline-db db upgrade`"
        return json_response(body, 503)
    return json_response(body)


@operation("GET", "/metrics", summary="Prometheus metrics", tag=TAG, media_type="text/plain")
async def metrics_endpoint(request: Request) -> Response:
    found = services(request)
    metrics.observe_pool(found.db.pool_status())
    try:
        stats = await found.jobs.stats()
    except PipelineDBError:
        stats = None
    body, content_type = metrics.render(stats)
    return Response(body, media_type=content_type)


@operation("GET", "/openapi.json", summary="This API's OpenAPI 3.1 document", tag=TAG, public=True)
async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


@operation(
    "GET",
    "/docs",
    summary="Human-readable API documentation (works offline)",
    tag=TAG,
    public=True,
    media_type="text/html",
)
async def docs(request: Request) -> Response:
    return HTMLResponse(docs_page())
