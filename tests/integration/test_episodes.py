"""`Episodes`: every operation, its bad inputs and its races, on SQLite and PostgreSQL.

A refused write must leave nothing behind: those tests compare a snapshot of
every table (every row, ``updated_at`` included) taken before the call with
one taken after it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db import (
    ConflictError,
    Database,
    DatabaseConfig,
    Dependencies,
    Episode,
    Episodes,
    History,
    InvalidInputError,
    NotFoundError,
)
from pipeline_db.episodes import ID_BATCH
from pipeline_db.schema import (
    STAGES,
    clip_assets,
    clips,
    episode_dependencies,
    episodes,
    json_metadata_index,
    metadata,
    processing_log,
    processing_metrics,
    social_jobs,
)

Snapshot = dict[str, list[tuple[Any, ...]]]
MOMENT = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture
def eps(db: Database) -> Episodes:
    return Episodes(db)


async def snapshot(db: Database) -> Snapshot:
    """Every row of every table, in primary-key order."""
    async with db.read() as conn:
        return {
            table.name: [
                tuple(row)
                for row in await conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in metadata.sorted_tables
        }


def counts(snap: Snapshot) -> dict[str, int]:
    return {name: len(rows) for name, rows in snap.items() if rows}


async def register(eps: Episodes, n: int | str, **values: Any) -> Episode:
    fields: dict[str, Any] = {
        "id": f"ep{n}",
        "hash": f"h{n}",
        "source_path": f"/videos/show/ep{n}.mp4",
    }
    return (await eps.register(**(fields | values))).episode


async def log_rows(db: Database, episode_id: str | None = None) -> list[tuple[Any, ...]]:
    """(episode_id, stage, status, duration_seconds) of processing_log rows, in id order."""
    query = select(
        processing_log.c.episode_id,
        processing_log.c.stage,
        processing_log.c.status,
        processing_log.c.duration_seconds,
    ).order_by(processing_log.c.id)
    if episode_id is not None:
        query = query.where(processing_log.c.episode_id == episode_id)
    async with db.read() as conn:
        return [tuple(row) for row in await conn.execute(query)]


async def tick() -> None:
    """Let the clock move on: SQLite's timestamps have millisecond precision."""
    await asyncio.sleep(0.005)


@contextmanager
def statements(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """Record the (SQL, parameters) the engine sends while the block runs."""
    seen: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        seen.append((args[2], args[3]))

    for engine in db.sync_engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in db.sync_engines:
            event.remove(engine, "before_cursor_execute", record)


# -- register ----------------------------------------------------------------


async def test_register_stores_the_episode_its_log_row_and_its_index_row(
    db: Database, eps: Episodes
) -> None:
    registration = await eps.register(
        id="ep1",
        hash="h1",
        source_path="/videos/The Show/ep1.mp4",
        metadata={"show_name": "The Show", "title": "Pilot"},
        file_size=1234,
        duration_seconds=61.5,
        last_modified=MOMENT,
    )

    assert registration.duplicate is False
    episode = registration.episode
    assert (episode.id, episode.hash, episode.stage) == ("ep1", "h1", "discovered")
    assert episode.source_path == "/videos/The Show/ep1.mp4"
    assert episode.metadata == {"show_name": "The Show", "title": "Pilot"}
    assert (episode.file_size, episode.duration_seconds) == (1234, 61.5)
    assert episode.last_modified == MOMENT
    assert await eps.get("ep1") == episode
    assert await log_rows(db) == [("ep1", "registration", "completed", None)]
    async with db.read() as conn:
        index = (await conn.execute(select(json_metadata_index))).mappings().one()
    assert (index["episode_id"], index["show_name"], index["title"]) == ("ep1", "The Show", "Pilot")
    assert (index["file_path"], index["file_size"]) == ("/videos/The Show/ep1.mp4", 1234)


async def test_register_of_a_known_hash_returns_the_existing_episode_as_a_duplicate(
    db: Database, eps: Episodes
) -> None:
    first = await register(eps, 1, metadata={"title": "first"})
    before = await snapshot(db)

    again = await eps.register(
        id="other", hash="h1", source_path="/elsewhere/copy.mp4", metadata={"title": "second"}
    )

    assert again.duplicate is True
    assert again.episode == first
    assert await snapshot(db) == before  # no episode, log row or index row was added


async def test_register_of_a_taken_id_gets_the_next_free_suffix(eps: Episodes) -> None:
    assert (await register(eps, "", id="ep", hash="a")).id == "ep"
    assert (await register(eps, "", id="ep", hash="b")).id == "ep-2"
    assert (await register(eps, "", id="ep", hash="c")).id == "ep-3"
    # A gap is filled first: ep-4 is free once ep-5 is taken directly.
    assert (await register(eps, "", id="ep-5", hash="d")).id == "ep-5"
    assert (await register(eps, "", id="ep", hash="e")).id == "ep-4"
    assert (await register(eps, "", id="ep", hash="f")).id == "ep-6"


async def test_register_suffix_search_treats_like_wildcards_in_the_id_literally(
    eps: Episodes,
) -> None:
    await register(eps, "", id="a_b%c", hash="h1")
    # Would match the pattern "a_b%c-%" if "_" and "%" were wildcards.
    await register(eps, "", id="aXbYYc-2", hash="h2")

    assert (await register(eps, "", id="a_b%c", hash="h3")).id == "a_b%c-2"


async def test_register_finds_the_free_suffix_past_a_batch_of_taken_ones(eps: Episodes) -> None:
    # Suffixes are looked up ID_BATCH at a time: the first free one is in the next batch.
    count = ID_BATCH + 2
    ids = [(await register(eps, "", id="ep", hash=f"h{n}")).id for n in range(count)]

    assert ids == ["ep", *(f"ep-{n}" for n in range(2, count + 1))]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": "   "}, "id"),
        ({"id": "x" * 256}, "id"),
        ({"id": "a\x00b"}, "id"),
        ({"hash": ""}, "hash"),
        ({"source_path": ""}, "source_path"),
        ({"source_path": "/v/\x00.mp4"}, "source_path"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
        ({"metadata": {"when": datetime(2026, 1, 1, tzinfo=UTC)}}, "metadata"),
        ({"metadata": {"tags": {"a", "b"}}}, "metadata"),
        ({"metadata": {"score": float("nan")}}, "metadata"),
        ({"metadata": {"score": float("inf")}}, "metadata"),
        ({"metadata": {"note": "nul \x00 inside"}}, "metadata"),
        ({"metadata": {"key\x00": 1}}, "metadata"),
        ({"metadata": {"lone": "\ud800"}}, "metadata"),
        ({"last_modified": datetime(2026, 1, 1)}, "last_modified"),
    ],
)
async def test_register_refuses_bad_input_naming_the_field(
    db: Database, eps: Episodes, values: dict[str, Any], field: str
) -> None:
    await register(eps, 0)
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await register(eps, 1, **values)

    assert caught.value.field == field
    assert await snapshot(db) == before
    assert counts(before) == {"episodes": 1, "processing_log": 1, "json_metadata_index": 1}


async def test_register_refuses_metadata_over_the_configured_limit(db: Database) -> None:
    eps = Episodes(db, max_metadata_bytes=100)
    fits = {"text": "x" * 80}  # {"text":"xxx..."} is 91 bytes of compact JSON
    # "é" is two bytes in UTF-8: 46 of them are 92 bytes of text, 103 in all.
    too_big = {"text": "é" * 46}

    await eps.register(id="ok", hash="h0", source_path="/v/ok.mp4", metadata=fits)
    before = await snapshot(db)
    with pytest.raises(InvalidInputError) as caught:
        await eps.register(id="big", hash="h1", source_path="/v/big.mp4", metadata=too_big)

    assert caught.value.field == "metadata"
    assert "100-byte limit" in str(caught.value)
    assert await snapshot(db) == before


async def test_concurrent_registrations_of_one_hash_make_exactly_one_episode(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config(pool_size=20, max_overflow=5)) as db:
        eps = Episodes(db)
        results = await asyncio.gather(
            *(
                eps.register(id=f"racer{i}", hash="same", source_path=f"/v/racer{i}.mp4")
                for i in range(20)
            )
        )

        winners = [r.episode for r in results if not r.duplicate]
        assert len(winners) == 1
        assert all(r.episode == winners[0] for r in results)
        assert await eps.get_by_hash("same") == winners[0]
        assert counts(await snapshot(db)) == {
            "episodes": 1,
            "processing_log": 1,
            "json_metadata_index": 1,
        }


async def test_concurrent_registrations_of_one_id_get_distinct_suffixes(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config(pool_size=20, max_overflow=5)) as db:
        eps = Episodes(db)
        results = await asyncio.gather(
            *(eps.register(id="ep", hash=f"h{i}", source_path=f"/v/{i}.mp4") for i in range(20))
        )

        assert not any(r.duplicate for r in results)
        ids = {r.episode.id for r in results}
        assert ids == {"ep", *(f"ep-{n}" for n in range(2, 21))}
        # Each registration kept its own hash.
        assert {(r.episode.id, r.episode.hash) for r in results} == {
            (e.id, e.hash) for e in [await eps.get(i) for i in ids]
        }
        assert counts(await snapshot(db))["processing_log"] == 20


# -- reads -------------------------------------------------------------------


async def test_get_get_by_hash_and_exists(eps: Episodes) -> None:
    episode = await register(eps, 1)

    assert await eps.get("ep1") == episode
    assert await eps.get_by_hash("h1") == episode
    assert await eps.exists("ep1") is True
    assert await eps.exists("ep2") is False
    with pytest.raises(NotFoundError):
        await eps.get("ep2")
    with pytest.raises(NotFoundError):
        await eps.get_by_hash("h2")


async def test_find_by_filename_is_case_insensitive_and_takes_wildcards_literally(
    eps: Episodes,
) -> None:
    paths = {
        "exact": "/v/a%b_c.mp4",
        "mixed": "/other/folder/A%B_C.MP4",
        "percent_as_any": "/v/aXYZb_c.mp4",
        "underscore_as_one": "/v/a%bXc.mp4",
        "longer": "/v/a%b_c.mp4.bak",
        "folder_named_so": "/v/a%b_c.mp4/inner.mp4",
        "no_folder": "A%b_C.mp4",
    }
    for n, (key, path) in enumerate(paths.items()):
        await register(eps, n, id=key, source_path=path)

    found = await eps.find_by_filename("a%B_c.Mp4")

    assert [e.id for e in found] == ["exact", "mixed", "no_folder"]
    assert [e.id for e in await eps.find_by_filename("inner.mp4")] == ["folder_named_so"]
    assert await eps.find_by_filename("%") == []
    assert await eps.find_by_filename("a_b_c.mp4") == []
    assert [e.id for e in await eps.find_by_filename("a%b_c.mp4", limit=2)] == ["exact", "mixed"]


async def test_find_by_filename_matches_a_non_ascii_name_written_as_stored(
    eps: Episodes,
) -> None:
    # SQLite's lower() folds ASCII only, so the name must be lowered by the same
    # function on both sides of the comparison, or "É" never matches itself.
    await register(eps, 1, source_path="/v/ÉMISSION Spéciale.mp4")

    assert [e.id for e in await eps.find_by_filename("ÉMISSION Spéciale.mp4")] == ["ep1"]
    assert [e.id for e in await eps.find_by_filename("ÉMISSION SPéCIALE.MP4")] == ["ep1"]


async def test_find_by_filename_refuses_an_empty_name_and_a_bad_limit(eps: Episodes) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await eps.find_by_filename("")
    assert caught.value.field == "name"
    with pytest.raises(InvalidInputError) as caught:
        await eps.find_by_filename("x.mp4", limit=0)
    assert caught.value.field == "limit"


# -- list --------------------------------------------------------------------


async def insert_many(db: Database, n: int) -> list[str]:
    """Insert ``n`` episodes in one statement (their updated_at mostly tie)."""
    rows = [
        {"id": f"ep{i:03d}", "hash": f"h{i}", "source_path": f"/v/{i}.mp4", "metadata": {}}
        for i in range(n)
    ]
    await db.transaction(lambda conn: conn.execute(insert(episodes), rows))
    async with db.read() as conn:
        ordered = await conn.execute(
            select(episodes.c.id).order_by(episodes.c.updated_at, episodes.c.id)
        )
        return list(ordered.scalars())


async def test_list_pages_visit_every_episode_once_in_a_stable_order(
    db: Database, eps: Episodes
) -> None:
    order = await insert_many(db, 120)
    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None

    with statements(db) as sent:
        while True:
            page = await eps.list(cursor=cursor, limit=50)
            seen += [e.id for e in page.items]
            sizes.append(len(page.items))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor

    assert sizes == [50, 50, 20]
    assert seen == order
    # Each page asked the database for one row more than a page, never for all.
    listings = [params for sql, params in sent if "FROM episodes" in sql]
    assert len(listings) == 3
    assert all("LIMIT" in sql for sql, _ in sent if "FROM episodes" in sql)
    assert all(51 in tuple(params) for params in listings)


async def test_list_an_episode_updated_between_pages_moves_to_the_end(
    db: Database, eps: Episodes
) -> None:
    """The listing is in (updated_at, id) order, so an update moves a row to the end.

    Decided: a walk sees every episode that exists throughout at least once. One
    updated after it was seen is seen again at the end; one updated before it
    was reached is seen once, at the end, not at its old place.
    """
    order = await insert_many(db, 120)
    seen_early, unseen = order[10], order[100]

    first = await eps.list(limit=50)
    await tick()
    await eps.patch_metadata(seen_early, {"touched": 1})
    await tick()
    await eps.patch_metadata(unseen, {"touched": 2})
    seen = [e.id for e in first.items]
    cursor = first.next_cursor
    while cursor is not None:
        page = await eps.list(cursor=cursor, limit=50)
        seen += [e.id for e in page.items]
        cursor = page.next_cursor

    assert seen == order[:50] + [i for i in order[50:] if i != unseen] + [seen_early, unseen]
    assert len(seen) == 121


async def test_list_filters_by_stages_show_and_updated_since(db: Database, eps: Episodes) -> None:
    await register(eps, 1, metadata={"show_name": "Alpha"})
    await register(eps, 2, metadata={"show_name": "Beta"})
    await register(eps, 3, metadata={"show_name": "Alpha"})
    await register(eps, 4)
    await eps.advance_stage("ep2", "prepped")
    await eps.advance_stage("ep3", "transcribed")
    await tick()
    cut = datetime.now(UTC)
    await tick()
    await eps.advance_stage("ep4", "rendered")

    async def ids(**filters: Any) -> list[str]:
        return sorted(e.id for e in (await eps.list(**filters)).items)

    assert await ids() == ["ep1", "ep2", "ep3", "ep4"]
    assert await ids(stages=["discovered"]) == ["ep1"]
    assert await ids(stages=["prepped", "transcribed"]) == ["ep2", "ep3"]
    assert await ids(show="Alpha") == ["ep1", "ep3"]
    assert await ids(show="Alpha", stages=["transcribed"]) == ["ep3"]
    assert await ids(show="Gamma") == []
    assert await ids(updated_since=cut) == ["ep4"]
    assert await ids(updated_since=cut, stages=["discovered"]) == []


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        "é",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _cursor({"updated_at": "2026-01-01T00:00:00+00:00"}),
        _cursor(["2026-01-01T00:00:00+00:00"]),
        _cursor(["yesterday", "ep1"]),
        _cursor(["2026-01-01T00:00:00", "ep1"]),  # naive
        _cursor(["2026-01-01T00:00:00+00:00", 7]),
        _cursor([20260101, "ep1"]),
    ],
)
async def test_list_refuses_a_cursor_it_did_not_make(eps: Episodes, cursor: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await eps.list(cursor=cursor)
    assert caught.value.field == "cursor"


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"stages": ["mastered"]}, "stages"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"updated_since": datetime(2026, 1, 1)}, "updated_since"),
    ],
)
async def test_list_refuses_bad_filters(eps: Episodes, filters: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await eps.list(**filters)
    assert caught.value.field == field


# -- needing_processing --------------------------------------------------------


async def test_needing_processing_returns_episodes_before_the_target_oldest_update_first(
    eps: Episodes,
) -> None:
    for n in range(1, 6):
        await register(eps, n)
    await tick()
    for episode_id, stage in [
        ("ep1", "transcribed"),
        ("ep2", "prepped"),
        ("ep3", "clips_discovered"),
        ("ep5", "prepped"),  # ep5 is now the most recently updated
    ]:
        await eps.advance_stage(episode_id, stage)
        await tick()

    assert [e.id for e in await eps.needing_processing("transcribed")] == ["ep4", "ep2", "ep5"]
    assert [e.id for e in await eps.needing_processing("prepped")] == ["ep4"]
    assert [e.id for e in await eps.needing_processing("clips_discovered")] == [
        "ep4",
        "ep1",
        "ep2",
        "ep5",
    ]
    assert [e.id for e in await eps.needing_processing("transcribed", limit=2)] == ["ep4", "ep2"]
    assert await eps.needing_processing("discovered") == []
    with pytest.raises(InvalidInputError) as caught:
        await eps.needing_processing("mastered")
    assert caught.value.field == "target_stage"


# -- advance_stage -------------------------------------------------------------


async def test_advance_stage_moves_forward_and_logs_each_transition(
    db: Database, eps: Episodes
) -> None:
    registered = await register(eps, 1)
    await tick()

    prepped = await eps.advance_stage("ep1", "prepped", duration_seconds=12.5)
    rendered = await eps.advance_stage("ep1", "rendered", expected="prepped")  # skips ahead

    assert prepped.stage == "prepped"
    assert rendered.stage == "rendered"
    assert rendered.updated_at > registered.updated_at
    assert await eps.get("ep1") == rendered
    assert await log_rows(db) == [
        ("ep1", "registration", "completed", None),
        ("ep1", "prepped", "completed", 12.5),
        ("ep1", "rendered", "completed", None),
    ]


async def test_advance_stage_backwards_needs_force(db: Database, eps: Episodes) -> None:
    await register(eps, 1)
    await eps.advance_stage("ep1", "transcribed")
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.advance_stage("ep1", "prepped")
    assert caught.value.field == "stage"
    with pytest.raises(InvalidInputError) as caught:
        await eps.advance_stage("ep1", "prepped", expected="transcribed")
    assert caught.value.field == "stage"
    assert await snapshot(db) == before

    forced = await eps.advance_stage("ep1", "discovered", force=True)
    assert forced.stage == "discovered"
    assert (await log_rows(db))[-1] == ("ep1", "discovered", "completed", None)


async def test_advance_stage_with_a_stale_expected_stage_is_a_conflict(
    db: Database, eps: Episodes
) -> None:
    await register(eps, 1)
    await eps.advance_stage("ep1", "prepped")
    before = await snapshot(db)

    with pytest.raises(ConflictError) as caught:
        await eps.advance_stage("ep1", "transcribed", expected="discovered")

    assert caught.value.context["current"] == "prepped"
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"target": "mastered"}, "target"),
        ({"target": "prepped", "expected": "mastered"}, "expected"),
    ],
)
async def test_advance_stage_refuses_unknown_stages(
    db: Database, eps: Episodes, arguments: dict[str, Any], field: str
) -> None:
    await register(eps, 1)
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.advance_stage("ep1", **arguments)

    assert caught.value.field == field
    assert await snapshot(db) == before


@pytest.mark.parametrize("expected", [None, "discovered"])
async def test_advance_stage_of_an_unknown_episode_is_not_found(
    db: Database, eps: Episodes, expected: str | None
) -> None:
    await register(eps, 1)
    before = await snapshot(db)

    with pytest.raises(NotFoundError):
        await eps.advance_stage("nope", "prepped", expected=expected)

    assert await snapshot(db) == before


async def test_concurrent_advances_from_one_expected_stage_have_exactly_one_winner(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config(pool_size=20, max_overflow=5)) as db:
        eps = Episodes(db)
        await register(eps, 1)

        results = await asyncio.gather(
            *(
                eps.advance_stage("ep1", "prepped", expected="discovered", duration_seconds=i)
                for i in range(20)
            ),
            return_exceptions=True,
        )

        winners = [r for r in results if isinstance(r, Episode)]
        losers = [r for r in results if isinstance(r, ConflictError)]
        assert len(winners) == 1
        assert len(losers) == 19
        assert (await eps.get("ep1")).stage == "prepped"
        transitions = [row for row in await log_rows(db) if row[1] == "prepped"]
        assert len(transitions) == 1


# -- metadata ------------------------------------------------------------------

DOCUMENT: dict[str, Any] = {
    "title": "Épisode 12 — «Les Misérables» 🎬🍿",
    "unknown_future_key": {"nested": {"deeper": {"deepest": [1, [2, [3, {"x": None}]]]}}},
    "emoji": "👩🏽‍💻 family: 👨‍👩‍👧‍👦",
    "scripts": ["中文", "日本語", "한국어", "עברית", "العربية", "ελληνικά"],
    "combining": "e\u0301 vs é",
    "separators": "line\u2028para\u2029tab\tnewline\n",
    "escapes": 'quote " backslash \\ slash /',
    "big_ints": [2**53 + 1, 2**63 - 1, 2**63, 2**64 + 1, -(2**70), 10**30],
    "floats": [0.1, 0.2, 1.5e-7, 5e-324, 2.5, -0.5, 123456.789],
    "integral_float": 1.0,
    "booleans": [True, False],
    "null": None,
    "empty": {"object": {}, "array": [], "string": ""},
    "": "empty key",
    "dotted.key": "not a path",
    "zzz": "last key, shortest-first sorting would move it",
}


async def test_save_round_trips_the_document_exactly(eps: Episodes) -> None:
    await register(eps, 1)

    saved = await eps.save("ep1", DOCUMENT)
    read = await eps.get("ep1")

    assert saved.metadata == DOCUMENT
    assert read.metadata == DOCUMENT
    # Equality alone would let 1.0 come back as 1 and 2**63 as a float.
    assert type(read.metadata["integral_float"]) is float
    assert all(type(v) is float for v in read.metadata["floats"])
    assert all(type(v) is int for v in read.metadata["big_ints"])
    assert read.metadata["big_ints"] == DOCUMENT["big_ints"]


async def test_save_keeps_key_order_on_sqlite_only(eps: Episodes, backend: str) -> None:
    """The backend difference: PostgreSQL's jsonb sorts keys, shortest first.

    Both backends return an equal document; only SQLite (JSON stored as text)
    returns the keys in the order they were saved.
    """
    document = {"zzz": 1, "a": {"yy": 2, "b": 3}, "mm": 4}
    await register(eps, 1)

    await eps.save("ep1", document)
    read = (await eps.get("ep1")).metadata

    assert read == document
    if backend == "sqlite":
        assert list(read) == ["zzz", "a", "mm"]
        assert list(read["a"]) == ["yy", "b"]
    else:
        assert list(read) == ["a", "mm", "zzz"]
        assert list(read["a"]) == ["b", "yy"]


async def test_save_round_trips_floats_beyond_1e16(
    eps: Episodes, backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="jsonb stores numbers as numeric and prints 1e308 as 1 and 308 "
                "zeros, which reads back as the int 10**308 (!= 1e308)",
            )
        )
    document = {"huge": 1e308, "large": 1.2345678901234567e25, "max": 1.7976931348623157e308}
    await register(eps, 1)

    await eps.save("ep1", document)
    read = (await eps.get("ep1")).metadata

    assert read == document
    assert all(type(v) is float for v in read.values())


async def test_save_updates_the_metadata_index(eps: Episodes) -> None:
    await register(eps, 1, metadata={"show_name": "Old"})

    await eps.save("ep1", {"show_name": "New"})

    assert [e.id for e in (await eps.list(show="New")).items] == ["ep1"]
    assert (await eps.list(show="Old")).items == []


@pytest.mark.parametrize(
    "document",
    [
        {"when": datetime(2026, 1, 1, tzinfo=UTC)},
        {"bytes": b"raw"},
        {"score": float("nan")},
        {"nul": "a\x00b"},
        {"nested": {"lone_surrogate": "\udc80"}},
        {"object": object()},
    ],
)
async def test_save_refuses_a_document_that_is_not_json(
    db: Database, eps: Episodes, document: dict[str, Any]
) -> None:
    await register(eps, 1, metadata={"title": "kept"})
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.save("ep1", document)

    assert caught.value.field == "metadata"
    assert await snapshot(db) == before


async def test_save_refuses_a_document_nested_too_deep_for_the_encoder(
    db: Database, eps: Episodes
) -> None:
    await register(eps, 1)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):
        node["x"] = {}
        node = node["x"]
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.save("ep1", deep)

    assert caught.value.field == "metadata"
    assert await snapshot(db) == before


async def test_save_refuses_a_document_over_the_limit(db: Database) -> None:
    eps = Episodes(db, max_metadata_bytes=1_000)
    await register(eps, 1)
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.save("ep1", {"text": "x" * 1_000})

    assert caught.value.field == "metadata"
    assert await snapshot(db) == before


async def test_save_of_an_unknown_episode_is_not_found(db: Database, eps: Episodes) -> None:
    before = await snapshot(db)
    with pytest.raises(NotFoundError):
        await eps.save("nope", {"a": 1})
    assert await snapshot(db) == before


# RFC 7396, Appendix A, the cases whose target and patch are objects.
RFC_7396_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    # Section 3's example.
    (
        {
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged",
        },
        {
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": None},
            "tags": ["example"],
        },
        {
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890",
        },
    ),
    # Arrays are replaced whole, nulls inside them kept.
    ({"a": [1, 2, 3]}, {"a": [None, {"b": None}]}, {"a": [None, {"b": None}]}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396_EXAMPLES)
async def test_patch_metadata_follows_rfc_7396(
    eps: Episodes, target: dict[str, Any], patch: dict[str, Any], result: dict[str, Any]
) -> None:
    await register(eps, 1, metadata=target)

    patched = await eps.patch_metadata("ep1", patch)

    assert patched.metadata == result
    assert (await eps.get("ep1")).metadata == result


async def test_patch_metadata_keeps_the_index_in_step(eps: Episodes) -> None:
    await register(eps, 1, metadata={"show_name": "Old", "title": "t"})

    await eps.patch_metadata("ep1", {"show_name": "New"})

    assert [e.id for e in (await eps.list(show="New")).items] == ["ep1"]


@pytest.mark.parametrize(
    "patch",
    [["not", "an", "object"], "text", None, {"bad": float("nan")}, {"bad": {1, 2}}],
)
async def test_patch_metadata_refuses_a_patch_that_is_not_a_json_object(
    db: Database, eps: Episodes, patch: Any
) -> None:
    await register(eps, 1, metadata={"title": "kept"})
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.patch_metadata("ep1", patch)

    assert caught.value.field == "metadata"
    assert await snapshot(db) == before


async def test_patch_metadata_refuses_a_result_over_the_limit(db: Database) -> None:
    eps = Episodes(db, max_metadata_bytes=200)
    await register(eps, 1, metadata={"a": "x" * 120})
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.patch_metadata("ep1", {"b": "y" * 120})  # each part fits, the result not

    assert caught.value.field == "metadata"
    assert await snapshot(db) == before


async def test_patch_metadata_of_an_unknown_episode_is_not_found(eps: Episodes) -> None:
    with pytest.raises(NotFoundError):
        await eps.patch_metadata("nope", {"a": 1})


# -- update_source ---------------------------------------------------------------


async def test_update_source_changes_path_hash_size_and_mtime(db: Database, eps: Episodes) -> None:
    await register(eps, 1, file_size=1, last_modified=MOMENT)
    later = MOMENT + timedelta(days=1)

    updated = await eps.update_source(
        "ep1", source_path="/new/place.mkv", hash="h1-new", file_size=2048, last_modified=later
    )

    assert (updated.source_path, updated.hash, updated.file_size) == (
        "/new/place.mkv",
        "h1-new",
        2048,
    )
    assert updated.last_modified == later
    assert await eps.get_by_hash("h1-new") == updated == await eps.get("ep1")
    with pytest.raises(NotFoundError):
        await eps.get_by_hash("h1")
    assert [e.id for e in await eps.find_by_filename("PLACE.mkv")] == ["ep1"]
    async with db.read() as conn:
        index = (await conn.execute(select(json_metadata_index))).mappings().one()
    assert (index["file_path"], index["file_size"]) == ("/new/place.mkv", 2048)


async def test_update_source_to_another_episodes_hash_is_a_conflict(
    db: Database, eps: Episodes
) -> None:
    await register(eps, 1)
    await register(eps, 2)
    before = await snapshot(db)

    with pytest.raises(ConflictError):
        await eps.update_source("ep1", source_path="/v/x.mp4", hash="h2")

    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"source_path": ""}, "source_path"),
        ({"hash": ""}, "hash"),
        ({"last_modified": datetime(2026, 1, 1)}, "last_modified"),
    ],
)
async def test_update_source_refuses_bad_input(
    db: Database, eps: Episodes, values: dict[str, Any], field: str
) -> None:
    await register(eps, 1)
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.update_source("ep1", **({"source_path": "/v/x.mp4", "hash": "hx"} | values))

    assert caught.value.field == field
    assert await snapshot(db) == before


async def test_update_source_of_an_unknown_episode_is_not_found(
    db: Database, eps: Episodes
) -> None:
    before = await snapshot(db)
    with pytest.raises(NotFoundError):
        await eps.update_source("nope", source_path="/v/x.mp4", hash="hx")
    assert await snapshot(db) == before


# -- rename and delete -----------------------------------------------------------


async def add_children(db: Database, episode_id: str, upstream: str, downstream: str) -> None:
    """Give ``episode_id`` a row in every table that refers to episodes.

    Its dependencies go both ways: it depends on ``upstream``, ``downstream`` on it.
    """
    history = History(db)
    await history.append(episode_id, "prepped", "started")
    await history.record_metrics(episode_id, "prepped", {"fps": 25.0, "frames": 1500.0})
    dependencies = Dependencies(db)
    await dependencies.add(episode_id, upstream)
    await dependencies.add(downstream, episode_id, dependency_type="soft")

    async def work(conn: AsyncConnection) -> None:
        await conn.execute(
            insert(clips).values(
                id=f"{episode_id}-clip",
                episode_id=episode_id,
                start_ms=0,
                end_ms=10,
                duration_ms=10,
            )
        )
        await conn.execute(
            insert(clip_assets).values(
                id=f"{episode_id}-asset",
                clip_id=f"{episode_id}-clip",
                path="/c/1.mp4",
                variant="clean",
                aspect_ratio="9x16",
            )
        )
        await conn.execute(
            insert(social_jobs).values(job_id=f"{episode_id}-job", episode_id=episode_id)
        )

    await db.transaction(work)


async def references(db: Database, episode_id: str) -> dict[str, int]:
    """How many rows of each child table refer to ``episode_id``."""
    columns = [
        processing_log.c.episode_id,
        processing_metrics.c.episode_id,
        episode_dependencies.c.episode_id,
        episode_dependencies.c.depends_on_episode_id,
        json_metadata_index.c.episode_id,
        clips.c.episode_id,
        social_jobs.c.episode_id,
    ]
    async with db.read() as conn:
        return {
            f"{column.table.name}.{column.name}": (
                await conn.execute(select(func.count()).where(column == episode_id))
            ).scalar_one()
            for column in columns
        }


async def test_rename_cascades_to_every_child_row(db: Database, eps: Episodes) -> None:
    await register(eps, "a", metadata={"show_name": "S"})
    await register(eps, "b")
    await register(eps, "c")
    await add_children(db, "epa", "epb", "epc")
    before = await references(db, "epa")
    totals = counts(await snapshot(db))

    renamed = await eps.rename("epa", "epz")

    assert renamed.id == "epz"
    assert renamed.hash == "ha"
    assert before == {
        "processing_log.episode_id": 2,  # registration, prepped/started
        "processing_metrics.episode_id": 2,
        "episode_dependencies.episode_id": 1,
        "episode_dependencies.depends_on_episode_id": 1,
        "json_metadata_index.episode_id": 1,
        "clips.episode_id": 1,
        "social_jobs.episode_id": 1,
    }
    assert await references(db, "epz") == before
    assert set((await references(db, "epa")).values()) == {0}
    assert counts(await snapshot(db)) == totals
    assert not await eps.exists("epa")
    assert [e.id for e in (await eps.list(show="S")).items] == ["epz"]
    deps = Dependencies(db)
    assert [d.depends_on_episode_id for d in await deps.list("epz")] == ["epb"]
    assert [d.depends_on_episode_id for d in await deps.list("epc")] == ["epz"]
    async with db.read() as conn:
        asset_clip = (await conn.execute(select(clip_assets.c.clip_id))).scalar_one()
    assert asset_clip == "epa-clip"  # clip ids are not episode ids: they stay


async def test_rename_to_a_taken_id_is_a_conflict(db: Database, eps: Episodes) -> None:
    await register(eps, 1)
    await register(eps, 2)
    before = await snapshot(db)

    with pytest.raises(ConflictError) as caught:
        await eps.rename("ep1", "ep2")

    assert caught.value.context["field"] == "new_id"
    assert await snapshot(db) == before


@pytest.mark.parametrize("new_id", ["", " ", "x" * 256, "a\x00b"])
async def test_rename_refuses_a_bad_new_id(db: Database, eps: Episodes, new_id: str) -> None:
    await register(eps, 1)
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await eps.rename("ep1", new_id)

    assert caught.value.field == "new_id"
    assert await snapshot(db) == before


async def test_rename_of_an_unknown_episode_is_not_found(db: Database, eps: Episodes) -> None:
    await register(eps, 1)
    before = await snapshot(db)
    with pytest.raises(NotFoundError):
        await eps.rename("nope", "ep9")
    assert await snapshot(db) == before


async def test_delete_cascades_and_leaves_other_episodes_alone(db: Database, eps: Episodes) -> None:
    await register(eps, "a")
    await register(eps, "b")
    await register(eps, "c")
    await add_children(db, "epa", "epb", "epc")
    await History(db).append("epb", "prepped", "completed")
    others = {"epb": await references(db, "epb"), "epc": await references(db, "epc")}

    await eps.delete("epa")

    assert not await eps.exists("epa")
    assert set((await references(db, "epa")).values()) == {0}
    # epb and epc keep their episodes, log and index rows; both edges went with epa.
    assert counts(await snapshot(db)) == {
        "episodes": 2,
        "processing_log": 3,
        "json_metadata_index": 2,
    }
    for other, before in others.items():
        assert await references(db, other) == before | {
            "episode_dependencies.episode_id": 0,
            "episode_dependencies.depends_on_episode_id": 0,
        }
    with pytest.raises(NotFoundError):
        await eps.delete("epa")


# -- stats -------------------------------------------------------------------------


async def test_stats_match_figures_computed_by_hand(db: Database, eps: Episodes) -> None:
    history = History(db)
    for n in (1, 2, 3):
        await register(eps, n)
    await eps.advance_stage("ep1", "prepped", duration_seconds=10.0)
    await eps.advance_stage("ep1", "transcribed", duration_seconds=30.0)
    await eps.advance_stage("ep2", "prepped", duration_seconds=20.0)
    await history.append("ep2", "transcribed", "started")
    await history.append("ep2", "transcribed", "failed", duration_seconds=5.0, error_message="x")
    old = datetime.now(UTC) - timedelta(hours=48)
    await db.transaction(
        lambda conn: conn.execute(
            insert(processing_log),
            [
                {
                    "episode_id": "ep3",
                    "stage": "prepped",
                    "status": "failed",
                    "duration_seconds": None,
                    "timestamp": old,
                },
                {
                    "episode_id": "ep3",
                    "stage": "prepped",
                    "status": "completed",
                    "duration_seconds": 999.0,
                    "timestamp": old,
                },
            ],
        )
    )

    stats = await eps.stats()

    assert stats.total == 3
    assert {stage: s.episodes for stage, s in stats.by_stage.items()} == {
        "discovered": 1,
        "prepped": 1,
        "transcribed": 1,
        "enriched": 0,
        "rendered": 0,
        "clips_discovered": 0,
    }
    # In the last 24 h: 3 registrations + 3 advances (completed), 1 started, 1 failed.
    assert stats.events_last_24h == 8
    assert stats.failures_last_24h == 1
    # The failure rate is over finished events (completed or failed), not over starts.
    assert stats.failure_rate_last_24h == pytest.approx(1 / 7)
    means = {stage: s.mean_duration_seconds for stage, s in stats.by_stage.items()}
    assert means == {
        "discovered": None,
        "prepped": pytest.approx(15.0),  # (10 + 20) / 2: the failed 5 s is not a completion
        "transcribed": pytest.approx(30.0),
        "enriched": None,
        "rendered": None,
        "clips_discovered": None,
    }

    wider = await eps.stats(window=timedelta(days=3))
    assert (wider.events_last_24h, wider.failures_last_24h) == (10, 2)
    assert wider.failure_rate_last_24h == pytest.approx(2 / 9)
    assert wider.by_stage["prepped"].mean_duration_seconds == pytest.approx((10 + 20 + 999) / 3)


async def test_stats_of_an_empty_database(eps: Episodes) -> None:
    stats = await eps.stats()

    assert (stats.total, stats.events_last_24h, stats.failures_last_24h) == (0, 0, 0)
    assert stats.failure_rate_last_24h == 0.0
    assert set(stats.by_stage) == set(STAGES)
    assert all(s.episodes == 0 and s.mean_duration_seconds is None for s in stats.by_stage.values())
