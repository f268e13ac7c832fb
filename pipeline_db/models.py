"""The records the data operations return: immutable pydantic models.

They serialise as JSON (``model.model_dump(mode="json")``), so the HTTP
server returns them and documents them in OpenAPI as they are.
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["discovered", "prepped", "transcribed", "enriched", "rendered", "clips_discovered"]
EventStatus = Literal["started", "completed", "failed"]
ClipStatus = Literal["pending", "rendered", "failed"]
Variant = Literal["clean", "subtitled"]
AspectRatio = Literal["9x16", "16x9", "1x1"]


class Record(BaseModel):
    """Base of every record: immutable, built from a database row's mapping."""

    model_config = ConfigDict(frozen=True, from_attributes=True)


class Episode(Record):
    """An episode: one video moving through the pipeline's stages."""

    id: str
    hash: str
    stage: Stage
    source_path: str
    metadata: dict[str, Any]
    errors: str | None = None
    file_size: int | None = None
    duration_seconds: float | None = None
    last_modified: datetime | None = None
    created_at: datetime
    updated_at: datetime


class Registration(Record):
    """The outcome of registering an episode."""

    episode: Episode
    #: True when an episode with the same content hash already existed (it is returned).
    duplicate: bool


T = TypeVar("T")


class Page(Record, Generic[T]):
    """One page of a keyset-paginated listing."""

    items: list[T]
    #: Opaque cursor for the next page; None on the last page.
    next_cursor: str | None = None


class LogEntry(Record):
    """One processing_log event."""

    id: int
    episode_id: str
    stage: str
    status: str
    duration_seconds: float | None = None
    error_message: str | None = None
    timestamp: datetime


class MetricAggregate(Record):
    """Aggregates of one metric over a stage."""

    stage: str
    metric_name: str
    count: int
    mean: float | None
    p50: float | None
    p95: float | None


class StageStats(Record):
    """Per-stage figures of :class:`EpisodeStats`."""

    episodes: int = 0
    mean_duration_seconds: float | None = None


class EpisodeStats(Record):
    """Pipeline-wide episode statistics."""

    total: int
    by_stage: dict[str, StageStats]
    events_last_24h: int
    failures_last_24h: int
    failure_rate_last_24h: float


class Dependency(Record):
    """An edge: ``episode_id`` depends on ``depends_on_episode_id``."""

    id: int
    episode_id: str
    depends_on_episode_id: str
    dependency_type: str
    created_at: datetime


class IndexEntry(Record):
    """An episode's row in the metadata index."""

    episode_id: str
    file_path: str | None = None
    file_size: int | None = None
    last_updated: datetime
    show_name: str | None = None
    title: str | None = None
    summary: str | None = None
    date: dt.date | None = None
    duration_seconds: float | None = None
    guest_names: list[str] | None = None
    topics: list[str] | None = None
    has_transcript: bool = False
    has_enrichment: bool = False
    has_editorial: bool = False


class SearchHit(Record):
    """A full-text search result, best first."""

    episode_id: str
    title: str | None
    show_name: str | None
    #: Relevance; higher is better. Comparable within one result list only.
    rank: float


class Facet(Record):
    """A value of shows, guests or topics, with how many episodes have it."""

    value: str
    count: int


class Clip(Record):
    """A clip found in an episode."""

    id: str
    episode_id: str
    start_ms: int
    end_ms: int
    duration_ms: int
    score: float | None = None
    title: str | None = None
    caption: str | None = None
    hashtags: list[str] | None = None
    status: ClipStatus
    created_at: datetime


class ClipAsset(Record):
    """A rendered file of a clip."""

    id: str
    clip_id: str
    path: str
    variant: Variant
    aspect_ratio: AspectRatio
    size_bytes: int | None = None
    created_at: datetime


class ClipStats(Record):
    """Clip counts by status, and asset counts by variant and aspect ratio."""

    by_status: dict[str, int]
    by_variant: dict[str, int]
    by_aspect_ratio: dict[str, int]


class SocialJob(Record):
    """A social-media packaging job of an episode."""

    job_id: str
    episode_id: str
    platforms: list[str] | None = None
    status: str
    progress: float = Field(0.0, ge=0)
    packages_generated: Any = None
    errors: Any = None
    warnings: Any = None
    metadata: Any = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None


class BackupRecord(Record):
    """An entry of backup_log."""

    id: int
    backup_path: str
    backup_size: int | None = None
    checksum: str | None = None
    created_at: datetime
    restored_at: datetime | None = None


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Job(Record):
    """A job of the durable queue."""

    id: int
    kind: str
    episode_id: str | None = None
    params: dict[str, Any]
    status: JobStatus
    priority: int
    run_after: datetime
    attempts: int
    max_attempts: int
    idempotency_key: str | None = None
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    cancel_requested: bool = False
    progress_percent: float | None = None
    progress_stage: str | None = None
    progress_message: str | None = None
    result: Any = None
    error: str | None = None
    error_traceback: str | None = None
    webhook_url: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self.status in ("succeeded", "failed", "cancelled")


class Enqueued(Record):
    """The outcome of enqueueing a job."""

    job: Job
    #: False when the idempotency key named an existing job (it is returned).
    created: bool


class JobStats(Record):
    """Queue figures."""

    by_status: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    #: Seconds since the oldest queued job was created (None: nothing queued).
    oldest_queued_age_seconds: float | None
