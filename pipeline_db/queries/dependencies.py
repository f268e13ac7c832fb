"""Every statement of the episode dependency graph, in SQLAlchemy Core."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Delete, Select, and_, case, delete, func, select
from sqlalchemy.sql.dml import ReturningInsert

from pipeline_db.queries import insert_for
from pipeline_db.schema import STAGES, episode_dependencies, episodes

DEPENDENCY_COLUMNS = tuple(episode_dependencies.c)
_d = episode_dependencies.c


def insert_edge(dialect: str, values: dict[str, Any]) -> ReturningInsert[Any]:
    """Insert an edge unless it exists (then no row is returned)."""
    return (
        insert_for(dialect, episode_dependencies)
        .values(**values)
        .on_conflict_do_nothing()
        .returning(*DEPENDENCY_COLUMNS)
    )


def edge(episode_id: str, depends_on: str, dependency_type: str) -> Select[Any]:
    """One edge."""
    return select(*DEPENDENCY_COLUMNS).where(
        _d.episode_id == episode_id,
        _d.depends_on_episode_id == depends_on,
        _d.dependency_type == dependency_type,
    )


def successors(episode_ids: list[str]) -> Select[Any]:
    """(episode_id, depends_on_episode_id) of the edges leaving these episodes."""
    return select(_d.episode_id, _d.depends_on_episode_id).where(_d.episode_id.in_(episode_ids))


def of_episode(episode_id: str) -> Select[Any]:
    """The edges leaving an episode, oldest first."""
    return select(*DEPENDENCY_COLUMNS).where(_d.episode_id == episode_id).order_by(_d.id)


def remove(episode_id: str, depends_on: str, dependency_type: str | None) -> Delete:
    """Delete the edge(s) between two episodes."""
    condition = and_(_d.episode_id == episode_id, _d.depends_on_episode_id == depends_on)
    if dependency_type is not None:
        condition = and_(condition, _d.dependency_type == dependency_type)
    return delete(episode_dependencies).where(condition)


def _rank() -> Any:
    return case({stage: rank for rank, stage in enumerate(STAGES)}, value=episodes.c.stage)


def ready(stage: str) -> Select[Any]:
    """Episodes with dependencies, all of which have reached ``stage``."""
    return (
        select(_d.episode_id)
        .join(episodes, episodes.c.id == _d.depends_on_episode_id)
        .group_by(_d.episode_id)
        .having(func.min(_rank()) >= STAGES.index(stage))
        .order_by(_d.episode_id)
    )


def unmet(episode_id: str, stage: str) -> Select[Any]:
    """Dependencies of an episode that have not reached ``stage``."""
    return (
        select(_d.depends_on_episode_id)
        .join(episodes, episodes.c.id == _d.depends_on_episode_id)
        .where(_d.episode_id == episode_id, _rank() < STAGES.index(stage))
        .order_by(_d.depends_on_episode_id)
    )
