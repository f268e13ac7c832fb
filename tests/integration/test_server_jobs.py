"""Jobs over HTTP, on both backends: submit, read, list, cancel, retry, and the legacy route.

The legacy ``POST /episodes/process`` waits for its job: those tests run a real
:class:`~pipeline_db.runner.Runner` beside the app with quick fake handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_db import DatabaseConfig, Episodes
from pipeline_db.handlers import FailJob, Handlers, JobContext
from pipeline_db.runner import Runner, RunnerOptions
from pipeline_db.schema import jobs
from tests.integration._server import Api, assert_problem, serve


@pytest.fixture
async def api(make_config: Callable[..., DatabaseConfig]) -> AsyncIterator[Api]:
    async with serve(make_config()) as served:
        await served.episode("ep1")
        yield served


async def submit(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.client.post("/jobs", json={"kind": "noop"} | body)
    assert response.status_code == 202, response.text
    found: dict[str, Any] = response.json()
    return found


# -- submit --------------------------------------------------------------------------------


async def test_process_answers_202_with_the_job_and_its_location(api: Api) -> None:
    response = await api.client.post(
        "/episodes/ep1/process",
        json={
            "target_stage": "transcribed",
            "force": True,
            "priority": 5,
            "webhook_url": "https://n8n.example/webhook/done",
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["kind"] == "process_episode"
    assert job["episode_id"] == "ep1"
    assert job["status"] == "queued"
    assert job["params"] == {"target_stage": "transcribed", "force": True}
    assert job["priority"] == 5
    assert job["webhook_url"] == "https://n8n.example/webhook/done"
    fetched = await api.client.get(response.headers["location"])
    assert fetched.json() == job


PROCESS_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({}, "target_stage"),
    ({"target_stage": "cooked"}, "target_stage"),
    ({"target_stage": "prepped", "webhook_url": "ftp://x/y"}, "webhook_url"),
    ({"target_stage": "prepped", "priority": 2**31}, "priority"),
    ({"target_stage": "prepped", "force": "yes please"}, "force"),
    ({"target_stage": "prepped", "kind": "other"}, "kind"),
]


async def test_process_names_bad_fields(api: Api, subtests: pytest.Subtests) -> None:
    for body, field in PROCESS_ERRORS:
        with subtests.test(body=body):
            response = await api.client.post("/episodes/ep1/process", json=body)
            assert_problem(response, 422, field)
    assert await api.count(jobs) == 0


async def test_process_unknown_episode_is_404(api: Api) -> None:
    response = await api.client.post("/episodes/nope/process", json={"target_stage": "prepped"})
    assert_problem(response, 404)
    assert await api.count(jobs) == 0


async def test_discover_answers_202_with_a_discover_job(api: Api) -> None:
    without_body = await api.client.post("/episodes/discover")
    assert without_body.status_code == 202, without_body.text
    assert without_body.json()["kind"] == "discover"
    assert without_body.headers["location"] == f"/jobs/{without_body.json()['id']}"
    with_hook = await api.client.post(
        "/episodes/discover", json={"webhook_url": "http://n8n:5678/webhook/x"}
    )
    assert with_hook.status_code == 202
    assert with_hook.json()["webhook_url"] == "http://n8n:5678/webhook/x"
    assert_problem(
        await api.client.post("/episodes/discover", json={"webhook_url": "n8n"}), 422, "webhook_url"
    )


async def test_submit_any_kind(api: Api) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job = await submit(
        api,
        kind="render_clips",
        episode_id="ep1",
        params={"ratio": "9x16", "n": [1, 2]},
        priority=-3,
        run_after=later.isoformat(),
        max_attempts=7,
    )
    assert (job["kind"], job["episode_id"], job["priority"], job["max_attempts"]) == (
        "render_clips",
        "ep1",
        -3,
        7,
    )
    assert job["params"] == {"ratio": "9x16", "n": [1, 2]}
    assert datetime.fromisoformat(job["run_after"]) == later


SUBMIT_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"kind": ""}, "kind"),
    ({}, "kind"),
    ({"kind": "k", "run_after": "2030-01-01T00:00:00"}, "run_after"),
    ({"kind": "k", "max_attempts": 0}, "max_attempts"),
    ({"kind": "k", "max_attempts": 101}, "max_attempts"),
    ({"kind": "k", "params": [1]}, "params"),
    ({"kind": "k", "status": "succeeded"}, "status"),
]


async def test_submit_names_bad_fields(api: Api, subtests: pytest.Subtests) -> None:
    for body, field in SUBMIT_ERRORS:
        with subtests.test(body=body):
            assert_problem(await api.client.post("/jobs", json=body), 422, field)
    assert await api.count(jobs) == 0


async def test_submit_for_an_unknown_episode_is_404(api: Api) -> None:
    assert_problem(await api.client.post("/jobs", json={"kind": "k", "episode_id": "nope"}), 404)
    assert await api.count(jobs) == 0


# -- read and list -------------------------------------------------------------------------


async def test_a_job_id_that_is_not_a_number_is_invalid(
    api: Api, subtests: pytest.Subtests
) -> None:
    for job_id in ("abc", "1.5", "-1", "+1", "1_0", "\u0661", "0x1F", "%201"):
        with subtests.test(job_id=job_id):
            for response in await _every_job_route(api, job_id):
                assert_problem(response, 422, "job_id")


async def test_an_unknown_job_is_404(api: Api, subtests: pytest.Subtests) -> None:
    for job_id in ("12345", str(2**63 - 1), str(2**63), "9" * 30):
        with subtests.test(job_id=job_id):
            for response in await _every_job_route(api, job_id):
                assert_problem(response, 404)


async def _every_job_route(api: Api, job_id: str) -> list[Any]:
    client = api.client
    return [
        await client.get(f"/jobs/{job_id}"),
        await client.delete(f"/jobs/{job_id}"),
        await client.post(f"/jobs/{job_id}/retry"),
    ]


async def test_list_pages_newest_first_to_the_end(api: Api) -> None:
    submitted = [(await submit(api, kind=f"k{n}"))["id"] for n in range(5)]
    seen: list[int] = []
    url: str | None = "/jobs?limit=2"
    while url is not None:
        response = await api.client.get(url)
        assert response.status_code == 200, response.text
        seen += [job["id"] for job in response.json()["items"]]
        url = response.json()["next"]
        assert len(seen) <= 5
    assert seen == sorted(submitted, reverse=True)


async def test_list_filters(api: Api) -> None:
    await api.episode("ep2")
    a = await submit(api, kind="render", episode_id="ep1")
    b = await submit(api, kind="render", episode_id="ep2")
    c = await submit(api, kind="transcribe", episode_id="ep1")
    await api.client.delete(f"/jobs/{b['id']}")
    client = api.client

    async def ids(**params: Any) -> set[int]:
        response = await client.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        return {job["id"] for job in response.json()["items"]}

    assert await ids(status="queued") == {a["id"], c["id"]}
    assert await ids(status=["queued", "cancelled"]) == {a["id"], b["id"], c["id"]}
    assert await ids(kind="render") == {a["id"], b["id"]}
    assert await ids(episode_id="ep1", kind="transcribe") == {c["id"]}


LIST_ERRORS = [
    ({"status": "sleeping"}, "status"),
    ({"cursor": "zzz"}, "cursor"),
    ({"limit": "-1"}, "limit"),
    ({"order": "asc"}, "order"),
]


async def test_list_names_bad_parameters(api: Api, subtests: pytest.Subtests) -> None:
    for params, field in LIST_ERRORS:
        with subtests.test(params=params):
            assert_problem(await api.client.get("/jobs", params=params), 422, field)


# -- cancel and retry ----------------------------------------------------------------------


async def test_cancel_then_retry(api: Api) -> None:
    job = await submit(api)
    client = api.client
    cancelled = await client.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = await client.delete(f"/jobs/{job['id']}")
    assert again.status_code == 200  # cancelling a cancelled job changes nothing
    retried = await client.post(f"/jobs/{job['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "queued"
    assert retried.json()["attempts"] == 0
    body = assert_problem(await client.post(f"/jobs/{job['id']}/retry"), 409)
    assert "queued" in body["detail"]
    assert await api.count(jobs) == 1


# -- with a runner: finished jobs and the legacy route -------------------------------------


async def quick_process(ctx: JobContext) -> dict[str, Any]:
    """A fake ``process_episode``: advances the stage at once."""
    params = ctx.job.params
    assert ctx.job.episode_id is not None
    await Episodes(ctx.db).advance_stage(
        ctx.job.episode_id, params["target_stage"], force=bool(params.get("force"))
    )
    return {"metrics": {"frames": 42, "fps": 29.97}}


async def failing_process(ctx: JobContext) -> None:
    raise FailJob("the transcoder exploded")


@pytest.fixture
async def runner_of(api: Api) -> AsyncIterator[Callable[[Any], None]]:
    """Start a runner with ``process_episode`` handled by the given function."""
    started: list[tuple[Runner, asyncio.Task[None]]] = []

    def start(handler: Any) -> None:
        handlers = Handlers({"process_episode": handler, "noop": handler})
        runner = Runner(api.db, handlers, RunnerOptions(poll_interval=0.05, shutdown_grace=1))
        started.append((runner, asyncio.create_task(runner.run())))

    yield start
    for runner, task in started:
        runner.stop()
        await asyncio.wait_for(task, 10)


LEGACY = {"episode_id": "ep1", "target_stage": "transcribed", "force_reprocess": False}


async def test_legacy_route_answers_in_the_old_shape_when_the_job_succeeds(
    api: Api, runner_of: Callable[[Any], None]
) -> None:
    runner_of(quick_process)
    # n8n sends its own keys along: they are ignored.
    response = await api.client.post(
        "/episodes/process", json=LEGACY | {"workflow": "ingest", "retry": {"n": 1}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert (body["episode_id"], body["stage"], body["error"]) == ("ep1", "transcribed", None)
    assert body["metrics"] == {"frames": 42, "fps": 29.97}
    assert isinstance(body["duration"], float) and body["duration"] >= 0
    job = (await api.client.get(f"/jobs/{body['job_id']}")).json()
    assert job["status"] == "succeeded"
    assert set(body) == {"success", "episode_id", "stage", "duration", "metrics", "error", "job_id"}
    # A finished job cannot be cancelled, nor a succeeded one retried.
    assert_problem(await api.client.delete(f"/jobs/{body['job_id']}"), 409)
    assert_problem(await api.client.post(f"/jobs/{body['job_id']}/retry"), 409)


async def test_legacy_route_reports_a_failed_job_as_success_false(
    api: Api, runner_of: Callable[[Any], None]
) -> None:
    runner_of(failing_process)
    response = await api.client.post("/episodes/process", json=LEGACY, params={"wait": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is False
    assert "the transcoder exploded" in body["error"]
    assert body["stage"] == "discovered"
    assert_problem(await api.client.delete(f"/jobs/{body['job_id']}"), 409)  # already failed
    retried = await api.client.post(f"/jobs/{body['job_id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] in ("queued", "running", "failed")


async def test_legacy_route_answers_202_with_the_job_past_its_wait(api: Api) -> None:
    response = await api.client.post("/episodes/process", json=LEGACY, params={"wait": 0})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert (job["kind"], job["status"]) == ("process_episode", "queued")
    assert job["params"] == {"target_stage": "transcribed", "force": False}
    waited = await api.client.post("/episodes/process", json=LEGACY, params={"wait": 0.2})
    assert waited.status_code == 202
    assert await api.count(jobs) == 2


LEGACY_ERRORS: list[tuple[dict[str, Any], dict[str, str], int, str | None]] = [
    (LEGACY | {"episode_id": "nope"}, {}, 404, None),
    (LEGACY | {"target_stage": "cooked"}, {}, 422, "target_stage"),
    ({"target_stage": "prepped"}, {}, 422, "episode_id"),
    (LEGACY | {"force_reprocess": "sometimes"}, {}, 422, "force_reprocess"),
    (LEGACY, {"wait": "-1"}, 422, "wait"),
    (LEGACY, {"wait": "86401"}, 422, "wait"),
    (LEGACY, {"wait": "soon"}, 422, "wait"),
]


async def test_legacy_route_refuses_bad_requests_before_queueing(
    api: Api, subtests: pytest.Subtests
) -> None:
    for body, params, status, field in LEGACY_ERRORS:
        with subtests.test(body=body, params=params):
            response = await api.client.post("/episodes/process", json=body, params=params)
            assert_problem(response, status, *([field] if field else []))
    assert await api.count(jobs) == 0
