"""The ``probe`` job: what an episode's source file is (size, dates, duration, codecs).

It reads the file's size and modification time and, when ``ffprobe`` (part of
FFmpeg) is on the PATH, its duration, container, codecs, resolution and frame
rate. The result goes to ``metadata["probe"]`` in one transaction with the
episode's ``duration_seconds`` column (and the metadata's top-level
``duration_seconds``, which the search index reads, unless it is already set).
Without ``ffprobe`` it records what it can and says so in ``note``. A file
``ffprobe`` cannot read is recorded with its error, not retried.

Enqueue it with the episode's ``episode_id`` (or ``params: {"episode_id": ...}``).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from pipeline_db._metadata import check_document, locked_episode, write_episode
from pipeline_db.episodes import Episodes
from pipeline_db.errors import NotFoundError
from pipeline_db.handlers import FailJob, JobContext

FFPROBE_TIMEOUT_S = 120.0
ERROR_CHARS = 500
NO_FFPROBE = "ffprobe is not on the PATH: install FFmpeg to probe duration, codecs and resolution"


async def probe(ctx: JobContext) -> dict[str, Any]:
    """Probe the episode's source file and store the result; returns it.

    Raises:
        FailJob: no episode id, no such episode, or its source file is missing.
    """
    episode_id = ctx.job.episode_id or ctx.job.params.get("episode_id")
    if not isinstance(episode_id, str):
        raise FailJob("probe jobs need the episode's episode_id")
    try:
        episode = await Episodes(ctx.db).get(episode_id)
    except NotFoundError as error:
        raise FailJob(error.message) from None
    path = Path(episode.source_path)
    try:
        info = await asyncio.to_thread(path.stat)
    except FileNotFoundError:
        raise FailJob(
            f"the source file of episode {episode_id!r}, {path}, does not exist"
        ) from None
    result: dict[str, Any] = {
        "file_size": info.st_size,
        "modified_at": datetime.fromtimestamp(info.st_mtime, UTC).isoformat(),
        "probed_at": datetime.now(UTC).isoformat(),
    }
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        result.update(ffprobe=False, note=NO_FFPROBE)
    else:
        await ctx.progress(message=f"running ffprobe on {path.name}")
        result.update(ffprobe=True, **await run_ffprobe(ffprobe, path))
    await _store(ctx, episode_id, result)
    return result


async def run_ffprobe(executable: str, path: Path) -> dict[str, Any]:
    """Run ``ffprobe`` on ``path``; returns the fields it found, or ``error``.

    Raises:
        TimeoutError: ffprobe ran longer than :data:`FFPROBE_TIMEOUT_S` (it is killed).
    """
    process = await asyncio.create_subprocess_exec(
        executable,
        *("-v", "error", "-print_format", "json", "-show_format", "-show_streams"),
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(FFPROBE_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        message = stderr.decode(errors="replace").strip() or f"exit status {process.returncode}"
        return {"error": message[:ERROR_CHARS]}
    try:
        report = json.loads(stdout)
    except ValueError:
        return {"error": "ffprobe printed no JSON"}
    return describe(report if isinstance(report, dict) else {})


def describe(report: dict[str, Any]) -> dict[str, Any]:
    """The fields pipeline-db keeps from ffprobe's JSON report (those it has)."""
    fmt = report.get("format")
    fmt = fmt if isinstance(fmt, dict) else {}
    streams = [s for s in report.get("streams") or [] if isinstance(s, dict)]
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
    found = {
        "duration_seconds": _number(fmt.get("duration")) or _number(video.get("duration")),
        "format": fmt.get("format_name"),
        "bit_rate": _integer(fmt.get("bit_rate")),
        "video_codec": video.get("codec_name"),
        "width": _integer(video.get("width")),
        "height": _integer(video.get("height")),
        "frame_rate": _rate(video.get("avg_frame_rate") or video.get("r_frame_rate")),
        "audio_codec": audio.get("codec_name"),
        "audio_channels": _integer(audio.get("channels")),
        "sample_rate": _integer(audio.get("sample_rate")),
    }
    return {key: value for key, value in found.items() if value is not None}


async def _store(ctx: JobContext, episode_id: str, result: dict[str, Any]) -> None:
    duration = result.get("duration_seconds")

    async def work(conn: AsyncConnection) -> None:
        episode = await locked_episode(conn, episode_id)
        document = {**episode.metadata, "probe": result}
        values: dict[str, Any] = {}
        if duration is not None:
            values["duration_seconds"] = duration
            document.setdefault("duration_seconds", duration)
        values["metadata"] = check_document(document, f"the metadata of episode {episode_id!r}")
        await write_episode(conn, ctx.db.dialect, episode, values)

    await ctx.db.transaction(work)


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _rate(value: Any) -> float | None:
    """A frame rate from ffprobe's ``num/den`` (``0/0`` when unknown)."""
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return round(float(rate), 3) if rate else None
