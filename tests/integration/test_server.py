"""The HTTP API as a whole, on both backends: every operation, auth, errors, idempotency, meta.

Resource behaviour is in ``test_server_episodes.py``, ``test_server_jobs.py``
and ``test_server_clips.py``; this module holds what every route shares, and
the table :data:`SUCCESSES` that makes sure each registered operation is
exercised (a new route without a line here fails ``test_every_operation_is_exercised``).
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from pipeline_db import DatabaseConfig
from pipeline_db.schema import episodes, idempotency_keys, jobs
from server.api import REGISTRY
from tests.integration._server import (
    OTHER_TOKEN,
    TOKEN,
    Api,
    assert_no_leak,
    assert_problem,
    serve,
)

MAX_BODY = 1024


@pytest.fixture
async def api(make_config: Callable[..., DatabaseConfig]) -> AsyncIterator[Api]:
    """The app on a fresh database, with a 1 KiB body limit."""
    async with serve(make_config(), max_body_bytes=MAX_BODY) as served:
        yield served


# -- every operation ----------------------------------------------------------------


@dataclass
class Seeds:
    """Records every operation can work on."""

    episode: str
    other: str
    clip: str
    social: str
    job: int


async def seed(api: Api) -> Seeds:
    client = api.client
    await api.episode("ep1", metadata={"title": "Kubernetes at scale", "show_name": "Ops"})
    await api.episode("ep2")
    if (await client.get("/clips/c1")).status_code == 404:
        clip = {"id": "c1", "start_ms": 0, "end_ms": 9}
        assert (await client.post("/episodes/ep1/clips", json=clip)).status_code == 201
    social = await client.post("/social/jobs", json={"episode_id": "ep1", "platforms": ["x"]})
    job = await client.post("/jobs", json={"kind": "noop", "episode_id": "ep1"})
    assert (social.status_code, job.status_code) == (201, 202)
    return Seeds("ep1", "ep2", "c1", social.json()["job_id"], job.json()["id"])


Call = Callable[[httpx.AsyncClient, Seeds], Awaitable[httpx.Response]]

#: One successful request per operation, and its status.
SUCCESSES: dict[tuple[str, str], tuple[Call, int]] = {
    ("GET", "/health"): (lambda c, s: c.get("/health"), 200),
    ("GET", "/ready"): (lambda c, s: c.get("/ready"), 200),
    ("GET", "/metrics"): (lambda c, s: c.get("/metrics"), 200),
    ("GET", "/openapi.json"): (lambda c, s: c.get("/openapi.json"), 200),
    ("GET", "/docs"): (lambda c, s: c.get("/docs"), 200),
    ("GET", "/episodes"): (lambda c, s: c.get("/episodes", params={"stage": "discovered"}), 200),
    ("POST", "/episodes"): (
        lambda c, s: c.post("/episodes", json={"id": "e3", "hash": "h3", "source_path": "/3"}),
        201,
    ),
    ("GET", "/episodes/{episode_id}"): (lambda c, s: c.get(f"/episodes/{s.episode}"), 200),
    ("PATCH", "/episodes/{episode_id}"): (
        lambda c, s: c.patch(f"/episodes/{s.episode}", json={"stage": "prepped"}),
        200,
    ),
    ("DELETE", "/episodes/{episode_id}"): (lambda c, s: c.delete(f"/episodes/{s.other}"), 200),
    ("GET", "/episodes/{episode_id}/history"): (
        lambda c, s: c.get(f"/episodes/{s.episode}/history"),
        200,
    ),
    ("POST", "/episodes/{episode_id}/history"): (
        lambda c, s: c.post(
            f"/episodes/{s.episode}/history", json={"stage": "prepped", "status": "started"}
        ),
        201,
    ),
    ("GET", "/episodes/{episode_id}/clips"): (
        lambda c, s: c.get(f"/episodes/{s.episode}/clips"),
        200,
    ),
    ("POST", "/episodes/{episode_id}/clips"): (
        lambda c, s: c.post(
            f"/episodes/{s.episode}/clips", json={"id": "c2", "start_ms": 10, "end_ms": 20}
        ),
        201,
    ),
    ("POST", "/episodes/{episode_id}/dependencies"): (
        lambda c, s: c.post(
            f"/episodes/{s.other}/dependencies", json={"depends_on_episode_id": s.episode}
        ),
        201,
    ),
    ("GET", "/search"): (lambda c, s: c.get("/search", params={"q": "kubernetes"}), 200),
    ("GET", "/stats"): (lambda c, s: c.get("/stats"), 200),
    ("POST", "/episodes/{episode_id}/process"): (
        lambda c, s: c.post(f"/episodes/{s.episode}/process", json={"target_stage": "prepped"}),
        202,
    ),
    ("POST", "/episodes/discover"): (lambda c, s: c.post("/episodes/discover"), 202),
    ("POST", "/episodes/process"): (
        lambda c, s: c.post(
            "/episodes/process",
            params={"wait": 0},
            json={"episode_id": s.episode, "target_stage": "prepped"},
        ),
        202,
    ),
    ("POST", "/jobs"): (lambda c, s: c.post("/jobs", json={"kind": "noop"}), 202),
    ("GET", "/jobs"): (lambda c, s: c.get("/jobs", params={"status": "queued"}), 200),
    ("GET", "/jobs/{job_id}"): (lambda c, s: c.get(f"/jobs/{s.job}"), 200),
    ("DELETE", "/jobs/{job_id}"): (lambda c, s: c.delete(f"/jobs/{s.job}"), 200),
    ("POST", "/jobs/{job_id}/retry"): (
        lambda c, s: _then(c.delete(f"/jobs/{s.job}"), lambda: c.post(f"/jobs/{s.job}/retry")),
        200,
    ),
    ("GET", "/clips/{clip_id}"): (lambda c, s: c.get(f"/clips/{s.clip}"), 200),
    ("PATCH", "/clips/{clip_id}"): (
        lambda c, s: c.patch(f"/clips/{s.clip}", json={"status": "rendered", "title": "T"}),
        200,
    ),
    ("DELETE", "/clips/{clip_id}"): (lambda c, s: c.delete(f"/clips/{s.clip}"), 200),
    ("POST", "/clips/{clip_id}/assets"): (
        lambda c, s: c.post(
            f"/clips/{s.clip}/assets",
            json={"path": "/r/c1.mp4", "variant": "clean", "aspect_ratio": "9x16"},
        ),
        201,
    ),
    ("POST", "/social/jobs"): (
        lambda c, s: c.post("/social/jobs", json={"episode_id": s.episode, "platforms": ["yt"]}),
        201,
    ),
    ("GET", "/social/jobs"): (lambda c, s: c.get("/social/jobs"), 200),
    ("GET", "/social/jobs/{job_id}"): (lambda c, s: c.get(f"/social/jobs/{s.social}"), 200),
    ("PATCH", "/social/jobs/{job_id}"): (
        lambda c, s: c.patch(f"/social/jobs/{s.social}", json={"progress": 50}),
        200,
    ),
    ("DELETE", "/social/jobs/{job_id}"): (lambda c, s: c.delete(f"/social/jobs/{s.social}"), 200),
    ("GET", "/social/stats"): (lambda c, s: c.get("/social/stats"), 200),
}


async def _then(
    first: Awaitable[httpx.Response], second: Callable[[], Awaitable[httpx.Response]]
) -> httpx.Response:
    assert (await first).is_success
    return await second()


def test_every_operation_is_exercised() -> None:
    assert set(SUCCESSES) == {(op.method, op.path) for op in REGISTRY}


async def test_every_operation_succeeds(api: Api, subtests: pytest.Subtests) -> None:
    # One database for all of them (a fresh one each costs a second on PostgreSQL):
    # the seeds are made again before each call, so no call depends on another.
    for method, path in sorted(SUCCESSES):
        call, status = SUCCESSES[(method, path)]
        with subtests.test(operation=f"{method} {path}"):
            seeds = await seed(api)
            if method == "POST":
                await _succeeds_once_and_replays(api, call, seeds, status, key=path)
            else:
                response = await call(api.client, seeds)
                assert response.request.method == method
                assert response.status_code == status, response.text


async def _succeeds_once_and_replays(
    api: Api, call: Call, seeds: Seeds, status: int, *, key: str
) -> None:
    """Every POST: the same request with the same Idempotency-Key gets the same answer."""
    api.client.headers["Idempotency-Key"] = key
    try:
        response = await call(api.client, seeds)
    finally:
        del api.client.headers["Idempotency-Key"]
    assert response.status_code == status, response.text
    before = await api.footprint()
    replay = await api.client.send(response.request)
    assert (replay.status_code, replay.content) == (response.status_code, response.content)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers.get("location") == response.headers.get("location")
    assert await api.footprint() == before


# -- authentication -------------------------------------------------------------------


def _example_path(template: str) -> str:
    return re.sub(r"{[^}]+}", "1", template)


PRIVATE = sorted({(op.method, _example_path(op.path)) for op in REGISTRY if not op.public})
BAD_CREDENTIALS = {
    "missing": {},
    "wrong scheme": {"Authorization": f"Basic {TOKEN}"},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "token of another case": {"Authorization": f"Bearer {TOKEN.upper()}"},
    "empty token": {"Authorization": "Bearer "},
    "token without scheme": {"Authorization": TOKEN},
}


async def test_every_private_operation_refuses_bad_credentials(
    api: Api, subtests: pytest.Subtests
) -> None:
    for credentials, headers in BAD_CREDENTIALS.items():
        with subtests.test(credentials=credentials):
            async with api.client_with(headers) as anonymous:
                for method, path in PRIVATE:
                    response = await anonymous.request(method, path, json={})
                    body = assert_problem(response, 401)
                    assert body["type"] == "/problems/unauthorized"
                    assert response.headers["www-authenticate"].startswith("Bearer")
    assert await api.count(episodes) == 0


async def test_public_operations_need_no_token(api: Api) -> None:
    async with api.client_with({}) as anonymous:
        for path in ("/health", "/openapi.json", "/docs"):
            assert (await anonymous.get(path)).status_code == 200, path
        assert_problem(await anonymous.get("/metrics"), 401)


async def test_metrics_are_public_when_configured(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with serve(make_config(), headers={}, public_metrics=True) as anonymous:
        assert (await anonymous.client.get("/metrics")).status_code == 200
        assert_problem(await anonymous.client.get("/ready"), 401)


async def test_named_tokens_and_the_bearer_scheme_in_any_case(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with serve(make_config(), tokens={"n8n": OTHER_TOKEN}) as served:
        client = served.client
        for header in (f"Bearer {OTHER_TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "):
            response = await client.get("/episodes", headers={"Authorization": header})
            assert response.status_code == 200, header


async def test_without_a_configured_token_everything_is_open(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    # The CLI binds 127.0.0.1 only in that case (and refuses any other address).
    async with serve(make_config(), headers={}, api_token=None) as served:
        assert (await served.client.get("/episodes")).status_code == 200
        assert (await served.client.get("/metrics")).status_code == 200


# -- errors shared by every route ---------------------------------------------------


async def test_unknown_route_is_a_problem(api: Api) -> None:
    body = assert_problem(await api.client.get("/nope/nothing"), 404)
    assert body["type"] == "/problems/not-found"
    assert body["instance"] == "/nope/nothing"


async def test_unknown_method_is_a_problem(api: Api) -> None:
    response = await api.client.put("/episodes", json={})
    body = assert_problem(response, 405)
    assert body["type"] == "/problems/method-not-allowed"
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    assert_problem(await api.client.delete("/stats"), 405)


def _episode_body(size: int) -> dict[str, Any]:
    return {"id": "big", "hash": "h", "source_path": "/v", "metadata": {"pad": "x" * size}}


async def test_body_over_the_limit_by_content_length(api: Api) -> None:
    response = await api.client.post("/episodes", json=_episode_body(MAX_BODY))
    assert int(response.request.headers["content-length"]) > MAX_BODY
    body = assert_problem(response, 413)
    assert body["type"] == "/problems/payload-too-large"
    assert await api.count(episodes) == 0


async def test_body_over_the_limit_streamed(api: Api) -> None:
    chunk = b'{"id": "big", "hash": "h", "source_path": "/v", "metadata": {"pad": "' + b"x" * 300

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield chunk

    for key in (None, "big-streamed"):
        headers = {"Content-Type": "application/json"} | ({"Idempotency-Key": key} if key else {})
        response = await api.client.post("/episodes", content=chunks(), headers=headers)
        assert "content-length" not in response.request.headers
        assert_problem(response, 413)
    assert await api.count(episodes) == 0
    assert await api.count(idempotency_keys) == 0  # a retry with the key runs again


async def test_body_under_the_limit_streamed_is_read(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"id": "small", "hash": "h",'
        yield b' "source_path": "/v"}'

    response = await api.client.post(
        "/episodes", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


NOT_JSON = [
    ("text/plain", b'{"id": "e"}'),
    ("application/x-www-form-urlencoded", b"id=e&hash=h"),
    ("multipart/form-data; boundary=x", b"--x--"),
    (None, b'{"id": "e"}'),
]


async def test_a_body_that_is_not_json_is_refused(api: Api, subtests: pytest.Subtests) -> None:
    for content_type, content in NOT_JSON:
        with subtests.test(content_type=content_type):
            headers = {"Content-Type": content_type} if content_type else {}
            response = await api.client.post("/episodes", content=content, headers=headers)
            body = assert_problem(response, 415)
            assert body["type"] == "/problems/unsupported-media-type"
    assert await api.count(episodes) == 0


async def test_json_with_a_suffix_or_parameters_is_json(api: Api) -> None:
    await api.episode("ep1")
    response = await api.client.patch(
        "/episodes/ep1",
        content=b'{"metadata": {"a": 1}}',
        headers={"Content-Type": "application/merge-patch+json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"a": 1}


MALFORMED = [
    b"{not json",
    b'{"id": "e", "hash": "h", "source_path": "/v"',
    b"\xff\xfe{}",
    b'{"id": "e", "hash": "h", "source_path": "/v", "duration_seconds": NaN}',
    b'{"id": "e", "hash": "h", "source_path": "/v", "duration_seconds": Infinity}',
    b'{"id": "e", "hash": "h", "source_path": "/v", "metadata": {"t": "\\udfff"}}',
]


async def test_malformed_json_is_invalid(api: Api, subtests: pytest.Subtests) -> None:
    for content in MALFORMED:
        with subtests.test(content=content):
            response = await api.client.post(
                "/episodes", content=content, headers={"Content-Type": "application/json"}
            )
            assert_problem(response, 422, "body")
    assert await api.count(episodes) == 0


async def test_a_json_body_of_the_wrong_shape_names_the_fields(api: Api) -> None:
    assert_problem(await api.client.post("/episodes", json=["id", "hash"]), 422)
    body = assert_problem(
        await api.client.post("/episodes", json={"id": "", "hash": 3, "surprise": True}),
        422,
        "id",
        "hash",
        "source_path",
        "surprise",
    )
    assert "source_path" in body["detail"]


async def test_ids_that_are_not_ascii_round_trip_and_locate(api: Api) -> None:
    # A Location header is latin-1: the id is percent-encoded, never a 500.
    created = await api.client.post(
        "/episodes", json={"id": "épisode-日本-\U0001f3ac", "hash": "h", "source_path": "/v"}
    )
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location.isascii()
    fetched = await api.client.get(location)
    assert fetched.status_code == 200
    assert fetched.json()["episode_id"] == "épisode-日本-\U0001f3ac"


# -- idempotency keys ---------------------------------------------------------------


async def test_a_repeat_gets_the_first_answer_and_runs_nothing_twice(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    headers = {"Idempotency-Key": "n8n-run-1"}
    body = {"id": "ep2", "hash": "hash-2", "source_path": "/v/2.mp4"}
    first = await client.post("/episodes", json=body, headers=headers)
    again = await client.post("/episodes", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await api.count(episodes) == 2

    job_headers = {"Idempotency-Key": "n8n-run-2"}
    job = {"target_stage": "prepped"}
    submitted = await client.post("/episodes/ep1/process", json=job, headers=job_headers)
    resubmitted = await client.post("/episodes/ep1/process", json=job, headers=job_headers)
    assert (submitted.status_code, resubmitted.status_code) == (202, 202)
    assert resubmitted.json() == submitted.json()
    assert await api.count(jobs) == 1


async def test_an_error_answer_is_replayed_too(api: Api) -> None:
    headers = {"Idempotency-Key": "first-was-404"}
    first = await api.client.post(
        "/episodes/ep9/process", json={"target_stage": "prepped"}, headers=headers
    )
    assert_problem(first, 404)
    await api.episode("ep9")
    again = await api.client.post(
        "/episodes/ep9/process", json={"target_stage": "prepped"}, headers=headers
    )
    assert again.status_code == 404
    assert again.content == first.content
    assert await api.count(jobs) == 0


async def test_a_key_reused_for_another_request_is_invalid(api: Api) -> None:
    await api.episode("ep1")
    headers = {"Idempotency-Key": "reused"}
    client = api.client
    assert (await client.post("/jobs", json={"kind": "a"}, headers=headers)).status_code == 202
    assert_problem(
        await client.post("/jobs", json={"kind": "b"}, headers=headers), 422, "Idempotency-Key"
    )
    assert_problem(
        await client.post("/episodes/discover", json={}, headers=headers), 422, "Idempotency-Key"
    )
    assert await api.count(jobs) == 1


async def test_a_key_of_bad_length_is_invalid(api: Api) -> None:
    for key in ("", "k" * 256):
        headers = {"Idempotency-Key": key}
        response = await api.client.post("/jobs", json={"kind": "a"}, headers=headers)
        assert_problem(response, 422, "Idempotency-Key")
    assert await api.count(jobs) == 0


async def test_concurrent_repeats_never_run_twice(api: Api) -> None:
    await api.episode("ep1")
    headers = {"Idempotency-Key": "concurrent"}
    body = {"kind": "render", "episode_id": "ep1"}
    answers = await asyncio.gather(
        *(api.client.post("/jobs", json=body, headers=headers) for _ in range(6))
    )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {202, 409}, statuses
    assert 202 in statuses
    for answer in answers:
        if answer.status_code == 409:
            assert assert_problem(answer, 409)["type"] == "/problems/request-in-progress"
    assert len({answer.json()["id"] for answer in answers if answer.status_code == 202}) == 1
    assert await api.count(jobs) == 1
    replay = await api.client.post("/jobs", json=body, headers=headers)
    assert replay.status_code == 202
    assert replay.json() == next(a.json() for a in answers if a.status_code == 202)


# -- health, readiness, metrics and the API's description ----------------------------


async def test_health_does_not_need_the_database(api: Api) -> None:
    response = await api.client.get("/health", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_schema_pool_and_queue(api: Api, backend: str) -> None:
    await api.episode("ep1")
    for _ in range(2):
        await api.client.post("/jobs", json={"kind": "noop"})
    response = await api.client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == backend
    assert body["schema_version"]["current"] == body["schema_version"]["head"] is not None
    assert set(body["pool"]) == {"size", "checked_in", "checked_out", "overflow", "waiting"}
    assert body["queue_depth"] == 2


async def test_metrics_count_requests_and_jobs(api: Api) -> None:
    await api.episode("ep1")
    await api.client.get("/episodes/ep1")
    await api.client.get("/episodes/nope")
    await api.client.post("/jobs", json={"kind": "noop"})
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    labels = r'method="GET",route="/episodes/\{episode_id\}",status="404"'
    assert re.search(r"pipeline_http_requests_total\{" + labels + r"\} [1-9]", text), text
    assert "pipeline_http_request_duration_seconds_bucket{" in text
    assert re.search(r'pipeline_jobs\{status="queued"\} 1\.0', text)
    assert "pipeline_jobs_oldest_queued_age_seconds" in text
    assert 'pipeline_db_pool_connections{state="size"}' in text


async def test_openapi_document_is_valid_openapi_3_1(api: Api) -> None:
    response = await api.client.get("/openapi.json", headers={"Authorization": ""})
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert documented == {(op.method, op.path) for op in REGISTRY}
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/health"]["get"]["security"] == []
    process = document["paths"]["/episodes/{episode_id}/process"]["post"]
    assert {"202", "401", "404", "409", "413", "415", "422"} <= set(process["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in process["parameters"])


async def test_docs_page_works_offline(api: Api) -> None:
    response = await api.client.get("/docs", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "an external asset"
    for op in REGISTRY:
        assert f"<code>{html.escape(op.path)}</code>" in page, op.path
    assert "/openapi.json" in page


async def test_no_error_leaks_sql_tracebacks_or_secrets(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    answers = [
        await client.get("/episodes", params={"cursor": "' OR 1=1 --"}),
        await client.get("/jobs", params={"cursor": "x" * 50}),
        await client.get("/jobs/1 OR 1=1"),
        await client.get("/search", params={"q": "\"') AND (SELECT 1) --"}),
        await client.post("/episodes", json={"id": "ep1", "hash": "x", "source_path": "\x00"}),
        await client.patch("/episodes/ep1", json={"metadata": {"\x00": "\x00"}}),
        await client.get("/episodes/ep1", headers={"Authorization": f"Bearer {TOKEN}x"}),
    ]
    for answer in answers:
        assert answer.status_code < 500, answer.text
        assert_no_leak(answer.text)
        assert TOKEN not in str(answer.headers)
