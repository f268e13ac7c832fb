"""The processing log and metrics: what happened to each episode, and how long it took."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import groupby
from typing import TypeGuard

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db.database import Database
from pipeline_db.errors import InvalidInputError, NotFoundError
from pipeline_db.models import LogEntry, MetricAggregate
from pipeline_db.queries import episodes as eq
from pipeline_db.queries import history as q

EVENT_STATUSES = ("started", "completed", "failed")
HISTORY_LIMIT = 1_000


class History:
    """Append-only processing events and numeric metrics per episode and stage."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append(
        self,
        episode_id: str,
        stage: str,
        status: str,
        *,
        duration_seconds: float | None = None,
        error_message: str | None = None,
    ) -> LogEntry:
        """Append an event (``started``, ``completed`` or ``failed``) to the episode's log.

        Raises:
            NotFoundError: no such episode.
            InvalidInputError: an unknown status, an empty stage, a negative duration.
        """
        if status not in EVENT_STATUSES:
            raise InvalidInputError(
                f"status must be one of {', '.join(EVENT_STATUSES)}, not {status!r}", field="status"
            )
        _check_stage_name(stage)
        if duration_seconds is not None and not (
            _is_number(duration_seconds)
            and math.isfinite(duration_seconds)
            and duration_seconds >= 0
        ):
            raise InvalidInputError(
                "duration_seconds must be a finite number >= 0", field="duration_seconds"
            )
        if error_message is not None:
            _check_no_nul(error_message, "error_message")
        values = {
            "episode_id": episode_id,
            "stage": stage,
            "status": status,
            "duration_seconds": duration_seconds,
            "error_message": error_message,
        }

        async def work(conn: AsyncConnection) -> LogEntry:
            await _require_episode(conn, episode_id)
            row = (await conn.execute(q.insert_event_returning(values))).mappings().one()
            return LogEntry.model_validate(row)

        # Appending twice after a lost COMMIT would log the event twice.
        return await self._db.transaction(work, idempotent=False)

    async def of(self, episode_id: str, *, limit: int = HISTORY_LIMIT) -> list[LogEntry]:
        """The episode's events in time order.

        Raises:
            NotFoundError: no such episode.
        """
        async with self._db.read() as conn:
            await _require_episode(conn, episode_id)
            rows = (await conn.execute(q.events_of(episode_id, limit))).mappings().all()
        return [LogEntry.model_validate(row) for row in rows]

    async def record_metrics(
        self, episode_id: str, stage: str, metrics: Mapping[str, float]
    ) -> int:
        """Record one or many metrics of an episode's stage; returns how many.

        Raises:
            NotFoundError: no such episode.
            InvalidInputError: a name is empty or a value is not a finite number.
        """
        _check_stage_name(stage)
        if not isinstance(metrics, Mapping):
            raise InvalidInputError(
                "metrics must be a mapping of names to numbers", field="metrics"
            )
        rows = []
        for name, value in metrics.items():
            if not isinstance(name, str) or not name or "\x00" in name:
                raise InvalidInputError(
                    "metric names must be non-empty strings without NUL", field="metric_name"
                )
            if not _is_number(value) or not math.isfinite(value):
                raise InvalidInputError(
                    f"metric {name!r} must be a finite number, not {value!r}", field=name
                )
            rows.append(
                {
                    "episode_id": episode_id,
                    "stage": stage,
                    "metric_name": name,
                    "metric_value": float(value),
                }
            )

        async def work(conn: AsyncConnection) -> int:
            await _require_episode(conn, episode_id)
            if rows:  # an empty batch still checks the episode exists
                await conn.execute(q.insert_metrics(), rows)
            return len(rows)

        return await self._db.transaction(work, idempotent=False)

    async def record_metric(self, episode_id: str, stage: str, name: str, value: float) -> None:
        """Record one metric; see :meth:`record_metrics`."""
        await self.record_metrics(episode_id, stage, {name: value})

    async def aggregates(
        self, metric_name: str, *, stage: str | None = None
    ) -> list[MetricAggregate]:
        """Count, mean, p50 and p95 of a metric per stage (percentiles interpolated linearly)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(q.metric_values(metric_name, stage))).all()
        result = []
        for group_stage, group in groupby(rows, key=lambda row: row[0]):
            values = [float(row[1]) for row in group]
            result.append(
                MetricAggregate(
                    stage=group_stage,
                    metric_name=metric_name,
                    count=len(values),
                    mean=math.fsum(values) / len(values),
                    p50=percentile(values, 0.50),
                    p95=percentile(values, 0.95),
                )
            )
        return result


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of sorted values, as PostgreSQL's ``percentile_cont``."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


async def _require_episode(conn: AsyncConnection, episode_id: str) -> None:
    if (await conn.execute(eq.exists(episode_id))).first() is None:
        raise NotFoundError.episode(episode_id)


def _check_stage_name(stage: object) -> None:
    if not isinstance(stage, str) or not stage.strip():
        raise InvalidInputError("stage must be a non-empty string", field="stage")
    _check_no_nul(stage, "stage")


def _check_no_nul(value: object, field: str) -> None:
    # PostgreSQL's text refuses NUL (SQLite stores it): refuse it on both, by name.
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidInputError(f"{field} must be a string without NUL characters", field=field)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
