"""The job kinds pipeline-db ships: registered on every runner.

* ``process_episode``: run the stage handlers of ``worker.stages`` up to a
  target stage (:mod:`pipeline_db.stages`);
* ``discover``: register the videos of ``worker.discover.folders``
  (:mod:`pipeline_db.discover`);
* ``probe``: record a source file's size, dates, duration and codecs
  (:mod:`pipeline_db.probe`);
* ``backup``: back the database up and apply retention (:mod:`pipeline_db.backup`).
"""

from __future__ import annotations

from pipeline_db.backup import backup_job
from pipeline_db.config import DatabaseConfig, WorkerConfig
from pipeline_db.discover import Discoverer
from pipeline_db.handlers import Handlers
from pipeline_db.probe import probe
from pipeline_db.schedule import Periodic
from pipeline_db.stages import EpisodeProcessor


def register_builtins(handlers: Handlers, config: WorkerConfig) -> None:
    """Register the built-in job kinds on ``handlers``.

    Raises:
        ConfigurationError: a ``worker.stages`` entry names an unknown stage or
            a handler that does not import.
    """
    handlers.register("process_episode", EpisodeProcessor.from_config(config))
    handlers.register("discover", Discoverer(config.discover))
    handlers.register("probe", probe)
    handlers.register("backup", backup_job)


def schedules(database: DatabaseConfig, worker: WorkerConfig) -> list[Periodic]:
    """The periodic jobs the configuration asks for: discovery scans and backups."""
    found = []
    if worker.discover.folders and worker.discover.interval > 0:
        found.append(Periodic("discover", worker.discover.interval))
    if database.backup_enabled:
        found.append(Periodic("backup", database.backup_interval_hours * 3600))
    return found
