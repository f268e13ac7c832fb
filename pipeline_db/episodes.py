"""Episodes: register, read, list, advance through the stages, edit, rename, delete.

Every write is one retried transaction (see :class:`~pipeline_db.Database`)
written to be idempotent under retry, and keeps the metadata index (search)
in step with the episode's metadata in the same transaction.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import count, islice
from typing import Any

from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from pipeline_db import _json
from pipeline_db.database import Database
from pipeline_db.errors import ConflictError, InvalidInputError, NotFoundError
from pipeline_db.models import Episode, EpisodeStats, Page, Registration, StageStats
from pipeline_db.queries import episodes as q
from pipeline_db.queries import history as hq
from pipeline_db.queries import search as sq
from pipeline_db.schema import STAGES
from pipeline_db.search import index_values, upsert_index

MAX_METADATA_BYTES = 4 * 1024 * 1024
MAX_ID_LENGTH = 255
PAGE_SIZE = 50
#: Ids looked up at once when a registration's id is taken (``id-2``, ``id-3``...).
ID_BATCH = 16
MAX_PAGE_SIZE = 500
STATS_WINDOW = timedelta(hours=24)

# A \u0000 escape in JSON text: its backslash may follow escaped backslashes
# ("\\\\"), never a lone one (then "\\u0000" is six literal characters).
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class Episodes:
    """The episodes aggregate.

    Args:
        db: the database.
        max_metadata_bytes: the largest metadata document accepted, as UTF-8 JSON.
    """

    def __init__(self, db: Database, *, max_metadata_bytes: int = MAX_METADATA_BYTES) -> None:
        self._db = db
        self._max_metadata_bytes = max_metadata_bytes

    async def register(
        self,
        *,
        id: str,
        hash: str,
        source_path: str,
        metadata: Mapping[str, Any] | None = None,
        file_size: int | None = None,
        duration_seconds: float | None = None,
        last_modified: datetime | None = None,
    ) -> Registration:
        """Register an episode, deduplicated by content hash.

        A hash already known returns the existing episode with ``duplicate=True``.
        An id already taken by another hash gets the next free ``-2``, ``-3``...
        suffix. A ``registration/completed`` event is logged.

        Raises:
            InvalidInputError: a field is empty, too long or not serialisable.
        """
        _check_id(id, "id")
        _check_text(hash, "hash")
        _check_text(source_path, "source_path")
        document = self._check_metadata(metadata or {})
        values = {
            "hash": hash,
            "source_path": source_path,
            "metadata": document,
            "file_size": file_size,
            "duration_seconds": duration_seconds,
            "last_modified": _aware(last_modified, "last_modified"),
        }

        dialect = self._db.dialect

        # One run_sync unit: one greenlet (PostgreSQL) or one thread hop (SQLite)
        # for the whole transaction, not one per statement, so SQLite's write
        # lock is held for the statements only (issue 5, bench/http.py). The
        # insert comes first: a new episode under a free id, the common case,
        # costs no lookup.
        def work(conn: Connection) -> Registration:
            free = id
            while True:
                inserted = conn.execute(q.insert_new_or_nothing(dialect), {"id": free, **values})
                row = inserted.mappings().first()
                if row is not None:
                    break
                # The hash is known or the id taken (maybe concurrently): look.
                existing = conn.execute(q.by_hash(hash)).mappings().first()
                if existing is not None:
                    return Registration(episode=Episode.model_validate(existing), duplicate=True)
                free = _free_id(conn, id)
            conn.execute(
                hq.insert_event(),
                {"episode_id": free, "stage": "registration", "status": "completed"},
            )
            conn.execute(sq.upsert(dialect), index_values(free, source_path, file_size, document))
            return Registration(episode=Episode.model_validate(row), duplicate=False)

        return await self._db.run_sync(work)

    async def get(self, episode_id: str) -> Episode:
        """The episode with this id.

        Raises:
            NotFoundError: no such episode.
        """
        row = await self._fetch_one(q.by_id_param(), {"episode_id": episode_id})
        if row is None:
            raise NotFoundError.episode(episode_id)
        return Episode.model_validate(row)

    async def get_by_hash(self, content_hash: str) -> Episode:
        """The episode with this content hash.

        Raises:
            NotFoundError: no episode has this hash.
        """
        row = await self._fetch_one(q.by_hash(content_hash))
        if row is None:
            raise NotFoundError(f"no episode has hash {content_hash!r}", hash=content_hash)
        return Episode.model_validate(row)

    async def exists(self, episode_id: str) -> bool:
        """Whether an episode with this id exists."""
        return await self._fetch_one(q.exists(episode_id)) is not None

    async def find_by_filename(self, name: str, *, limit: int = PAGE_SIZE) -> list[Episode]:
        """Episodes whose source file is named ``name``, compared case-insensitively.

        ``%`` and ``_`` are literal: the name is compared, never used as a pattern.
        """
        _check_text(name, "name")
        rows = await self._fetch_all(q.by_file_name(name, _limit(limit)))
        return [Episode.model_validate(row) for row in rows]

    async def list(
        self,
        *,
        stages: builtins.list[str] | None = None,
        show: str | None = None,
        updated_since: datetime | None = None,
        cursor: str | None = None,
        limit: int = PAGE_SIZE,
    ) -> Page[Episode]:
        """One page of episodes in (updated_at, id) order, filtered.

        Pass the returned ``next_cursor`` back as ``cursor`` for the next page.

        Raises:
            InvalidInputError: an unknown stage, a bad cursor or limit.
        """
        for stage in stages or []:
            _check_stage(stage, "stages")
        size = _limit(limit)
        query = q.page(
            stages=stages,
            show=show,
            updated_since=_aware(updated_since, "updated_since"),
            after=_decode_cursor(cursor) if cursor else None,
            limit=size + 1,
        )
        rows = await self._fetch_all(query)
        items = [Episode.model_validate(row) for row in rows[:size]]
        more = len(rows) > size
        return Page(items=items, next_cursor=_encode_cursor(items[-1]) if more else None)

    async def needing_processing(
        self, target_stage: str, *, limit: int = PAGE_SIZE
    ) -> builtins.list[Episode]:
        """Episodes not yet at ``target_stage``, least recently updated first."""
        _check_stage(target_stage, "target_stage")
        before = list(STAGES[: STAGES.index(target_stage)])
        if not before:
            return []
        rows = await self._fetch_all(q.needing(before, _limit(limit)))
        return [Episode.model_validate(row) for row in rows]

    async def advance_stage(
        self,
        episode_id: str,
        target: str,
        *,
        expected: str | None = None,
        force: bool = False,
        duration_seconds: float | None = None,
    ) -> Episode:
        """Move the episode to ``target`` and log the transition.

        Args:
            episode_id: the episode.
            target: the stage to move to; without ``force`` it must not be
                earlier than the current stage.
            expected: the stage the caller believes is current; if another
                writer moved it meanwhile, this call fails with ConflictError
                (of concurrent writers from the same stage, exactly one wins).
            force: allow going backwards.
            duration_seconds: how long the stage took, for the log.

        Raises:
            NotFoundError: no such episode.
            ConflictError: the stage is no longer ``expected``.
            InvalidInputError: an unknown stage, or backwards without ``force``.
        """
        _check_stage(target, "target")
        if expected is not None:
            _check_stage(expected, "expected")
        allowed = None if force else list(STAGES[: STAGES.index(target) + 1])
        if allowed is not None and expected is not None and expected not in allowed:
            raise _backwards(expected, target)
        # Where the backend has writable CTEs, the move and its log row are one
        # statement committing on its own: one round trip instead of four.
        one_statement = self._db.backend.writable_ctes
        shape = {"expected": expected is not None, "restricted": allowed is not None}
        params: dict[str, Any] = {"episode_id": episode_id, "target": target}
        if expected is not None:
            params["expected"] = expected
        if allowed is not None:
            params["allowed"] = allowed
        event = {
            "episode_id": episode_id,
            "stage": target,
            "status": "completed",
            "duration_seconds": duration_seconds,
        }
        if one_statement:
            move: Executable = q.move_and_log(**shape)
            params["duration"] = duration_seconds
        else:
            move = q.set_stage(**shape)

        attempts = 0

        def work(conn: Connection) -> Episode:
            nonlocal attempts
            attempts += 1
            row = conn.execute(move, params).mappings().first()
            if row is None:
                stage = conn.execute(q.stage_of(episode_id)).scalar()
                if stage is None:
                    raise NotFoundError.episode(episode_id)
                if attempts > 1 and stage == target:
                    # Our earlier attempt's COMMIT landed before its connection was lost.
                    return Episode.model_validate(
                        conn.execute(q.by_id(episode_id)).mappings().one()
                    )
                if expected is not None and stage != expected:
                    raise ConflictError(
                        f"episode {episode_id!r} is at stage {stage!r}, not {expected!r}",
                        episode_id=episode_id,
                        current=stage,
                    )
                raise _backwards(stage, target)
            if not one_statement:
                conn.execute(hq.insert_event(), event)
            return Episode.model_validate(row)

        return await self._db.run_sync(work, autocommit=one_statement)

    async def save(self, episode_id: str, metadata: Mapping[str, Any]) -> Episode:
        """Replace the episode's metadata; what is saved is exactly what is read back.

        Raises:
            NotFoundError: no such episode.
            InvalidInputError: not a JSON object, not serialisable, or too large.
        """
        document = self._check_metadata(metadata)
        return await self._write_metadata(episode_id, lambda _current: document)

    async def patch_metadata(self, episode_id: str, patch: Mapping[str, Any]) -> Episode:
        """Apply a JSON merge patch (RFC 7396) to the episode's metadata.

        Raises:
            NotFoundError: no such episode.
            InvalidInputError: the patch or its result is invalid or too large.
        """
        if not isinstance(patch, Mapping):
            raise InvalidInputError("the patch must be a JSON object", field="metadata")
        self._check_metadata(patch)

        def apply(current: dict[str, Any]) -> dict[str, Any]:
            merged = merge_patch(current, patch)
            return self._check_metadata(merged)

        return await self._write_metadata(episode_id, apply)

    async def update_source(
        self,
        episode_id: str,
        *,
        source_path: str,
        hash: str,
        file_size: int | None = None,
        last_modified: datetime | None = None,
    ) -> Episode:
        """Point the episode at a new or changed source file.

        Raises:
            NotFoundError: no such episode.
            ConflictError: another episode has this hash.
        """
        _check_text(source_path, "source_path")
        _check_text(hash, "hash")
        values = {
            "source_path": source_path,
            "hash": hash,
            "file_size": file_size,
            "last_modified": _aware(last_modified, "last_modified"),
        }

        async def work(conn: AsyncConnection) -> Episode:
            row = (await conn.execute(q.set_values(episode_id, values))).mappings().first()
            if row is None:
                raise NotFoundError.episode(episode_id)
            episode = Episode.model_validate(row)
            await upsert_index(
                conn, self._db.dialect, episode_id, source_path, file_size, episode.metadata
            )
            return episode

        return await self._db.transaction(work)

    async def rename(self, episode_id: str, new_id: str) -> Episode:
        """Change the episode's id; every child row follows (ON UPDATE CASCADE).

        Raises:
            NotFoundError: no such episode.
            ConflictError: ``new_id`` is taken.
        """
        _check_id(new_id, "new_id")

        async def work(conn: AsyncConnection) -> Episode:
            if new_id != episode_id and (await conn.execute(q.exists(new_id))).first():
                raise ConflictError(f"episode id {new_id!r} is taken", field="new_id")
            row = (await conn.execute(q.set_values(episode_id, {"id": new_id}))).mappings().first()
            if row is None:
                if (await conn.execute(q.exists(new_id))).first():
                    return await _reread(conn, new_id)  # an earlier attempt committed
                raise NotFoundError.episode(episode_id)
            return Episode.model_validate(row)

        return await self._db.transaction(work)

    async def delete(self, episode_id: str) -> None:
        """Delete the episode and everything hanging off it.

        Raises:
            NotFoundError: no such episode.
        """

        # Deleted by any attempt counts: a retry after a COMMIT that landed finds nothing.
        deleted = False
        async for attempt in self._db.retrying():
            async with attempt as conn:
                deleted = (await conn.execute(q.remove(episode_id))).first() is not None or deleted
        if not deleted:
            raise NotFoundError.episode(episode_id)

    async def stats(self, *, window: timedelta = STATS_WINDOW) -> EpisodeStats:
        """Totals by stage, and activity, failure rate and mean durations over ``window``."""
        since = datetime.now(UTC) - window
        async with self._db.read() as conn:
            by_stage = (await conn.execute(q.count_by_stage())).mappings().one()
            log = (await conn.execute(q.log_summary_since(since))).all()
        events, finished, failures = (sum(int(row[i]) for row in log) for i in (1, 2, 3))
        durations = {row[0]: row[4] for row in log}
        stages = {
            stage: StageStats(
                episodes=int(by_stage.get(stage, 0)),
                mean_duration_seconds=_float(durations.get(stage)),
            )
            for stage in STAGES
        }
        # The rate is over finished events: a start followed by its failure is one failure in one.
        return EpisodeStats(
            total=sum(int(n) for n in by_stage.values()),
            by_stage=stages,
            events_last_24h=int(events),
            failures_last_24h=int(failures),
            failure_rate_last_24h=int(failures) / int(finished) if finished else 0.0,
        )

    async def _write_metadata(self, episode_id: str, change: Any) -> Episode:
        async def work(conn: AsyncConnection) -> Episode:
            row = (await conn.execute(q.by_id(episode_id, for_update=True))).mappings().first()
            if row is None:
                raise NotFoundError.episode(episode_id)
            document = change(dict(row["metadata"]))
            updated = (await conn.execute(q.set_metadata(episode_id, document))).mappings().one()
            await upsert_index(
                conn, self._db.dialect, episode_id, row["source_path"], row["file_size"], document
            )
            return Episode.model_validate(updated)

        return await self._db.transaction(work)

    async def _fetch_one(
        self, query: Executable, params: Mapping[str, Any] | None = None
    ) -> RowMapping | None:
        """One row of a single-statement read: one round trip / one thread hop."""

        def work(conn: Connection) -> RowMapping | None:
            return conn.execute(query, params).mappings().first()

        return await self._db.run_sync(work, readonly=True, autocommit=True)

    async def _fetch_all(self, query: Executable) -> Sequence[RowMapping]:
        """The rows of a single-statement read."""

        def work(conn: Connection) -> Sequence[RowMapping]:
            return conn.execute(query).mappings().all()

        return await self._db.run_sync(work, readonly=True, autocommit=True)

    def _check_metadata(self, metadata: Any) -> dict[str, Any]:
        if not isinstance(metadata, Mapping):
            raise InvalidInputError("metadata must be a JSON object", field="metadata")
        try:
            text = _json.dumps(metadata)
            size = len(text.encode("utf-8"))  # lone surrogates fail here
        except (TypeError, ValueError, RecursionError) as error:
            raise InvalidInputError(
                f"metadata is not JSON-serialisable: {error}", field="metadata"
            ) from None
        if _JSON_NUL.search(text):
            # PostgreSQL's jsonb refuses \u0000 (SQLite stores it): refuse it on both.
            raise InvalidInputError("metadata must not contain NUL characters", field="metadata")
        if size > self._max_metadata_bytes:
            raise InvalidInputError(
                f"metadata is {size} bytes, over the {self._max_metadata_bytes}-byte limit",
                field="metadata",
            )
        # A copy that is exactly what will be stored (tuples become lists, keys strings).
        document: dict[str, Any] = _json.loads(text)
        return document


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: ``null`` deletes, objects merge, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _candidates(base: str) -> Any:
    yield base
    for n in count(2):
        yield f"{base}-{n}"


def _free_id(conn: Connection, base: str) -> str:
    """The first of ``base``, ``base-2``, ``base-3``... not taken, a batch at a time."""
    candidates = _candidates(base)
    while True:
        batch: list[str] = list(islice(candidates, ID_BATCH))
        taken = set(conn.execute(q.ids_taken(batch)).scalars())
        free = next((c for c in batch if c not in taken), None)
        if free is not None:
            return free


async def _reread(conn: AsyncConnection, episode_id: str) -> Episode:
    row = (await conn.execute(q.by_id(episode_id))).mappings().one()
    return Episode.model_validate(row)


def _check_text(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{field} must be a non-empty string", field=field)
    if "\x00" in value:
        raise InvalidInputError(f"{field} must not contain NUL characters", field=field)


def _check_id(value: Any, field: str) -> None:
    _check_text(value, field)
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInputError(f"{field} is longer than {MAX_ID_LENGTH} characters", field=field)


def _check_stage(stage: Any, field: str) -> None:
    if stage not in STAGES:
        raise InvalidInputError(
            f"{field}: unknown stage {stage!r}; stages are {', '.join(STAGES)}", field=field
        )


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise InvalidInputError(f"{field} must carry a timezone", field=field)
    return value


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
    return limit


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _backwards(current: str, target: str) -> InvalidInputError:
    return InvalidInputError(
        f"stage cannot go back from {current!r} to {target!r} without force", field="stage"
    )


def _encode_cursor(episode: Episode) -> str:
    raw = json.dumps([episode.updated_at.isoformat(), episode.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, episode_id = json.loads(raw)
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None or not isinstance(episode_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise InvalidInputError("cursor is not one this API returned", field="cursor") from None
    return moment.astimezone(UTC), episode_id
