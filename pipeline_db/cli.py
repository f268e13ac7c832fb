"""The ``pipeline-db`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from pipeline_db.config import load_database_config, load_worker_config
from pipeline_db.database import Database
from pipeline_db.errors import PipelineDBError
from pipeline_db.migrations import status, upgrade


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

    serve = commands.add_parser("serve", help="serve the HTTP API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--upgrade", action="store_true", help="upgrade a schema that is behind instead of refusing"
    )
    serve.add_argument(
        "--with-worker", action="store_true", help="also run job runners in each server process"
    )
    return parser


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
    import os

    import uvicorn

    if args.config:
        os.environ["PIPELINE_CONFIG"] = args.config
    if args.with_worker:
        os.environ["PIPELINE_SERVE_WITH_WORKER"] = "1"
    factory = "server.app:create_upgrading_app" if args.upgrade else "server.app:create_app"
    uvicorn.run(factory, factory=True, host=args.host, port=args.port, workers=args.workers)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "db":
            return asyncio.run(_db_command(args))
        if args.command == "worker":
            return asyncio.run(_worker(args))
        return _serve(args)
    except PipelineDBError as error:
        print(f"pipeline-db: {error.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
