"""The job handler interface: what an application registers for the runners to run.

A handler is ``async def handler(ctx: JobContext) -> result`` where the result
is JSON-serialisable (kept on the job). It may raise :class:`RetryLater` to be
run again at a given time, or :class:`FailJob` to fail for good; any other
exception is retried with exponential backoff and jitter until the job's
``max_attempts`` are spent. A cancelled job's handler gets
``asyncio.CancelledError`` at its next ``await``.

Handlers are registered in code (:meth:`Handlers.register`), by dotted path in
the configuration (``worker: handlers: {kind: "package.module:function"}``), or
by entry point in the ``pipeline_db.handlers`` group.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pipeline_db.errors import ConfigurationError

if TYPE_CHECKING:
    from pipeline_db.database import Database
    from pipeline_db.jobs import JobQueue
    from pipeline_db.models import Job

ENTRY_POINT_GROUP = "pipeline_db.handlers"


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: its job, the database, and a way to report progress."""

    job: Job
    db: Database
    queue: JobQueue
    worker_id: str
    #: Application settings (the configuration file's ``worker`` section).
    settings: Mapping[str, Any]

    async def progress(
        self, *, percent: float | None = None, stage: str | None = None, message: str | None = None
    ) -> None:
        """Record the job's progress (shown by ``GET /jobs/{id}``)."""
        await self.queue.progress(
            self.worker_id, self.job.id, percent=percent, stage=stage, message=message
        )


Handler = Callable[[JobContext], Awaitable[Any]]


class RetryLater(Exception):
    """Raised by a handler: run this job again at ``at`` (this attempt still counts)."""

    def __init__(self, at: datetime, reason: str = "") -> None:
        super().__init__(reason or f"retry at {at.isoformat()}")
        if at.tzinfo is None:
            raise ValueError("RetryLater needs a timezone-aware time")
        self.at = at
        self.reason = reason


class FailJob(Exception):
    """Raised by a handler: fail this job for good, without further attempts."""


class Handlers:
    """A registry of job handlers by kind."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._handlers: dict[str, Handler] = dict(handlers or {})

    def register(self, kind: str, handler: Handler) -> None:
        """Register ``handler`` for jobs of ``kind`` (replacing any earlier one)."""
        self._handlers[kind] = handler

    def get(self, kind: str) -> Handler | None:
        """The handler of ``kind``, if any."""
        return self._handlers.get(kind)

    def kinds(self) -> list[str]:
        """The registered kinds, sorted."""
        return sorted(self._handlers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.kinds())

    def load_paths(self, paths: Mapping[str, str]) -> None:
        """Register handlers named by dotted path (``package.module:function``).

        Raises:
            ConfigurationError: a path that does not import or is not callable.
        """
        for kind, path in paths.items():
            self.register(kind, load_object(path, f"worker.handlers.{kind}"))

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register the handlers installed packages declare in the entry-point ``group``."""
        for entry in importlib.metadata.entry_points(group=group):
            self.register(entry.name, entry.load())


def load_object(path: str, key: str) -> Any:
    """Import ``package.module:attribute`` (or ``package.module.attribute``).

    Raises:
        ConfigurationError: naming ``key`` and the path.
    """
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigurationError(f"{key}: cannot load {path!r}: {error}", key=key) from None
    if not callable(found):
        raise ConfigurationError(f"{key}: {path!r} is not callable", key=key)
    return found
