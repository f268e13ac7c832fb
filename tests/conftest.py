"""Shared fixtures: one `db` fixture over both backends, on real databases.

* SQLite: a file under ``tmp_path`` (never ``:memory:``), copied from a
  template migrated once per session.
* PostgreSQL: found through ``PIPELINE_TEST_POSTGRES_URL``, else
  ``postgresql://postgres@127.0.0.1:5432/postgres``. A template database is
  migrated once per session and each test gets a fresh clone
  (``CREATE DATABASE ... TEMPLATE``), dropped afterwards. Under ``CI=true`` an
  unreachable server fails the run instead of skipping.

Tests marked ``sqlite`` or ``postgresql`` (``-m sqlite`` runs one backend) come
from the parametrised ``backend`` fixture.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from pipeline_db import Database, DatabaseConfig, database_config
from pipeline_db.migrations import upgrade

ADMIN_URL = os.environ.get(
    "PIPELINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
TEMPLATE_DB = f"pdbtest_template_{RUN_ID}"

BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


def admin_dsn(database: str | None = None) -> str:
    """A plain libpq DSN for asyncpg, optionally pointing at another database."""
    url = make_url(ADMIN_URL).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


async def admin_execute(*statements: str, database: str | None = None) -> None:
    """Run statements on an admin connection (autocommit)."""
    conn = await asyncpg.connect(admin_dsn(database))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _postgres_available() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(admin_dsn(), timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return f"PostgreSQL at {make_url(ADMIN_URL)!r} is unreachable: {error}"
    return None


def postgres_config(database: str, **overrides: Any) -> DatabaseConfig:
    """A configuration for a test database on the admin server."""
    url = make_url(ADMIN_URL).set(drivername="postgresql", database=database)
    return database_config(
        {"type": "postgresql", "url": url.render_as_string(hide_password=False), **overrides},
        environ={},
    )


def sqlite_config(path: Path, **overrides: Any) -> DatabaseConfig:
    """A configuration for a SQLite test file."""
    return database_config({"type": "sqlite", "path": str(path), **overrides}, environ={})


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str | None]:
    """Create and migrate the template database once; yield its name (None if unavailable)."""
    problem = _postgres_available()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"CI=true and {problem}")
        yield None
        return

    async def create() -> None:
        await admin_execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        async with Database(postgres_config(TEMPLATE_DB)) as db:
            await upgrade(db)

    asyncio.run(create())
    yield TEMPLATE_DB
    asyncio.run(admin_execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test."""
    path = tmp_path_factory.mktemp("template") / "pipeline.db"

    async def create() -> None:
        async with Database(sqlite_config(path)) as db:
            await upgrade(db)

    asyncio.run(create())
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
async def make_config(
    backend: str,
    tmp_path: Path,
    postgres_template: str | None,
    sqlite_template: Path,
) -> AsyncIterator[Callable[..., DatabaseConfig]]:
    """A fresh, migrated database of the backend under test; returns a config factory.

    Call it with overrides (``make_config(pool_size=2)``) for a configuration
    of that same database.
    """
    if backend == "sqlite":
        path = tmp_path / "pipeline.db"
        shutil.copyfile(sqlite_template, path)
        yield lambda **overrides: sqlite_config(path, **overrides)
        return
    if postgres_template is None:
        pytest.skip("PostgreSQL is unreachable (set PIPELINE_TEST_POSTGRES_URL)")
    name = f"pdbtest_{uuid.uuid4().hex[:12]}"
    await admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    try:
        yield lambda **overrides: postgres_config(name, **overrides)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(make_config: Callable[..., DatabaseConfig]) -> AsyncIterator[Database]:
    """An open `Database` on a fresh, migrated database of the backend under test."""
    async with Database(make_config()) as database:
        yield database


# -- PgBouncer (issue 7): a real one in transaction mode, for tests/integration/test_pgbouncer.py


@pytest.fixture(scope="session")
def pgbouncer(
    postgres_template: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A PgBouncer in transaction pooling mode in front of the test server, for the session.

    Yields a ``tests.integration._pgbouncer.PgBouncer``. Skips when PostgreSQL
    or the ``pgbouncer`` binary is missing; under ``CI=true`` fails instead.
    """
    from tests.integration import _pgbouncer

    if postgres_template is None:
        pytest.skip("PostgreSQL is unreachable (set PIPELINE_TEST_POSTGRES_URL)")
    if _pgbouncer.executable() is None:
        if IN_CI:
            pytest.fail("CI=true and pgbouncer is not installed (.ci/run installs it)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    with _pgbouncer.running(tmp_path_factory.mktemp("pgbouncer"), ADMIN_URL) as bouncer:
        yield bouncer
