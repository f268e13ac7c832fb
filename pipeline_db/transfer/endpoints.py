"""SOURCE and TARGET on the command line: a SQLite path or URL, a PostgreSQL URL.

Passwords come from the URL or the environment (``PGPASSWORD``, which asyncpg
reads, or a whole URL in a variable: ``env:NAME``), never from a prompt, and
are never echoed: messages describe a database with
:meth:`~pipeline_db.config.DatabaseConfig.describe`.
"""

from __future__ import annotations

import os

from pipeline_db.config import DatabaseConfig, database_config
from pipeline_db.errors import ConfigurationError

_ENV_PREFIX = "env:"


def endpoint_config(spec: str, *, pgbouncer: bool = False) -> DatabaseConfig:
    """The configuration of a database named on the command line.

    Accepts ``path/to/pipeline.db``, ``sqlite:///path``, ``postgresql://user@host/db``
    (``postgres://`` and ``postgresql+asyncpg://`` too), or ``env:NAME`` for a URL
    held in an environment variable. ``pgbouncer``: a PostgreSQL URL leads to
    PgBouncer in transaction pooling mode.

    Raises:
        ConfigurationError: an unset variable or an unusable URL (named, never shown).
    """
    if spec.startswith(_ENV_PREFIX):
        name = spec[len(_ENV_PREFIX) :]
        value = os.environ.get(name)
        if not value:
            raise ConfigurationError(f"environment variable {name} is not set", key=name)
        spec = value
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme.startswith("postgres"):
        return database_config(
            {"type": "postgresql", "url": spec, "pgbouncer": pgbouncer}, environ={}
        )
    if scheme.startswith("sqlite"):
        return database_config({"type": "sqlite", "url": spec}, environ={})
    if scheme:
        raise ConfigurationError(
            f"unsupported database URL scheme {scheme!r} (sqlite or postgresql)", key="url"
        )
    return database_config({"type": "sqlite", "path": spec}, environ={})
