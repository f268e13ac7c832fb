"""Reports: ``pipeline-db stats`` (what the database holds) and ``pipeline-db top`` (what it does).

:func:`stats` counts rows and sizes per table, episodes per stage, jobs per
status, and reads the pool. :func:`top` lists the slowest statements from
``pg_stat_statements`` (or the exact commands that enable it), the sessions
by application and state, and the sessions waiting on a lock beside the
session that blocks each one. On SQLite, which has no sessions to list, it
names the processes that have the file open and the one holding the write lock.

Both return dataclasses; :meth:`Stats.lines` and :meth:`Top.lines` render
what the commands print.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline_db import schema
from pipeline_db.backends import _sqlite_locks
from pipeline_db.database import Database, PoolStatus
from pipeline_db.jobs import JobQueue
from pipeline_db.queries import ops

STATEMENTS_SHOWN = 10
QUERY_CHARS = 160
PG_STAT_STATEMENTS = "pg_stat_statements"
_PASSWORD = re.compile(r"(?i)(password\s*=?\s*)'(?:[^']|'')*'")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class TableStats:
    """One table: its rows and its size in bytes with indexes (None: unknown)."""

    name: str
    rows: int
    bytes: int | None


@dataclass(frozen=True, slots=True)
class Stats:
    """What ``pipeline-db stats`` shows."""

    database: str
    tables: list[TableStats]
    database_bytes: int | None
    episodes_by_stage: dict[str, int]
    jobs_by_status: dict[str, int]
    pool: PoolStatus
    pool_limit: int

    def lines(self) -> list[str]:
        """The report as printed."""
        out = [self.database, "", f"{'table':<24} {'rows':>12} {'size':>10}"]
        out += [f"{t.name:<24} {t.rows:>12,} {_size(t.bytes):>10}" for t in self.tables]
        rows = sum(t.rows for t in self.tables)
        out.append(f"{'total':<24} {rows:>12,} {_size(self.database_bytes):>10}")
        out += ["", "episodes per stage"]
        out += [f"  {stage:<22} {n:>8,}" for stage, n in self.episodes_by_stage.items()]
        out += ["", "jobs per status"]
        out += [f"  {status:<22} {n:>8,}" for status, n in self.jobs_by_status.items()]
        pool = self.pool
        out += [
            "",
            f"pool (this process): {pool.checked_out} in use, {pool.checked_in} idle, "
            f"{max(pool.overflow, 0)} overflow, {pool.waiting} waiting; "
            f"at most {self.pool_limit} (pool_size + max_overflow)",
        ]
        return out


@dataclass(frozen=True, slots=True)
class SlowStatement:
    """A statement from pg_stat_statements (constants already replaced by $n)."""

    query: str
    calls: int
    mean_ms: float
    total_ms: float
    rows: int


@dataclass(frozen=True, slots=True)
class Connections:
    """Client sessions of one database, application and state."""

    database: str | None
    application: str
    state: str
    sessions: int
    longest_s: float | None


@dataclass(frozen=True, slots=True)
class LockWait:
    """A session waiting on a lock, and one session that blocks it."""

    pid: int
    application: str
    wait_event: str
    waiting_s: float | None
    query: str
    blocker_pid: int
    blocker_application: str | None
    blocker_state: str | None
    blocker_transaction_s: float | None
    blocker_query: str | None


@dataclass(frozen=True, slots=True)
class Top:
    """What ``pipeline-db top`` shows.

    Attributes:
        statements: slowest statements, or None when pg_stat_statements is not usable.
        statements_hint: why it is not, with the commands that enable it.
        connections: sessions by database, application and state (PostgreSQL).
        lock_waits: sessions waiting on a lock with their blockers (PostgreSQL).
        sqlite_processes: other processes with the SQLite file open (None: unknown).
        sqlite_writers: processes holding SQLite's write lock (None: unknown).
    """

    statements: list[SlowStatement] | None
    statements_hint: str | None
    connections: list[Connections]
    lock_waits: list[LockWait]
    sqlite_processes: list[int] | None = None
    sqlite_writers: list[int] | None = None

    def lines(self) -> list[str]:
        """The report as printed."""
        if self.sqlite_processes is not None or self.sqlite_writers is not None:
            return self._sqlite_lines()
        out = ["slowest statements (pg_stat_statements, by mean time)"]
        if self.statements is None:
            out += [f"  {line}" for line in (self.statements_hint or "").splitlines()]
        else:
            out.append(f"  {'mean ms':>10} {'calls':>9} {'total ms':>12} {'rows':>9}  query")
            out += [
                f"  {s.mean_ms:>10.2f} {s.calls:>9,} {s.total_ms:>12.0f} {s.rows:>9,}  {s.query}"
                for s in self.statements
            ]
        out += ["", "connections by application and state (besides this one)"]
        out += _columns(
            ["sessions", "database", "application", "state", "longest in state"],
            [
                [str(c.sessions), c.database or "-", c.application, c.state, _seconds(c.longest_s)]
                for c in self.connections
            ],
        )
        out += ["", "sessions waiting on locks"]
        if not self.lock_waits:
            out.append("  none")
        for w in self.lock_waits:
            out.append(
                f"  pid {w.pid} ({w.application}) has waited {_seconds(w.waiting_s)} on "
                f"{w.wait_event}: {w.query}"
            )
            out.append(
                f"    blocked by pid {w.blocker_pid} ({w.blocker_application or '?'}, "
                f"{w.blocker_state or '?'}, transaction open {_seconds(w.blocker_transaction_s)}): "
                f"{w.blocker_query or '?'}"
            )
            out.append(f"    to end that session: SELECT pg_terminate_backend({w.blocker_pid});")
        return out

    def _sqlite_lines(self) -> list[str]:
        out = ["slowest statements: SQLite keeps no statement statistics (PostgreSQL has them)"]
        if self.sqlite_processes is None:
            out.append("processes with the database open: unknown (needs Linux's /proc/locks)")
        else:
            found = ", ".join(map(str, self.sqlite_processes)) or "none besides this one"
            out.append(f"processes with the database open: {found}")
        if self.sqlite_writers is None:
            out.append("write lock: unknown (needs Linux's /proc/locks)")
        elif not self.sqlite_writers:
            out.append("write lock: free")
        else:
            pids = ", ".join(map(str, self.sqlite_writers))
            out.append(f"write lock: held by process {pids} (other writers wait for it)")
        return out


async def stats(db: Database) -> Stats:
    """Row counts and sizes per table, episodes per stage, jobs per status, the pool."""
    tables = schema.metadata.sorted_tables
    async with db.read() as conn:
        counts = [int((await conn.execute(ops.row_count(t))).scalar_one()) for t in tables]
        stages = {str(s): int(n) for s, n in (await conn.execute(ops.episodes_by_stage())).all()}
        postgresql = db.dialect == "postgresql"
        by_table = ops.table_sizes() if postgresql else ops.sqlite_table_sizes()
        sizes: dict[str, int] = {
            str(name): int(size) for name, size in (await conn.execute(by_table)).all()
        }
        whole = ops.database_size() if postgresql else ops.sqlite_size()
        total = int((await conn.execute(whole)).scalar_one())
    if db.dialect == "sqlite":
        total += await asyncio.to_thread(_file_size, Path(f"{_sqlite_file(db)}-wal"))
    jobs = await JobQueue(db).stats()
    return Stats(
        database=db.config.describe(),
        tables=[
            TableStats(t.name, n, sizes.get(t.name))
            for t, n in sorted(zip(tables, counts, strict=True), key=lambda p: p[0].name)
        ],
        database_bytes=total,
        episodes_by_stage={stage: int(stages.get(stage, 0)) for stage in schema.STAGES},
        jobs_by_status=jobs.by_status,
        pool=db.pool_status(),
        pool_limit=db.config.pool_size + db.config.max_overflow,
    )


async def top(db: Database, *, limit: int = STATEMENTS_SHOWN) -> Top:
    """The slowest statements, sessions by application and state, and lock waits.

    On SQLite: the processes with the file open and the one holding the write lock.
    """
    if db.dialect == "sqlite":
        path = _sqlite_file(db)
        others = await asyncio.to_thread(_sqlite_locks.processes_with_open, path)
        writers = await asyncio.to_thread(_sqlite_locks.write_lock_holders, path)
        return Top(
            statements=None,
            statements_hint=None,
            connections=[],
            lock_waits=[],
            sqlite_processes=sorted(others) if others is not None else None,
            sqlite_writers=writers,
        )
    statements, hint = await _statements(db, limit)
    async with db.read() as conn:
        groups = [Connections(*row) for row in (await conn.execute(ops.connections())).all()]
        waits = (await conn.execute(ops.lock_waits())).all()
    return Top(
        statements=statements,
        statements_hint=hint,
        connections=groups,
        lock_waits=[
            LockWait(
                pid=row[0],
                application=row[1],
                wait_event=row[2],
                waiting_s=row[3],
                query=_clean(row[4]),
                blocker_pid=row[5],
                blocker_application=row[6],
                blocker_state=row[7],
                blocker_transaction_s=row[8],
                blocker_query=_clean(row[9]) if row[9] is not None else None,
            )
            for row in waits
        ],
    )


async def _statements(db: Database, limit: int) -> tuple[list[SlowStatement] | None, str | None]:
    async with db.read() as conn:
        available, installed_in, preload = (await conn.execute(ops.statements_extension())).one()
        database = (await conn.execute(ops.current_database())).scalar_one()
    libraries = [name.strip().strip('"') for name in preload.split(",") if name.strip()]
    loaded = PG_STAT_STATEMENTS in libraries
    if not available:
        return None, (
            "pg_stat_statements is not installed on the server: install PostgreSQL's "
            "contrib modules (Debian: the postgresql-contrib package), then:\n"
            + _enable(libraries, loaded, database)
        )
    if installed_in is None or not loaded:
        return None, "pg_stat_statements is not enabled. " + _enable(libraries, loaded, database)
    async with db.read() as conn:
        rows = (await conn.execute(ops.slowest_statements(installed_in), {"limit": limit})).all()
    return [
        SlowStatement(_clean(r[0]), int(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows
    ], None


def _enable(libraries: list[str], loaded: bool, database: str) -> str:
    """The exact commands that turn pg_stat_statements on, keeping the other preloaded libraries."""
    quoted = '"' + database.replace('"', '""') + '"'
    create = [
        f"connected to database {quoted}:",
        f"  CREATE EXTENSION IF NOT EXISTS {PG_STAT_STATEMENTS};",
    ]
    if loaded:
        return "\n".join(["Enable it as a superuser,", *create])
    # A list setting: each library quoted on its own ('a, b' would be one name).
    wanted = ", ".join(f"'{name}'" for name in [*libraries, PG_STAT_STATEMENTS])
    return "\n".join(
        [
            "Enable it as a superuser:",
            f"  ALTER SYSTEM SET shared_preload_libraries = {wanted};",
            "restart PostgreSQL, then, " + create[0],
            create[1],
        ]
    )


def _clean(query: str | None) -> str:
    """One line, shortened, with password literals masked."""
    text = _SPACE.sub(" ", _PASSWORD.sub(r"\1'***'", query or "")).strip()
    return text if len(text) <= QUERY_CHARS else text[: QUERY_CHARS - 3] + "..."


def _sqlite_file(db: Database) -> Path:
    return Path(str(db.config.sqlalchemy_url().database))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TB"


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    """Rows as aligned columns under ``header`` (the first column right-aligned), or "none"."""
    if not rows:
        return ["  none"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.rjust(width) if i == 0 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
