"""Every statement of the processing log and metrics, in SQLAlchemy Core."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Insert, Select, func, insert, select
from sqlalchemy.sql.dml import ReturningInsert

from pipeline_db.schema import processing_log, processing_metrics

LOG_COLUMNS = tuple(processing_log.c)


def insert_event() -> Insert:
    """Append processing_log events (values given at execution)."""
    return _INSERT_EVENT


_INSERT_EVENT = insert(processing_log)


def insert_event_returning(values: dict[str, Any]) -> ReturningInsert[Any]:
    """Append one processing_log event and return it."""
    return insert(processing_log).values(**values).returning(*LOG_COLUMNS)


def events_of(episode_id: str, limit: int) -> Select[Any]:
    """An episode's events in time order (id breaks ties)."""
    return (
        select(*LOG_COLUMNS)
        .where(processing_log.c.episode_id == episode_id)
        .order_by(processing_log.c.timestamp, processing_log.c.id)
        .limit(limit)
    )


def insert_metrics() -> Insert:
    """Insert metric rows (executemany)."""
    return insert(processing_metrics)


def metric_values(metric_name: str, stage: str | None) -> Select[Any]:
    """(stage, value) of one metric, sorted by stage then value."""
    query = select(processing_metrics.c.stage, processing_metrics.c.metric_value).where(
        processing_metrics.c.metric_name == metric_name
    )
    if stage is not None:
        query = query.where(processing_metrics.c.stage == stage)
    return query.order_by(processing_metrics.c.stage, processing_metrics.c.metric_value)


def metric_summary(metric_name: str, stage: str | None) -> Select[Any]:
    """(stage, count, mean) of one metric per stage."""
    m = processing_metrics.c
    query = (
        select(m.stage, func.count(), func.avg(m.metric_value))
        .where(m.metric_name == metric_name)
        .group_by(m.stage)
        .order_by(m.stage)
    )
    return query.where(m.stage == stage) if stage is not None else query
