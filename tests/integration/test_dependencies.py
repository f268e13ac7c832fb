"""`Dependencies`: an acyclic graph of episodes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, select

from pipeline_db import (
    ConflictError,
    Database,
    DatabaseConfig,
    Dependencies,
    Dependency,
    Episodes,
    InvalidInputError,
    NotFoundError,
)
from pipeline_db.schema import episode_dependencies, metadata

Snapshot = dict[str, list[tuple[Any, ...]]]
#: Generous retries: SERIALIZABLE refuses many of the racing additions on PostgreSQL.
RACE_RETRY = {"attempts": 200, "base_delay": 0.005, "max_delay": 0.1, "deadline": 120}


@pytest.fixture
def deps(db: Database) -> Dependencies:
    return Dependencies(db)


async def register(db: Database, *ids: str) -> None:
    episodes = Episodes(db)
    for episode_id in ids:
        await episodes.register(
            id=episode_id, hash=f"h-{episode_id}", source_path=f"/v/{episode_id}"
        )


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


async def edges(db: Database) -> set[tuple[str, str]]:
    d = episode_dependencies.c
    async with db.read() as conn:
        rows = await conn.execute(select(d.episode_id, d.depends_on_episode_id))
        return {(a, b) for a, b in rows}


def find_cycle(graph: set[tuple[str, str]]) -> list[str] | None:
    """A cycle of the stored graph, by depth-first search (None when acyclic)."""
    successors: dict[str, list[str]] = {}
    for source, target in graph:
        successors.setdefault(source, []).append(target)
    state: dict[str, str] = {}  # "open" while on the stack, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in successors.get(node, []):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])) is not None:
                return cycle
        state[node] = "done"
        return None

    for start in list(successors):
        if start not in state and (cycle := visit(start, [start])) is not None:
            return cycle
    return None


def test_find_cycle_finds_cycles() -> None:
    """The checker the race tests rely on can fail."""
    assert find_cycle({("a", "b"), ("b", "c")}) is None
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) in (
        ["a", "b", "c", "a"],
        ["b", "c", "a", "b"],
        ["c", "a", "b", "c"],
    )
    assert find_cycle({("x", "y"), ("y", "x"), ("a", "x")}) is not None


# -- add, list, remove -------------------------------------------------------


async def test_add_records_the_edge_and_list_returns_them_oldest_first(
    db: Database, deps: Dependencies
) -> None:
    await register(db, "a", "b", "c")

    first = await deps.add("a", "b")
    second = await deps.add("a", "c", dependency_type="assets")

    assert isinstance(first, Dependency)
    assert (first.episode_id, first.depends_on_episode_id, first.dependency_type) == (
        "a",
        "b",
        "requires",
    )
    assert second.dependency_type == "assets"
    assert await deps.list("a") == [first, second]
    assert await deps.list("b") == []
    assert await edges(db) == {("a", "b"), ("a", "c")}


async def test_adding_an_edge_again_returns_it_and_stores_nothing(
    db: Database, deps: Dependencies
) -> None:
    await register(db, "a", "b")
    first = await deps.add("a", "b")
    before = await snapshot(db)

    again = await deps.add("a", "b")

    assert again == first
    assert await snapshot(db) == before


async def test_edges_of_different_types_are_kept_apart(db: Database, deps: Dependencies) -> None:
    await register(db, "a", "b")

    await deps.add("a", "b")
    await deps.add("a", "b", dependency_type="soft")

    assert [d.dependency_type for d in await deps.list("a")] == ["requires", "soft"]


async def test_a_self_dependency_is_refused(db: Database, deps: Dependencies) -> None:
    await register(db, "a")
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await deps.add("a", "a")

    assert caught.value.field == "depends_on_episode_id"
    assert "itself" in str(caught.value)
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    ("new_edge", "cycle"),
    [
        (("b", "a"), ["b", "a", "b"]),
        (("c", "a"), ["c", "a", "b", "c"]),
        (("d", "a"), ["d", "a", "b", "c", "d"]),
    ],
)
async def test_an_edge_closing_a_cycle_is_refused_naming_the_cycle(
    db: Database, deps: Dependencies, new_edge: tuple[str, str], cycle: list[str]
) -> None:
    await register(db, "a", "b", "c", "d", "e")
    for source, target in [("a", "b"), ("b", "c"), ("c", "d"), ("e", "a")]:
        await deps.add(source, target)
    before = await snapshot(db)

    with pytest.raises(ConflictError) as caught:
        await deps.add(*new_edge)

    assert caught.value.context["cycle"] == cycle
    assert " -> ".join(cycle) in str(caught.value)
    assert await snapshot(db) == before


async def test_a_cycle_through_another_dependency_type_is_refused(
    db: Database, deps: Dependencies
) -> None:
    await register(db, "a", "b")
    await deps.add("a", "b", dependency_type="soft")

    with pytest.raises(ConflictError):
        await deps.add("b", "a")
    assert await edges(db) == {("a", "b")}


@pytest.mark.parametrize(("source", "target"), [("nope", "a"), ("a", "nope")])
async def test_adding_an_edge_to_an_unknown_episode_is_not_found(
    db: Database, deps: Dependencies, source: str, target: str
) -> None:
    await register(db, "a")
    before = await snapshot(db)

    with pytest.raises(NotFoundError) as caught:
        await deps.add(source, target)

    assert caught.value.context["episode_id"] == "nope"
    assert await snapshot(db) == before


async def test_an_empty_dependency_type_is_refused(db: Database, deps: Dependencies) -> None:
    await register(db, "a", "b")
    before = await snapshot(db)
    with pytest.raises(InvalidInputError) as caught:
        await deps.add("a", "b", dependency_type="")
    assert caught.value.field == "dependency_type"
    assert await snapshot(db) == before


async def test_list_of_an_unknown_episode_is_not_found(deps: Dependencies) -> None:
    with pytest.raises(NotFoundError):
        await deps.list("nope")


async def test_remove_deletes_the_edge_of_any_or_one_type(db: Database, deps: Dependencies) -> None:
    await register(db, "a", "b", "c")
    await deps.add("a", "b")
    await deps.add("a", "b", dependency_type="soft")
    await deps.add("a", "c")

    await deps.remove("a", "b", dependency_type="soft")
    assert [(d.depends_on_episode_id, d.dependency_type) for d in await deps.list("a")] == [
        ("b", "requires"),
        ("c", "requires"),
    ]
    await deps.remove("a", "c")
    assert await edges(db) == {("a", "b")}
    # Removing an edge lets its reverse in.
    await deps.remove("a", "b")
    assert (await deps.add("b", "a")).episode_id == "b"


async def test_removing_a_missing_edge_is_not_found(db: Database, deps: Dependencies) -> None:
    await register(db, "a", "b")
    await deps.add("a", "b")
    before = await snapshot(db)

    for source, target, kind in [("b", "a", None), ("a", "b", "soft"), ("nope", "a", None)]:
        with pytest.raises(NotFoundError):
            await deps.remove(source, target, dependency_type=kind)

    assert await snapshot(db) == before


# -- ready and unmet ---------------------------------------------------------


async def test_ready_lists_episodes_whose_dependencies_all_reached_the_stage(
    db: Database, deps: Dependencies
) -> None:
    episodes = Episodes(db)
    await register(db, "up1", "up2", "up3", "both", "one", "lagging", "free")
    await episodes.advance_stage("up1", "transcribed")
    await episodes.advance_stage("up2", "rendered")
    # up3 stays discovered.
    await deps.add("both", "up1")
    await deps.add("both", "up2")
    await deps.add("one", "up2")
    await deps.add("lagging", "up1")
    await deps.add("lagging", "up3")

    assert await deps.ready("discovered") == ["both", "lagging", "one"]
    assert await deps.ready("transcribed") == ["both", "one"]
    assert await deps.ready("rendered") == ["one"]
    assert await deps.ready("clips_discovered") == []
    assert await deps.unmet("lagging", "transcribed") == ["up3"]
    assert await deps.unmet("both", "rendered") == ["up1"]
    assert await deps.unmet("both", "transcribed") == []
    assert await deps.unmet("free", "rendered") == []


async def test_ready_and_unmet_refuse_an_unknown_stage(db: Database, deps: Dependencies) -> None:
    await register(db, "a")
    for call in (lambda: deps.ready("mastered"), lambda: deps.unmet("a", "mastered")):
        with pytest.raises(InvalidInputError) as caught:
            await call()
        assert caught.value.field == "stage"


async def test_unmet_of_an_unknown_episode_is_not_found(deps: Dependencies) -> None:
    with pytest.raises(NotFoundError):
        await deps.unmet("nope", "prepped")


# -- races -------------------------------------------------------------------


async def test_concurrent_additions_of_a_ring_never_store_a_cycle(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    """20 tasks each add one edge of the ring e0 -> e1 -> ... -> e19 -> e0."""
    config = make_config(pool_size=20, max_overflow=5, retry=RACE_RETRY)
    async with Database(config) as db:
        size = 20
        names = [f"e{i}" for i in range(size)]
        await register(db, *names)
        deps = Dependencies(db)

        results = await asyncio.gather(
            *(deps.add(names[i], names[(i + 1) % size]) for i in range(size)),
            return_exceptions=True,
        )

        stored = await edges(db)
        assert find_cycle(stored) is None
        refused = [r for r in results if isinstance(r, ConflictError)]
        assert [r for r in results if not isinstance(r, Dependency | ConflictError)] == []
        # Exactly the last edge to commit closes the ring, so exactly one is refused.
        assert len(refused) == 1
        assert len(stored) == size - 1
        assert len(refused[0].context["cycle"]) == size + 1


async def test_two_tasks_adding_opposite_edges_never_both_win(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    async with Database(make_config(retry=RACE_RETRY)) as db:
        await register(db, "a", "b")
        deps = Dependencies(db)

        for _ in range(30):
            results = await asyncio.gather(
                deps.add("a", "b"), deps.add("b", "a"), return_exceptions=True
            )

            assert sorted(type(r).__name__ for r in results) == ["ConflictError", "Dependency"]
            assert len(await edges(db)) == 1
            await db.transaction(lambda conn: conn.execute(delete(episode_dependencies)))
