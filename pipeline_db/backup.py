"""Backups and restore on both backends, with checksums and retention.

* SQLite: the online backup API (``sqlite3.Connection.backup``) copies a
  consistent snapshot while writers keep writing.
* PostgreSQL: ``pg_dump --format=custom`` and ``pg_restore`` when they are on
  the PATH; a missing tool is named, and a server newer than the tools is
  refused before anything is written. Behind PgBouncer they connect through
  ``listen_url``, the direct connection (their session settings would not
  survive transaction pooling).

A backup is written under a ``.partial`` name and renamed when complete. Every
backup is recorded in ``backup_log`` with its size and SHA-256, and a
``<file>.sha256`` sidecar travels with it: ``restore`` checks the file against
both (either one when the other is missing) before touching the database.

``restore`` refuses a database in use unless forced: PostgreSQL sessions are
read from ``pg_stat_activity``; SQLite's users from the locks other processes
hold on the file (``/proc/locks``, WAL mode), or the :func:`serving` lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from pipeline_db.backends import _sqlite_locks
from pipeline_db.database import Database
from pipeline_db.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseError,
    InvalidInputError,
)
from pipeline_db.migrations import status
from pipeline_db.models import BackupRecord
from pipeline_db.queries import ops
from pipeline_db.social import BackupLog

if TYPE_CHECKING:
    from pipeline_db.handlers import JobContext

logger = logging.getLogger("pipeline_db.backup")

CHUNK_BYTES = 1024 * 1024
SIDECAR = ".sha256"
PARTIAL = ".partial"
KEEP_NEWEST = 7
KEEP_DAYS = 14.0


class BackupError(DatabaseError):
    """A backup or restore could not be made."""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What retention removed."""

    files: list[str]
    rows: int


async def backup(db: Database, *, to: Path | None = None) -> BackupRecord:
    """Take a backup into ``to`` (default: the configuration's ``backup_dir``) and record it.

    Raises:
        ConfigurationError: pg_dump is missing or older than the server.
        BackupError: the backup itself failed.
    """
    folder = Path(to or db.config.backup_dir)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    suffix = ".db" if db.dialect == "sqlite" else ".dump"
    target = folder / f"pipeline-{stamp}{suffix}"
    # Written under a temporary name: a failed or interrupted backup never
    # leaves a file that looks like a backup.
    partial = target.with_name(target.name + PARTIAL)
    try:
        if db.dialect == "sqlite":
            await asyncio.to_thread(_sqlite_backup, _sqlite_path(db), partial)
        else:
            await _pg_dump(db, partial)
        await asyncio.to_thread(partial.rename, target)
    finally:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
    path, size, checksum = await asyncio.to_thread(_seal, target)
    return await BackupLog(db).record(path, size=size, checksum=checksum)


async def restore(db: Database, file: Path, *, force: bool = False) -> BackupRecord:
    """Restore ``file`` over the database, after verifying its checksum.

    Raises:
        InvalidInputError: the file is missing or its checksum does not match.
        ConflictError: the database is being served (other sessions), unless ``force``.
        ConfigurationError: pg_restore is missing or older than the server.
        BackupError: the restore itself failed.
    """
    file = Path(file)
    if not await asyncio.to_thread(file.is_file):
        raise InvalidInputError(f"backup file {file} does not exist", field="file")
    actual = await asyncio.to_thread(file_checksum, file)
    sidecar = await asyncio.to_thread(_recorded_checksum, file)
    logged = await _logged(db, file)
    recorded = {f"its {SIDECAR} file": sidecar}
    if logged is not None and logged.checksum:
        recorded[f"backup_log entry {logged.id}"] = logged.checksum
    known = {where: value for where, value in recorded.items() if value}
    if not known:
        raise InvalidInputError(
            f"{file} has no {SIDECAR} checksum beside it and no backup_log entry: "
            "refusing an unverifiable restore",
            field="file",
        )
    for where, expected in known.items():
        if actual != expected:
            raise InvalidInputError(
                f"{file} is corrupt: its SHA-256 is {actual[:12]}..., {where} says "
                f"{expected[:12]}...",
                field="file",
            )
    if not force:
        if db.dialect == "postgresql":
            # Our own pool's idle connections are sessions too: close them first.
            await db.dispose()
            await db.open()
        others = await other_sessions(db)
        if others:
            raise ConflictError(
                f"the database is in use by {others} other session(s): stop the servers "
                "and runners first, or pass --force",
                sessions=others,
            )
    if db.dialect == "sqlite":
        path = _sqlite_path(db)
        await db.dispose()
        await asyncio.to_thread(_sqlite_backup, file, path)
        await db.open()
    else:
        await _pg_restore(db, file)
    return await _mark_restored(db, file, actual)


async def prune(
    db: Database, *, keep_newest: int = KEEP_NEWEST, keep_days: float = KEEP_DAYS
) -> Pruned:
    """Keep the newest ``keep_newest`` backups and all younger than ``keep_days``; delete the rest.

    Files (and their checksum sidecars) and backup_log rows go together.
    """
    if keep_newest < 0 or keep_days < 0:
        raise InvalidInputError("keep_newest and keep_days must be >= 0", field="retention")
    records = await _all_backups(db)
    cutoff = datetime.now(UTC) - timedelta(days=keep_days)
    doomed = [r for i, r in enumerate(records) if i >= keep_newest and r.created_at < cutoff]
    removed = await asyncio.to_thread(_delete_files, [r.backup_path for r in doomed])
    rows = await BackupLog(db).delete([r.id for r in doomed]) if doomed else 0
    return Pruned(files=removed, rows=rows)


@contextlib.contextmanager
def serving(db: Database) -> Iterator[None]:
    """Held by every process serving a SQLite database, so restore can tell it is in use.

    A shared ``flock`` on ``<database>.serving``; PostgreSQL needs none (its
    sessions are visible in ``pg_stat_activity``).
    """
    if db.dialect != "sqlite":
        yield
        return
    with open(f"{_sqlite_path(db)}.serving", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_served(path: Path) -> bool:
    marker = Path(f"{path}.serving")
    if not marker.exists():
        return False
    with marker.open("a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _sqlite_users(path: Path) -> int:
    # Other processes with the file open are seen through their SQLite locks
    # (Linux, WAL mode), servers that do not hold serving() included.
    others = _sqlite_locks.processes_with_open(path) or set()
    return max(len(others), int(_sqlite_served(path)))


async def other_sessions(db: Database) -> int:
    """Sessions using this database besides our own.

    PostgreSQL: other client sessions in ``pg_stat_activity`` (the idle
    connections of ``db``'s own pool among them). SQLite: other
    processes that have the database open (seen through their locks in
    ``/proc/locks``, WAL mode, Linux), or at least 1 when some process holds
    the :func:`serving` lock.
    """
    if db.dialect != "postgresql":
        return await asyncio.to_thread(_sqlite_users, _sqlite_path(db))
    async with db.connection() as conn:
        value = int((await conn.execute(ops.other_sessions())).scalar_one())
        await conn.rollback()
    return value


def _seal(target: Path) -> tuple[str, int, str]:
    """Checksum a finished backup and write its sidecar; returns (path, size, checksum)."""
    checksum = file_checksum(target)
    Path(f"{target}{SIDECAR}").write_text(f"{checksum}  {target.name}\n", encoding="utf-8")
    return str(target.resolve()), target.stat().st_size, checksum


def _delete_files(paths: list[str]) -> list[str]:
    removed = []
    for name in paths:
        for path in (Path(name), Path(f"{name}{SIDECAR}")):
            if path.exists():
                path.unlink()
                removed.append(str(path))
    return removed


def file_checksum(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_checksum(file: Path) -> str | None:
    sidecar = Path(f"{file}{SIDECAR}")
    if not sidecar.is_file():
        return None
    found = sidecar.read_text(encoding="utf-8").split()
    return found[0] if found else None


async def _all_backups(db: Database) -> list[BackupRecord]:
    async with db.read() as conn:
        rows = (await conn.execute(ops.backups())).mappings().all()
    return [BackupRecord.model_validate(row) for row in rows]


async def _logged(db: Database, file: Path) -> BackupRecord | None:
    """The backup_log entry of ``file``, if the database has one (and a schema at all)."""
    if (await status(db)).current is None:
        return None  # a fresh database to restore into
    resolved = str(await asyncio.to_thread(file.resolve))
    async with db.read() as conn:
        row = (await conn.execute(ops.backup_by_path(resolved))).mappings().first()
    return BackupRecord.model_validate(row) if row is not None else None


async def _mark_restored(db: Database, file: Path, checksum: str) -> BackupRecord:
    # The restored database predates its own backup's log row: put it back.
    log = BackupLog(db)
    record = await _logged(db, file)
    if record is None:
        size = (await asyncio.to_thread(file.stat)).st_size
        resolved = str(await asyncio.to_thread(file.resolve))
        record = await log.record(resolved, size=size, checksum=checksum)
    return await log.mark_restored(record.id)


def _sqlite_path(db: Database) -> Path:
    database = db.config.sqlalchemy_url().database
    if not database or database == ":memory:":
        raise ConfigurationError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _sqlite_backup(source: Path, target: Path) -> None:
    """Copy ``source`` into ``target`` with SQLite's online backup API."""
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(
            f"{name} is not on the PATH: install the PostgreSQL client tools "
            f"(Debian: apt-get install postgresql-client) to back up PostgreSQL"
        )
    return found


async def _pg_environment(db: Database) -> dict[str, str]:
    config = db.config
    url = config.sqlalchemy_url()
    if config.pgbouncer and config.listen_url is not None:
        # pg_dump's session-level SETs (search_path among them) would land on
        # whichever server connection PgBouncer picks in transaction mode: go direct.
        url = make_url(config.listen_url.get_secret_value())
    elif config.pgbouncer:
        logger.warning(
            "pgbouncer is on and no listen_url is set: %s runs through PgBouncer, which "
            "must then be in session pooling mode for it",
            "pg_dump/pg_restore",
        )
    env = dict(os.environ)
    env.update(
        {
            "PGHOST": url.host or "localhost",
            "PGPORT": str(url.port or 5432),
            "PGDATABASE": url.database or "",
            "PGUSER": url.username or "",
            "PGAPPNAME": f"{db.config.application_name} backup"[:63],
        }
    )
    if url.password:
        env["PGPASSWORD"] = str(url.password)  # the environment, never the command line
    for key, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("sslmode", "PGSSLMODE")):
        value = url.query.get(key)  # ?host=/run/postgresql: a Unix socket
        if isinstance(value, str):
            env[variable] = value
    return env


async def _check_versions(db: Database, tool: str) -> None:
    process = await asyncio.create_subprocess_exec(
        tool, "--version", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    match = re.search(r"(\d+)(?:\.(\d+))?", out.decode())
    tool_major = int(match.group(1)) if match else 0
    async with db.connection() as conn:
        server = int((await conn.execute(ops.server_version_num())).scalar_one())
        await conn.rollback()
    server_major = server // 10_000
    if server_major > tool_major:
        raise ConfigurationError(
            f"the server is PostgreSQL {server_major} but {Path(tool).name} is {tool_major}: "
            "install client tools of the server's version or newer"
        )


async def _run(args: list[str], env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        raise BackupError(
            f"{Path(args[0]).name} failed: {message[-1] if message else process.returncode}"
        )


async def _pg_dump(db: Database, target: Path) -> None:
    tool = _tool("pg_dump")
    await _check_versions(db, tool)
    await _run(
        [tool, "--format=custom", "--no-owner", f"--file={target}"], await _pg_environment(db)
    )


async def _pg_restore(db: Database, file: Path) -> None:
    tool = _tool("pg_restore")
    await _check_versions(db, tool)
    env = await _pg_environment(db)
    await db.dispose()  # our pool must not hold locks on what is dropped
    try:
        await _run(
            [
                tool,
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                f"--dbname={env['PGDATABASE']}",
                str(file),
            ],
            env,
        )
    finally:
        await db.open()


async def backup_job(ctx: JobContext) -> dict[str, Any]:
    """The ``backup`` job kind: take a backup, then apply the retention policy."""
    db = ctx.db
    await ctx.progress(percent=0, message="backing up")
    record = await backup(db)
    pruned = await prune(
        db, keep_newest=db.config.backup_keep, keep_days=db.config.backup_keep_days
    )
    return {
        "backup": record.backup_path,
        "size": record.backup_size,
        "checksum": record.checksum,
        "pruned_files": len(pruned.files),
        "pruned_rows": pruned.rows,
    }
