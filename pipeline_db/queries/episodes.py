"""Every statement of the episodes aggregate, in SQLAlchemy Core, one function per query."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Double,
    Insert,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.sql.dml import ReturningDelete, ReturningUpdate

from pipeline_db.queries import insert_for
from pipeline_db.schema import (
    STAGES,
    episodes,
    file_name,
    json_metadata_index,
    processing_log,
    utcnow,
)

EPISODE_COLUMNS = tuple(episodes.c)


def by_id(episode_id: str, *, for_update: bool = False) -> Select[Any]:
    """The episode with this id."""
    query = select(*EPISODE_COLUMNS).where(episodes.c.id == episode_id)
    return query.with_for_update() if for_update else query


@functools.cache
def by_id_param() -> Select[Any]:
    """:func:`by_id` for the id given at execution as ``episode_id``.

    Built once and reused (see :func:`set_stage`): building the select and its
    cache key was a third of a ``GET /episodes/{id}``'s time (bench/http.py).
    """
    return select(*EPISODE_COLUMNS).where(episodes.c.id == bindparam("episode_id"))


def stage_of(episode_id: str) -> Select[Any]:
    """The episode's current stage."""
    return select(episodes.c.stage).where(episodes.c.id == episode_id)


def by_hash(content_hash: str) -> Select[Any]:
    """The episode with this content hash."""
    return select(*EPISODE_COLUMNS).where(episodes.c.hash == content_hash)


def exists(episode_id: str) -> Select[Any]:
    """1 if the episode exists."""
    return select(literal(1)).where(episodes.c.id == episode_id)


def ids_taken(candidates: list[str]) -> Select[Any]:
    """Which of these ids are taken.

    Looked up by key: a ``LIKE 'id-%'`` over every suffixed id cannot use the
    primary key (a non-C collation, and SQLite's LIKE), so it read the whole
    index on every registration (66 ms at 17,000 episodes, bench/http.py).
    """
    return select(episodes.c.id).where(episodes.c.id.in_(candidates))


def by_file_name(name: str, limit: int) -> Select[Any]:
    """Episodes whose source file is called ``name`` (case-insensitive, exact)."""
    return (
        select(*EPISODE_COLUMNS)
        # Lowered by the database, as the indexed side is: SQLite's lower() folds
        # ASCII only, and str.lower() folding more would make "É" miss itself.
        .where(file_name(episodes.c.source_path) == func.lower(name))
        .order_by(episodes.c.id)
        .limit(limit)
    )


def page(
    *,
    stages: list[str] | None,
    show: str | None,
    updated_since: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Select[Any]:
    """One keyset page in (updated_at, id) order, filtered."""
    query = select(*EPISODE_COLUMNS)
    if stages:
        query = query.where(episodes.c.stage.in_(stages))
    if show is not None:
        shows = select(json_metadata_index.c.episode_id).where(
            json_metadata_index.c.show_name == show
        )
        query = query.where(episodes.c.id.in_(shows))
    if updated_since is not None:
        query = query.where(episodes.c.updated_at >= updated_since)
    if after is not None:
        query = query.where(tuple_(episodes.c.updated_at, episodes.c.id) > tuple_(*after))
    return query.order_by(episodes.c.updated_at, episodes.c.id).limit(limit)


def insert_new(values: dict[str, Any]) -> Insert:
    """Insert one episode."""
    return insert(episodes).values(**values).returning(*EPISODE_COLUMNS)


@functools.cache
def set_stage(*, expected: bool, restricted: bool) -> ReturningUpdate[Any]:
    """Move :episode_id to :target if its stage is :expected and/or IN :allowed.

    Built once per shape and reused: building SQLAlchemy constructs per call
    costs more than executing them (see bench/write.py).
    """
    conditions = [episodes.c.id == bindparam("episode_id")]
    if expected:
        conditions.append(episodes.c.stage == bindparam("expected"))
    if restricted:
        conditions.append(episodes.c.stage.in_(bindparam("allowed", expanding=True)))
    return (
        update(episodes)
        .where(*conditions)
        .values(stage=bindparam("target"), updated_at=utcnow())
        .returning(*EPISODE_COLUMNS)
    )


@functools.cache
def move_and_log(*, expected: bool, restricted: bool) -> Select[Any]:
    """:func:`set_stage` and its processing_log row in ONE statement (writable CTEs).

    Parameters as :func:`set_stage`, plus :duration for the log row.
    """
    moved = set_stage(expected=expected, restricted=restricted).cte("moved")
    logged = (
        insert(processing_log)
        .from_select(
            ["episode_id", "stage", "status", "duration_seconds"],
            select(
                moved.c.id,
                moved.c.stage,
                literal_column("'completed'"),
                bindparam("duration", type_=Double()),
            ),
        )
        .cte("logged")
    )
    return select(*moved.c).add_cte(logged)


def set_metadata(episode_id: str, metadata: dict[str, Any]) -> Update:
    """Replace the episode's metadata document."""
    return (
        update(episodes)
        .where(episodes.c.id == episode_id)
        .values(metadata=metadata, updated_at=utcnow())
        .returning(*EPISODE_COLUMNS)
    )


def set_values(episode_id: str, values: dict[str, Any]) -> Update:
    """Update the given columns of the episode."""
    return (
        update(episodes)
        .where(episodes.c.id == episode_id)
        .values(**values, updated_at=utcnow())
        .returning(*EPISODE_COLUMNS)
    )


def remove(episode_id: str) -> ReturningDelete[Any]:
    """Delete the episode (its children cascade)."""
    return delete(episodes).where(episodes.c.id == episode_id).returning(episodes.c.id)


def needing(before: list[str], limit: int) -> Select[Any]:
    """Episodes whose stage is one of ``before``, oldest update first."""
    return (
        select(*EPISODE_COLUMNS)
        .where(episodes.c.stage.in_(before))
        .order_by(episodes.c.updated_at, episodes.c.id)
        .limit(limit)
    )


def count_by_stage() -> Select[Any]:
    """Episodes per stage: one row, a column per stage named after it.

    A count per stage (the CHECK constraint allows no other), each over its
    range of the stage index, does no grouping work per row: 40% faster than
    GROUP BY stage over 100,000 episodes on PostgreSQL (bench/reads.py).
    """
    return select(
        *(
            select(func.count()).where(episodes.c.stage == stage).scalar_subquery().label(stage)
            for stage in STAGES
        )
    )


def log_summary_since(since: datetime) -> Select[Any]:
    """Per stage since ``since``: events, finished (completed or failed), failures, mean duration.

    The mean is over completed events with a duration. One pass over the
    window for every figure: half the time of two passes over its 22,000 rows
    on PostgreSQL (bench/reads.py).
    """
    status = processing_log.c.status
    return (
        select(
            processing_log.c.stage,
            func.count(),
            func.count().filter(status.in_(["completed", "failed"])),
            func.count().filter(status == "failed"),
            func.avg(processing_log.c.duration_seconds).filter(status == "completed"),
        )
        .where(processing_log.c.timestamp >= since)
        .group_by(processing_log.c.stage)
    )


@functools.cache
def insert_new_or_nothing(dialect: str) -> Insert:
    """Insert one episode unless its id or hash is taken (then no row is returned).

    Values given at execution; built once per dialect (see :func:`set_stage`).
    """
    return insert_for(dialect, episodes).on_conflict_do_nothing().returning(*EPISODE_COLUMNS)


def by_source_paths(paths: list[str]) -> Select[Any]:
    """Episodes whose source_path is exactly one of ``paths`` (the ``discover`` job's scan)."""
    return select(*EPISODE_COLUMNS).where(episodes.c.source_path.in_(paths))
