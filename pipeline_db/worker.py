"""Assemble and run job runners: ``pipeline-db worker`` and ``serve --with-worker``.

A worker also runs a webhook :class:`~pipeline_db.webhooks.Deliverer` beside its
runner, so finished jobs' webhooks go out without holding up the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from pipeline_db.builtin_handlers import register_builtins
from pipeline_db.config import WorkerConfig
from pipeline_db.database import Database
from pipeline_db.handlers import Handlers
from pipeline_db.runner import Runner, RunnerOptions
from pipeline_db.webhooks import Deliverer

logger = logging.getLogger("pipeline_db.worker")


def build_handlers(config: WorkerConfig) -> Handlers:
    """Built-in kinds, then installed entry points, then the configuration's dotted paths."""
    handlers = Handlers()
    register_builtins(handlers, config)
    handlers.load_entry_points()
    handlers.load_paths(config.handlers)
    return handlers


def build_runner(
    db: Database,
    config: WorkerConfig,
    *,
    concurrency: int | None = None,
    kinds: Sequence[str] | None = None,
) -> Runner:
    """A :class:`Runner` configured from the ``worker:`` section (CLI flags win)."""
    options = RunnerOptions(
        concurrency=concurrency or config.concurrency,
        prefetch=config.prefetch,
        kinds=list(kinds) if kinds else config.kinds,
        poll_interval=config.poll_interval,
        lease=config.lease,
        shutdown_grace=config.shutdown_grace,
        settings=config.model_dump(),
    )
    return Runner(db, build_handlers(config), options)


def build_deliverer(db: Database, config: WorkerConfig) -> Deliverer:
    """A webhook :class:`Deliverer` signing with ``webhook_secret``, polling as the runner does."""
    return Deliverer(db, secret=config.webhook_secret, poll_interval=config.poll_interval)


async def run_worker(
    db: Database,
    config: WorkerConfig,
    *,
    concurrency: int | None = None,
    kinds: Sequence[str] | None = None,
) -> None:
    """Run a runner and a webhook deliverer until SIGTERM or SIGINT, then stop both gracefully."""
    runner = build_runner(db, config, concurrency=concurrency, kinds=kinds)
    deliverer = build_deliverer(db, config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, _stop, runner, signum)
    try:
        # The deliverer stops once the runner has drained (its last outcomes'
        # webhooks stay in the outbox for the next start).
        async with deliverer:
            await runner.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)


def _stop(runner: Runner, signum: int) -> None:
    logger.info("%s: stopping the runner gracefully", signal.Signals(signum).name)
    runner.stop()
