"""Legacy ``pipeline.db`` files of schema_version 1 to 5, and dirty data with known answers.

The SQL below is the pipeline's schema as it grew, version by version, written
for these tests: v1 episodes and processing_log; v2 adds processing_metrics and
episode_dependencies (and ``episodes.last_modified``); v3 the metadata index
and its FTS5 table; v4 clips, clip_assets and backup_log; v5 a schema_version
table, more indexes and WAL. ``social_jobs`` was created outside the
migrations, with a foreign key to ``episodes.episode_id``, which never existed.

:func:`fill` writes rows the way the legacy pipeline did (JSON as text, 0/1
booleans, timestamps in both spellings in the same columns, AUTOINCREMENT
counters ahead of the largest id) plus dirty rows (NaN in JSON, NUL
characters, JSON that is not JSON, orphans), and returns, for each row, the
typed values the target must hold and the problems it has, so a test can tell
which rows each ``--on-error`` policy keeps and with which values.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

VERSIONS = (1, 2, 3, 4, 5)

V1 = [
    """CREATE TABLE episodes (
        id TEXT PRIMARY KEY,
        hash TEXT UNIQUE NOT NULL,
        stage TEXT NOT NULL DEFAULT 'discovered',
        source_path TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        errors TEXT,
        file_size INTEGER,
        duration_seconds REAL,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE processing_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        episode_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        status TEXT NOT NULL,
        duration_seconds REAL,
        error_message TEXT,
        timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        FOREIGN KEY (episode_id) REFERENCES episodes (id)
    )""",
    "CREATE INDEX idx_episodes_stage ON episodes (stage)",
    "CREATE INDEX idx_processing_log_episode ON processing_log (episode_id)",
]
V2 = [
    "ALTER TABLE episodes ADD COLUMN last_modified TIMESTAMP",
    """CREATE TABLE processing_metrics (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        episode_id TEXT NOT NULL REFERENCES episodes (id),
        stage TEXT NOT NULL,
        metric_name TEXT NOT NULL,
        metric_value REAL NOT NULL,
        timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE episode_dependencies (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        episode_id TEXT NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        depends_on_episode_id TEXT NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        dependency_type TEXT NOT NULL DEFAULT 'requires',
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        UNIQUE (episode_id, depends_on_episode_id, dependency_type)
    )""",
    "CREATE INDEX idx_metrics_episode_stage ON processing_metrics (episode_id, stage)",
]
V3 = [
    """CREATE TABLE json_metadata_index (
        episode_id TEXT PRIMARY KEY REFERENCES episodes (id),
        file_path TEXT,
        file_size INTEGER,
        last_updated TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        show_name TEXT,
        title TEXT,
        summary TEXT,
        transcript_text TEXT,
        date TEXT,
        duration_seconds REAL,
        guest_names TEXT,
        topics TEXT,
        has_transcript BOOLEAN DEFAULT 0,
        has_enrichment BOOLEAN DEFAULT 0,
        has_editorial BOOLEAN DEFAULT 0
    )""",
    """CREATE VIRTUAL TABLE json_metadata_fts USING fts5(
        title, summary, transcript_text, topics, guest_names,
        content='json_metadata_index', content_rowid='rowid'
    )""",
    "CREATE INDEX idx_metadata_show ON json_metadata_index (show_name)",
]
V4 = [
    """CREATE TABLE clips (
        id TEXT PRIMARY KEY,
        episode_id TEXT NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        score REAL,
        title TEXT,
        caption TEXT,
        hashtags TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    """CREATE TABLE clip_assets (
        id TEXT PRIMARY KEY,
        clip_id TEXT NOT NULL REFERENCES clips (id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        variant TEXT NOT NULL,
        aspect_ratio TEXT NOT NULL,
        size_bytes INTEGER,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        UNIQUE (clip_id, variant, aspect_ratio)
    )""",
    """CREATE TABLE backup_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        backup_path TEXT NOT NULL,
        backup_size INTEGER,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        restored_at TIMESTAMP
    )""",
    "CREATE INDEX idx_clips_episode ON clips (episode_id)",
]
V5 = [
    """CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    "INSERT INTO schema_version (version) VALUES (1), (2), (3), (4), (5)",
    "CREATE INDEX idx_episodes_updated ON episodes (updated_at)",
    "CREATE INDEX idx_processing_log_timestamp ON processing_log (timestamp)",
    "CREATE INDEX idx_processing_log_stage_status ON processing_log (stage, status)",
    "CREATE INDEX idx_clips_status ON clips (status)",
    "CREATE INDEX idx_clips_score ON clips (score)",
]
SCHEMA = {1: V1, 2: V2, 3: V3, 4: V4, 5: V5}

#: Created by the social module itself, outside the migrations; its foreign key
#: names a column episodes never had.
SOCIAL_JOBS = """CREATE TABLE IF NOT EXISTS social_jobs (
    job_id TEXT PRIMARY KEY,
    episode_id TEXT NOT NULL,
    platforms TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    progress REAL NOT NULL DEFAULT 0,
    packages_generated TEXT,
    errors TEXT,
    warnings TEXT,
    metadata TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    FOREIGN KEY (episode_id) REFERENCES episodes (episode_id)
)"""

STAGES = ("discovered", "prepped", "transcribed", "enriched", "rendered", "clips_discovered")
GONE = "ep-gone"  # an episode deleted long ago, with FKs off: its rows are orphans


def tables_of(version: int, *, social_jobs: bool = True) -> list[str]:
    """The data tables a legacy file of this version holds."""
    names = ["episodes", "processing_log"]
    if version >= 2:
        names += ["processing_metrics", "episode_dependencies"]
    if version >= 3:
        names += ["json_metadata_index"]
    if version >= 4:
        names += ["clips", "clip_assets", "backup_log"]
    if social_jobs and version >= 3:
        names += ["social_jobs"]
    return names


def create(path: Path, version: int, *, social_jobs: bool = True, broken_fts: bool = True) -> None:
    """Create an empty legacy file of ``version`` (applying v1..version in turn)."""
    conn = sqlite3.connect(path)
    try:
        for v in range(1, version + 1):
            for statement in SCHEMA[v]:
                conn.execute(statement)
        if social_jobs and version >= 3:
            conn.execute(SOCIAL_JOBS)
        conn.commit()
        if version >= 5:
            conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def break_fts(path: Path) -> None:
    """Leave the FTS5 table unqueryable (a shadow table lost, as a crashed tool once did)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TABLE json_metadata_fts_config")
        conn.commit()
    finally:
        conn.close()


@dataclass
class Row:
    """One generated row.

    Attributes:
        raw: the values as the legacy pipeline stored them.
        typed: the values pipeline-db must hold (repairs applied).
        problems: (column, fixable) for every dirty value.
        parents: (table, key) of the rows it needs.
    """

    raw: dict[str, Any]
    typed: dict[str, Any]
    problems: list[tuple[str, bool]] = field(default_factory=list)
    parents: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class LegacyData:
    """What :func:`fill` wrote: rows per table (key -> row), counters, spellings."""

    rows: dict[str, dict[Any, Row]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    utc_spellings: int = 0
    local_spellings: int = 0

    def expected(self, policy: str) -> dict[str, dict[Any, dict[str, Any]]]:
        """The rows the target must hold under ``policy`` (skip or repair), with their values."""
        kept: dict[str, dict[Any, dict[str, Any]]] = {}
        for table in ORDER:
            if table not in self.rows:
                continue
            kept[table] = {}
            for key, row in self.rows[table].items():
                if any(parent_key not in kept.get(t, {}) for t, parent_key in row.parents):
                    continue
                if row.problems and (policy == "skip" or not all(f for _, f in row.problems)):
                    continue
                kept[table][key] = row.typed
        return kept

    def dirty(self, policy: str) -> dict[str, set[Any]]:
        """Keys of the rows the report must list under ``policy``, by table."""
        expected = self.expected(policy)
        return {
            table: {k for k, row in rows.items() if row.problems or k not in expected[table]}
            for table, rows in self.rows.items()
        }


ORDER = [
    "backup_log",
    "episodes",
    "clips",
    "episode_dependencies",
    "json_metadata_index",
    "processing_log",
    "processing_metrics",
    "social_jobs",
    "clip_assets",
]


class _Clock:
    """Timestamps in both legacy spellings, remembering the exact UTC value of each."""

    def __init__(self, rng: random.Random, zone: tzinfo, data: LegacyData) -> None:
        self.rng = rng
        self.zone = zone
        self.data = data
        self.base = datetime(2023, 1, 1, tzinfo=UTC)

    def stamp(self) -> tuple[str, datetime]:
        while True:
            seconds = self.rng.randrange(0, 2 * 365 * 86400)
            micro = self.rng.choice([0, self.rng.randrange(1, 1_000_000)])
            moment = self.base + timedelta(seconds=seconds, microseconds=micro)
            local = moment.astimezone(self.zone).replace(tzinfo=None)
            aware = local.replace(tzinfo=self.zone)
            if aware.replace(fold=1).utcoffset() == aware.utcoffset():
                break  # not in a repeated DST hour, where local time is ambiguous
        if self.rng.random() < 0.5:
            # SQLite's CURRENT_TIMESTAMP: UTC, whole seconds.
            self.data.utc_spellings += 1
            moment = moment.replace(microsecond=0)
            return moment.strftime("%Y-%m-%d %H:%M:%S"), moment
        # Python's datetime.now().isoformat(): local, naive, microseconds unless zero.
        self.data.local_spellings += 1
        return local.isoformat(), moment


def fill(
    path: Path,
    version: int,
    zone: tzinfo,
    *,
    episodes: int = 30,
    logs_per_episode: int = 8,
    social_jobs: bool = True,
    dirty: bool = True,
    seed: int = 6,
) -> LegacyData:
    """Write rows into a legacy file of ``version``; return what the target must hold."""
    rng = random.Random(seed)
    data = LegacyData()
    clock = _Clock(rng, zone, data)
    tables = tables_of(version, social_jobs=social_jobs)
    conn = sqlite3.connect(path)
    try:
        episode_ids = _episodes(conn, rng, clock, data, version, episodes, dirty)
        _logs(conn, rng, clock, data, episode_ids, logs_per_episode, dirty)
        if "processing_metrics" in tables:
            _metrics(conn, rng, clock, data, episode_ids, dirty)
            _dependencies(conn, clock, data, episode_ids, dirty)
        if "json_metadata_index" in tables:
            _index(conn, rng, clock, data, episode_ids, dirty)
        if "clips" in tables:
            _clips(conn, rng, clock, data, episode_ids, dirty)
            _backups(conn, rng, clock, data)
        if "social_jobs" in tables:
            _social(conn, rng, clock, data, episode_ids, dirty)
        conn.commit()
        for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence"):
            data.counters[name] = seq
    finally:
        conn.close()
    return data


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    conn.executemany(sql, [tuple(r[c] for c in columns) for r in rows])


def _add(data: LegacyData, table: str, key: str, rows: list[Row]) -> None:
    data.keys[table] = key
    data.rows.setdefault(table, {}).update({row.raw[key]: row for row in rows})


def _float(rng: random.Random) -> float:
    # Full double precision: float4 (pgloader's REAL) would change nearly every one.
    return rng.uniform(0, 5000) + rng.random() * 1e-9


def _episodes(
    conn: sqlite3.Connection,
    rng: random.Random,
    clock: _Clock,
    data: LegacyData,
    version: int,
    count: int,
    dirty: bool,
) -> list[str]:
    rows = []
    for n in range(count):
        created, created_t = clock.stamp()
        updated, updated_t = clock.stamp()
        metadata = {
            "title": f"Episode {n} — café ☕",
            "tags": [f"t{n % 5}", "ünïcode"],
            "nested": {"score": rng.random(), "count": n, "flag": n % 2 == 0, "none": None},
        }
        raw = {
            "id": f"ep{n:04d}",
            "hash": f"h{n:04d}",
            "stage": STAGES[n % len(STAGES)],
            "source_path": f"/videos/show/ep{n:04d}.mp4",
            # Legacy JSON text: spaces after separators, key order as written.
            "metadata": json.dumps(metadata, ensure_ascii=n % 2 == 0),
            "errors": None if n % 3 else f"stage {n} failed: timeout",
            "file_size": rng.randrange(10**6, 2**40),
            "duration_seconds": _float(rng),
            "created_at": created,
            "updated_at": updated,
        }
        typed = {
            **raw,
            "metadata": metadata,
            "created_at": created_t,
            "updated_at": updated_t,
        }
        if version >= 2:
            raw["last_modified"], typed["last_modified"] = clock.stamp()
        else:
            typed["last_modified"] = None
        rows.append(Row(raw, typed))
    if dirty:
        rows.extend(_dirty_episodes(clock, version))
    _insert(conn, "episodes", [r.raw for r in rows])
    _add(data, "episodes", "id", rows)
    return [r.raw["id"] for r in rows]


def _dirty_episodes(clock: _Clock, version: int) -> list[Row]:
    rows = []
    for n, (key, metadata_text, metadata, errors, problems) in enumerate(
        [
            (
                "ep-nan",
                '{"loudness": NaN, "peak": -Infinity, "ok": 1}',
                {"loudness": None, "peak": None, "ok": 1},
                None,
                [("metadata", True)],
            ),
            ("ep-nul", '{"a": "b"}', {"a": "b"}, "decoder\x00error", [("errors", True)]),
            ("ep-badjson", "{'python': 'repr'}", None, None, [("metadata", False)]),
        ]
    ):
        created, created_t = clock.stamp()
        updated, updated_t = clock.stamp()
        raw = {
            "id": key,
            "hash": f"dirty{n}",
            "stage": "discovered",
            "source_path": f"/videos/{key}.mp4",
            "metadata": metadata_text,
            "errors": errors,
            "file_size": None,
            "duration_seconds": None,
            "created_at": created,
            "updated_at": updated,
        }
        typed = {
            **raw,
            "metadata": metadata,
            "errors": errors.replace("\x00", "") if errors else None,
            "created_at": created_t,
            "updated_at": updated_t,
            "last_modified": None,
        }
        if version >= 2:
            raw["last_modified"] = None
        rows.append(Row(raw, typed, problems))
    return rows


def _logs(
    conn: sqlite3.Connection,
    rng: random.Random,
    clock: _Clock,
    data: LegacyData,
    episode_ids: list[str],
    per_episode: int,
    dirty: bool,
) -> None:
    rows = []
    next_id = 1
    for episode in episode_ids:
        for i in range(per_episode):
            stamp, stamp_t = clock.stamp()
            message = None if i % 4 else f"attempt {i} failed"
            raw = {
                "id": next_id,
                "episode_id": episode,
                "stage": STAGES[i % len(STAGES)],
                "status": "completed" if i % 4 else "failed",
                "duration_seconds": _float(rng),
                "error_message": message,
                "timestamp": stamp,
            }
            rows.append(Row(raw, {**raw, "timestamp": stamp_t}, parents=[("episodes", episode)]))
            next_id += 1
    if dirty:
        stamp, stamp_t = clock.stamp()
        orphan = {
            "id": next_id,
            "episode_id": GONE,
            "stage": "prepped",
            "status": "completed",
            "duration_seconds": 1.5,
            "error_message": None,
            "timestamp": stamp,
        }
        rows.append(Row(orphan, {**orphan, "timestamp": stamp_t}, parents=[("episodes", GONE)]))
        nul = {
            **orphan,
            "id": next_id + 1,
            "episode_id": episode_ids[0],
            "error_message": "ffmpeg\x00",
            "timestamp": None,
        }
        nul["timestamp"], stamp_t = clock.stamp()
        rows.append(
            Row(
                nul,
                {**nul, "timestamp": stamp_t, "error_message": "ffmpeg"},
                [("error_message", True)],
                [("episodes", episode_ids[0])],
            )
        )
        next_id += 2
    # Three more rows, deleted again: the AUTOINCREMENT counter stays ahead of max(id).
    extra = [{**rows[0].raw, "id": next_id + i, "timestamp": None} for i in range(3)]
    _insert(conn, "processing_log", [r.raw for r in rows] + extra)
    conn.execute("DELETE FROM processing_log WHERE id >= ?", (next_id,))
    _add(data, "processing_log", "id", rows)


def _metrics(
    conn: sqlite3.Connection,
    rng: random.Random,
    clock: _Clock,
    data: LegacyData,
    episode_ids: list[str],
    dirty: bool,
) -> None:
    rows = []
    for n, episode in enumerate(episode_ids):
        for name in ("fps", "bitrate", "loudness"):
            stamp, stamp_t = clock.stamp()
            raw = {
                "id": len(rows) + 1,
                "episode_id": episode,
                "stage": STAGES[n % len(STAGES)],
                "metric_name": name,
                "metric_value": rng.uniform(-100, 100) / 3,
                "timestamp": stamp,
            }
            rows.append(Row(raw, {**raw, "timestamp": stamp_t}, parents=[("episodes", episode)]))
    if dirty:
        stamp, stamp_t = clock.stamp()
        raw = {
            **rows[0].raw,
            "id": len(rows) + 1,
            "episode_id": GONE,
            "metric_value": math.pi,
            "timestamp": stamp,
        }
        rows.append(Row(raw, {**raw, "timestamp": stamp_t}, parents=[("episodes", GONE)]))
    _insert(conn, "processing_metrics", [r.raw for r in rows])
    _add(data, "processing_metrics", "id", rows)


def _dependencies(
    conn: sqlite3.Connection, clock: _Clock, data: LegacyData, episode_ids: list[str], dirty: bool
) -> None:
    rows = []
    pairs = [(episode_ids[i], episode_ids[i - 1]) for i in range(1, min(len(episode_ids), 12))]
    if dirty:
        pairs.append((episode_ids[1], GONE))
    for n, (episode, depends_on) in enumerate(pairs):
        stamp, stamp_t = clock.stamp()
        raw = {
            "id": n + 1,
            "episode_id": episode,
            "depends_on_episode_id": depends_on,
            "dependency_type": "requires" if n % 2 else "prefers",
            "created_at": stamp,
        }
        parents = [("episodes", episode), ("episodes", depends_on)]
        rows.append(Row(raw, {**raw, "created_at": stamp_t}, parents=parents))
    _insert(conn, "episode_dependencies", [r.raw for r in rows])
    _add(data, "episode_dependencies", "id", rows)


def _index(
    conn: sqlite3.Connection,
    rng: random.Random,
    clock: _Clock,
    data: LegacyData,
    episode_ids: list[str],
    dirty: bool,
) -> None:
    rows = []
    for n, episode in enumerate(episode_ids):
        stamp, stamp_t = clock.stamp()
        guests = [f"Guest {n}", "Zoë"]
        topics = ["gardening", f"topic {n % 4}"]
        raw = {
            "episode_id": episode,
            "file_path": f"/videos/show/{episode}.mp4",
            "file_size": rng.randrange(10**6, 10**9),
            "last_updated": stamp,
            "show_name": f"Show {n % 3}",
            "title": f"Title of {episode}",
            "summary": "A summary with words about compost and tomatoes.",
            "transcript_text": "Hello and welcome. " * (1 + n % 5),
            "date": (date(2024, 1, 1) + timedelta(days=n)).isoformat(),
            "duration_seconds": _float(rng),
            "guest_names": json.dumps(guests),
            "topics": json.dumps(topics),
            "has_transcript": n % 2,
            "has_enrichment": (n + 1) % 2,
            "has_editorial": 1 if n % 3 == 0 else 0,
        }
        typed = {
            **raw,
            "last_updated": stamp_t,
            "date": date.fromisoformat(raw["date"]),
            "guest_names": guests,
            "topics": topics,
            "has_transcript": bool(raw["has_transcript"]),
            "has_enrichment": bool(raw["has_enrichment"]),
            "has_editorial": bool(raw["has_editorial"]),
        }
        problems = []
        if dirty and episode == "ep-nan":
            raw["topics"] = '["loud", NaN]'
            typed["topics"] = ["loud", None]
            problems.append(("topics", True))
        rows.append(Row(raw, typed, problems, [("episodes", episode)]))
    _insert(conn, "json_metadata_index", [r.raw for r in rows])
    _add(data, "json_metadata_index", "episode_id", rows)


def _clips(
    conn: sqlite3.Connection,
    rng: random.Random,
    clock: _Clock,
    data: LegacyData,
    episode_ids: list[str],
    dirty: bool,
) -> None:
    clips, assets = [], []
    owners = [(e, f"clip-{e}") for e in episode_ids[:10]]
    if dirty:
        owners += [(GONE, "clip-orphan"), ("ep-nan", "clip-of-nan")]
    for n, (episode, clip_id) in enumerate(owners):
        stamp, stamp_t = clock.stamp()
        start = rng.randrange(0, 10**6)
        hashtags = ["#garden", f"#n{n}"]
        raw = {
            "id": clip_id,
            "episode_id": episode,
            "start_ms": start,
            "end_ms": start + 30_000,
            "duration_ms": 30_000,
            "score": rng.random(),
            "title": f"Clip {n}",
            "caption": None if n % 2 else "A caption",
            "hashtags": json.dumps(hashtags),
            "status": ("pending", "rendered", "failed")[n % 3],
            "created_at": stamp,
        }
        clips.append(
            Row(
                raw,
                {**raw, "hashtags": hashtags, "created_at": stamp_t},
                parents=[("episodes", episode)],
            )
        )
        for variant, ratio in (("clean", "9x16"), ("subtitled", "16x9")):
            a_stamp, a_stamp_t = clock.stamp()
            asset = {
                "id": f"{clip_id}-{variant}",
                "clip_id": clip_id,
                "path": f"/clips/{clip_id}/{variant}.mp4",
                "variant": variant,
                "aspect_ratio": ratio,
                "size_bytes": rng.randrange(1000, 10**8),
                "created_at": a_stamp,
            }
            assets.append(
                Row(asset, {**asset, "created_at": a_stamp_t}, parents=[("clips", clip_id)])
            )
    _insert(conn, "clips", [r.raw for r in clips])
    _insert(conn, "clip_assets", [r.raw for r in assets])
    _add(data, "clips", "id", clips)
    _add(data, "clip_assets", "id", assets)


def _backups(conn: sqlite3.Connection, rng: random.Random, clock: _Clock, data: LegacyData) -> None:
    rows = []
    for n in range(5):
        stamp, stamp_t = clock.stamp()
        restored, restored_t = clock.stamp() if n == 2 else (None, None)
        raw = {
            "id": n + 1,
            "backup_path": f"/backups/pipeline-{n}.db",
            "backup_size": rng.randrange(10**6, 10**9),
            "created_at": stamp,
            "restored_at": restored,
        }
        rows.append(
            Row(raw, {**raw, "created_at": stamp_t, "restored_at": restored_t, "checksum": None})
        )
    _insert(
        conn, "backup_log", [r.raw for r in rows] + [{**rows[0].raw, "id": 9, "created_at": None}]
    )
    conn.execute("DELETE FROM backup_log WHERE id = 9")  # the counter stays at 9
    _add(data, "backup_log", "id", rows)


def _social(
    conn: sqlite3.Connection,
    rng: random.Random,
    clock: _Clock,
    data: LegacyData,
    episode_ids: list[str],
    dirty: bool,
) -> None:
    rows = []
    owners = episode_ids[:6] + ([GONE] if dirty else [])
    for n, episode in enumerate(owners):
        created, created_t = clock.stamp()
        updated, updated_t = clock.stamp()
        platforms = ["youtube", "tiktok"][: 1 + n % 2]
        meta: dict[str, Any] = {"campaign": f"c{n}", "ratio": rng.random()}
        raw = {
            "job_id": f"job-{n:03d}",
            "episode_id": episode,
            "platforms": json.dumps(platforms),
            "status": "completed" if n % 2 else "pending",
            "progress": n / 10,
            "packages_generated": json.dumps({"count": n}),
            "errors": json.dumps([]),
            "warnings": None,
            "metadata": json.dumps(meta),
            "created_at": created,
            "updated_at": updated,
            "completed_at": None,
        }
        typed = {
            **raw,
            "platforms": platforms,
            "packages_generated": {"count": n},
            "errors": [],
            "metadata": meta,
            "created_at": created_t,
            "updated_at": updated_t,
        }
        problems = []
        if dirty and n == 1:
            raw["metadata"] = '{"ratio": Infinity}'
            typed["metadata"] = {"ratio": None}
            problems.append(("metadata", True))
        rows.append(Row(raw, typed, problems, [("episodes", episode)]))
    _insert(conn, "social_jobs", [r.raw for r in rows])
    _add(data, "social_jobs", "job_id", rows)


def big_log(path: Path, rows: int, episode: str = "ep0000") -> None:
    """Append ``rows`` processing_log rows (the table to interrupt a migration in)."""
    conn = sqlite3.connect(path)
    try:
        start = conn.execute("SELECT coalesce(max(id), 0) FROM processing_log").fetchone()[0]
        conn.executemany(
            "INSERT INTO processing_log (id, episode_id, stage, status, duration_seconds, "
            "error_message, timestamp) VALUES (?, ?, 'prepped', 'completed', ?, NULL, ?)",
            (
                (start + i + 1, episode, i / 7, f"2024-02-{1 + i % 28:02d} 10:{i % 60:02d}:00")
                for i in range(rows)
            ),
        )
        conn.commit()
    finally:
        conn.close()
