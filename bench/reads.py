"""The read paths on a large generated database, one client, on both backends.

At ``scale=1`` (bench/_dataset.py): 100,000 episodes, 2,000,000 processing_log
rows over 90 days (about 22,000 in the last 24 h) and an index row per
episode. Through the library API, operations interleaved, 200 calls each per
round, three rounds with the backends alternating; p50 and p99 are medians
over the rounds (as in bench/write.py):

* ``get``: ``Episodes.get`` of a random id;
* ``page``: ``Episodes.list`` of one stage, 50 a page; every other call asks
  for the next page after the previous call of that stage;
* ``find``: ``Episodes.find_by_filename`` of a real file name in random case;
* ``search``: ``MetadataIndex.search`` of two words of one episode's title, so
  each query finds something and, as words follow the corpus's Zipf-like
  distribution, a few queries match thousands of episodes;
* ``stats``: ``Episodes.stats`` (totals by stage, the last 24 h's activity).

Targets (issue 3): p99 <= 20 ms for each on both backends, and no plan that
scans a whole large table. The statements behind each operation are captured
as the library sends them and explained with the arguments of the operation's
slowest call: EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL, where a Seq Scan of a
large table fails and index scans returning half of its rows are reported;
EXPLAIN QUERY PLAN on SQLite, where a SCAN without an index fails and a SCAN
of a whole index is reported.
"""

from __future__ import annotations

import gc
import os
import random
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from sqlalchemy import event

from bench._common import median, postgres_database, sqlite_database, table
from bench._dataset import SEED, generate, load_postgres, load_sqlite
from pipeline_db import Database, Episodes, MetadataIndex
from pipeline_db.migrations import upgrade
from pipeline_db.schema import STAGES

ITERATIONS = 200
REPEATS = 3
WARMUP = 20
PAGE = 50
TARGET_P99_MS = 20.0
LARGE_TABLES = ("episodes", "processing_log", "json_metadata_index")
#: Scans returning at least this share of a large table's rows read it (or an index) whole.
WHOLE = 0.5

Arguments = Callable[[random.Random, int], Any]
Operation = Callable[[Any], Awaitable[object]]


@dataclass
class Workload:
    """What the operations draw their arguments from (the same on both backends)."""

    ids: list[str]
    file_names: list[str]
    titles: list[list[str]]


@dataclass
class Verdict:
    """A check's outcome: PASS, FAIL or WARN (reported, not failed)."""

    label: str
    status: str
    value: str


def operations(db: Database, work: Workload) -> dict[str, tuple[Arguments, Operation]]:
    """Each operation: how it draws its argument, and the call."""
    episodes, index = Episodes(db), MetadataIndex(db)
    cursors: dict[str, str | None] = {}

    def page_args(rng: random.Random, i: int) -> tuple[str, str | None]:
        stage = STAGES[i % len(STAGES)]
        return stage, cursors.get(stage) if (i // len(STAGES)) % 2 else None

    async def page(args: tuple[str, str | None]) -> None:
        stage, cursor = args
        cursors[stage] = (
            await episodes.list(stages=[stage], cursor=cursor, limit=PAGE)
        ).next_cursor

    def find_args(rng: random.Random, i: int) -> str:
        name = rng.choice(work.file_names)
        return rng.choice((name, name.upper(), name.title()))

    def search_args(rng: random.Random, i: int) -> str:
        while len(words := sorted(set(rng.choice(work.titles)))) < 2:
            pass
        return " ".join(rng.sample(words, 2))

    async def stats(_: None) -> None:
        await episodes.stats()

    return {
        "get": (lambda rng, i: rng.choice(work.ids), episodes.get),
        "page": (page_args, page),
        "find": (find_args, episodes.find_by_filename),
        "search": (search_args, index.search),
        "stats": (lambda rng, i: None, stats),
    }


async def measure(
    db: Database, work: Workload, iterations: int, seed: int
) -> dict[str, list[tuple[float, Any]]]:
    """(seconds, argument) of each call, operations interleaved, after a warm-up."""
    rng = random.Random(seed)
    calls = operations(db, work)
    samples: dict[str, list[tuple[float, Any]]] = {name: [] for name in calls}
    for i in range(-WARMUP, iterations):
        for name, (arguments, operation) in calls.items():
            args = arguments(rng, i)
            started = time.perf_counter()
            await operation(args)
            if i >= 0:
                samples[name].append((time.perf_counter() - started, args))
    return samples


def percentile(latencies: list[float], fraction: float) -> float:
    """Latency percentile in milliseconds (nearest rank, as bench._common)."""
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000


async def statements_of(db: Database, work: Workload, name: str, args: Any) -> list[Any]:
    """The (statement, parameters) of the SELECTs one call sends, as sent."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.split(None, 1)[0].upper() in ("SELECT", "WITH"):
            statements.append((statement, parameters))

    engines = db.sync_engines
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        await operations(db, work)[name][1](args)
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    return statements


_SQL_TABLE = re.compile(r"\b(?:FROM|JOIN)\s+(\w+)(?:\s+AS\s+(\w+))?", re.IGNORECASE)
_PG_SCAN = re.compile(
    r"(?P<kind>Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan)(?: Backward)?"
    r"(?: using \S+)? on (?P<table>\w+).*actual time=\S+ rows=(?P<rows>\d+) loops=(?P<loops>\d+)"
)


async def explain_postgres(
    dsn: str, sizes: dict[str, int], statements: list[Any]
) -> tuple[list[str], list[str], list[str]]:
    """EXPLAIN (ANALYZE, BUFFERS) lines, full table scans, and scans reading most of a table."""
    lines, full, whole = [], [], []
    conn = await asyncpg.connect(dsn)
    try:
        for statement, parameters in statements:
            lines.append("  > " + " ".join(statement.split())[:150])
            read: dict[str, int] = {}  # rows each large table's scans return, summed
            for (line,) in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *parameters):
                lines.append("    " + line)
                scan = _PG_SCAN.search(line)
                if scan is None or scan["table"] not in sizes:
                    continue
                rows = int(scan["rows"]) * int(scan["loops"])
                if scan["kind"] == "Seq Scan":
                    full.append(f"Seq Scan on {scan['table']} ({rows:,} rows)")
                else:
                    read[scan["table"]] = read.get(scan["table"], 0) + rows
            whole += [
                f"index scans of {name} return {rows:,} of {sizes[name]:,} rows"
                for name, rows in read.items()
                if rows >= WHOLE * sizes[name]
            ]
    finally:
        await conn.close()
    return lines, full, whole


def explain_sqlite(path: str, statements: list[Any]) -> tuple[list[str], list[str], list[str]]:
    """EXPLAIN QUERY PLAN lines, scans without an index, and scans of a whole index."""
    lines, full, whole = [], [], []
    conn = sqlite3.connect(path)
    try:
        for statement, parameters in statements:
            lines.append("  > " + " ".join(statement.split())[:150])
            # The plan names a table by its alias: which names are large tables.
            large = {
                alias or name
                for name, alias in _SQL_TABLE.findall(statement)
                if name in LARGE_TABLES
            }
            depth = {0: 0}
            for node, parent, _, detail in conn.execute(
                f"EXPLAIN QUERY PLAN {statement}", parameters
            ):
                depth[node] = depth.get(parent, 0) + 1
                lines.append("  " + "  " * depth[node] + detail)
                words = detail.split()
                if words[0] == "SCAN" and words[1] in large:
                    (whole if "INDEX" in detail else full).append(detail)
    finally:
        conn.close()
    return lines, full, whole


async def run(
    scale: float = 1.0, iterations: int = ITERATIONS, repeats: int = REPEATS
) -> dict[str, Any]:
    """Generate, load, measure and explain; print and return the figures."""
    started = time.perf_counter()
    gc.disable()  # millions of new objects: the collector would add half again
    try:
        data = generate(scale)
    finally:
        gc.enable()
    sizes = data.sizes
    recent = sum(row[5] >= data.generated_at - timedelta(days=1) for row in data.log)
    print(
        f"\n== reads: {sizes['episodes']:,} episodes, {sizes['processing_log']:,} "
        f"processing_log rows ({recent:,} in the last 24 h), "
        f"{sizes['json_metadata_index']:,} index rows; one client =="
    )
    print(f"generated in {time.perf_counter() - started:.1f} s")
    work = Workload([e["id"] for e in data.episodes], data.file_names, data.titles)
    async with postgres_database() as (pg_config, dsn):
        with sqlite_database() as lite_config:
            path = str(lite_config.path)
            for config in (pg_config, lite_config):  # one at a time: Alembic is process-global
                async with Database(config) as db:
                    await upgrade(db)
            loads = {
                "postgresql": await load_postgres(dsn, data),
                "sqlite": load_sqlite(path, data),
            }
            for backend, times in loads.items():
                steps = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in times.items())
                print(f"load {backend}: {steps}")
            del data
            gc.collect()
            gc.freeze()  # the workload's lists are kept for good: out of the collector's way
            try:
                async with Database(pg_config) as pg, Database(lite_config) as lite:
                    dbs = {"postgresql": pg, "sqlite": lite}
                    runs: dict[tuple[str, str], list[list[tuple[float, Any]]]] = {}
                    for repeat in range(repeats):  # backends alternate: noise falls on both
                        for backend, db in dbs.items():
                            measured = await measure(db, work, iterations, SEED + repeat)
                            for name, samples in measured.items():
                                runs.setdefault((backend, name), []).append(samples)
                    figures, rows, verdicts = _figures(runs)
                    # The machine's other work shows in the tails: say how busy it was.
                    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
                    print(f"measured with load average {load} on {os.cpu_count()} CPUs")
                    print(
                        table(rows, ["backend", "operation", "calls", "p50 ms", "p99 ms", "max ms"])
                    )
                    for (backend, name), repeated in runs.items():
                        slowest = max((s for r in repeated for s in r), key=lambda s: s[0])[1]
                        statements = await statements_of(dbs[backend], work, name, slowest)
                        if backend == "postgresql":
                            lines, full, whole = await explain_postgres(dsn, sizes, statements)
                        else:
                            lines, full, whole = explain_sqlite(path, statements)
                        print(f"-- {backend} {name}({slowest!r}), its slowest call:")
                        print("\n".join(lines))
                        verdicts.append(
                            Verdict(
                                f"{backend} {name}: no full scan of a large table",
                                "FAIL" if full else "PASS",
                                "; ".join(full) or "none",
                            )
                        )
                        verdicts += [
                            Verdict(f"{backend} {name}: reads a whole index", "WARN", note)
                            for note in whole
                        ]
            finally:
                gc.unfreeze()
    for verdict in verdicts:
        print(f"  [{verdict.status}] {verdict.label}: {verdict.value}")
    figures["verdicts"] = verdicts
    return figures


def _figures(
    runs: dict[tuple[str, str], list[list[tuple[float, Any]]]],
) -> tuple[dict[str, Any], list[list[str]], list[Verdict]]:
    """Per operation: medians over repeats of p50 and p99, the overall max; the p99 checks."""
    figures: dict[str, Any] = {}
    rows, verdicts = [], []
    for (backend, name), repeated in runs.items():
        latencies = [[seconds for seconds, _ in samples] for samples in repeated]
        p50 = median([percentile(run, 0.5) for run in latencies])
        p99 = median([percentile(run, 0.99) for run in latencies])
        worst = max(max(run) for run in latencies) * 1000
        calls = sum(len(run) for run in latencies)
        figures[f"{backend} {name}"] = {"p50_ms": p50, "p99_ms": p99, "max_ms": worst}
        rows.append([backend, name, str(calls), f"{p50:.2f}", f"{p99:.2f}", f"{worst:.2f}"])
        verdicts.append(
            Verdict(
                f"{backend} {name} p99 <= {TARGET_P99_MS:.0f} ms",
                "PASS" if p99 <= TARGET_P99_MS else "FAIL",
                f"{p99:.2f} ms",
            )
        )
    return figures, rows, verdicts
