"""A large generated pipeline database for the read benchmark, loaded fast.

Deterministic per seed (``random.Random``); sizes scale with ``scale``. The
texts are slices of one pool of synthetic words drawn from a Zipf-Mandelbrot
distribution, so a few words are common and most are rare, as in real text
once stop words are gone. Index rows are what the library derives from each
episode's metadata (:func:`pipeline_db.search.index_values`).
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from pipeline_db._stopwords import ENGLISH_STOP_WORDS
from pipeline_db.queries.search import rebuild_sqlite_fts
from pipeline_db.schema import SQLITE_TIMESTAMP_FORMAT, STAGES
from pipeline_db.search import index_values

SEED = 20240603
EPISODES = 100_000
LOG_ROWS = 2_000_000
#: Log timestamps are uniform over this many days: a 24 h window holds 1/90 of them.
DAYS = 90
VOCABULARY = 8_000
#: The q of Zipf-Mandelbrot, p(rank) ~ 1 / (rank + q): the head of English is
#: stop words, which neither engine indexes, so content words start flatter.
ZIPF_Q = 50
TOKEN_POOL = 1_000_000
SHOWS = 40
GUESTS = 2_000
TOPICS = 300
STAGE_WEIGHTS = (5, 5, 10, 15, 25, 40)
LOG_STATUSES = (("completed", 60), ("started", 35), ("failed", 5))
LOG_STAGES = ("registration", *STAGES)

COLUMNS = {
    "episodes": (
        "id",
        "hash",
        "stage",
        "source_path",
        "metadata",
        "file_size",
        "duration_seconds",
        "created_at",
        "updated_at",
    ),
    "processing_log": (
        "episode_id",
        "stage",
        "status",
        "duration_seconds",
        "error_message",
        "timestamp",
    ),
    "json_metadata_index": (
        "episode_id",
        "file_path",
        "file_size",
        "show_name",
        "title",
        "summary",
        "transcript_text",
        "date",
        "duration_seconds",
        "guest_names",
        "topics",
        "has_transcript",
        "has_enrichment",
        "has_editorial",
    ),
}
JSON_COLUMNS = frozenset({"metadata", "guest_names", "topics"})


@dataclass
class Dataset:
    """The generated rows (timestamps aware, JSON as Python values) and what to query."""

    episodes: list[dict[str, Any]]
    log: list[tuple[Any, ...]]
    index: list[dict[str, Any]]
    file_names: list[str] = field(default_factory=list)
    titles: list[list[str]] = field(default_factory=list)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def sizes(self) -> dict[str, int]:
        """Rows per table."""
        return {
            "episodes": len(self.episodes),
            "processing_log": len(self.log),
            "json_metadata_index": len(self.index),
        }


def _words(rng: random.Random, count: int) -> list[str]:
    onsets = "b c d f g h k l m n p r s t v z br st pl tr gr sh".split()
    vowels = "a e i o u ai ou ea".split()
    words: set[str] = set()
    while len(words) < count:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(2, 3)))
        if word not in ENGLISH_STOP_WORDS:
            words.add(word)
    ordered = sorted(words)
    rng.shuffle(ordered)  # the order is the frequency rank
    return ordered


def _names(rng: random.Random, count: int) -> list[str]:
    words = iter(_words(rng, 2 * count))
    return [f"{first.title()} {last.title()}" for first, last in zip(words, words, strict=True)]


def generate(scale: float = 1.0, seed: int = SEED) -> Dataset:
    """Episodes, their processing_log (in time order) and their index rows."""
    rng = random.Random(seed)
    n_episodes, n_log = max(100, round(EPISODES * scale)), max(2_000, round(LOG_ROWS * scale))
    vocabulary = _words(rng, VOCABULARY)
    weights = [1 / (rank + ZIPF_Q) for rank in range(1, VOCABULARY + 1)]
    pool = rng.choices(vocabulary, weights, k=TOKEN_POOL)
    shows, guests = _names(rng, SHOWS), _names(rng, GUESTS)
    topics = rng.sample(vocabulary[:2_000], TOPICS)
    data = Dataset([], [], [])
    start = data.generated_at - timedelta(days=DAYS)

    def text(low: int, high: int) -> list[str]:
        size = rng.randint(low, high)
        offset = rng.randrange(len(pool) - size)
        return pool[offset : offset + size]

    for n in range(n_episodes):
        show = rng.choice(shows)
        slug = show.lower().replace(" ", "-")
        created = start + timedelta(seconds=rng.uniform(0, DAYS * 86_400))
        day = (created - timedelta(days=rng.randint(0, 30))).date()
        name = f"{slug}-{day:%Y%m%d}-{n:06d}.{'MP4' if n % 10 == 0 else 'mp4'}"
        title = text(3, 7)
        document = {
            "show_name": show,
            "title": " ".join(title).capitalize(),
            "date": day.isoformat(),
            "duration_seconds": rng.uniform(600, 7_200),
            "summary": " ".join(text(15, 30)).capitalize() + ".",
            "transcript_text": " ".join(text(50, 100)) + ".",
            "guest_names": rng.sample(guests, rng.randint(0, 3)),
            "topics": rng.sample(topics, rng.randint(1, 4)),
        }
        episode = {
            "id": f"ep{n:06d}",
            "hash": f"{rng.getrandbits(128):032x}",
            "stage": rng.choices(STAGES, STAGE_WEIGHTS)[0],
            "source_path": f"/media/{slug}/{day.year}/{name}",
            "metadata": document,
            "file_size": rng.randrange(50_000_000, 4_000_000_000),
            "duration_seconds": document["duration_seconds"],
            "created_at": created,
            "updated_at": created + (data.generated_at - created) * rng.random(),
        }
        data.episodes.append(episode)
        data.index.append(
            index_values(episode["id"], episode["source_path"], episode["file_size"], document)
        )
        data.file_names.append(name)
        data.titles.append(title)

    statuses, status_weights = zip(*LOG_STATUSES, strict=True)
    ids = [episode["id"] for episode in data.episodes]
    epoch, span = start.timestamp(), DAYS * 86_400
    moments = sorted(rng.uniform(0, span) for _ in range(n_log))
    data.log = [  # in time order, as a log is appended
        (
            episode_id,
            stage,
            status,
            None if status == "started" else math.exp(rng.gauss(3, 1)),
            "worker timed out" if status == "failed" else None,
            datetime.fromtimestamp(epoch + moment, UTC),
        )
        for episode_id, stage, status, moment in zip(
            rng.choices(ids, k=n_log),
            rng.choices(LOG_STAGES, k=n_log),
            rng.choices(statuses, status_weights, k=n_log),
            moments,
            strict=True,
        )
    ]
    return data


def _postgres_rows(
    rows: list[dict[str, Any]], columns: tuple[str, ...]
) -> Iterator[tuple[Any, ...]]:
    # asyncpg's json/jsonb codec takes JSON text.
    for row in rows:
        yield tuple(
            json.dumps(row[c]) if c in JSON_COLUMNS and row[c] is not None else row[c]
            for c in columns
        )


# Plain indexes of a table (not those behind a primary key or unique constraint).
_PG_PLAIN_INDEXES = """
SELECT i.relname, pg_get_indexdef(i.oid)
FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid
WHERE x.indrelid = $1::regclass
  AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = x.indexrelid)
"""


async def load_postgres(dsn: str, data: Dataset) -> dict[str, float]:
    """COPY each table in, its plain indexes set aside and rebuilt after; VACUUM (ANALYZE).

    Returns seconds per step (a table's includes rebuilding its indexes).
    """
    sources = {
        "episodes": _postgres_rows(data.episodes, COLUMNS["episodes"]),
        "processing_log": iter(data.log),
        "json_metadata_index": _postgres_rows(data.index, COLUMNS["json_metadata_index"]),
    }
    times: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    try:
        # Rows are valid by construction: skip the per-row foreign-key triggers
        # (this connection's bulk-load setting; it needs a superuser).
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for name, rows in sources.items():
            started = time.perf_counter()
            # Built once from sorted input rather than grown row by row: faster.
            indexes = await conn.fetch(_PG_PLAIN_INDEXES, name)
            for index, _ in indexes:
                await conn.execute(f'DROP INDEX "{index}"')
            await conn.copy_records_to_table(name, records=rows, columns=list(COLUMNS[name]))
            for _, definition in indexes:
                await conn.execute(definition)
            times[name] = time.perf_counter() - started
        # VACUUM as well as ANALYZE: a fresh COPY leaves the visibility map empty,
        # which autovacuum fills on a live server (on inserts too, since PostgreSQL
        # 13), and index-only scans depend on it.
        started = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE)")
        times["vacuum analyze"] = time.perf_counter() - started
    finally:
        await conn.close()
    return times


def _sqlite_value(value: Any, column: str) -> Any:
    if value is None:
        return None
    if column in JSON_COLUMNS:
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(SQLITE_TIMESTAMP_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _sqlite_rows(data: Dataset, name: str) -> Iterator[tuple[Any, ...]]:
    if name == "processing_log":
        for row in data.log:
            yield (*row[:5], row[5].strftime(SQLITE_TIMESTAMP_FORMAT))
        return
    columns = COLUMNS[name]
    for row in data.episodes if name == "episodes" else data.index:
        yield tuple(_sqlite_value(row[c], c) for c in columns)


def load_sqlite(path: str, data: Dataset) -> dict[str, float]:
    """Insert each table's rows in a transaction, its indexes and triggers set aside
    and recreated after (the FTS5 table rebuilt from the index rows); ANALYZE.

    Returns seconds per step (a table's includes rebuilding its indexes).
    """
    times: dict[str, float] = {}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB while loading
        for name, columns in COLUMNS.items():
            started = time.perf_counter()
            conn.execute("BEGIN")
            aside = conn.execute(
                "SELECT type, name, sql FROM sqlite_master "
                "WHERE type IN ('index', 'trigger') AND tbl_name = ? AND sql IS NOT NULL",
                (name,),
            ).fetchall()
            for kind, item, _ in aside:
                conn.execute(f'DROP {kind} "{item}"')
            conn.executemany(
                f"INSERT INTO {name} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                _sqlite_rows(data, name),
            )
            for _, _, sql in aside:
                conn.execute(sql)
            if name == "json_metadata_index":
                conn.execute(str(rebuild_sqlite_fts()))
            conn.execute("COMMIT")
            times[name] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        times["analyze"] = time.perf_counter() - started
    finally:
        conn.close()
    return times
