"""Tell PgBouncer from PostgreSQL by knocking on PgBouncer's admin console.

PgBouncer serves a virtual database named ``pgbouncer`` (its console). With
the application's own credentials, PgBouncer either lets us in (the user is in
``admin_users`` or ``stats_users``) or turns us away with SQLSTATE 08P01
("not allowed"); PostgreSQL answers 3D000 (no such database). Anything else
(an authentication failure, a timeout) leaves the question open. Answers are
classified by SQLSTATE, never by message.

Through PostgreSQL this costs one failed connection, logged by the server as
``database "pgbouncer" does not exist``: callers knock only when PgBouncer is
configured or the connection does not arrive on the port it was sent to.
"""

from __future__ import annotations

import asyncpg

from pipeline_db.config import DatabaseConfig

CONSOLE_DATABASE = "pgbouncer"
_POSTGRESQL = "3D000"  # invalid_catalog_name
_PGBOUNCER = "08P01"  # PgBouncer's "not allowed" to a console it refuses


async def is_pgbouncer(config: DatabaseConfig) -> bool | None:
    """True: PgBouncer answers at the configured address; False: PostgreSQL; None: unknown."""
    url = config.sqlalchemy_url().set(drivername="postgresql", database=CONSOLE_DATABASE)
    try:
        conn = await asyncpg.connect(
            url.render_as_string(hide_password=False),
            timeout=config.connection_timeout,
            statement_cache_size=0,
        )
    except asyncpg.PostgresError as error:
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate == _POSTGRESQL:
            return False
        return True if sqlstate == _PGBOUNCER else None
    except (OSError, TimeoutError, asyncpg.InterfaceError):
        return None
    await conn.close(timeout=config.connection_timeout)
    return True
