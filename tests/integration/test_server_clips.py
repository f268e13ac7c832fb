"""Clips, their assets and social-media jobs over HTTP, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pipeline_db import DatabaseConfig
from pipeline_db.schema import clip_assets, clips, social_jobs
from tests.integration._server import Api, assert_problem, serve


@pytest.fixture
async def api(make_config: Callable[..., DatabaseConfig]) -> AsyncIterator[Api]:
    async with serve(make_config()) as served:
        await served.episode("ep1")
        yield served


def clip(clip_id: str = "c1", **values: Any) -> dict[str, Any]:
    return {"id": clip_id, "start_ms": 1_000, "end_ms": 16_000, "score": 0.8} | values


async def add_clip(api: Api, clip_id: str = "c1", **values: Any) -> dict[str, Any]:
    response = await api.client.post("/episodes/ep1/clips", json=clip(clip_id, **values))
    assert response.status_code == 201, response.text
    found: dict[str, Any] = response.json()
    return found


# -- clips ---------------------------------------------------------------------------------


async def test_create_clip_answers_201_with_its_location(api: Api) -> None:
    response = await api.client.post(
        "/episodes/ep1/clips",
        json=clip(title="Best bit", caption="Watch ✨", hashtags=["#ops", "#k8s"]),
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/clips/c1"
    body = response.json()
    assert (body["episode_id"], body["duration_ms"], body["status"]) == ("ep1", 15_000, "pending")
    assert body["hashtags"] == ["#ops", "#k8s"]
    assert (await api.client.get("/clips/c1")).json() == body


async def test_registering_the_same_clip_again_returns_it(api: Api) -> None:
    first = await add_clip(api)
    again = await api.client.post("/episodes/ep1/clips", json=clip())
    assert again.status_code == 201
    assert again.json() == first
    other = await api.client.post("/episodes/ep1/clips", json=clip(end_ms=20_000))
    assert_problem(other, 409)
    assert await api.count(clips) == 1


CLIP_ERRORS: list[tuple[dict[str, Any], str]] = [
    (clip(end_ms=500), "end_ms"),
    (clip(start_ms=-1), "start_ms"),
    (clip(score=1.5), "score"),
    (clip(status="published"), "status"),
    (clip(duration_ms=1), "duration_ms"),
    (clip(hashtags="#one"), "hashtags"),
    (clip(id=""), "id"),
    (clip(start_ms=2**63), "start_ms"),
    ({"id": "c9"}, "start_ms"),
    (clip(episode_id="ep2"), "episode_id"),
]


async def test_create_clip_names_bad_fields(api: Api, subtests: pytest.Subtests) -> None:
    for body, field in CLIP_ERRORS:
        with subtests.test(body=body):
            response = await api.client.post("/episodes/ep1/clips", json=body)
            assert_problem(response, 422, field)
    assert await api.count(clips) == 0


async def test_clip_of_unknown_episode_is_404(api: Api) -> None:
    assert_problem(await api.client.post("/episodes/nope/clips", json=clip()), 404)
    assert await api.count(clips) == 0


async def test_patch_clip(api: Api) -> None:
    await add_clip(api)
    client = api.client
    rendered = await client.patch("/clips/c1", json={"status": "rendered", "title": "New"})
    assert rendered.status_code == 200, rendered.text
    assert (rendered.json()["status"], rendered.json()["title"]) == ("rendered", "New")
    tagged = await client.patch("/clips/c1", json={"hashtags": ["#a"], "caption": None})
    assert tagged.json()["hashtags"] == ["#a"]
    assert tagged.json()["title"] == "New"
    unchanged = await client.patch("/clips/c1", json={})
    assert unchanged.status_code == 200
    assert unchanged.json() == tagged.json()
    assert_problem(await client.patch("/clips/c1", json={"status": "lost"}), 422, "status")
    assert_problem(await client.patch("/clips/c1", json={"start_ms": 5}), 422, "start_ms")
    assert_problem(await client.patch("/clips/nope", json={"title": "x"}), 404)
    assert_problem(await client.patch("/clips/nope", json={"status": "failed"}), 404)


async def test_delete_clip_and_its_assets(api: Api) -> None:
    await add_clip(api)
    client = api.client
    await client.post(
        "/clips/c1/assets", json={"path": "/r/a.mp4", "variant": "clean", "aspect_ratio": "1x1"}
    )
    response = await client.delete("/clips/c1")
    assert response.status_code == 200
    assert response.json() == {"deleted": "c1"}
    assert await api.count(clip_assets) == 0
    assert_problem(await client.get("/clips/c1"), 404)
    assert_problem(await client.delete("/clips/c1"), 404)


async def test_assets_replace_the_same_variant_and_ratio(api: Api) -> None:
    await add_clip(api)
    client = api.client
    asset = {"path": "/r/c1-9x16.mp4", "variant": "subtitled", "aspect_ratio": "9x16"}
    first = await client.post("/clips/c1/assets", json=asset | {"size_bytes": 10})
    assert first.status_code == 201, first.text
    assert (first.json()["clip_id"], first.json()["size_bytes"]) == ("c1", 10)
    second = await client.post("/clips/c1/assets", json=asset | {"path": "/r/v2.mp4"})
    assert second.status_code == 201
    assert second.json()["path"] == "/r/v2.mp4"
    other = await client.post("/clips/c1/assets", json=asset | {"aspect_ratio": "16x9"})
    assert other.status_code == 201
    assert await api.count(clip_assets) == 2


async def test_asset_errors(api: Api, subtests: pytest.Subtests) -> None:
    await add_clip(api)
    good = {"path": "/r/a.mp4", "variant": "clean", "aspect_ratio": "9x16"}
    cases: list[tuple[dict[str, Any], str]] = [
        (good | {"variant": "dirty"}, "variant"),
        (good | {"aspect_ratio": "4x3"}, "aspect_ratio"),
        (good | {"path": ""}, "path"),
        (good | {"size_bytes": -1}, "size_bytes"),
    ]
    for body, field in cases:
        with subtests.test(body=body):
            assert_problem(await api.client.post("/clips/c1/assets", json=body), 422, field)
    assert_problem(await api.client.post("/clips/nope/assets", json=good), 404)
    assert await api.count(clip_assets) == 0


# -- social jobs ---------------------------------------------------------------------------


async def test_social_job_lifecycle(api: Api) -> None:
    client = api.client
    created = await client.post(
        "/social/jobs",
        json={"episode_id": "ep1", "platforms": ["tiktok", "youtube"], "metadata": {"a": [1]}},
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert created.headers["location"] == f"/social/jobs/{job['job_id']}"
    assert (job["status"], job["progress"], job["platforms"]) == (
        "pending",
        0.0,
        ["tiktok", "youtube"],
    )
    assert (await client.get(created.headers["location"])).json() == job

    patched = await client.patch(
        f"/social/jobs/{job['job_id']}",
        json={"status": "running", "progress": 40, "warnings": ["slow upload"]},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["status"], patched.json()["progress"]) == ("running", 40.0)
    done = await client.patch(
        f"/social/jobs/{job['job_id']}",
        json={"status": "completed", "progress": 100, "packages_generated": {"tiktok": 3}},
    )
    assert done.json()["completed_at"] is not None

    stats = await client.get("/social/stats")
    assert stats.status_code == 200
    assert stats.json()["completed"] == 1

    deleted = await client.delete(f"/social/jobs/{job['job_id']}")
    assert deleted.json() == {"deleted": job["job_id"]}
    assert_problem(await client.get(f"/social/jobs/{job['job_id']}"), 404)
    assert_problem(await client.delete(f"/social/jobs/{job['job_id']}"), 404)
    assert await api.count(social_jobs) == 0


async def test_social_job_with_a_chosen_id_is_safe_to_resend(api: Api) -> None:
    body = {"episode_id": "ep1", "platforms": ["x"], "job_id": "social-ép1"}
    first = await api.client.post("/social/jobs", json=body)
    again = await api.client.post("/social/jobs", json=body)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.headers["location"] == "/social/jobs/social-%C3%A9p1"
    assert (await api.client.get(first.headers["location"])).status_code == 200
    assert_problem(await api.client.post("/social/jobs", json=body | {"platforms": ["y"]}), 409)
    assert await api.count(social_jobs) == 1


async def test_social_jobs_list_and_filter(api: Api) -> None:
    await api.episode("ep2")
    client = api.client
    for episode_id in ("ep1", "ep1", "ep2"):
        await client.post("/social/jobs", json={"episode_id": episode_id, "platforms": ["x"]})
    listed = await client.get("/social/jobs")
    assert listed.status_code == 200
    assert len(listed.json()["items"]) == 3
    of_ep1 = await client.get("/social/jobs", params={"episode_id": "ep1"})
    assert {job["episode_id"] for job in of_ep1.json()["items"]} == {"ep1"}
    assert len(of_ep1.json()["items"]) == 2
    limited = await client.get("/social/jobs", params={"limit": 1, "status": "pending"})
    assert len(limited.json()["items"]) == 1
    assert_problem(await client.get("/social/jobs", params={"limit": 0}), 422, "limit")


async def test_social_job_errors(api: Api, subtests: pytest.Subtests) -> None:
    client = api.client
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"episode_id": "nope", "platforms": ["x"]}, 404, None),
        ({"episode_id": "ep1", "platforms": []}, 422, "platforms"),
        ({"episode_id": "ep1", "platforms": [""]}, 422, "platforms"),
        ({"episode_id": "ep1"}, 422, "platforms"),
        ({"episode_id": "ep1", "platforms": ["x"], "status": "done"}, 422, "status"),
    ]
    for body, status, field in cases:
        with subtests.test(body=body):
            assert_problem(
                await client.post("/social/jobs", json=body), status, *filter(None, [field])
            )
    assert await api.count(social_jobs) == 0
    created = await client.post("/social/jobs", json={"episode_id": "ep1", "platforms": ["x"]})
    job_id = created.json()["job_id"]
    assert_problem(
        await client.patch(f"/social/jobs/{job_id}", json={"progress": 101}), 422, "progress"
    )
    assert_problem(
        await client.patch(f"/social/jobs/{job_id}", json={"episode_id": "ep2"}), 422, "episode_id"
    )
    assert_problem(await client.patch("/social/jobs/nope", json={"progress": 1}), 404)
    assert_problem(await client.get("/social/jobs/nope"), 404)
