"""Worker processes: tables copied and verified in parallel, past one core's GIL.

Converting and writing rows is Python work, and one process does it at one
core's speed at most, while the database waits (or, on a busy machine, gets
one thread's share of the CPU). Each table's job
(:func:`pipeline_db.transfer.job.run_table`) is self-contained, so several
run at once in worker processes, each on connections of its own, reporting
progress to this process through a queue. The workers are forked before the
migration opens anything (no thread or connection is copied into them).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pipeline_db.transfer.display import Display
from pipeline_db.transfer.job import TableJob, TableResult, run_table

# The progress queue, created before the fork so every worker inherits it.
_progress: Any = None
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: A worker's collector thresholds. Each batch allocates tens of thousands of
#: short-lived tuples and records: at the default (700, 10, 10) the collector
#: ran every few hundred rows and traversed the batches in flight again and
#: again, about a tenth of a worker's CPU; garbage cycles are rare here.
WORKER_GC_THRESHOLDS = (100_000, 20, 20)


def start_workers(size: int) -> ProcessPoolExecutor | None:
    """Fork the workers now; None off Linux (jobs then run in this process).

    Linux only: a worker must die with the migrating process (``PR_SET_PDEATHSIG``),
    or a killed migration would leave workers writing while ``--resume`` runs.
    """
    global _progress
    if size < 1 or not sys.platform.startswith("linux"):
        return None
    context = multiprocessing.get_context("fork")
    _progress = context.SimpleQueue()
    # Objects that exist now are shared with the workers, copy on write: keep the
    # collector from touching (and so copying) them in every worker.
    gc.freeze()
    pool = ProcessPoolExecutor(
        size, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
    )
    try:
        for future in [pool.submit(_ready) for _ in range(size)]:
            future.result()
    finally:
        gc.unfreeze()  # the workers keep theirs frozen; this process collects as before
    return pool


def stop_workers(pool: ProcessPoolExecutor, *, failed: bool) -> None:
    """Shut the workers down; after a failure, kill them (their jobs are of no use now)."""
    if failed:
        for process in list(getattr(pool, "_processes", {}).values()):  # no public handle
            process.kill()
    pool.shutdown(wait=not failed, cancel_futures=True)


def run_in_worker(job: TableJob) -> TableResult:
    """Run a table's job in this worker process (exceptions travel back pickled)."""
    return asyncio.run(run_table(job, _QueueDisplay(_progress)))


class ProgressRelay:
    """Hands the workers' progress messages to a display, on the event loop's thread."""

    def __init__(self, display: Display) -> None:
        self._display = display
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._relay, name="pipeline-db-progress", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop relaying (after every job ended)."""
        _progress.put(None)
        self._thread.join()

    def _relay(self) -> None:
        while (message := _progress.get()) is not None:
            self._loop.call_soon_threadsafe(self._show, message)

    def _show(self, message: tuple[Any, ...]) -> None:
        kind, *args = message
        getattr(self._display, kind)(*args)


class _QueueDisplay:
    """A worker's display: every call becomes a message to the parent."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def start(self, table: str, total: int, done: int) -> None:
        self._queue.put(("start", table, total, done))

    def advance(self, table: str, rows: int) -> None:
        self._queue.put(("advance", table, rows))

    def finish(self, table: str) -> None:
        self._queue.put(("finish", table))

    def log(self, message: str) -> None:
        self._queue.put(("log", message))

    def close(self) -> None:
        pass


def _ready() -> None:
    """Nothing: makes the pool fork its workers at once."""


def _start_worker(parent: int) -> None:
    """Tie the worker to the migrating process and tune its collector."""
    _die_with_parent(parent)
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the migrating process dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0 or os.getppid() != parent:
        os._exit(1)  # cannot be tied to the parent, or it died already
