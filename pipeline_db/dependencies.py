"""Episode dependencies: a directed graph that must stay acyclic."""

from __future__ import annotations

import builtins

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db.database import Database
from pipeline_db.errors import ConflictError, InvalidInputError, NotFoundError
from pipeline_db.models import Dependency
from pipeline_db.queries import dependencies as q
from pipeline_db.queries import episodes as eq
from pipeline_db.schema import STAGES

DEFAULT_TYPE = "requires"


class Dependencies:
    """Add, list and remove dependencies between episodes; find episodes ready to run.

    Adding an edge runs SERIALIZABLE on PostgreSQL (SQLite transactions always
    are), so of concurrent additions that would close a cycle, one is retried
    and then refused: no cycle is ever stored.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self, episode_id: str, depends_on: str, *, dependency_type: str = DEFAULT_TYPE
    ) -> Dependency:
        """Record that ``episode_id`` depends on ``depends_on``; adding it again is a no-op.

        Raises:
            InvalidInputError: a self-dependency, or an empty type.
            ConflictError: the edge would close a cycle; the message names it.
            NotFoundError: either episode does not exist.
        """
        if episode_id == depends_on:
            raise InvalidInputError(
                f"episode {episode_id!r} cannot depend on itself", field="depends_on_episode_id"
            )
        if not dependency_type or not isinstance(dependency_type, str):
            raise InvalidInputError(
                "dependency_type must be a non-empty string", field="dependency_type"
            )

        async def work(conn: AsyncConnection) -> Dependency:
            for key in (episode_id, depends_on):
                await _require_episode(conn, key)
            path = await _path(conn, depends_on, episode_id)
            if path is not None:
                cycle = " -> ".join([episode_id, *path])
                raise ConflictError(
                    f"dependency would create a cycle: {cycle}", cycle=[episode_id, *path]
                )
            values = {
                "episode_id": episode_id,
                "depends_on_episode_id": depends_on,
                "dependency_type": dependency_type,
            }
            row = (await conn.execute(q.insert_edge(self._db.dialect, values))).mappings().first()
            if row is None:
                row = (
                    (await conn.execute(q.edge(episode_id, depends_on, dependency_type)))
                    .mappings()
                    .one()
                )
            return Dependency.model_validate(row)

        return await self._db.transaction(work, isolation="SERIALIZABLE")

    async def list(self, episode_id: str) -> builtins.list[Dependency]:
        """The dependencies of an episode, oldest first.

        Raises:
            NotFoundError: no such episode.
        """
        async with self._db.read() as conn:
            await _require_episode(conn, episode_id)
            rows = (await conn.execute(q.of_episode(episode_id))).mappings().all()
        return [Dependency.model_validate(row) for row in rows]

    async def remove(
        self, episode_id: str, depends_on: str, *, dependency_type: str | None = None
    ) -> None:
        """Remove the dependency (of any type unless ``dependency_type`` is given).

        Raises:
            NotFoundError: there is no such dependency.
        """
        removed = False
        async for attempt in self._db.retrying():
            async with attempt as conn:
                result = await conn.execute(q.remove(episode_id, depends_on, dependency_type))
                removed = result.rowcount > 0 or removed
        if not removed:
            raise NotFoundError(f"{episode_id!r} does not depend on {depends_on!r}")

    async def ready(self, stage: str) -> builtins.list[str]:
        """Episodes that have dependencies, all of which have reached ``stage``."""
        _check_stage(stage)
        async with self._db.read() as conn:
            return [str(v) for v in (await conn.execute(q.ready(stage))).scalars()]

    async def unmet(self, episode_id: str, stage: str) -> builtins.list[str]:
        """The dependencies of ``episode_id`` that have not reached ``stage`` yet.

        Raises:
            NotFoundError: no such episode.
            InvalidInputError: an unknown stage.
        """
        _check_stage(stage)
        async with self._db.read() as conn:
            await _require_episode(conn, episode_id)
            return [str(v) for v in (await conn.execute(q.unmet(episode_id, stage))).scalars()]


async def _path(conn: AsyncConnection, start: str, goal: str) -> list[str] | None:
    """A dependency path from ``start`` to ``goal`` (both included), breadth first."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        edges = (await conn.execute(q.successors(frontier))).all()
        frontier = []
        for source, target in edges:
            if target in parents:
                continue
            parents[target] = source
            if target == goal:
                path = [target]
                while (parent := parents[path[-1]]) is not None:
                    path.append(parent)
                return list(reversed(path))
            frontier.append(target)
    return None


async def _require_episode(conn: AsyncConnection, episode_id: str) -> None:
    if (await conn.execute(eq.exists(episode_id))).first() is None:
        raise NotFoundError.episode(episode_id)


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise InvalidInputError(
            f"unknown stage {stage!r}; stages are {', '.join(STAGES)}", field="stage"
        )
