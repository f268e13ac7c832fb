"""Property-based tests generated from ``/openapi.json`` with schemathesis, on both backends.

Every operation of the document gets ``EXAMPLES`` generated requests that fit
its schema (positive) and ``EXAMPLES`` that break it (negative), drawn with a
fixed seed (``derandomize``), sent through ``httpx.ASGITransport`` to the app
served once per backend (its lifespan run by ``LifespanManager``). Each answer
must not be a 5xx, must fit the schema the document declares for its status
and content type, and must use a status the document declares.

Half the requests aim at records that exist (an episode, a clip, a social job,
a job, made before each such request), so success answers are checked too,
not only 404s.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline_db import DatabaseConfig
from server.api import REGISTRY
from server.openapi import openapi_document
from tests.conftest import BACKENDS, admin_execute, postgres_config, sqlite_config
from tests.integration._server import AUTH, BASE_URL, Api, serve

EXAMPLES = 15
SEED_EPISODE = "prop-ep"
SEED_CLIP = "prop-clip"
SEED_SOCIAL_JOB = "prop-social"
# Negative cases break a parameter, the body or the credentials: an operation with
# none of these (/health, /openapi.json, /docs) has no negative case.
CASES = [
    pytest.param(op.method, op.path, mode, id=f"{op.method} {op.path} {mode.value}")
    for op in REGISTRY
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or op.query or op.body or "{" in op.path or not op.public
]
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
SCHEMA = schemathesis.openapi.from_dict(openapi_document())

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_template: str | None,
    sqlite_template: Path,
) -> AsyncIterator[Api]:
    """The app on a fresh database of the backend, served for the whole module."""
    database = _database(request.param, tmp_path_factory, postgres_template, sqlite_template)
    async with database as config:
        # process_wait=0: the legacy route answers 202 at once (no runner runs here);
        # raise_app_exceptions=False: a 500 is an answer for the checks to report.
        async with serve(config, raise_app_exceptions=False, process_wait=0) as served:
            yield served


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(data=st.data())
async def test_operation_keeps_its_contract(
    api: Api, method: str, path: str, mode: GenerationMode, data: st.DataObject
) -> None:
    operation = SCHEMA[path][method]
    known = await _known_ids(api, path) if data.draw(st.booleans(), label="existing") else {}
    fixed = {name: value for name, value in known.items() if f"{{{name}}}" in path}
    case = data.draw(operation.as_strategy(mode, path_parameters=fixed or None), label="case")
    if known and mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
        # Bodies name episodes too (the legacy route, jobs, dependencies, social jobs).
        for name in ("episode_id", "depends_on_episode_id"):
            if name in case.body:
                case.body[name] = SEED_EPISODE
    if isinstance(case.query, dict) and "wait" in case.query:
        case.query["wait"] = 0  # any valid wait behaves alike here; a long one only takes long
    request = case.as_transport_kwargs(base_url=BASE_URL, headers=AUTH)
    assert not request.get("cookies")  # the API declares none
    try:
        response = await api.client.request(
            request["method"],
            request["url"],
            headers=request["headers"],
            params=request.get("params"),
            json=request.get("json"),
            content=request.get("data"),
        )
    except httpx.InvalidURL:
        reject()  # longer than any client sends (httpx caps a URL at 64 KiB)
    case.validate_response(response, checks=CHECKS)


async def _known_ids(api: Api, path: str) -> dict[str, Any]:
    """Make sure the seed records exist (an earlier request may have deleted them)."""
    client = api.client
    await client.post(
        "/episodes",
        json={"id": SEED_EPISODE, "hash": "prop-hash", "source_path": "/videos/prop.mp4"},
    )
    await client.post(
        f"/episodes/{SEED_EPISODE}/clips",
        json={"id": SEED_CLIP, "start_ms": 0, "end_ms": 15_000},
    )
    await client.post(
        "/social/jobs",
        json={"episode_id": SEED_EPISODE, "platforms": ["tiktok"], "job_id": SEED_SOCIAL_JOB},
    )
    job = await client.post("/jobs", json={"kind": "noop", "episode_id": SEED_EPISODE})
    assert job.status_code == 202, job.text
    return {
        "episode_id": SEED_EPISODE,
        "clip_id": SEED_CLIP,
        # /jobs/{job_id} is a queued job's number, /social/jobs/{job_id} a social job's name
        "job_id": SEED_SOCIAL_JOB if path.startswith("/social/") else str(job.json()["id"]),
    }


@contextlib.asynccontextmanager
async def _database(
    backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_template: str | None,
    sqlite_template: Path,
) -> AsyncIterator[DatabaseConfig]:
    """A fresh migrated database of ``backend`` for the module."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("properties") / "pipeline.db"
        shutil.copyfile(sqlite_template, path)
        yield sqlite_config(path)
        return
    if postgres_template is None:
        pytest.skip("PostgreSQL is unreachable (set PIPELINE_TEST_POSTGRES_URL)")
    name = f"pdbprop_{uuid.uuid4().hex[:12]}"
    await admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    try:
        yield postgres_config(name)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
