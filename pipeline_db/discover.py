"""The ``discover`` job: register the videos found in the configured source folders.

It walks each folder of ``worker.discover.folders`` (recursively, skipping
hidden files and folders), keeps the files whose name matches an ``include``
pattern and no ``exclude`` pattern (``fnmatch``, case-insensitive: cameras
write ``.MP4``), and for each:

* skips it while it may still be being written: modified less than
  ``stability_window`` seconds ago, or changed while it was hashed;
* leaves it alone when an episode already has this path with the same size
  and modification time (a second scan reads no file);
* otherwise hashes it (SHA-256 in 1 MiB chunks, in a thread) and registers a
  new episode, its id the slugified file stem, deduplicated by hash; a file at
  a known path with new content updates that episode's source; a file whose
  content is already registered under a path that no longer exists is taken
  as moved.

New and changed episodes get a ``probe`` job and, when stage handlers are
configured, a ``process_episode`` job (a changed file's with ``force``).
Params: ``{"probe": bool, "process": bool, "target_stage": str}`` override
that. The job returns counts: registered, updated, unchanged,
skipped_unstable, duplicates, unreadable.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import os
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline_db.config import DiscoverConfig
from pipeline_db.database import Database
from pipeline_db.episodes import MAX_ID_LENGTH, Episodes
from pipeline_db.errors import ConflictError
from pipeline_db.handlers import FailJob, JobContext
from pipeline_db.jobs import JobQueue
from pipeline_db.models import Episode
from pipeline_db.queries import episodes as eq
from pipeline_db.schema import STAGES

logger = logging.getLogger("pipeline_db.discover")

HASH_CHUNK_BYTES = 1024 * 1024
LOOKUP_BATCH = 500
PROGRESS_EVERY = 25
COUNTS = ("registered", "updated", "unchanged", "skipped_unstable", "duplicates", "unreadable")

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file the scan found: its absolute path, size and modification time."""

    path: Path
    size: int
    mtime_ns: int

    @property
    def modified(self) -> datetime:
        """The modification time, to the microsecond (as both backends store it)."""
        seconds, nanoseconds = divmod(self.mtime_ns, 1_000_000_000)
        moment = datetime.fromtimestamp(seconds, UTC)
        return moment + timedelta(microseconds=nanoseconds // 1_000)


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether a file name matches an include pattern and no exclude pattern (any case)."""
    folded = name.casefold()
    return any(fnmatch.fnmatchcase(folded, p.casefold()) for p in include) and not any(
        fnmatch.fnmatchcase(folded, p.casefold()) for p in exclude
    )


def scan(
    folders: Iterable[Path], include: Sequence[str], exclude: Sequence[str]
) -> list[Candidate]:
    """The matching regular files under ``folders``, sorted by path (blocking: run in a thread).

    A folder that does not exist is logged and skipped.
    """
    found: dict[Path, Candidate] = {}
    for folder in folders:
        root = folder.expanduser().resolve()
        if not root.is_dir():
            logger.warning("discover: %s is not a folder; skipped", root)
            continue
        for directory, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for name in files:
                if name.startswith(".") or not matches(name, include, exclude):
                    continue
                path = Path(directory, name)
                try:
                    info = path.stat()
                except OSError:
                    continue  # removed since the listing
                if path.is_file():
                    found[path] = Candidate(path, info.st_size, info.st_mtime_ns)
    return [found[path] for path in sorted(found)]


def hash_file(path: Path, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """The SHA-256 of the file's content as hex, read in chunks (blocking: run in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def slugify(stem: str) -> str:
    """An episode id from a file stem: lower-case ASCII letters, digits and hyphens."""
    ascii_text = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_text.lower()).strip("-")
    # Room for the "-2", "-3"... suffix registration adds to an id that is taken.
    return slug[: MAX_ID_LENGTH - 8].rstrip("-") or "episode"


class Discoverer:
    """The ``discover`` job handler (see the module docstring).

    It remembers, for as long as it lives, the files it found to duplicate an
    episode registered from another path, so it hashes each of them once per
    worker process rather than on every scan.

    Args:
        config: the ``worker.discover`` settings.
    """

    def __init__(self, config: DiscoverConfig) -> None:
        self._config = config
        self._duplicates: dict[Path, tuple[int, int]] = {}

    async def __call__(self, ctx: JobContext) -> dict[str, int]:
        """Scan the folders once; returns the counts of the module docstring."""
        probe, process, target = self._follow_ups(ctx)
        config = self._config
        candidates = await asyncio.to_thread(scan, config.folders, config.include, config.exclude)
        known = await _known(ctx.db, [str(c.path) for c in candidates])
        counts = dict.fromkeys(COUNTS, 0)
        episodes = Episodes(ctx.db)
        queue = JobQueue(ctx.db)
        for done, candidate in enumerate(candidates):
            if done % PROGRESS_EVERY == 0:
                await ctx.progress(
                    percent=100 * done / len(candidates),
                    message=f"checked {done} of {len(candidates)} files",
                )
            outcome, episode = await self._one(episodes, candidate, known.get(str(candidate.path)))
            counts[outcome] += 1
            if episode is not None and outcome in ("registered", "updated"):
                changed = outcome == "updated" and str(candidate.path) in known
                await _enqueue(
                    queue, episode, probe=probe, process=process, target=target, force=changed
                )
        await ctx.progress(percent=100.0, message=f"checked {len(candidates)} files")
        return counts

    async def _one(
        self, episodes: Episodes, candidate: Candidate, existing: Episode | None
    ) -> tuple[str, Episode | None]:
        """Check one file: returns its outcome and the episode registered or updated."""
        if time.time() - candidate.mtime_ns / 1e9 < self._config.stability_window:
            return "skipped_unstable", None
        fingerprint = (candidate.size, candidate.mtime_ns)
        if self._duplicates.get(candidate.path) == fingerprint:
            return "unchanged", None
        if existing is not None and (existing.file_size, existing.last_modified) == (
            candidate.size,
            candidate.modified,
        ):
            return "unchanged", None
        try:
            digest = await asyncio.to_thread(hash_file, candidate.path)
            after = candidate.path.stat()
        except OSError as error:
            logger.warning("discover: cannot read %s: %s", candidate.path, error)
            return "unreadable", None
        if (after.st_size, after.st_mtime_ns) != fingerprint:
            return "skipped_unstable", None  # written to while we hashed it
        source: dict[str, Any] = {
            "source_path": str(candidate.path),
            "hash": digest,
            "file_size": candidate.size,
            "last_modified": candidate.modified,
        }
        if existing is not None:
            try:
                updated = await episodes.update_source(existing.id, **source)
            except ConflictError:  # its new content is another episode's
                self._duplicates[candidate.path] = fingerprint
                return "duplicates", None
            # Touched but not changed: the new mtime is recorded so it is not hashed again.
            return ("unchanged", None) if digest == existing.hash else ("updated", updated)
        registration = await episodes.register(id=slugify(candidate.path.stem), **source)
        if not registration.duplicate:
            return "registered", registration.episode
        original = registration.episode
        if original.source_path == str(candidate.path):
            return "unchanged", None  # a concurrent scan registered it first
        if not await asyncio.to_thread(Path(original.source_path).exists):
            return "updated", await episodes.update_source(original.id, **source)  # moved
        self._duplicates[candidate.path] = fingerprint
        logger.info("discover: %s duplicates episode %s", candidate.path, original.id)
        return "duplicates", None

    def _follow_ups(self, ctx: JobContext) -> tuple[bool, bool, str]:
        params = ctx.job.params
        probe = params.get("probe", True)
        process = params.get("process", bool(ctx.settings.get("stages")))
        target = params.get("target_stage", STAGES[-1])
        if not isinstance(probe, bool) or not isinstance(process, bool):
            raise FailJob("probe and process must be true or false")
        if target not in STAGES:
            raise FailJob(f"target_stage: unknown stage {target!r}; stages are {', '.join(STAGES)}")
        return probe, process, target


async def _known(db: Database, paths: list[str]) -> dict[str, Episode]:
    """The episode registered for each path (the latest updated, if several are)."""
    known: dict[str, Episode] = {}
    for start in range(0, len(paths), LOOKUP_BATCH):
        query = eq.by_source_paths(paths[start : start + LOOKUP_BATCH])
        async with db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        for episode in sorted((Episode.model_validate(r) for r in rows), key=_updated):
            known[episode.source_path] = episode
    return known


def _updated(episode: Episode) -> datetime:
    return episode.updated_at


async def _enqueue(
    queue: JobQueue, episode: Episode, *, probe: bool, process: bool, target: str, force: bool
) -> None:
    """Queue the follow-up jobs of a new or changed episode, once per content hash."""
    if probe:
        await queue.enqueue(
            "probe", episode_id=episode.id, idempotency_key=f"probe:{episode.id}:{episode.hash}"
        )
    if process:
        await queue.enqueue(
            "process_episode",
            episode_id=episode.id,
            params={"target_stage": target, "force": force},
            idempotency_key=f"process_episode:{episode.id}:{episode.hash}:{target}",
        )
