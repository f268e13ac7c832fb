"""The job kinds pipeline-db ships: registered on every runner."""

from __future__ import annotations

from pipeline_db.config import WorkerConfig
from pipeline_db.handlers import Handlers


def register_builtins(handlers: Handlers, config: WorkerConfig) -> None:
    """Register the built-in job kinds on ``handlers``."""
