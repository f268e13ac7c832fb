"""`History`: the processing log and metrics, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from pipeline_db import (
    Database,
    Episodes,
    History,
    InvalidInputError,
    LogEntry,
    MetricAggregate,
    NotFoundError,
)
from pipeline_db.schema import metadata, processing_log, processing_metrics

Snapshot = dict[str, list[tuple[Any, ...]]]


@pytest.fixture
def history(db: Database) -> History:
    return History(db)


@pytest.fixture
async def episode(db: Database) -> str:
    """One registered episode (its registration is the first log row)."""
    await Episodes(db).register(id="ep1", hash="h1", source_path="/v/ep1.mp4")
    return "ep1"


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


async def metric_rows(db: Database) -> list[tuple[Any, ...]]:
    m = processing_metrics.c
    async with db.read() as conn:
        query = select(m.episode_id, m.stage, m.metric_name, m.metric_value).order_by(m.id)
        return [tuple(row) for row in await conn.execute(query)]


def interpolated(values: list[float], fraction: float) -> float:
    """The percentile by hand: linear interpolation between closest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- append ------------------------------------------------------------------


async def test_append_stores_the_event_and_returns_it(
    db: Database, history: History, episode: str
) -> None:
    entry = await history.append(
        episode, "transcribed", "failed", duration_seconds=12.25, error_message="whisper: OOM ✗"
    )

    assert isinstance(entry, LogEntry)
    assert (entry.episode_id, entry.stage, entry.status) == ("ep1", "transcribed", "failed")
    assert (entry.duration_seconds, entry.error_message) == (12.25, "whisper: OOM ✗")
    assert entry.timestamp.tzinfo is not None
    assert abs(entry.timestamp - datetime.now(UTC)) < timedelta(minutes=1)
    assert (await history.of(episode))[-1] == entry


@pytest.mark.parametrize("status", ["started", "completed", "failed"])
async def test_append_takes_each_status(history: History, episode: str, status: str) -> None:
    entry = await history.append(episode, "prepped", status)
    assert entry.status == status


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "STARTED"}, "status"),
        ({"stage": ""}, "stage"),
        ({"stage": "  "}, "stage"),
        ({"stage": "pre\x00pped"}, "stage"),
        ({"duration_seconds": -0.5}, "duration_seconds"),
        ({"duration_seconds": float("nan")}, "duration_seconds"),
        ({"duration_seconds": float("inf")}, "duration_seconds"),
        ({"duration_seconds": "12"}, "duration_seconds"),
        ({"error_message": "nul \x00 inside"}, "error_message"),
    ],
)
async def test_append_refuses_bad_input_naming_the_field(
    db: Database, history: History, episode: str, arguments: dict[str, Any], field: str
) -> None:
    before = await snapshot(db)
    values: dict[str, Any] = {"stage": "prepped", "status": "started"} | arguments

    with pytest.raises(InvalidInputError) as caught:
        await history.append(episode, **values)

    assert caught.value.field == field
    assert await snapshot(db) == before


async def test_append_to_an_unknown_episode_is_not_found(
    db: Database, history: History, episode: str
) -> None:
    before = await snapshot(db)

    with pytest.raises(NotFoundError) as caught:
        await history.append("nope", "prepped", "started")

    assert caught.value.context["episode_id"] == "nope"
    assert await snapshot(db) == before


# -- of ----------------------------------------------------------------------


async def test_of_returns_the_history_in_time_order(
    db: Database, history: History, episode: str
) -> None:
    await history.append(episode, "prepped", "started")
    await history.append(episode, "prepped", "completed", duration_seconds=3.0)
    await history.append(episode, "transcribed", "started")
    # Written last, but it happened first: time order is not insertion order.
    earlier = datetime.now(UTC) - timedelta(days=2)
    await db.transaction(
        lambda conn: conn.execute(
            insert(processing_log).values(
                episode_id=episode, stage="imported", status="completed", timestamp=earlier
            )
        )
    )
    await Episodes(db).register(id="other", hash="h2", source_path="/v/other.mp4")

    events = await history.of(episode)

    assert [(e.stage, e.status) for e in events] == [
        ("imported", "completed"),
        ("registration", "completed"),
        ("prepped", "started"),
        ("prepped", "completed"),
        ("transcribed", "started"),
    ]
    assert events[0].timestamp == earlier
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert {e.episode_id for e in events} == {episode}
    assert [(e.stage, e.status) for e in await history.of(episode, limit=2)] == [
        ("imported", "completed"),
        ("registration", "completed"),
    ]


async def test_of_an_unknown_episode_is_not_found(history: History) -> None:
    with pytest.raises(NotFoundError):
        await history.of("nope")


# -- metrics -----------------------------------------------------------------


async def test_record_metrics_stores_one_or_many(
    db: Database, history: History, episode: str
) -> None:
    assert await history.record_metrics(episode, "transcribed", {"wer": 0.12, "words": 5021}) == 2
    await history.record_metric(episode, "rendered", "fps", 29.97)

    assert await metric_rows(db) == [
        ("ep1", "transcribed", "wer", 0.12),
        ("ep1", "transcribed", "words", 5021.0),
        ("ep1", "rendered", "fps", 29.97),
    ]


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        ({"": 1.0}, "metric_name"),
        ({"ok": 1.0, "nan": float("nan")}, "nan"),
        ({"ok": 1.0, "inf": float("-inf")}, "inf"),
        ({"ok": 1.0, "flag": True}, "flag"),
        ({"ok": 1.0, "text": "3.5"}, "text"),
        ({"ok": 1.0, "none": None}, "none"),
    ],
)
async def test_record_metrics_refuses_the_whole_batch_on_one_bad_value(
    db: Database, history: History, episode: str, metrics: dict[str, Any], field: str
) -> None:
    before = await snapshot(db)

    with pytest.raises(InvalidInputError) as caught:
        await history.record_metrics(episode, "prepped", metrics)

    assert caught.value.field == field
    assert await snapshot(db) == before


@pytest.mark.parametrize("metrics", [["fps", 25.0], "fps=25"])
async def test_record_metrics_refuses_metrics_that_are_not_a_mapping(
    db: Database, history: History, episode: str, metrics: Any
) -> None:
    before = await snapshot(db)
    with pytest.raises(InvalidInputError) as caught:
        await history.record_metrics(episode, "prepped", metrics)
    assert caught.value.field == "metrics"
    assert await snapshot(db) == before


async def test_record_metrics_refuses_an_empty_stage(
    db: Database, history: History, episode: str
) -> None:
    before = await snapshot(db)
    with pytest.raises(InvalidInputError) as caught:
        await history.record_metric(episode, "", "fps", 25.0)
    assert caught.value.field == "stage"
    assert await snapshot(db) == before


@pytest.mark.parametrize("metrics", [{"fps": 25.0}, {}])
async def test_record_metrics_of_an_unknown_episode_is_not_found(
    db: Database, history: History, episode: str, metrics: dict[str, float]
) -> None:
    before = await snapshot(db)
    with pytest.raises(NotFoundError):
        await history.record_metrics("nope", "prepped", metrics)
    assert await snapshot(db) == before


async def test_aggregates_match_statistics_quantiles(
    db: Database, history: History, episode: str
) -> None:
    transcribed = [3.2, 1.0, 8.5, 2.25, 4.0, 15.75, 0.5, 6.0, 9.5, 2.0, 11.0]
    prepped = [10.0, 40.0]
    for value in transcribed:
        await history.record_metric(episode, "transcribed", "seconds", value)
    for value in prepped:
        await history.record_metric(episode, "prepped", "seconds", value)
    await history.record_metric(episode, "rendered", "seconds", 7.0)
    await history.record_metrics(episode, "transcribed", {"other": 1000.0})

    aggregates = {a.stage: a for a in await history.aggregates("seconds")}

    assert sorted(aggregates) == ["prepped", "rendered", "transcribed"]
    for stage, values in (("transcribed", transcribed), ("prepped", prepped)):
        aggregate = aggregates[stage]
        cuts = statistics.quantiles(values, n=20, method="inclusive")  # 5 %, 10 %, ... 95 %
        assert aggregate.metric_name == "seconds"
        assert aggregate.count == len(values)
        assert aggregate.mean == pytest.approx(statistics.fmean(values))
        assert aggregate.p50 == pytest.approx(statistics.median(values))
        assert aggregate.p50 == pytest.approx(cuts[9])
        assert aggregate.p95 == pytest.approx(cuts[18])
        assert aggregate.p95 == pytest.approx(interpolated(values, 0.95))
    # By hand for 11 values: p95 sits at rank 0.95 * 10 = 9.5, between 11.0 and 15.75.
    assert aggregates["transcribed"].p95 == pytest.approx(11.0 + 0.5 * (15.75 - 11.0))
    assert aggregates["prepped"].p95 == pytest.approx(10.0 + 0.95 * 30.0)
    assert aggregates["rendered"] == MetricAggregate(
        stage="rendered", metric_name="seconds", count=1, mean=7.0, p50=7.0, p95=7.0
    )


async def test_aggregates_filter_by_stage_and_ignore_other_metrics(
    history: History, episode: str
) -> None:
    await history.record_metrics(episode, "prepped", {"fps": 25.0, "frames": 10.0})
    await history.record_metrics(episode, "prepped", {"fps": 30.0})
    await history.record_metrics(episode, "rendered", {"fps": 60.0})

    (only,) = await history.aggregates("fps", stage="prepped")

    assert (only.stage, only.count, only.mean, only.p50) == ("prepped", 2, 27.5, 27.5)
    assert only.p95 == pytest.approx(25.0 + 0.95 * 5.0)
    assert await history.aggregates("fps", stage="enriched") == []
    assert await history.aggregates("unknown") == []


async def test_aggregates_span_episodes(db: Database, history: History, episode: str) -> None:
    await Episodes(db).register(id="ep2", hash="h2", source_path="/v/ep2.mp4")
    await history.record_metric(episode, "prepped", "fps", 20.0)
    await history.record_metric("ep2", "prepped", "fps", 40.0)

    (aggregate,) = await history.aggregates("fps")

    assert (aggregate.count, aggregate.mean) == (2, 30.0)
