"""The doctor: ``pipeline-db check`` runs every check and reports ok, warn or fail.

Each check is a :class:`Check` (name, status, detail) so it can be asserted on
as a library; the command prints one line per check and exits 1 on any fail.
Details name the configuration by :meth:`DatabaseConfig.describe`, never with
its password, and say what to do about a warning or a failure.

The checks: the database is reachable; the schema is current; the pool fits
the server's connection budget and PgBouncer is configured as it is found
(PostgreSQL); the journal mode, WAL size and integrity (SQLite); jobs whose
runner died; the age of the last good backup; the clock skew between this
host and the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from alembic.script import ScriptDirectory

from pipeline_db.backends import _pgbouncer, _sqlite_locks
from pipeline_db.database import Database
from pipeline_db.errors import DatabaseError, PipelineDBError, TransientError
from pipeline_db.migrations import alembic_config, status
from pipeline_db.queries import ops
from pipeline_db.social import BackupLog

Status = Literal["ok", "warn", "fail"]
Probe = Callable[["Database"], Awaitable["Check"]]

#: Warn when the app's pools would take more than this share of the server's connections.
POOL_WARN_SHARE = 0.8
#: Warn when SQLite's WAL file grows past this (checkpoints are not keeping up).
WAL_WARN_BYTES = 64 * 1024 * 1024
INTEGRITY_MAX_ERRORS = 5
STUCK_SHOWN = 5
#: A lease expired this long ago means no runner is alive to requeue the job.
STUCK_FAIL_AFTER_S = 3600.0
#: Without scheduled backups, warn when the newest is older than this.
UNSCHEDULED_BACKUP_WARN_S = 7 * 24 * 3600.0
BACKUPS_SEARCHED = 50
SKEW_WARN_S = 1.0
SKEW_FAIL_S = 30.0
CLOCK_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check.

    Attributes:
        name: what was checked ("database", "schema", "pool", ...).
        status: ``ok``, ``warn`` or ``fail``.
        detail: what was found, and what to do about it.
    """

    name: str
    status: Status
    detail: str

    def line(self) -> str:
        """The check as ``pipeline-db check`` prints it."""
        return f"{self.status:<4}  {self.name:<12}  {self.detail}"


def failed(checks: Sequence[Check]) -> bool:
    """Whether any check failed."""
    return any(check.status == "fail" for check in checks)


async def run_checks(db: Database, *, workers: int = 1) -> list[Check]:
    """Run every check that applies to the database's backend.

    Args:
        db: the database, open.
        workers: server processes that each open a pool (``server.workers``).

    Returns:
        The checks in order. When the database is unreachable that is the only one.
    """
    reachable = await _database(db)
    if reachable.status == "fail":
        return [reachable]
    schema = await _guard("schema", _schema, db, current=True)
    current = schema.status == "ok"
    probes: list[tuple[str, Probe]]
    if db.dialect == "postgresql":
        probes = [("pool", lambda db: _pool(db, workers)), ("pgbouncer", _pgbouncer_check)]
    else:
        probes = [
            ("journal mode", _journal_mode),
            ("wal size", _wal_size),
            ("integrity", _integrity),
        ]
    probes += [
        ("stuck jobs", _stuck_jobs),
        ("last backup", _last_backup),
        ("clock skew", _clock_skew),
    ]
    return [reachable, schema] + [await _guard(name, probe, db, current) for name, probe in probes]


async def _guard(name: str, probe: Probe, db: Database, current: bool) -> Check:
    try:
        return await probe(db)
    except PipelineDBError as error:
        if not current:
            return Check(name, "warn", f"not checked until the schema is current: {error.message}")
        return Check(name, "fail", f"could not check: {error.message}")


async def _database(db: Database) -> Check:
    where = db.config.describe()
    if db.dialect == "sqlite":
        path = Path(str(db.config.sqlalchemy_url().database))
        if not await asyncio.to_thread(path.is_file):
            return Check(
                "database", "fail", f"{where}: no such file (run `pipeline-db db upgrade`)"
            )
    try:
        async with db.read() as conn:
            await conn.execute(ops.probe())
            if db.dialect == "postgresql":
                version = f"PostgreSQL {(await conn.execute(ops.server_version())).scalar_one()}"
            else:
                version = f"SQLite {sqlite3.sqlite_version}"
    except PipelineDBError as error:
        return Check("database", "fail", f"{where} is unreachable: {error.message}")
    return Check("database", "ok", f"{where}: {version}")


async def _schema(db: Database) -> Check:
    found = await status(db)
    if found.is_current:
        return Check("schema", "ok", f"at {found.current}, the newest")
    if found.current is None:
        return Check("schema", "fail", "no schema yet: run `pipeline-db db upgrade`")
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    if found.current not in known:
        return Check(
            "schema",
            "fail",
            f"at {found.current}, which this pipeline-db does not know (a newer version "
            "migrated it): upgrade pipeline-db",
        )
    return Check(
        "schema",
        "fail",
        f"at {found.current} but this pipeline-db needs {found.head}: run `pipeline-db db upgrade`",
    )


async def _pool(db: Database, workers: int) -> Check:
    config = db.config
    async with db.read() as conn:
        maximum, superuser, reserved = (await conn.execute(ops.connection_limits())).one()
        foreign = (
            await conn.execute(ops.foreign_connections(), {"app": config.application_name})
        ).scalar_one()
    available = maximum - superuser - reserved
    per_process = config.pool_size + config.max_overflow
    demand = workers * per_process
    formula = (
        f"{workers} worker(s) x (pool_size {config.pool_size} + max_overflow "
        f"{config.max_overflow}) = {demand} connections"
    )
    held_back = f"{superuser} superuser-reserved" + (f", {reserved} reserved" if reserved else "")
    limit = f"{available} (max_connections {maximum} - {held_back})"
    if config.pgbouncer:
        return Check(
            "pool",
            "ok",
            f"{formula} to PgBouncer; PgBouncer's own pools must fit the server's {limit}",
        )
    if demand > available:
        return Check(
            "pool",
            "fail",
            f"{formula}, but the server allows {limit}, and each `pipeline-db worker` adds "
            f"{per_process} more: lower server.workers, pool_size or max_overflow, raise "
            "max_connections, or put PgBouncer in front (pgbouncer: true)",
        )
    if demand + foreign > available:
        return Check(
            "pool",
            "warn",
            f"{formula} fit the server's {limit}, but {foreign} other session(s) connected now "
            f"leave only {available - foreign}",
        )
    if demand > POOL_WARN_SHARE * available:
        return Check(
            "pool",
            "warn",
            f"{formula}: {demand * 100 // available}% of the server's {limit}, little room "
            "for job runners, migrations and psql",
        )
    return Check("pool", "ok", f"{formula} of the server's {limit}")


async def _pgbouncer_check(db: Database) -> Check:
    config = db.config
    url = config.sqlalchemy_url()
    sent_to = url.port or 5432
    async with db.read() as conn:
        _, arrived_on = (await conn.execute(ops.server_endpoint())).one()
    detour = arrived_on is None or arrived_on != sent_to
    found = await _pgbouncer.is_pgbouncer(config) if config.pgbouncer or detour else False
    listen = "LISTEN/NOTIFY over listen_url" if config.listen_url else "no listen_url: runners poll"
    where = f"{url.host}:{sent_to}"
    if found and config.pgbouncer:
        return Check("pgbouncer", "ok", f"PgBouncer at {where} and pgbouncer: true ({listen})")
    if found:
        return Check(
            "pgbouncer",
            "fail",
            f"PgBouncer answers at {where} but pgbouncer is false: prepared statements break "
            "in transaction pooling mode; set pgbouncer: true (and listen_url for LISTEN/NOTIFY)",
        )
    if found is False and config.pgbouncer:
        return Check(
            "pgbouncer",
            "warn",
            f"pgbouncer is true but {where} is PostgreSQL itself: statement caching is off "
            "for nothing; set pgbouncer: false",
        )
    if found is None:
        return Check(
            "pgbouncer",
            "warn",
            f"connections to {where} arrive on the server's port {arrived_on}: something "
            "(PgBouncer? a port mapping?) is in between and did not say what it is; behind "
            "PgBouncer in transaction mode set pgbouncer: true",
        )
    return Check("pgbouncer", "ok", f"none: {where} is PostgreSQL itself, and pgbouncer is false")


def _sqlite_file(db: Database) -> Path:
    return Path(str(db.config.sqlalchemy_url().database))


async def _journal_mode(db: Database) -> Check:
    async with db.read() as conn:
        mode = str((await conn.execute(ops.journal_mode())).scalar_one()).lower()
    wanted = db.config.journal_mode.lower()
    if mode != wanted:
        return Check(
            "journal mode",
            "warn",
            f"{mode}, but journal_mode is {wanted}: the file system refused it (WAL needs "
            "shared memory, which network file systems lack)",
        )
    if mode != "wal":
        return Check(
            "journal mode", "warn", f"{mode}: readers and the writer block each other; WAL does not"
        )
    return Check("journal mode", "ok", "wal")


async def _wal_size(db: Database) -> Check:
    wal = Path(f"{_sqlite_file(db)}-wal")
    size = await asyncio.to_thread(_size, wal)
    if size < WAL_WARN_BYTES:
        return Check("wal size", "ok", f"{_mib(size)} MiB")
    holders = await asyncio.to_thread(_sqlite_locks.processes_with_open, _sqlite_file(db))
    who = f" (open in processes {sorted(holders)})" if holders else ""
    return Check(
        "wal size",
        "warn",
        f"{_mib(size)} MiB: checkpoints cannot reset it while a reader or a transaction stays "
        f"open{who}; `pipeline-db top` shows the write lock",
    )


async def _integrity(db: Database) -> Check:
    restore = "restore a good backup (`pipeline-db restore FILE`)"
    try:
        async with db.read() as conn:
            statement = ops.integrity_check(INTEGRITY_MAX_ERRORS)
            found = list((await conn.execute(statement)).scalars())
    except TransientError as error:
        return Check("integrity", "warn", f"integrity_check could not run: {error.message}")
    except DatabaseError as error:  # SQLITE_CORRUPT: too broken to even check
        return Check("integrity", "fail", f"integrity_check failed: {error.message}; {restore}")
    if found == ["ok"]:
        return Check("integrity", "ok", "integrity_check: ok")
    more = "+" if len(found) >= INTEGRITY_MAX_ERRORS else ""
    return Check(
        "integrity",
        "fail",
        f"integrity_check found {len(found)}{more} problem(s), first: {found[0]}; {restore}",
    )


async def _stuck_jobs(db: Database) -> Check:
    async with db.read() as conn:
        count = int((await conn.execute(ops.count_expired_leases())).scalar_one())
        rows = (await conn.execute(ops.expired_leases(STUCK_SHOWN))).all()
    if not count:
        return Check("stuck jobs", "ok", "no running job has an expired lease")
    oldest = max(0.0, (datetime.now(UTC) - rows[0].lease_expires_at).total_seconds())
    shown = ", ".join(f"#{r.id} {r.kind} on {r.worker_id}" for r in rows)
    more = f" and {count - len(rows)} more" if count > len(rows) else ""
    return Check(
        "stuck jobs",
        "fail" if oldest > STUCK_FAIL_AFTER_S else "warn",
        f"{count} running job(s) whose runner stopped heartbeating (killed?), lease expired "
        f"up to {oldest:.0f} s ago: {shown}{more}; a live runner requeues them (start one "
        "with `pipeline-db worker`)",
    )


async def _last_backup(db: Database) -> Check:
    config = db.config
    records = await BackupLog(db).list(limit=BACKUPS_SEARCHED)
    missing = []
    for record in records:
        path = Path(record.backup_path)
        if await asyncio.to_thread(_intact, path, record.backup_size):
            break
        missing.append(path.name)
    else:
        advice = "run `pipeline-db backup`" + (
            "" if config.backup_enabled else " and set backup_enabled"
        )
        gone = f" ({len(missing)} recorded, none found intact on this host)" if missing else ""
        return Check("last backup", "warn", f"no good backup{gone}: {advice}")
    age = max(0.0, (datetime.now(UTC) - record.created_at).total_seconds())
    detail = f"{path.name}, {_duration(age)} old"
    if missing:
        detail += f"; newer {', '.join(missing)} missing or truncated"
    if not config.backup_enabled:
        status: Status = "warn" if age > UNSCHEDULED_BACKUP_WARN_S or missing else "ok"
        return Check("last backup", status, f"{detail}; backups are not scheduled (backup_enabled)")
    interval = config.backup_interval_hours * 3600
    if age > 3 * interval:
        return Check(
            "last backup",
            "fail",
            f"{detail}, but one is due every {config.backup_interval_hours:g} h: are job "
            "runners running, and the backup jobs failing? (`pipeline-db stats`)",
        )
    status = "warn" if age > 1.5 * interval or missing else "ok"
    return Check("last backup", status, f"{detail} (every {config.backup_interval_hours:g} h)")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _intact(path: Path, size: int | None) -> bool:
    try:
        found = path.stat().st_size
    except OSError:
        return False
    return size is None or found == size


async def _clock_skew(db: Database) -> Check:
    samples = []
    async with db.read() as conn:
        for _ in range(CLOCK_SAMPLES):
            sent = time.time()
            moment = (await conn.execute(ops.clock(db.dialect))).scalar_one()
            back = time.time()
            samples.append((back - sent, moment.timestamp() - (sent + back) / 2))
    trip, skew = min(samples)  # the fastest round trip says the most
    skew = skew if abs(skew) >= 0.0005 else 0.0  # no "-0.000"
    detail = f"the database's clock is {skew:+.3f} s from this host's (+/- {trip / 2:.3f} s)"
    if abs(skew) - trip / 2 >= SKEW_FAIL_S:
        return Check("clock skew", "fail", f"{detail}: fix NTP on one of them")
    if abs(skew) - trip / 2 >= SKEW_WARN_S:
        return Check("clock skew", "warn", f"{detail}: run NTP on both hosts")
    return Check("clock skew", "ok", detail)


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
