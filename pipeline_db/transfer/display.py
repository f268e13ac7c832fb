"""Progress: a rich bar per table on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol, TextIO

logger = logging.getLogger("pipeline_db.migrate")
#: Seconds between two log lines of one table when not on a terminal.
LOG_INTERVAL_S = 5.0


class Display(Protocol):
    """Told how the copy advances."""

    def start(self, table: str, total: int, done: int) -> None:
        """A table starts (``done`` rows were copied by an earlier run)."""

    def advance(self, table: str, rows: int) -> None:
        """``rows`` more rows of the table were read."""

    def finish(self, table: str) -> None:
        """The table is done."""

    def log(self, message: str) -> None:
        """Say something."""

    def close(self) -> None:
        """Stop displaying."""


def display_for(stream: TextIO | None = None) -> Display:
    """Rich progress bars when ``stream`` (stderr) is a terminal, log lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichDisplay(stream)
    return LogDisplay()


class LogDisplay:
    """One log line per table every few seconds, with rows/s and time left."""

    def __init__(self) -> None:
        self._tables: dict[str, tuple[int, int, float, float, int]] = {}

    def start(self, table: str, total: int, done: int) -> None:
        now = time.monotonic()
        self._tables[table] = (total, done, now, now, done)
        logger.info("%s: copying %s rows%s", table, f"{total:,}", _resumed(done))

    def advance(self, table: str, rows: int) -> None:
        total, done, started, last, first = self._tables[table]
        done += rows
        now = time.monotonic()
        if now - last >= LOG_INTERVAL_S:
            rate = (done - first) / max(now - started, 1e-9)
            left = (total - done) / rate if rate else 0.0
            logger.info(
                "%s: %s/%s rows (%.0f%%), %s rows/s, %.0f s left",
                table,
                f"{done:,}",
                f"{total:,}",
                100 * done / total if total else 100,
                f"{rate:,.0f}",
                left,
            )
            last = now
        self._tables[table] = (total, done, started, last, first)

    def finish(self, table: str) -> None:
        _, done, started, _, first = self._tables.get(table, (0, 0, time.monotonic(), 0, 0))
        seconds = time.monotonic() - started
        rate = (done - first) / seconds if seconds > 0 else 0.0
        logger.info(
            "%s: done, %s rows in %.1f s (%s rows/s)", table, f"{done:,}", seconds, f"{rate:,.0f}"
        )

    def log(self, message: str) -> None:
        logger.info("%s", message)

    def close(self) -> None:
        pass


class RichDisplay:
    """A rich progress bar per table: rows, rows/s, time left."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._console = Console(file=stream)
        self._progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._tasks: dict[str, object] = {}
        self._progress.start()

    def start(self, table: str, total: int, done: int) -> None:
        self._tasks[table] = self._progress.add_task(
            table, total=max(total, done), completed=done, rate=""
        )

    def advance(self, table: str, rows: int) -> None:
        task = self._tasks[table]
        self._progress.advance(task, rows)  # type: ignore[arg-type]
        speed = self._progress.tasks[self._index(task)].speed
        rate = f"{speed:>10,.0f} rows/s" if speed else ""
        self._progress.update(task, rate=rate)  # type: ignore[arg-type]

    def finish(self, table: str) -> None:
        task = self._tasks[table]
        total = self._progress.tasks[self._index(task)].total
        self._progress.update(task, completed=total)  # type: ignore[arg-type]

    def log(self, message: str) -> None:
        self._progress.console.print(message)

    def close(self) -> None:
        self._progress.stop()

    def _index(self, task: object) -> int:
        return next(i for i, t in enumerate(self._progress.tasks) if t.id == task)


def _resumed(done: int) -> str:
    return f" ({done:,} already copied)" if done else ""
