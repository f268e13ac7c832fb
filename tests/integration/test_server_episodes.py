"""Episodes over HTTP, on both backends: register, read, list, patch, delete, history, search."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline_db import DatabaseConfig
from pipeline_db.schema import episode_dependencies, episodes, processing_log
from tests.integration._server import Api, assert_problem, serve


@pytest.fixture
async def api(make_config: Callable[..., DatabaseConfig]) -> AsyncIterator[Api]:
    async with serve(make_config()) as served:
        yield served


def registration(episode_id: str, **values: Any) -> dict[str, Any]:
    return {
        "id": episode_id,
        "hash": f"hash-{episode_id}",
        "source_path": f"/videos/{episode_id}.mp4",
    } | values


# -- register and read -------------------------------------------------------------------


async def test_register_answers_201_with_the_episode_and_its_location(api: Api) -> None:
    response = await api.client.post(
        "/episodes",
        json=registration(
            "ep1",
            metadata={"title": "Pilot", "guests": ["Ada"]},
            file_size=1_000_000,
            duration_seconds=61.5,
            last_modified="2024-05-01T10:00:00+02:00",
        ),
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/episodes/ep1"
    body = response.json()
    assert body["id"] == body["episode_id"] == "ep1"
    assert body["stage"] == "discovered"
    assert body["duplicate"] is False
    assert body["metadata"] == {"title": "Pilot", "guests": ["Ada"]}
    assert body["file_size"] == 1_000_000
    assert datetime.fromisoformat(body["last_modified"]) == datetime(2024, 5, 1, 8, tzinfo=UTC)


async def test_a_known_hash_answers_200_with_the_existing_episode(api: Api) -> None:
    await api.episode("ep1")
    response = await api.client.post("/episodes", json=registration("other", hash="hash-ep1"))
    assert response.status_code == 200, response.text
    assert response.json()["episode_id"] == "ep1"
    assert response.json()["duplicate"] is True
    assert response.headers["location"] == "/episodes/ep1"
    assert await api.count(episodes) == 1


async def test_a_taken_id_with_another_hash_gets_a_suffix(api: Api) -> None:
    await api.episode("ep1")
    response = await api.client.post("/episodes", json=registration("ep1", hash="different"))
    assert response.status_code == 201, response.text
    assert response.json()["episode_id"] == "ep1-2"


REGISTER_ERRORS: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ["id", "hash", "source_path"]),
    (registration("", hash=""), ["id", "hash"]),
    (registration("x" * 256), ["id"]),
    (registration("ep1", file_size=-1, duration_seconds=-2), ["file_size", "duration_seconds"]),
    (registration("ep1", last_modified="2024-05-01T10:00:00"), ["last_modified"]),
    (registration("ep1", metadata=[1, 2]), ["metadata"]),
    (registration("ep1", stage="rendered"), ["stage"]),
]


async def test_register_names_the_bad_fields(api: Api, subtests: pytest.Subtests) -> None:
    for body, fields in REGISTER_ERRORS:
        with subtests.test(fields=fields):
            assert_problem(await api.client.post("/episodes", json=body), 422, *fields)
    assert await api.count(episodes) == 0


async def test_times_before_year_1000_round_trip(api: Api) -> None:
    # SQLite keeps text: an unpadded "332-07-27" neither sorted nor read back (a 500).
    body = registration("old", last_modified="0332-07-27T22:38:31.0801-00:02")
    response = await api.client.post("/episodes", json=body)
    assert response.status_code == 201, response.text
    stored = (await api.client.get("/episodes/old")).json()["last_modified"]
    assert datetime.fromisoformat(stored) == datetime(332, 7, 27, 22, 40, 31, 80100, tzinfo=UTC)
    before_year_one = registration("older", last_modified="0001-01-01T00:00:00+05:00")
    assert_problem(await api.client.post("/episodes", json=before_year_one), 422)
    assert await api.count(episodes) == 1


async def test_get_reads_the_whole_record_as_the_workflows_do(api: Api) -> None:
    await api.episode("ep1", metadata={"transcript": {"text": "hello"}, "n": 1.5})
    response = await api.client.get("/episodes/ep1")
    assert response.status_code == 200
    body = response.json()
    # The existing n8n workflows read exactly these two keys.
    assert (body["episode_id"], body["stage"]) == ("ep1", "discovered")
    assert body["metadata"] == {"transcript": {"text": "hello"}, "n": 1.5}
    assert {"hash", "source_path", "created_at", "updated_at"} <= set(body)


async def test_get_unknown_episode_is_404(api: Api) -> None:
    body = assert_problem(await api.client.get("/episodes/nope"), 404)
    assert body["type"] == "/problems/not-found"
    assert "nope" in body["detail"]


# -- list and paginate ----------------------------------------------------------------------


async def test_pages_follow_next_links_to_the_end(api: Api) -> None:
    for n in range(7):
        await api.episode(f"ep{n}")
    seen: list[str] = []
    url: str | None = "/episodes?limit=3"
    pages = 0
    while url is not None:
        response = await api.client.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["episode_id"] for item in body["items"]]
        assert (body["next"] is None) == (body["next_cursor"] is None)
        url = body["next"]
        pages += 1
        assert pages <= 4
    assert pages == 3
    assert sorted(seen) == [f"ep{n}" for n in range(7)]
    assert len(set(seen)) == 7


async def test_list_filters_by_stage_show_and_time(api: Api) -> None:
    await api.episode("a", metadata={"show_name": "Ops Talk"})
    await api.episode("b", metadata={"show_name": "Other"})
    await api.episode("c")
    await api.client.patch("/episodes/b", json={"stage": "prepped"})
    await api.client.patch("/episodes/c", json={"stage": "transcribed"})
    client = api.client

    async def ids(**params: Any) -> list[str]:
        response = await client.get("/episodes", params=params)
        assert response.status_code == 200, response.text
        return sorted(item["episode_id"] for item in response.json()["items"])

    assert await ids(stage="prepped") == ["b"]
    assert await ids(stage=["prepped", "transcribed"]) == ["b", "c"]
    assert await ids(show="Ops Talk") == ["a"]
    assert await ids(updated_since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert await ids(updated_since="2000-01-01T00:00:00Z") == ["a", "b", "c"]


LIST_ERRORS = [
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"stage": "cooked"}, "stage"),
    ({"updated_since": "yesterday"}, "updated_since"),
    ({"updated_since": "2024-01-01T00:00:00"}, "updated_since"),
    ({"colour": "blue"}, "colour"),
]


async def test_list_names_bad_parameters(api: Api, subtests: pytest.Subtests) -> None:
    for params, field in LIST_ERRORS:
        with subtests.test(params=params):
            assert_problem(await api.client.get("/episodes", params=params), 422, field)


# -- patch: metadata and stage -------------------------------------------------------------


async def test_patch_merges_metadata(api: Api) -> None:
    await api.episode("ep1", metadata={"a": 1, "b": {"c": 2, "keep": True}})
    response = await api.client.patch(
        "/episodes/ep1", json={"metadata": {"b": {"c": None, "d": 3}, "e": [1]}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == {"a": 1, "b": {"keep": True, "d": 3}, "e": [1]}
    again = await api.client.get("/episodes/ep1")
    assert again.json()["metadata"] == response.json()["metadata"]


async def test_patch_advances_the_stage_and_refuses_when_it_moved(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    moved = await client.patch(
        "/episodes/ep1", json={"stage": "prepped", "expected_stage": "discovered"}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["stage"] == "prepped"

    late = await client.patch(
        "/episodes/ep1", json={"stage": "transcribed", "expected_stage": "discovered"}
    )
    body = assert_problem(late, 409)
    assert body["type"] == "/problems/conflict"
    assert "prepped" in body["detail"]
    assert (await client.get("/episodes/ep1")).json()["stage"] == "prepped"


async def test_patch_metadata_and_stage_together(api: Api) -> None:
    await api.episode("ep1")
    response = await api.client.patch(
        "/episodes/ep1", json={"metadata": {"transcript": "hi"}, "stage": "transcribed"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["stage"] == "transcribed"
    assert response.json()["metadata"] == {"transcript": "hi"}


async def test_stage_goes_backwards_only_with_force(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    await client.patch("/episodes/ep1", json={"stage": "enriched"})
    assert_problem(await client.patch("/episodes/ep1", json={"stage": "prepped"}), 422)
    forced = await client.patch("/episodes/ep1", json={"stage": "prepped", "force": True})
    assert forced.status_code == 200, forced.text
    assert forced.json()["stage"] == "prepped"


PATCH_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"stage": "cooked"}, "stage"),
    ({"stage": "prepped", "expected_stage": "raw"}, "expected_stage"),
    ({"metadata": "not an object"}, "metadata"),
    ({"force": "maybe"}, "force"),
    ({"stages": "prepped"}, "stages"),
]


async def test_patch_names_bad_fields(api: Api, subtests: pytest.Subtests) -> None:
    await api.episode("ep1")
    for body, field in PATCH_ERRORS:
        with subtests.test(body=body):
            assert_problem(await api.client.patch("/episodes/ep1", json=body), 422, field)
    assert (await api.client.get("/episodes/ep1")).json()["stage"] == "discovered"


async def test_patch_unknown_episode_is_404(api: Api) -> None:
    assert_problem(await api.client.patch("/episodes/nope", json={"stage": "prepped"}), 404)
    assert_problem(await api.client.patch("/episodes/nope", json={"metadata": {"a": 1}}), 404)
    assert_problem(await api.client.patch("/episodes/nope", json={}), 404)


# -- delete --------------------------------------------------------------------------------


async def test_delete_removes_the_episode_and_what_hangs_off_it(api: Api) -> None:
    await api.episode("ep1")
    await api.episode("ep2")
    client = api.client
    await client.post("/episodes/ep2/dependencies", json={"depends_on_episode_id": "ep1"})
    await client.post("/episodes/ep1/clips", json={"id": "c1", "start_ms": 0, "end_ms": 5})
    response = await client.delete("/episodes/ep1")
    assert response.status_code == 200
    assert response.json() == {"deleted": "ep1"}
    assert_problem(await client.get("/episodes/ep1"), 404)
    assert_problem(await client.get("/clips/c1"), 404)
    assert await api.count(episode_dependencies) == 0
    assert_problem(await client.delete("/episodes/ep1"), 404)
    assert await api.count(episodes) == 1


# -- history -------------------------------------------------------------------------------


async def test_history_appends_and_reads_events_in_order(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    await client.patch("/episodes/ep1", json={"stage": "prepped"})
    appended = await client.post(
        "/episodes/ep1/history",
        json={"stage": "transcribed", "status": "failed", "error_message": "whisper crashed"},
    )
    assert appended.status_code == 201, appended.text
    assert appended.json()["error_message"] == "whisper crashed"
    response = await client.get("/episodes/ep1/history")
    assert response.status_code == 200
    events = [(e["stage"], e["status"]) for e in response.json()["items"]]
    assert events[-2:] == [("prepped", "completed"), ("transcribed", "failed")]
    limited = await client.get("/episodes/ep1/history", params={"limit": 1})
    assert len(limited.json()["items"]) == 1


async def test_history_errors(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    assert_problem(await client.get("/episodes/nope/history"), 404)
    assert_problem(
        await client.post("/episodes/nope/history", json={"stage": "x", "status": "started"}), 404
    )
    assert_problem(
        await client.post("/episodes/ep1/history", json={"stage": "x", "status": "exploded"}),
        422,
        "status",
    )
    assert_problem(
        await client.post(
            "/episodes/ep1/history",
            json={"stage": "", "status": "started", "duration_seconds": -1},
        ),
        422,
        "stage",
        "duration_seconds",
    )
    assert_problem(await client.get("/episodes/ep1/history", params={"limit": 0}), 422, "limit")
    before = await api.count(processing_log)
    assert before >= 1


# -- clips of an episode, dependencies -----------------------------------------------------


async def test_episode_clips_by_start_time(api: Api) -> None:
    await api.episode("ep1")
    client = api.client
    for clip_id, start in (("late", 50_000), ("early", 1_000)):
        created = await client.post(
            "/episodes/ep1/clips", json={"id": clip_id, "start_ms": start, "end_ms": start + 9}
        )
        assert created.status_code == 201, created.text
    response = await client.get("/episodes/ep1/clips")
    assert [c["id"] for c in response.json()["items"]] == ["early", "late"]
    assert_problem(await client.get("/episodes/nope/clips"), 404)


async def test_dependencies_refuse_cycles_and_unknown_episodes(api: Api) -> None:
    for episode_id in ("a", "b", "c"):
        await api.episode(episode_id)
    client = api.client

    async def depend(episode_id: str, on: str) -> Any:
        return await client.post(
            f"/episodes/{episode_id}/dependencies", json={"depends_on_episode_id": on}
        )

    first = await depend("b", "a")
    assert first.status_code == 201, first.text
    assert first.json()["dependency_type"] == "requires"
    assert (await depend("c", "b")).status_code == 201
    cycle = assert_problem(await depend("a", "c"), 409)
    assert all(name in cycle["detail"] for name in ("a", "b", "c"))
    assert_problem(await depend("a", "a"), 422, "depends_on_episode_id")
    assert_problem(await depend("a", "nope"), 404)
    assert_problem(await depend("nope", "a"), 404)
    assert_problem(
        await client.post("/episodes/a/dependencies", json={"depends_on": "b"}),
        422,
        "depends_on_episode_id",
    )
    assert await api.count(episode_dependencies) == 2


# -- search and statistics -------------------------------------------------------------------


async def test_search_finds_by_words_and_filters_by_show(api: Api) -> None:
    await api.episode("k1", metadata={"title": "Kubernetes in production", "show_name": "Ops"})
    await api.episode("k2", metadata={"summary": "Why kubernetes?", "show_name": "Dev"})
    await api.episode("other", metadata={"title": "Baking bread"})
    client = api.client
    response = await client.get("/search", params={"q": "kubernetes"})
    assert response.status_code == 200, response.text
    hits = response.json()["items"]
    assert {hit["episode_id"] for hit in hits} == {"k1", "k2"}
    assert hits[0]["episode_id"] == "k1"  # a title match ranks first
    shown = await client.get("/search", params={"q": "kubernetes", "show": "Dev"})
    assert [hit["episode_id"] for hit in shown.json()["items"]] == ["k2"]
    odd = await client.get("/search", params={"q": 'AND OR NOT "( * -'})
    assert odd.status_code == 200, odd.text
    assert_problem(await client.get("/search"), 422, "q")
    assert_problem(await client.get("/search", params={"q": "x", "limit": 201}), 422, "limit")


async def test_stats_count_episodes_by_stage(api: Api) -> None:
    for episode_id in ("a", "b", "c"):
        await api.episode(episode_id)
    await api.client.patch("/episodes/c", json={"stage": "prepped"})
    await api.client.post("/episodes/a/history", json={"stage": "prepped", "status": "failed"})
    response = await api.client.get("/stats")
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 3
    assert body["by_stage"]["discovered"]["episodes"] == 2
    assert body["by_stage"]["prepped"]["episodes"] == 1
    assert body["failures_last_24h"] == 1
