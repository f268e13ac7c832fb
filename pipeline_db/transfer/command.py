"""``pipeline-db migrate SOURCE TARGET``: the command line of the migration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline_db.transfer._zone import resolve_zone
from pipeline_db.transfer.copy import migrate, plan, verify_only
from pipeline_db.transfer.endpoints import endpoint_config
from pipeline_db.transfer.errors import VerificationError
from pipeline_db.transfer.options import ON_ERROR, SPLIT_ROWS, WORKERS, MigrateOptions
from pipeline_db.transfer.plan import render_plan
from pipeline_db.transfer.report import MigrationReport, render
from pipeline_db.transfer.source import BATCH_ROWS

HELP = "copy a pipeline between SQLite and PostgreSQL, verified (legacy pipeline.db too)"
DESCRIPTION = """\
Copy every table from SOURCE to TARGET and verify both hold the same values.
SOURCE and TARGET are SQLite paths (or sqlite:/// URLs), PostgreSQL URLs, or
env:NAME for a URL in an environment variable. Give passwords through the URL
or PGPASSWORD; they are never printed. The source is only read. The target's
schema is made by pipeline-db's migrations (Alembic).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``migrate`` command's arguments."""
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("source", help="database to copy from (never written)")
    parser.add_argument("target", help="database to copy into")
    parser.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="abort",
        help="a row the target cannot take: stop (default), leave it out, or repair "
        "what has a safe fix (NUL characters, NaN) and leave out the rest",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="finish an interrupted migration")
    mode.add_argument("--replace", action="store_true", help="delete the target's rows first")
    mode.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    mode.add_argument("--verify-only", action="store_true", help="only compare source and target")
    parser.add_argument(
        "--source-timezone",
        metavar="ZONE",
        help="IANA zone of naive local timestamps in a legacy file (default: this machine's)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="report file (JSON)")
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="PostgreSQL URLs lead to PgBouncer in transaction pooling mode",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        metavar="N",
        help=f"processes copying tables at once (default {WORKERS}; 0: one process)",
    )
    parser.add_argument(
        "--split-rows",
        type=int,
        default=SPLIT_ROWS,
        metavar="ROWS",
        help=f"copy tables of more rows in key ranges, at once (default {SPLIT_ROWS:,}; 0: never)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_ROWS,
        metavar="ROWS",
        help=f"rows per batch at most (default {BATCH_ROWS})",
    )


async def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit status (1: verification failed)."""
    source = endpoint_config(args.source, pgbouncer=args.pgbouncer)
    target = endpoint_config(args.target, pgbouncer=args.pgbouncer)
    options = MigrateOptions(
        on_error=args.on_error,
        resume=args.resume,
        replace=args.replace,
        source_timezone=args.source_timezone,
        batch_size=args.batch_size,
        report=args.report,
        workers=args.workers,
        split_rows=args.split_rows,
    )
    if args.dry_run:
        found = await plan(source, target, options)
        print(render_plan(found, resolve_zone(options.source_timezone)))
        return 0
    try:
        if args.verify_only:
            report = await verify_only(source, target, options)
        else:
            report = await migrate(source, target, options)
    except VerificationError as error:
        failed: MigrationReport | None = error.context.get("report")
        if failed is not None:
            print(render(failed))
        print(f"pipeline-db: {error.message}", file=sys.stderr)
        return 1
    print(render(report))
    return 0
