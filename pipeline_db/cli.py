"""The ``pipeline-db`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline_db.config import (
    WITH_WORKER_ENV,
    load_database_config,
    load_server_config,
    load_worker_config,
)
from pipeline_db.database import Database
from pipeline_db.errors import PipelineDBError
from pipeline_db.migrations import status, upgrade
from pipeline_db.transfer import command as migrate_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline-db", description=__doc__)
    parser.add_argument(
        "--config", help="configuration file (default: $PIPELINE_CONFIG or config/pipeline.yaml)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="schema migrations").add_subparsers(
        dest="db_command", required=True
    )
    up = db.add_parser("upgrade", help="upgrade the schema (default: to the newest revision)")
    up.add_argument("revision", nargs="?", default="head")
    db.add_parser("current", help="print the schema revision and whether it is current")

    worker = commands.add_parser("worker", help="run job runners until SIGTERM or SIGINT")
    worker.add_argument(
        "--concurrency", type=int, help="jobs at once (default: worker.concurrency)"
    )
    worker.add_argument(
        "--kind", action="append", dest="kinds", help="only this job kind (repeatable)"
    )

    migrate_command.add_arguments(commands.add_parser("migrate", help=migrate_command.HELP))

    serve = commands.add_parser("serve", help="serve the HTTP API with uvicorn")
    serve.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8000)")
    serve.add_argument("--workers", type=int, help="server processes (default: server.workers)")
    serve.add_argument(
        "--upgrade", action="store_true", help="upgrade a schema that is behind instead of refusing"
    )
    serve.add_argument(
        "--with-worker", action="store_true", help="also run job runners in each server process"
    )
    _ops_parsers(commands)
    return parser


def _ops_parsers(commands: Any) -> None:
    backup = commands.add_parser("backup", help="back the database up and record it in backup_log")
    backup.add_argument("--to", type=Path, help="folder (default: database.backup_dir)")
    restore = commands.add_parser("restore", help="restore a backup, after verifying its checksum")
    restore.add_argument("file", type=Path, help="a backup file, its .sha256 beside it")
    restore.add_argument(
        "--force", action="store_true", help="even while other sessions use the database"
    )
    commands.add_parser("check", help="check the setup: one ok / warn / fail line per check")
    commands.add_parser("stats", help="rows and sizes per table, episodes, jobs, the pool")
    commands.add_parser("top", help="slowest statements, connections, sessions waiting on locks")


async def _ops_command(args: argparse.Namespace) -> int:
    from pipeline_db import backup, doctor, reports

    config = load_database_config(args.config)
    workers = load_server_config(args.config).workers if args.command == "check" else 1
    async with Database(config) as db:
        if args.command == "backup":
            record = await backup.backup(db, to=args.to)
            print(f"{record.backup_path}: {record.backup_size} bytes, sha256 {record.checksum}")
        elif args.command == "restore":
            record = await backup.restore(db, args.file, force=args.force)
            print(f"restored {record.backup_path} over {config.describe()}")
        elif args.command == "check":
            checks = await doctor.run_checks(db, workers=workers)
            print("\n".join(check.line() for check in checks))
            return 1 if doctor.failed(checks) else 0
        else:
            report = await (reports.stats(db) if args.command == "stats" else reports.top(db))
            print("\n".join(report.lines()))
    return 0


async def _db_command(args: argparse.Namespace) -> int:
    config = load_database_config(args.config)
    async with Database(config) as db:
        if args.db_command == "upgrade":
            found = await upgrade(db, args.revision)
            print(f"{config.describe()}: schema at {found.current} (head {found.head})")
            return 0
        found = await status(db)
        state = "current" if found.is_current else "behind: run `pipeline-db db upgrade`"
        print(f"{found.current or 'none'} (head {found.head}, {state})")
        return 0 if found.is_current else 1


async def _worker(args: argparse.Namespace) -> int:
    from pipeline_db.migrations import require_current
    from pipeline_db.worker import run_worker

    config = load_database_config(args.config)
    worker_config = load_worker_config(args.config)
    async with Database(config) as db:
        await require_current(db)
        await run_worker(db, worker_config, concurrency=args.concurrency, kinds=args.kinds)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import ipaddress
    import os
    import shutil
    import tempfile

    import uvicorn

    if args.config:
        os.environ["PIPELINE_CONFIG"] = args.config
    if args.with_worker:
        os.environ[WITH_WORKER_ENV] = "1"
    server = load_server_config(args.config)
    load_database_config(args.config)  # fail here, with its message, not in a worker
    host = args.host or server.host
    port = args.port or server.port
    workers = args.workers or server.workers
    if not server.token_names():
        if not _is_loopback(host, ipaddress):
            print(
                f"pipeline-db: refusing to serve on {host} without an API token: set "
                "PIPELINE_API_TOKEN (or server.tokens), or bind 127.0.0.1",
                file=sys.stderr,
            )
            return 2
        logging.getLogger("pipeline_db").warning(
            "no API token is configured: serving on %s only, without authentication", host
        )
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker writes its samples here; /metrics merges them.
        metrics_dir = tempfile.mkdtemp(prefix="pipeline-db-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    factory = "server.app:create_upgrading_app" if args.upgrade else "server.app:create_app"
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=server.access_log,
            timeout_graceful_shutdown=30,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _is_loopback(host: str, ipaddress: Any) -> bool:
    if host == "localhost":
        return True
    try:
        return bool(ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "db":
            return asyncio.run(_db_command(args))
        if args.command == "worker":
            return asyncio.run(_worker(args))
        if args.command == "migrate":
            return asyncio.run(migrate_command.run(args))
        if args.command in ("backup", "restore", "check", "stats", "top"):
            return asyncio.run(_ops_command(args))
        return _serve(args)
    except PipelineDBError as error:
        print(f"pipeline-db: {error.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
