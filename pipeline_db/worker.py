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

from pipeline_db.builtin_handlers import register_builtins, schedules
from pipeline_db.config import WorkerConfig
from pipeline_db.database import Database
from pipeline_db.handlers import Handlers
from pipeline_db.runner import Runner, RunnerOptions
from pipeline_db.schedule import Scheduler
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


class Worker:
    """A runner, its webhook deliverer and its scheduler, run and stopped together."""

    def __init__(
        self,
        db: Database,
        config: WorkerConfig,
        *,
        concurrency: int | None = None,
        kinds: Sequence[str] | None = None,
    ) -> None:
        self.runner = build_runner(db, config, concurrency=concurrency, kinds=kinds)
        self.deliverer = build_deliverer(db, config)
        self.scheduler = Scheduler(db, schedules(db.config, config))

    async def run(self) -> None:
        """Run until :meth:`stop`; the runner drains before the deliverer stops."""
        # The deliverer stops once the runner has drained (its last outcomes'
        # webhooks stay in the outbox for the next start).
        async with self.deliverer:
            scheduling = asyncio.create_task(self.scheduler.run(), name="scheduler")
            try:
                await self.runner.run()
            finally:
                self.scheduler.stop()
                await asyncio.gather(scheduling, return_exceptions=True)

    def stop(self) -> None:
        """Stop claiming and scheduling; running jobs get their grace period."""
        self.scheduler.stop()
        self.runner.stop()


async def run_worker(
    db: Database,
    config: WorkerConfig,
    *,
    concurrency: int | None = None,
    kinds: Sequence[str] | None = None,
) -> None:
    """Run a :class:`Worker` until SIGTERM or SIGINT, then stop it gracefully."""
    worker = Worker(db, config, concurrency=concurrency, kinds=kinds)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, _stop, worker, signum)
    try:
        await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signum)


def _stop(worker: Worker, signum: int) -> None:
    logger.info("%s: stopping the worker gracefully", signal.Signals(signum).name)
    worker.stop()
