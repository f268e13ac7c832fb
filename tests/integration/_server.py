"""Shared helpers of the server tests: the app served in-process, on a real database.

:func:`serve` runs the app's lifespan with ``asgi_lifespan.LifespanManager`` and
yields an :class:`Api`: an ``httpx.AsyncClient`` over ``ASGITransport`` that
sends the bearer token, plus a separate :class:`~pipeline_db.Database` on the
same database for checking what the requests did (counts, rows).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import Table, func, select

from pipeline_db import Database, DatabaseConfig
from pipeline_db.config import ServerConfig, WorkerConfig
from pipeline_db.schema import metadata
from server.app import create_app

TOKEN = "s3cret-token-for-tests"
OTHER_TOKEN = "another-named-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE_URL = "http://testserver"
#: The tables requests write, for "nothing ran twice" checks.
WRITTEN = [table for name, table in metadata.tables.items() if name != "idempotency_keys"]
#: What no error body may ever contain.
LEAKS = ("Traceback", 'File "', "SELECT", "INSERT", "UPDATE ", "sqlalchemy", TOKEN, OTHER_TOKEN)


@dataclass
class Api:
    """A client of the app under test and a database handle beside it."""

    client: httpx.AsyncClient
    db: Database
    transport: httpx.ASGITransport

    def client_with(self, headers: dict[str, str]) -> httpx.AsyncClient:
        """Another client of the same app, sending ``headers`` instead of the token."""
        return httpx.AsyncClient(transport=self.transport, base_url=BASE_URL, headers=headers)

    async def count(self, table: Table, *where: Any) -> int:
        """Rows of ``table`` (matching ``where``)."""
        query = select(func.count()).select_from(table)
        if where:
            query = query.where(*where)
        async with self.db.read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def footprint(self) -> dict[str, int]:
        """Row counts of every table a request may write (idempotency keys aside)."""
        return {table.name: await self.count(table) for table in WRITTEN}

    async def episode(self, episode_id: str = "ep1", **values: Any) -> dict[str, Any]:
        """Register an episode through the API; returns its JSON."""
        body = {
            "id": episode_id,
            "hash": f"hash-{episode_id}",
            "source_path": f"/videos/{episode_id}.mp4",
        } | values
        response = await self.client.post("/episodes", json=body)
        assert response.status_code in (200, 201), response.text
        found: dict[str, Any] = response.json()
        return found


def server_config(**overrides: Any) -> ServerConfig:
    """The server settings of the tests: the test token, no long waits."""
    return ServerConfig.model_validate({"api_token": TOKEN, "process_wait": 5.0} | overrides)


@contextlib.asynccontextmanager
async def serve(
    config: DatabaseConfig,
    *,
    headers: dict[str, str] | None = None,
    raise_app_exceptions: bool = True,
    **server: Any,
) -> AsyncIterator[Api]:
    """Serve the app on ``config``'s database (lifespan included) and yield an :class:`Api`."""
    app = create_app(config, server=server_config(**server), worker=WorkerConfig())
    async with LifespanManager(app) as manager, Database(config) as db:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(
            transport=transport, base_url=BASE_URL, headers=AUTH if headers is None else headers
        )
        async with client:
            yield Api(client, db, transport)


def assert_problem(response: httpx.Response, status: int, *fields: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of ``status`` naming ``fields``, and leaks nothing."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert body["title"] and body["detail"]
    named = {error["field"] for error in body.get("errors", [])}
    for field in fields:
        assert any(field in name for name in named), (field, named)
    assert_no_leak(response.text)
    return body


def assert_no_leak(text: str) -> None:
    """No traceback, SQL or secret in a response body."""
    for leak in LEAKS:
        assert leak not in text, (leak, text)


def dumps(value: Any) -> bytes:
    """JSON bytes as a client would send them."""
    return json.dumps(value).encode()
