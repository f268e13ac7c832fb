"""Clips and their rendered assets, on both backends."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Table, func, select

from pipeline_db import (
    Clip,
    ClipAsset,
    Clips,
    ConflictError,
    Database,
    Episodes,
    InvalidInputError,
    NotFoundError,
)
from pipeline_db.schema import clip_assets, clips


async def count(db: Database, table: Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def add_episode(db: Database, episode_id: str = "ep1") -> str:
    await Episodes(db).register(
        id=episode_id, hash=f"hash-{episode_id}", source_path=f"/v/{episode_id}.mp4"
    )
    return episode_id


def clip(n: int, **values: Any) -> dict[str, Any]:
    """Arguments of a valid clip ``c<n>`` of ep1, starting at n seconds, 15 s long."""
    return {
        "id": f"c{n}",
        "episode_id": "ep1",
        "start_ms": n * 1000,
        "end_ms": n * 1000 + 15_000,
        "score": 0.5,
    } | values


@pytest.fixture
async def box(db: Database) -> Clips:
    """The clips API over a database holding episode ep1."""
    await add_episode(db)
    return Clips(db)


async def test_register_and_get(box: Clips) -> None:
    registered = await box.register(
        **clip(
            3,
            duration_ms=15_000,
            score=0.875,
            title="The best bit",
            caption="Watch to the end ✨",
            hashtags=["#science", "#space"],
        )
    )

    assert isinstance(registered, Clip)
    assert (registered.id, registered.episode_id) == ("c3", "ep1")
    assert (registered.start_ms, registered.end_ms, registered.duration_ms) == (
        3000,
        18_000,
        15_000,
    )
    assert registered.score == 0.875
    assert registered.status == "pending"
    assert registered.hashtags == ["#science", "#space"]
    assert registered.created_at.tzinfo is not None
    assert await box.get("c3") == registered


async def test_register_again_returns_the_same_clip(box: Clips, db: Database) -> None:
    first = await box.register(**clip(1, title="Same"))
    assert await box.register(**clip(1, title="Same")) == first
    assert await count(db, clips) == 1


async def test_register_with_other_values_is_a_conflict(box: Clips, db: Database) -> None:
    await box.register(**clip(1))
    await add_episode(db, "ep2")
    for other in (clip(1, score=0.6), clip(1, end_ms=20_000), clip(1, episode_id="ep2")):
        with pytest.raises(ConflictError) as caught:
            await box.register(**other)
        assert caught.value.context["field"] == "id"
    assert (await box.get("c1")).score == 0.5
    assert await count(db, clips) == 1


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"score": 1.5}, "score"),
        ({"score": -0.01}, "score"),
        ({"score": float("nan")}, "score"),
        ({"score": True}, "score"),
        ({"score": "0.5"}, "score"),
        ({"start_ms": 20_000, "end_ms": 10_000}, "end_ms"),
        ({"start_ms": 10_000, "end_ms": 10_000}, "end_ms"),
        ({"start_ms": -1}, "start_ms"),
        ({"start_ms": 1.5}, "start_ms"),
        ({"end_ms": "15000"}, "end_ms"),
        ({"end_ms": 2**63}, "end_ms"),
        ({"duration_ms": 14_999}, "duration_ms"),
        ({"status": "published"}, "status"),
        ({"status": None}, "status"),
        ({"id": ""}, "id"),
        ({"id": "c\x00"}, "id"),
        ({"hashtags": "#one"}, "hashtags"),
        ({"hashtags": ["#ok", 3]}, "hashtags"),
        ({"hashtags": ["#nul\x00"]}, "hashtags"),
        ({"title": 42}, "title"),
        ({"title": "nul\x00"}, "title"),
        ({"caption": ["not", "text"]}, "caption"),
    ],
)
async def test_register_refuses_bad_values(
    box: Clips, db: Database, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await box.register(**clip(1, **values))
    assert caught.value.field == field
    assert await count(db, clips) == 0


async def test_register_for_an_unknown_episode_is_not_found(box: Clips, db: Database) -> None:
    with pytest.raises(NotFoundError):
        await box.register(**clip(1, episode_id="nope"))
    assert await count(db, clips) == 0


async def test_unknown_clip_is_not_found(box: Clips, db: Database) -> None:
    with pytest.raises(NotFoundError):
        await box.get("nope")
    with pytest.raises(NotFoundError):
        await box.set_status("nope", "rendered")
    with pytest.raises(NotFoundError):
        await box.update("nope", title="x")
    with pytest.raises(NotFoundError):
        await box.update("nope")
    with pytest.raises(NotFoundError):
        await box.delete("nope")
    with pytest.raises(NotFoundError):
        await box.add_asset("nope", path="/r/x.mp4", variant="clean", aspect_ratio="9x16")
    with pytest.raises(NotFoundError):
        await box.assets("nope")
    with pytest.raises(NotFoundError):
        await box.of_episode("nope")
    assert await count(db, clips) == 0
    assert await count(db, clip_assets) == 0


async def test_clips_of_an_episode_by_start_time(box: Clips, db: Database) -> None:
    await add_episode(db, "ep2")
    for n in (30, 5, 12):
        await box.register(**clip(n))
    await box.register(**clip(1, episode_id="ep2"))
    await box.register(**clip(99, start_ms=5000, end_ms=6000))  # same start as c5

    assert [c.id for c in await box.of_episode("ep1")] == ["c5", "c99", "c12", "c30"]
    assert [c.id for c in await box.of_episode("ep2")] == ["c1"]
    await add_episode(db, "ep3")
    assert await box.of_episode("ep3") == []


async def test_clips_by_status_best_score_first(box: Clips) -> None:
    for n, score in ((1, 0.2), (2, 0.9), (3, None), (4, 0.5), (5, 0.9)):
        await box.register(**clip(n, score=score))
    await box.register(**clip(6, score=1.0, status="failed"))

    assert [c.id for c in await box.by_status("pending")] == ["c2", "c5", "c4", "c1", "c3"]
    assert [c.id for c in await box.by_status("pending", limit=2)] == ["c2", "c5"]
    assert [c.id for c in await box.by_status("failed")] == ["c6"]
    assert await box.by_status("rendered") == []
    for status in ("done", None):
        with pytest.raises(InvalidInputError) as caught:
            await box.by_status(status)  # type: ignore[arg-type]
        assert caught.value.field == "status"
    for limit in (0, -1, 1001, "5"):
        with pytest.raises(InvalidInputError) as caught:
            await box.by_status("pending", limit=limit)  # type: ignore[arg-type]
        assert caught.value.field == "limit"


async def test_set_status(box: Clips) -> None:
    await box.register(**clip(1))

    rendered = await box.set_status("c1", "rendered")

    assert rendered.status == "rendered"
    assert (await box.get("c1")).status == "rendered"
    assert [c.id for c in await box.by_status("rendered")] == ["c1"]
    with pytest.raises(InvalidInputError) as caught:
        await box.set_status("c1", "Rendered")
    assert caught.value.field == "status"
    assert (await box.get("c1")).status == "rendered"


async def test_update_title_caption_and_hashtags(box: Clips) -> None:
    await box.register(**clip(1, title="Old", caption="Old caption", hashtags=["#a"]))

    updated = await box.update("c1", title="New")
    assert (updated.title, updated.caption, updated.hashtags) == ("New", "Old caption", ["#a"])

    updated = await box.update("c1", caption=None, hashtags=["#b", "#c"])
    assert (updated.title, updated.caption, updated.hashtags) == ("New", None, ["#b", "#c"])

    assert await box.update("c1") == updated  # nothing to change
    assert await box.get("c1") == updated


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"hashtags": [1]}, "hashtags"),
        ({"hashtags": "#a"}, "hashtags"),
        ({"title": 7}, "title"),
        ({"caption": "a\x00b"}, "caption"),
    ],
)
async def test_update_refuses_bad_values(box: Clips, values: dict[str, Any], field: str) -> None:
    before = await box.register(**clip(1, title="Kept", hashtags=["#kept"]))
    with pytest.raises(InvalidInputError) as caught:
        await box.update("c1", **values)
    assert caught.value.field == field
    assert await box.get("c1") == before


async def test_delete_removes_the_clip_and_its_assets(box: Clips, db: Database) -> None:
    await box.register(**clip(1))
    await box.register(**clip(2))
    await box.add_asset("c1", path="/r/c1.mp4", variant="clean", aspect_ratio="9x16")
    await box.add_asset("c1", path="/r/c1s.mp4", variant="subtitled", aspect_ratio="9x16")
    await box.add_asset("c2", path="/r/c2.mp4", variant="clean", aspect_ratio="1x1")

    await box.delete("c1")

    with pytest.raises(NotFoundError):
        await box.get("c1")
    assert await count(db, clips) == 1
    assert await count(db, clip_assets) == 1
    with pytest.raises(NotFoundError):
        await box.delete("c1")
    assert [a.clip_id for a in await box.assets("c2")] == ["c2"]


async def test_deleting_the_episode_deletes_its_clips_and_assets(box: Clips, db: Database) -> None:
    await box.register(**clip(1))
    await box.add_asset("c1", path="/r/c1.mp4", variant="clean", aspect_ratio="16x9")

    await Episodes(db).delete("ep1")

    assert await count(db, clips) == 0
    assert await count(db, clip_assets) == 0


async def test_clips_follow_a_renamed_episode(box: Clips, db: Database) -> None:
    await box.register(**clip(1))
    await Episodes(db).rename("ep1", "ep1-renamed")
    assert (await box.get("c1")).episode_id == "ep1-renamed"
    assert [c.id for c in await box.of_episode("ep1-renamed")] == ["c1"]


async def test_add_asset_upserts_on_clip_variant_and_aspect_ratio(box: Clips, db: Database) -> None:
    await box.register(**clip(1))

    first = await box.add_asset(
        "c1", path="/r/c1-v1.mp4", variant="clean", aspect_ratio="9x16", size_bytes=1000
    )
    again = await box.add_asset(
        "c1", path="/r/c1-v2.mp4", variant="clean", aspect_ratio="9x16", size_bytes=2000
    )
    await box.add_asset("c1", path="/r/c1-wide.mp4", variant="clean", aspect_ratio="16x9")
    await box.add_asset("c1", path="/r/c1-sub.mp4", variant="subtitled", aspect_ratio="9x16")

    assert isinstance(first, ClipAsset)
    assert again.id == first.id
    assert (again.path, again.size_bytes) == ("/r/c1-v2.mp4", 2000)
    assert again.created_at == first.created_at
    assets = await box.assets("c1")
    assert [(a.variant, a.aspect_ratio) for a in assets] == [
        ("clean", "16x9"),
        ("clean", "9x16"),
        ("subtitled", "9x16"),
    ]
    assert assets[1] == again
    assert await count(db, clip_assets) == 3


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"variant": "dirty"}, "variant"),
        ({"aspect_ratio": "4x3"}, "aspect_ratio"),
        ({"path": ""}, "path"),
        ({"path": "/r/\x00.mp4"}, "path"),
        ({"path": None}, "path"),
        ({"size_bytes": -1}, "size_bytes"),
        ({"size_bytes": 1.5}, "size_bytes"),
        ({"size_bytes": 2**63}, "size_bytes"),
    ],
)
async def test_add_asset_refuses_bad_values(
    box: Clips, db: Database, values: dict[str, Any], field: str
) -> None:
    await box.register(**clip(1))
    asset = {"path": "/r/c1.mp4", "variant": "clean", "aspect_ratio": "9x16"} | values
    with pytest.raises(InvalidInputError) as caught:
        await box.add_asset("c1", **asset)
    assert caught.value.field == field
    assert await count(db, clip_assets) == 0


async def test_stats_by_status_variant_and_aspect_ratio(box: Clips, db: Database) -> None:
    assert (await box.stats()).model_dump() == {
        "by_status": {"pending": 0, "rendered": 0, "failed": 0},
        "by_variant": {"clean": 0, "subtitled": 0},
        "by_aspect_ratio": {"9x16": 0, "16x9": 0, "1x1": 0},
    }
    for n in range(1, 6):
        await box.register(**clip(n))
    await box.set_status("c1", "rendered")
    await box.set_status("c2", "rendered")
    await box.set_status("c3", "failed")
    for n, variant, ratio in (
        (1, "clean", "9x16"),
        (1, "subtitled", "9x16"),
        (1, "clean", "1x1"),
        (2, "clean", "9x16"),
        (2, "clean", "9x16"),  # replaces, not a second asset
    ):
        await box.add_asset(f"c{n}", path=f"/r/{n}.mp4", variant=variant, aspect_ratio=ratio)

    stats = await box.stats()

    assert stats.by_status == {"pending": 2, "rendered": 2, "failed": 1}
    assert stats.by_variant == {"clean": 3, "subtitled": 1}
    assert stats.by_aspect_ratio == {"9x16": 3, "16x9": 0, "1x1": 1}
