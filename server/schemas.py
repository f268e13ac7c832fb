"""Request and response models of the HTTP API (also its OpenAPI schemas)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel

from pipeline_db.models import (
    AspectRatio,
    ClipStatus,
    Episode,
    EventStatus,
    JobStatus,
    Stage,
    Variant,
)

T = TypeVar("T")
Limit = Field(50, ge=1, le=500, description="page size")
#: Bounds of the database columns, so an out-of-range number is a 422, not a driver error.
INT32 = (-(2**31), 2**31 - 1)
INT64_MAX = 2**63 - 1


class Body(BaseModel):
    """A request body: unknown keys are refused, so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    """A query string."""

    model_config = ConfigDict(extra="forbid")


# -- episodes -----------------------------------------------------------------


class EpisodeOut(Episode):
    """An episode, with ``episode_id`` (as the existing n8n workflows read it)."""

    episode_id: str


class RegisterEpisode(Body):
    id: str = Field(min_length=1, max_length=255)
    hash: str = Field(min_length=1)
    source_path: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    file_size: int | None = Field(None, ge=0, le=INT64_MAX)
    duration_seconds: float | None = Field(None, ge=0)
    last_modified: AwareDatetime | None = None


class PatchEpisode(Body):
    metadata: dict[str, Any] | None = Field(None, description="a JSON merge patch (RFC 7396)")
    stage: Stage | None = None
    expected_stage: Stage | None = Field(None, description="409 if the stage moved meanwhile")
    force: bool = Field(False, description="allow the stage to go backwards")


class EpisodeQuery(Query):
    stage: list[Stage] | None = None
    show: str | None = None
    updated_since: AwareDatetime | None = None
    cursor: str | None = None
    limit: int = Limit


class Page(BaseModel, Generic[T]):
    """One page; follow ``next`` for the next one."""

    items: list[T]
    next_cursor: str | None = None
    next: str | None = Field(None, description="the URL of the next page")


class Items(BaseModel, Generic[T]):
    """A whole (unpaginated) list."""

    items: list[T]


class AddDependency(Body):
    depends_on_episode_id: str = Field(min_length=1)
    dependency_type: str = Field("requires", min_length=1)


class SearchQuery(Query):
    q: str = Field(max_length=10_000)
    show: str | None = None
    limit: int = Field(20, ge=1, le=200)


class HistoryQuery(Query):
    limit: int = Field(1000, ge=1, le=10_000)


# -- jobs ---------------------------------------------------------------------


class ProcessEpisode(Body):
    target_stage: Stage
    force: bool = False
    webhook_url: str | None = Field(None, pattern=r"^https?://")
    priority: int = Field(0, ge=INT32[0], le=INT32[1])


class Discover(Body):
    webhook_url: str | None = Field(None, pattern=r"^https?://")


class CreateJob(Body):
    kind: str = Field(min_length=1)
    episode_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(0, ge=INT32[0], le=INT32[1])
    run_after: AwareDatetime | None = None
    max_attempts: int = Field(3, ge=1, le=100)
    webhook_url: str | None = Field(None, pattern=r"^https?://")


class JobQuery(Query):
    status: list[JobStatus] | None = None
    kind: str | None = None
    episode_id: str | None = None
    cursor: str | None = None
    limit: int = Limit


class LegacyProcess(BaseModel):
    """The existing workflows' body; extra keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    episode_id: str = Field(min_length=1)
    target_stage: Stage
    force_reprocess: bool = False


class LegacyQuery(Query):
    wait: float | None = Field(None, ge=0, le=86_400, description="seconds to wait for the job")


class LegacyResult(BaseModel):
    """The answer shape the existing workflows read."""

    success: bool
    episode_id: str
    stage: str | None
    duration: float | None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    job_id: int


# -- clips and social jobs ------------------------------------------------------


class CreateClip(Body):
    id: str = Field(min_length=1)
    start_ms: int = Field(ge=0, le=INT64_MAX)
    end_ms: int = Field(ge=0, le=INT64_MAX)
    duration_ms: int | None = Field(None, ge=0, le=INT64_MAX)
    score: float | None = Field(None, ge=0, le=1)
    title: str | None = None
    caption: str | None = None
    hashtags: list[str] | None = None
    status: ClipStatus = "pending"


class PatchClip(Body):
    status: ClipStatus | None = None
    title: str | None = None
    caption: str | None = None
    hashtags: list[str] | None = None


class CreateAsset(Body):
    path: str = Field(min_length=1)
    variant: Variant
    aspect_ratio: AspectRatio
    size_bytes: int | None = Field(None, ge=0, le=INT64_MAX)


class CreateSocialJob(Body):
    episode_id: str = Field(min_length=1)
    platforms: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    job_id: str | None = None
    metadata: Any = None


class PatchSocialJob(Body):
    status: str | None = None
    progress: float | None = Field(None, ge=0, le=100)
    packages_generated: Any = None
    errors: Any = None
    warnings: Any = None


class SocialQuery(Query):
    episode_id: str | None = None
    status: str | None = None
    limit: int = Field(100, ge=1, le=1000)


class SocialStats(RootModel[dict[str, int]]):
    """Social jobs by status."""


class LogEvent(Body):
    stage: str = Field(min_length=1)
    status: EventStatus
    duration_seconds: float | None = Field(None, ge=0)
    error_message: str | None = None


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    database: str
    schema_version: dict[str, str | None]
    pool: dict[str, int]
    queue_depth: int | None = None


class Deleted(BaseModel):
    deleted: str
