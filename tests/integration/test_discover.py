"""The `discover` job: scan folders, hash, register with dedupe, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline_db import Database, Episodes
from pipeline_db.config import DiscoverConfig
from pipeline_db.discover import Discoverer, hash_file, matches, slugify
from pipeline_db.handlers import FailJob, JobContext
from pipeline_db.jobs import JobQueue
from pipeline_db.models import Episode

WORKER = "test-worker"
OLD = time.time() - 3_600  # well outside the stability window
WINDOW_S = 60.0


def write(path: Path, content: bytes, *, mtime: float | None = OLD) -> Path:
    """Write a file and set its modification time (None: now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """A folder of generated files: 3 videos (one 2.5 MiB, one in a subfolder), and noise."""
    root = tmp_path / "inbox"
    write(root / "Show Ep 1.mp4", os.urandom(5 * 512 * 1024))  # several 1 MiB chunks
    write(root / "interview.MOV", b"mov" * 1000)
    write(root / "season 2" / "finale.mkv", b"mkv" * 1000)
    write(root / "notes.txt", b"not a video")
    write(root / ".hidden.mp4", b"hidden")
    write(root / ".cache" / "thumb.mp4", b"cached")
    write(root / "skip-draft.mp4", b"draft")
    return root


def discoverer(*folders: Path) -> Discoverer:
    return Discoverer(
        DiscoverConfig(folders=list(folders), exclude=["skip-*"], stability_window=WINDOW_S)
    )


async def run(db: Database, handler: Discoverer, **params: Any) -> dict[str, int]:
    """Enqueue, claim and run one discover job; returns its counts."""
    queue = JobQueue(db)
    await queue.enqueue("discover", params=params)
    [job] = await queue.claim(WORKER, kinds=["discover"])
    return await handler(JobContext(job, db, queue, WORKER, {}))


def counts(**nonzero: int) -> dict[str, int]:
    zero = dict.fromkeys(
        ("registered", "updated", "unchanged", "skipped_unstable", "duplicates", "unreadable"), 0
    )
    return {**zero, **nonzero}


async def all_episodes(db: Database) -> dict[str, Episode]:
    page = await Episodes(db).list(limit=500)
    return {episode.id: episode for episode in page.items}


async def test_registers_each_video_once_and_skips_files_being_written(
    db: Database, inbox: Path
) -> None:
    writing = write(inbox / "recording.mp4", b"still growing", mtime=None)
    handler = discoverer(inbox)

    first = await run(db, handler)

    assert first == counts(registered=3, skipped_unstable=1)
    episodes = await all_episodes(db)
    assert sorted(episodes) == ["finale", "interview", "show-ep-1"]
    show = episodes["show-ep-1"]
    content = (inbox / "Show Ep 1.mp4").read_bytes()
    assert show.hash == sha256(content)
    assert show.source_path == str((inbox / "Show Ep 1.mp4").resolve())
    assert show.file_size == len(content)
    assert show.stage == "discovered"
    assert show.last_modified is not None
    assert abs(show.last_modified.timestamp() - OLD) < 1e-3

    second = await run(db, handler)
    assert second == counts(unchanged=3, skipped_unstable=1)
    assert await all_episodes(db) == episodes

    os.utime(writing, (OLD, OLD))  # finished writing
    third = await run(db, handler)
    assert third == counts(registered=1, unchanged=3)
    assert "recording" in await all_episodes(db)


async def test_a_second_scan_reads_no_file_it_knows(db: Database, inbox: Path) -> None:
    handler = discoverer(inbox)
    await run(db, handler)
    before = (await Episodes(db).get("interview")).hash

    # New bytes with the same size and modification time: only a rehash would notice.
    write(inbox / "interview.MOV", b"MOV" * 1000)
    assert await run(db, discoverer(inbox)) == counts(unchanged=3)  # a fresh handler: no cache
    assert (await Episodes(db).get("interview")).hash == before


async def test_a_duplicate_file_is_deduplicated_by_content(db: Database, inbox: Path) -> None:
    handler = discoverer(inbox)
    await run(db, handler)
    shutil.copy2(inbox / "Show Ep 1.mp4", inbox / "copy of show.mp4")

    assert await run(db, handler) == counts(unchanged=3, duplicates=1)
    assert sorted(await all_episodes(db)) == ["finale", "interview", "show-ep-1"]
    assert (await Episodes(db).get("show-ep-1")).source_path.endswith("Show Ep 1.mp4")
    # Remembered: not hashed (nor counted) again.
    assert await run(db, handler) == counts(unchanged=4)


async def test_duplicates_within_one_scan(db: Database, tmp_path: Path) -> None:
    write(tmp_path / "a" / "same.mp4", b"identical bytes")
    write(tmp_path / "b" / "twin.mp4", b"identical bytes")

    assert await run(db, discoverer(tmp_path)) == counts(registered=1, duplicates=1)
    assert list(await all_episodes(db)) == ["same"]


async def test_a_changed_file_updates_its_episode(db: Database, inbox: Path) -> None:
    handler = discoverer(inbox)
    await run(db, handler)
    write(inbox / "season 2" / "finale.mkv", b"re-encoded" * 500, mtime=OLD + 60)

    assert await run(db, handler) == counts(updated=1, unchanged=2)
    finale = await Episodes(db).get("finale")
    assert finale.hash == sha256(b"re-encoded" * 500)
    assert finale.file_size == 5000
    assert await run(db, handler) == counts(unchanged=3)


async def test_a_touched_file_is_rehashed_once(db: Database, inbox: Path) -> None:
    handler = discoverer(inbox)
    await run(db, handler)
    os.utime(inbox / "season 2" / "finale.mkv", (OLD + 60, OLD + 60))

    assert await run(db, handler) == counts(unchanged=3)
    finale = await Episodes(db).get("finale")
    assert finale.last_modified is not None
    assert abs(finale.last_modified.timestamp() - (OLD + 60)) < 1e-3


async def test_a_moved_file_keeps_its_episode(db: Database, inbox: Path) -> None:
    handler = discoverer(inbox)
    await run(db, handler)
    moved = inbox / "archive" / "the finale.mkv"
    moved.parent.mkdir()
    (inbox / "season 2" / "finale.mkv").rename(moved)

    assert await run(db, handler) == counts(updated=1, unchanged=2)
    episodes = await all_episodes(db)
    assert sorted(episodes) == ["finale", "interview", "show-ep-1"]
    assert episodes["finale"].source_path == str(moved.resolve())


async def test_same_stem_in_two_folders_gets_two_ids(db: Database, tmp_path: Path) -> None:
    write(tmp_path / "a" / "episode.mp4", b"first")
    write(tmp_path / "b" / "episode.mp4", b"second")

    assert await run(db, discoverer(tmp_path / "a", tmp_path / "b")) == counts(registered=2)
    assert sorted(await all_episodes(db)) == ["episode", "episode-2"]


async def test_new_and_changed_episodes_get_follow_up_jobs(db: Database, inbox: Path) -> None:
    handler = discoverer(inbox)
    await run(db, handler, process=True, target_stage="transcribed")
    queue = JobQueue(db)

    probes = (await queue.list(kind="probe")).items
    processing = (await queue.list(kind="process_episode")).items
    assert sorted(job.episode_id or "" for job in probes) == ["finale", "interview", "show-ep-1"]
    assert sorted(job.episode_id or "" for job in processing) == sorted(
        job.episode_id or "" for job in probes
    )
    assert {job.params["target_stage"] for job in processing} == {"transcribed"}
    assert not any(job.params["force"] for job in processing)

    await run(db, handler, process=True, target_stage="transcribed")  # nothing new: no jobs
    assert len((await queue.list(kind="probe")).items) == 3

    write(inbox / "interview.MOV", b"new cut", mtime=OLD + 60)
    await run(db, handler, process=True, target_stage="transcribed")
    [latest, *_] = (await queue.list(kind="process_episode")).items
    assert (latest.episode_id, latest.params["force"]) == ("interview", True)
    assert len((await queue.list(kind="probe")).items) == 4


async def test_no_process_jobs_without_stage_handlers(db: Database, inbox: Path) -> None:
    await run(db, discoverer(inbox))  # settings {}: no worker.stages configured

    queue = JobQueue(db)
    assert len((await queue.list(kind="probe")).items) == 3
    assert (await queue.list(kind="process_episode")).items == []


async def test_bad_params_fail_the_job(db: Database, inbox: Path) -> None:
    with pytest.raises(FailJob, match="target_stage: unknown stage 'done'"):
        await run(db, discoverer(inbox), target_stage="done")


async def test_a_missing_folder_is_skipped(db: Database, inbox: Path, tmp_path: Path) -> None:
    handler = discoverer(tmp_path / "nowhere", inbox)
    assert await run(db, handler) == counts(registered=3)


def test_hash_file_reads_in_chunks(tmp_path: Path) -> None:
    content = os.urandom(3 * 1024 * 1024 + 7)
    path = write(tmp_path / "big.bin", content)
    assert hash_file(path) == hash_file(path, chunk_bytes=4096) == sha256(content)


@pytest.mark.parametrize(
    ("stem", "slug"),
    [
        ("Show Ep 1", "show-ep-1"),
        ("My Show — Ep. 12 (Final)", "my-show-ep-12-final"),
        ("Café_Crème", "cafe-creme"),
        ("---", "episode"),
        ("日本語", "episode"),
        ("x" * 300, "x" * 247),
    ],
)
def test_slugify(stem: str, slug: str) -> None:
    assert slugify(stem) == slug


def test_patterns_match_names_in_any_case() -> None:
    assert matches("CLIP.MP4", ["*.mp4"], [])
    assert not matches("clip.mp4", ["*.mov"], [])
    assert not matches("draft.mp4", ["*.mp4"], ["DRAFT*"])
