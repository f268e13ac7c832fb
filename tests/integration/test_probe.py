"""The `probe` job, with and without ffprobe, on SQLite and PostgreSQL.

ffprobe is replaced by a fake: a script of that name on the PATH that prints
a canned report (or fails), so the tests need no FFmpeg.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline_db import Database, Episodes
from pipeline_db.handlers import FailJob, JobContext
from pipeline_db.jobs import JobQueue
from pipeline_db.probe import NO_FFPROBE, describe, probe

WORKER = "test-worker"
MTIME = 1_700_000_000.0

REPORT: dict[str, Any] = {
    "format": {"duration": "1234.560000", "format_name": "mov,mp4,m4a", "bit_rate": "5000000"},
    "streams": [
        {"codec_type": "audio", "codec_name": "aac", "channels": 2, "sample_rate": "48000"},
        {
            "codec_type": "video",
            "codec_name": "h264",
            "width": 1920,
            "height": 1080,
            "avg_frame_rate": "30000/1001",
        },
    ],
}


@pytest.fixture
async def episode(db: Database, tmp_path: Path) -> Path:
    """Episode ep1 whose source file exists."""
    source = tmp_path / "ep1.mp4"
    source.write_bytes(b"not really a video" * 10)
    os.utime(source, (MTIME, MTIME))
    await Episodes(db).register(id="ep1", hash="h1", source_path=str(source))
    return source


def fake_ffprobe(folder: Path, *, report: dict[str, Any] | None, exit_status: int = 0) -> None:
    """Put a fake ``ffprobe`` in ``folder``: prints ``report`` as JSON, or fails."""
    folder.mkdir(exist_ok=True)
    script = folder / "ffprobe"
    body = (
        f"import sys\nsys.stdout.write({json.dumps(json.dumps(report))})\n"
        if report is not None
        else "import sys\nsys.stderr.write('ep1.mp4: Invalid data found when processing input')\n"
    )
    script.write_text(f"#!{sys.executable}\n{body}sys.exit({exit_status})\n")
    script.chmod(0o755)


async def run(db: Database) -> dict[str, Any]:
    queue = JobQueue(db)
    await queue.enqueue("probe", episode_id="ep1")
    [job] = await queue.claim(WORKER, kinds=["probe"])
    return await probe(JobContext(job, db, queue, WORKER, {}))


async def test_without_ffprobe_records_size_and_time(
    db: Database, episode: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    result = await run(db)

    stored = (await Episodes(db).get("ep1")).metadata["probe"]
    assert stored == result
    assert result["file_size"] == 180
    assert result["modified_at"] == "2023-11-14T22:13:20+00:00"
    assert result["ffprobe"] is False
    assert result["note"] == NO_FFPROBE
    assert (await Episodes(db).get("ep1")).duration_seconds is None


async def test_with_ffprobe_records_duration_codecs_and_resolution(
    db: Database, episode: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_ffprobe(tmp_path / "bin", report=REPORT)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    result = await run(db)

    assert result["ffprobe"] is True
    assert {k: result[k] for k in describe(REPORT)} == {
        "duration_seconds": 1234.56,
        "format": "mov,mp4,m4a",
        "bit_rate": 5_000_000,
        "video_codec": "h264",
        "width": 1920,
        "height": 1080,
        "frame_rate": 29.97,
        "audio_codec": "aac",
        "audio_channels": 2,
        "sample_rate": 48_000,
    }
    stored = await Episodes(db).get("ep1")
    assert stored.duration_seconds == 1234.56
    assert stored.metadata["probe"] == result
    assert stored.metadata["duration_seconds"] == 1234.56


async def test_a_file_ffprobe_cannot_read_is_recorded(
    db: Database, episode: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_ffprobe(tmp_path / "bin", report=None, exit_status=1)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))

    result = await run(db)

    assert result["error"] == "ep1.mp4: Invalid data found when processing input"
    assert "duration_seconds" not in result
    assert (await Episodes(db).get("ep1")).metadata["probe"]["error"] == result["error"]


async def test_a_missing_source_file_fails_the_job(db: Database, episode: Path) -> None:
    await asyncio.to_thread(episode.unlink)
    with pytest.raises(FailJob, match="does not exist"):
        await run(db)


def test_describe_keeps_what_the_report_has() -> None:
    assert describe({}) == {}
    assert describe({"streams": [{"codec_type": "video", "avg_frame_rate": "0/0"}]}) == {}
    assert describe({"format": {"duration": "N/A"}}) == {}
