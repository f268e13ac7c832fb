"""The Starlette application: its lifespan owns the one `Database` of the process."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline_db import Database, DatabaseConfig, PipelineDBError, load_database_config
from pipeline_db.migrations import require_current, status, upgrade

logger = logging.getLogger("server")


def create_app(config: DatabaseConfig | None = None, *, auto_upgrade: bool = False) -> Starlette:
    """Build the app. Without ``config``, it is loaded from the configuration file.

    Args:
        config: the database configuration.
        auto_upgrade: upgrade a schema that is behind instead of refusing to serve.
    """
    database_config = config or load_database_config()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with Database(database_config) as db:
            if auto_upgrade:
                await upgrade(db)
            await require_current(db)
            logger.info("serving %s", database_config.describe())
            yield {"db": db}

    return Starlette(
        routes=[Route("/health", health), Route("/ready", ready)],
        lifespan=lifespan,
    )


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers; the database is not touched."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Readiness: a database round trip, the schema version and the pool."""
    db: Database = request.state.db
    try:
        schema = await status(db)
    except PipelineDBError as error:
        return JSONResponse({"status": "unavailable", "detail": error.message}, status_code=503)
    pool = db.pool_status()
    return JSONResponse(
        {
            "status": "ok" if schema.is_current else "behind",
            "database": db.dialect,
            "schema": {"current": schema.current, "head": schema.head},
            "pool": {
                "size": pool.size,
                "checked_in": pool.checked_in,
                "checked_out": pool.checked_out,
                "overflow": pool.overflow,
                "waiting": pool.waiting,
            },
        },
        status_code=200 if schema.is_current else 503,
    )


def create_upgrading_app() -> Starlette:
    """The app for ``pipeline-db serve --upgrade``: upgrades a schema that is behind."""
    return create_app(auto_upgrade=True)
