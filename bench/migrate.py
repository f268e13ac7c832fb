"""`pipeline-db migrate` of a generated legacy pipeline.db to PostgreSQL, next to pgloader.

The legacy file (schema_version 5, the tests' schema SQL) holds 50,000
episodes with 20 processing_log rows each: 1,000,000 log rows and about
2,000,000 rows in all, with the metadata index's transcripts. Both tools load
it into fresh databases in the same run, one after the other, twice:

* ``pipeline-db migrate`` (its default: worker processes, verification included);
* ``pgloader`` when installed, with ``prefetch rows = 10000``, REAL cast to
  double precision (through text: pgloader 3.6 prints doubles as ``1.5d0``
  otherwise) and the FTS5 tables excluded, or it crashes or changes values.

Printed: wall time, rows/s and the peak memory of the migrating process tree
(RSS summed over the processes, and PSS, which counts pages the forked
workers share with their parent once). Targets (issue 6): rows/s, verification
included, at least pgloader's; peak memory under 256 MB (pgloader: ~775 MB).
The rates compared are each tool's best round (both tools meet the same
machine in every round, one after the other, so the best is the least
disturbed one); the memory checked is the worst round's PSS.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import postgres_database, table
from tests.integration import _legacy

EPISODES = 50_000
LOGS_PER_EPISODE = 20
METRICS_PER_EPISODE = 12
ROUNDS = 2
CLI = str(Path(sys.executable).parent / "pipeline-db")
#: Peak PSS of the migrating process tree at most (issue 6).
MAX_PSS_MB = 256


@dataclass
class Run:
    """One tool's run."""

    tool: str
    seconds: float
    rows: int
    rss_kb: int
    pss_kb: int
    ok: bool

    @property
    def rate(self) -> float:
        """Rows per second."""
        return self.rows / self.seconds if self.seconds else 0.0


def generate(path: Path, episodes: int) -> int:
    """A legacy v5 pipeline.db of ``episodes`` episodes; returns its row count."""
    _legacy.create(path, 5)
    rng = random.Random(6)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")

    def stamp(i: int) -> str:  # both legacy spellings, alternating
        day = f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}"
        clock = f"{i % 24:02d}:{i % 60:02d}:{i * 7 % 60:02d}"
        return f"{day} {clock}" if i % 2 else f"{day}T{clock}.{i * 7919 % 1_000_000:06d}"

    stages = _legacy.STAGES
    ids = [f"ep{n:06d}" for n in range(episodes)]
    conn.executemany(
        "INSERT INTO episodes (id, hash, stage, source_path, metadata, errors, file_size, "
        "duration_seconds, created_at, updated_at, last_modified) "
        "VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
        (
            (
                e,
                f"h{n:06d}",
                stages[n % 6],
                f"/videos/show{n % 40}/{e}.mp4",
                json.dumps(
                    {
                        "title": f"Episode {n}",
                        "show": f"Show {n % 40}",
                        "enrichment": {
                            "summary": "words " * 40,
                            "guests": [{"name": f"Guest {n % 500}"}],
                            "topics": ["garden", f"topic {n % 9}"],
                        },
                        "probe": {"fps": 29.97, "bitrate": rng.randrange(10**6, 10**7)},
                    }
                ),
                rng.randrange(10**6, 2**34),
                rng.uniform(60, 7200),
                stamp(n),
                stamp(n + 1),
                stamp(n + 2),
            )
            for n, e in enumerate(ids)
        ),
    )
    conn.executemany(
        "INSERT INTO processing_log VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (
                n * LOGS_PER_EPISODE + k + 1,
                e,
                stages[k % 6],
                "completed" if k % 5 else "failed",
                rng.uniform(0, 600),
                None if k % 5 else "ffmpeg exited with status 1",
                stamp(n + k),
            )
            for n, e in enumerate(ids)
            for k in range(LOGS_PER_EPISODE)
        ),
    )
    conn.executemany(
        "INSERT INTO processing_metrics VALUES (?, ?, ?, ?, ?, ?)",
        (
            (
                n * METRICS_PER_EPISODE + k + 1,
                e,
                stages[k % 6],
                f"m{k}",
                rng.uniform(-1e3, 1e3),
                stamp(k),
            )
            for n, e in enumerate(ids)
            for k in range(METRICS_PER_EPISODE)
        ),
    )
    conn.executemany(
        "INSERT INTO episode_dependencies (episode_id, depends_on_episode_id, created_at) "
        "VALUES (?, ?, ?)",
        ((ids[n], ids[n - 1], stamp(n)) for n in range(1, episodes)),
    )
    conn.executemany(
        "INSERT INTO json_metadata_index VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                e,
                f"/videos/{e}.mp4",
                10**7 + n,
                stamp(n),
                f"Show {n % 40}",
                f"Episode {n}",
                "summary words " * 20,
                "transcript words and more words " * 60,
                f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}",
                rng.uniform(60, 7200),
                json.dumps([f"Guest {n % 500}"]),
                json.dumps(["garden", "compost"]),
                n % 2,
                1,
                0,
            )
            for n, e in enumerate(ids)
        ),
    )
    conn.executemany(
        "INSERT INTO clips VALUES (?, ?, ?, ?, 30000, ?, ?, 'caption', '[\"#a\"]', 'pending', ?)",
        (
            (
                f"c{n:06d}-{k}",
                e,
                k * 60_000,
                k * 60_000 + 30_000,
                rng.random(),
                f"Clip {k}",
                stamp(n),
            )
            for n, e in enumerate(ids)
            for k in range(2)
        ),
    )
    conn.executemany(
        "INSERT INTO clip_assets VALUES (?, ?, ?, ?, '9x16', 1000000, ?)",
        (
            (f"c{n:06d}-{k}-{v}", f"c{n:06d}-{k}", f"/clips/{n}/{k}/{v}.mp4", v, stamp(n))
            for n in range(episodes)
            for k in range(2)
            for v in ("clean", "subtitled")
        ),
    )
    conn.commit()
    rows = sum(
        conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        for name in _legacy.tables_of(5, social_jobs=False)
    )
    conn.close()
    return rows


class _TreeMemory:
    """Samples the summed RSS and PSS of a process and its descendants."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss = self.pss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.is_set():
            rss = pss = 0
            for pid in self._tree():
                rss += _field(Path(f"/proc/{pid}/status"), "VmRSS:")
                pss += _field(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._done.wait(0.1)

    def _tree(self) -> list[int]:
        found, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            found.append(pid)
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            queue.extend(int(c) for c in children)
        return found


def _field(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def _timed(tool: str, rows: int, *command: str) -> Run:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    memory = _TreeMemory(process.pid)
    output, _ = await process.communicate()
    seconds = time.perf_counter() - started
    memory.stop()
    text = output.decode(errors="replace")
    ok = process.returncode == 0 and (tool != "pipeline-db" or "every table equal" in text)
    if not ok:
        print(text[-2000:])
    return Run(tool, seconds, rows, memory.rss, memory.pss, ok)


def _pgloader_script(source: Path, dsn: str) -> str:
    return (
        f"LOAD DATABASE FROM sqlite://{source} INTO {dsn}\n"
        " WITH include drop, create tables, create indexes, reset sequences,"
        " prefetch rows = 10000\n"
        ' CAST type real to "double precision" using float-to-string,'
        ' type float to "double precision" using float-to-string\n'
        " EXCLUDING TABLE NAMES LIKE 'json_metadata_fts%'\n;\n"
    )


async def run(scale: float = 1.0) -> None:
    """Generate the legacy file, then migrate it with each tool, ``ROUNDS`` times."""
    episodes = max(100, int(EPISODES * scale))
    with tempfile.TemporaryDirectory(prefix="pdbbench_migrate_") as folder:
        source = Path(folder) / "pipeline.db"
        started = time.perf_counter()
        rows = generate(source, episodes)
        took = time.perf_counter() - started
        print(
            f"\nmigrate: legacy pipeline.db of {episodes:,} episodes, {rows:,} rows, "
            f"{source.stat().st_size / 1e6:.0f} MB (generated in {took:.0f} s)"
        )
        pgloader = shutil.which("pgloader")
        runs: list[Run] = []
        for _ in range(ROUNDS):
            async with postgres_database() as (config, dsn):
                report = Path(folder) / "report.json"
                url = config.url.get_secret_value() if config.url else dsn
                runs.append(
                    await _timed(
                        "pipeline-db",
                        rows,
                        CLI,
                        "migrate",
                        str(source),
                        url,
                        "--report",
                        str(report),
                    )
                )
            if pgloader:
                async with postgres_database() as (_, dsn):
                    script = Path(folder) / "load.pgl"
                    script.write_text(_pgloader_script(source, dsn))
                    runs.append(await _timed("pgloader", rows, pgloader, str(script)))
        if not pgloader:
            print("pgloader is not installed (apt-get install pgloader): no comparison")
        print(
            table(
                [
                    [
                        r.tool,
                        f"{r.seconds:.1f}",
                        f"{r.rate:,.0f}",
                        f"{r.rss_kb / 1024:.0f}",
                        f"{r.pss_kb / 1024:.0f}",
                        "yes" if r.ok else "FAILED",
                    ]
                    for r in runs
                ],
                ["tool", "wall s", "rows/s", "peak RSS MB", "peak PSS MB", "ok"],
            )
        )
        _check(runs)


def _check(runs: list[Run]) -> None:
    """Print the issue's targets as PASS/FAIL lines."""
    ours = [r for r in runs if r.tool == "pipeline-db"]
    theirs = [r for r in runs if r.tool == "pgloader" and r.ok]
    checks = [
        ("every pipeline-db run verified equal", all(r.ok for r in ours), f"{len(ours)} runs")
    ]
    best = max(r.rate for r in ours)
    if theirs:
        rival = max(r.rate for r in theirs)
        checks.append(
            (
                "rows/s (best round, verification included) >= pgloader's best round",
                best >= rival,
                f"{best:,.0f} vs {rival:,.0f} ({best / rival:.2f}x)",
            )
        )
    peak = max(r.pss_kb for r in ours) / 1024
    checks.append((f"peak PSS < {MAX_PSS_MB} MB", peak < MAX_PSS_MB, f"{peak:.0f} MB"))
    for label, ok, value in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {value}")


if __name__ == "__main__":
    asyncio.run(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))
