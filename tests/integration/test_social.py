"""Social-media packaging jobs and the backup log, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Table, func, select

from pipeline_db import (
    BackupLog,
    BackupRecord,
    ConflictError,
    Database,
    Episodes,
    InvalidInputError,
    NotFoundError,
    SocialJob,
    SocialJobs,
)
from pipeline_db.schema import backup_log, social_jobs
from pipeline_db.social import SOCIAL_STATUSES


async def count(db: Database, table: Table) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def add_episode(db: Database, episode_id: str = "ep1") -> str:
    await Episodes(db).register(
        id=episode_id, hash=f"hash-{episode_id}", source_path=f"/v/{episode_id}.mp4"
    )
    return episode_id


@pytest.fixture
async def jobs(db: Database) -> SocialJobs:
    """The social jobs API over a database holding episodes ep1 and ep2."""
    await add_episode(db, "ep1")
    await add_episode(db, "ep2")
    return SocialJobs(db)


# -- social jobs ----------------------------------------------------------------------


async def test_create_and_get(jobs: SocialJobs) -> None:
    before = datetime.now(UTC)
    job = await jobs.create(
        episode_id="ep1",
        platforms=["tiktok", "youtube_shorts"],
        job_id="job-1",
        metadata={"requested_by": "scheduler", "clips": 3},
    )

    assert isinstance(job, SocialJob)
    assert (job.job_id, job.episode_id, job.status, job.progress) == ("job-1", "ep1", "pending", 0)
    assert job.platforms == ["tiktok", "youtube_shorts"]
    assert job.metadata == {"requested_by": "scheduler", "clips": 3}
    assert job.packages_generated is None and job.errors is None and job.warnings is None
    assert job.completed_at is None
    assert job.created_at.tzinfo is not None
    assert abs((job.created_at - before).total_seconds()) < 60
    assert await jobs.get("job-1") == job


async def test_create_without_an_id_generates_one(jobs: SocialJobs) -> None:
    first = await jobs.create(episode_id="ep1", platforms=["instagram"])
    second = await jobs.create(episode_id="ep1", platforms=["instagram"])
    assert first.job_id != second.job_id
    assert len(first.job_id) == 32


async def test_create_again_returns_the_job_and_other_values_conflict(
    jobs: SocialJobs, db: Database
) -> None:
    job = await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1")
    assert await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1") == job

    for other in (
        {"episode_id": "ep2", "platforms": ["tiktok"]},
        {"episode_id": "ep1", "platforms": ["youtube"]},
        {"episode_id": "ep1", "platforms": ["tiktok"], "metadata": {"x": 1}},
    ):
        with pytest.raises(ConflictError) as caught:
            await jobs.create(job_id="job-1", **other)
        assert caught.value.context["field"] == "job_id"
    assert await jobs.get("job-1") == job
    assert await count(db, social_jobs) == 1


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"platforms": []}, "platforms"),
        ({"platforms": "tiktok"}, "platforms"),
        ({"platforms": ["tiktok", ""]}, "platforms"),
        ({"platforms": [1]}, "platforms"),
        ({"platforms": ["tik\x00tok"]}, "platforms"),
        ({"metadata": {"ratio": float("nan")}}, "metadata"),
        ({"metadata": {"when": datetime.now(UTC)}}, "metadata"),
        ({"metadata": {"note": "nul\x00"}}, "metadata"),
        ({"job_id": ""}, "job_id"),
        ({"job_id": "job\x00"}, "job_id"),
        ({"job_id": 7}, "job_id"),
    ],
)
async def test_create_refuses_bad_values(
    jobs: SocialJobs, db: Database, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        await jobs.create(**({"episode_id": "ep1", "platforms": ["tiktok"]} | values))
    assert caught.value.field == field
    assert await count(db, social_jobs) == 0


async def test_create_for_an_unknown_episode_is_not_found(jobs: SocialJobs, db: Database) -> None:
    with pytest.raises(NotFoundError):
        await jobs.create(episode_id="nope", platforms=["tiktok"], job_id="job-1")
    assert await count(db, social_jobs) == 0


async def test_update_progress_packages_errors_and_warnings(jobs: SocialJobs) -> None:
    created = await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1")

    running = await jobs.update("job-1", status="running", progress=40)
    assert (running.status, running.progress, running.completed_at) == ("running", 40.0, None)
    assert running.updated_at > created.updated_at
    assert await jobs.get("job-1") == running  # what update returns is what is stored

    packaged = await jobs.update(
        "job-1",
        progress=75.5,
        packages_generated=[{"platform": "tiktok", "path": "/out/1.mp4"}],
        warnings=["caption trimmed to 150 characters"],
    )
    assert packaged.status == "running"
    assert packaged.progress == 75.5
    assert packaged.packages_generated == [{"platform": "tiktok", "path": "/out/1.mp4"}]
    assert packaged.warnings == ["caption trimmed to 150 characters"]
    assert packaged.errors is None

    cleared = await jobs.update("job-1", warnings=None, errors={"youtube": "quota"})
    assert (cleared.warnings, cleared.errors) == (None, {"youtube": "quota"})
    assert cleared.packages_generated == packaged.packages_generated
    assert await jobs.update("job-1") == cleared  # nothing to change
    assert await jobs.get("job-1") == cleared


@pytest.mark.parametrize("finish", ["completed", "failed"])
async def test_completed_at_is_set_when_the_job_completes_or_fails(
    jobs: SocialJobs, finish: str
) -> None:
    created = await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1")
    await jobs.update("job-1", status="running")

    finished = await jobs.update("job-1", status=finish, progress=100)

    assert finished.status == finish
    assert finished.completed_at is not None
    assert finished.completed_at >= created.created_at
    assert finished.completed_at.tzinfo is not None
    assert (await jobs.update("job-1", warnings=["late"])).completed_at == finished.completed_at
    retried = await jobs.update("job-1", status="pending", progress=0)
    assert retried.completed_at is None


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": "Completed"}, "status"),
        ({"progress": -1}, "progress"),
        ({"progress": 100.5}, "progress"),
        ({"progress": float("nan")}, "progress"),
        ({"progress": True}, "progress"),
        ({"progress": "50"}, "progress"),
        ({"packages_generated": {"n": float("inf")}}, "packages_generated"),
        ({"errors": {1j}}, "errors"),
        ({"warnings": ["\x00"]}, "warnings"),
    ],
)
async def test_update_refuses_bad_values(
    jobs: SocialJobs, values: dict[str, Any], field: str
) -> None:
    before = await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1")
    valid = {"progress": 10} if "status" in values else {"status": "completed"}
    with pytest.raises(InvalidInputError) as caught:
        await jobs.update("job-1", **(valid | values))  # the valid change is not made either
    assert caught.value.field == field
    assert await jobs.get("job-1") == before


async def test_unknown_job_is_not_found(jobs: SocialJobs, db: Database) -> None:
    with pytest.raises(NotFoundError):
        await jobs.get("nope")
    with pytest.raises(NotFoundError):
        await jobs.update("nope", status="running")
    with pytest.raises(NotFoundError):
        await jobs.update("nope")
    with pytest.raises(NotFoundError):
        await jobs.delete("nope")
    assert await count(db, social_jobs) == 0


async def test_list_newest_first_by_episode_and_status(jobs: SocialJobs) -> None:
    # Ids sort in creation order, so a tie on created_at would list them oldest first.
    for n, episode in enumerate(("ep1", "ep1", "ep2", "ep1", "ep2", "ep1")):
        await jobs.create(episode_id=episode, platforms=["tiktok"], job_id=f"job-{n}")
    await jobs.update("job-1", status="completed")
    await jobs.update("job-4", status="completed")
    await jobs.update("job-5", status="failed")

    assert [j.job_id for j in await jobs.list()] == [f"job-{n}" for n in (5, 4, 3, 2, 1, 0)]
    assert [j.job_id for j in await jobs.list(episode_id="ep1")] == [
        "job-5",
        "job-3",
        "job-1",
        "job-0",
    ]
    assert [j.job_id for j in await jobs.list(status="completed")] == ["job-4", "job-1"]
    assert [j.job_id for j in await jobs.list(episode_id="ep2", status="completed")] == ["job-4"]
    assert [j.job_id for j in await jobs.list(limit=2)] == ["job-5", "job-4"]
    assert await jobs.list(episode_id="nope") == []
    assert await jobs.list(status="running") == []
    for limit in (0, 1001, -1, "5", True):
        with pytest.raises(InvalidInputError) as caught:
            await jobs.list(limit=limit)  # type: ignore[arg-type]
        assert caught.value.field == "limit"


async def test_delete(jobs: SocialJobs, db: Database) -> None:
    await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1")
    await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-2")

    await jobs.delete("job-1")

    with pytest.raises(NotFoundError):
        await jobs.get("job-1")
    assert [j.job_id for j in await jobs.list()] == ["job-2"]
    with pytest.raises(NotFoundError):
        await jobs.delete("job-1")
    assert await count(db, social_jobs) == 1


async def test_jobs_follow_their_episode(jobs: SocialJobs, db: Database) -> None:
    await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id="job-1")
    await jobs.create(episode_id="ep2", platforms=["tiktok"], job_id="job-2")

    await Episodes(db).rename("ep1", "ep1-renamed")
    assert (await jobs.get("job-1")).episode_id == "ep1-renamed"
    await Episodes(db).delete("ep1-renamed")

    assert [j.job_id for j in await jobs.list()] == ["job-2"]
    assert await count(db, social_jobs) == 1


async def test_stats_by_status(jobs: SocialJobs) -> None:
    assert await jobs.stats() == dict.fromkeys(SOCIAL_STATUSES, 0)
    for n in range(6):
        await jobs.create(episode_id="ep1", platforms=["tiktok"], job_id=f"job-{n}")
    for n, status in ((0, "running"), (1, "completed"), (2, "completed"), (3, "failed")):
        await jobs.update(f"job-{n}", status=status)

    assert await jobs.stats() == {
        "pending": 2,
        "running": 1,
        "completed": 2,
        "failed": 1,
        "cancelled": 0,
    }


# -- backup log -----------------------------------------------------------------------


async def test_record_list_and_mark_restored(db: Database) -> None:
    log = BackupLog(db)
    first = await log.record("/backups/pipeline-1.db", size=4096, checksum="sha256:aa")
    second = await log.record("/backups/pipeline-2.db", size=None, checksum=None)
    third = await log.record("/backups/pipeline-3.db", size=0, checksum="sha256:cc")

    assert isinstance(first, BackupRecord)
    assert (first.backup_path, first.backup_size, first.checksum) == (
        "/backups/pipeline-1.db",
        4096,
        "sha256:aa",
    )
    assert first.restored_at is None and first.created_at.tzinfo is not None
    assert first.id < second.id < third.id
    assert await log.list() == [third, second, first]
    assert await log.list(limit=1) == [third]

    restored = await log.mark_restored(second.id)

    assert restored.restored_at is not None and restored.restored_at >= second.created_at
    assert restored.model_dump(exclude={"restored_at"}) == second.model_dump(
        exclude={"restored_at"}
    )
    assert await log.list() == [third, restored, first]
    again = await log.mark_restored(second.id)  # restored a second time: the later moment
    assert again.restored_at is not None and again.restored_at >= restored.restored_at


async def test_mark_restored_of_an_unknown_backup_is_not_found(db: Database) -> None:
    log = BackupLog(db)
    await log.record("/backups/a.db", size=1, checksum=None)
    with pytest.raises(NotFoundError):
        await log.mark_restored(999)
    assert all(r.restored_at is None for r in await log.list())


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("",), "backup_path"),
        ((None,), "backup_path"),
        (("/b/\x00.db",), "backup_path"),
        ((42,), "backup_path"),
        (("/b/a.db", -1), "backup_size"),
        (("/b/a.db", 1.5), "backup_size"),
        (("/b/a.db", "10"), "backup_size"),
        (("/b/a.db", 2**63), "backup_size"),
        (("/b/a.db", 1, 123), "checksum"),
        (("/b/a.db", 1, "sha\x00"), "checksum"),
    ],
)
async def test_record_refuses_bad_values(db: Database, args: tuple[Any, ...], field: str) -> None:
    path, size, checksum = (*args, None, None)[:3]
    with pytest.raises(InvalidInputError) as caught:
        await BackupLog(db).record(path, size=size, checksum=checksum)
    assert caught.value.field == field
    assert await count(db, backup_log) == 0


async def test_bad_backup_ids_and_limits_are_refused(db: Database) -> None:
    log = BackupLog(db)
    record = await log.record("/backups/a.db", size=1, checksum=None)
    for bad in (str(record.id), True, 1.0, None):
        with pytest.raises(InvalidInputError) as caught:
            await log.mark_restored(bad)  # type: ignore[arg-type]
        assert caught.value.field == "backup_id"
    for limit in (0, -1, 1001, "5"):
        with pytest.raises(InvalidInputError) as caught:
            await log.list(limit=limit)  # type: ignore[arg-type]
        assert caught.value.field == "limit"
    assert await log.list() == [record]
