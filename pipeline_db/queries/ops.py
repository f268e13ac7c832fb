"""Every statement of the operations tools: backups, the doctor and the reports.

Read-only, over every aggregate and the servers' own catalogs. The catalog
statements (``pg_stat_activity``, ``PRAGMA``) are one dialect's, and each says
which; the rest are portable SQLAlchemy Core.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, Table, TextClause, func, select, text

from pipeline_db.schema import UTCDateTime, backup_log, episodes, jobs, utcnow

_j = jobs.c
_b = backup_log.c


# -- both backends ------------------------------------------------------------


def probe() -> Select[Any]:
    """``SELECT 1``: is the database there."""
    return select(1)


def clock(dialect: str) -> Select[Any]:
    """The database's clock, read now (not at the start of the transaction)."""
    if dialect == "postgresql":
        return select(func.clock_timestamp(type_=UTCDateTime()))
    return select(utcnow())


def expired_leases(limit: int) -> Select[Any]:
    """Running jobs whose lease ran out (their runner died), oldest expiry first."""
    return (
        select(_j.id, _j.kind, _j.worker_id, _j.lease_expires_at)
        .where(_j.status == "running", _j.lease_expires_at < utcnow())
        .order_by(_j.lease_expires_at, _j.id)
        .limit(limit)
    )


def count_expired_leases() -> Select[Any]:
    """How many running jobs have an expired lease."""
    return (
        select(func.count())
        .select_from(jobs)
        .where(_j.status == "running", _j.lease_expires_at < utcnow())
    )


def backups() -> Select[Any]:
    """Every backup_log entry, newest first."""
    return select(*backup_log.c).order_by(_b.created_at.desc(), _b.id.desc())


def backup_by_path(path: str) -> Select[Any]:
    """The newest backup_log entry of a file."""
    return select(*backup_log.c).where(_b.backup_path == path).order_by(_b.id.desc()).limit(1)


def row_count(table: Table) -> Select[Any]:
    """The exact number of rows of ``table``."""
    return select(func.count()).select_from(table)


def episodes_by_stage() -> Select[Any]:
    """(stage, count) of episodes."""
    return select(episodes.c.stage, func.count()).group_by(episodes.c.stage)


# -- PostgreSQL ---------------------------------------------------------------


def server_version() -> TextClause:
    """The server's version string (PostgreSQL)."""
    return text("SELECT current_setting('server_version')")


def server_version_num() -> TextClause:
    """The server's version as a number, 150004 for 15.4 (PostgreSQL)."""
    return text("SELECT current_setting('server_version_num')::int")


def connection_limits() -> TextClause:
    """max_connections, superuser_reserved_connections, reserved_connections (PostgreSQL).

    ``reserved_connections`` (for pg_use_reserved_connections) exists from
    PostgreSQL 16; older servers read 0.
    """
    return text(
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "coalesce(current_setting('reserved_connections', true), '0')::int"
    )


def foreign_connections() -> TextClause:
    """Client sessions on the server of other applications than ``:app`` (PostgreSQL)."""
    return text(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND application_name IS DISTINCT FROM :app"
    )


def other_sessions() -> TextClause:
    """Client sessions on this database besides our own (PostgreSQL)."""
    return text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'"
    )


def server_endpoint() -> TextClause:
    """The address and port the server sees our connection arrive on (PostgreSQL)."""
    return text("SELECT host(inet_server_addr()), inet_server_port()")


def table_sizes() -> TextClause:
    """(table, bytes with indexes and TOAST) of the current schema's tables (PostgreSQL)."""
    return text(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
    )


def current_database() -> TextClause:
    """The name of the database we are connected to (PostgreSQL)."""
    return text("SELECT current_database()")


def database_size() -> TextClause:
    """The current database's size in bytes (PostgreSQL)."""
    return text("SELECT pg_database_size(current_database())")


def statements_extension() -> TextClause:
    """pg_stat_statements: (available, installed schema or NULL, shared_preload_libraries)."""
    return text(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions "
        "WHERE name = 'pg_stat_statements'), "
        "(SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'), "
        "current_setting('shared_preload_libraries')"
    )


def slowest_statements(schema: str) -> TextClause:
    """The statements of this database with the highest mean time (pg_stat_statements, 13+)."""
    view = '"' + schema.replace('"', '""') + '".pg_stat_statements'
    return text(
        f"SELECT query, calls, mean_exec_time, total_exec_time, rows FROM {view} "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "ORDER BY mean_exec_time DESC LIMIT :limit"
    )


def connections() -> TextClause:
    """Client sessions on the server by database, application and state (PostgreSQL)."""
    return text(
        "SELECT datname, coalesce(nullif(application_name, ''), '(none)') AS application, "
        "coalesce(state, '(hidden)') AS state, count(*) AS sessions, "
        "extract(epoch FROM max(clock_timestamp() - state_change))::float8 AS longest "
        "FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
        "GROUP BY 1, 2, 3 ORDER BY sessions DESC, 1, 2, 3"
    )


def lock_waits() -> TextClause:
    """Sessions of this database waiting on a lock, each with a session blocking it (PostgreSQL).

    ``pg_blocking_pids`` is what the server itself knows; it is asked only
    for sessions that wait on a heavyweight lock, as it takes the lock
    manager's locks.
    """
    return text(
        "SELECT w.pid, coalesce(nullif(w.application_name, ''), '(none)'), "
        "w.wait_event_type || ':' || w.wait_event, "
        "extract(epoch FROM clock_timestamp() - w.query_start)::float8, w.query, "
        "blocking.pid, coalesce(nullif(b.application_name, ''), '(none)'), b.state, "
        "extract(epoch FROM clock_timestamp() - b.xact_start)::float8, b.query "
        "FROM pg_stat_activity w "
        "CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocking(pid) "
        "LEFT JOIN pg_stat_activity b ON b.pid = blocking.pid "
        "WHERE w.datname = current_database() AND w.wait_event_type = 'Lock' "
        "ORDER BY w.query_start, w.pid, blocking.pid"
    )


# -- SQLite -------------------------------------------------------------------


def journal_mode() -> TextClause:
    """The journal mode in effect (SQLite)."""
    return text("PRAGMA journal_mode")


def integrity_check(max_errors: int) -> TextClause:
    """SQLite's full integrity check: "ok", or up to ``max_errors`` problems."""
    return text(f"PRAGMA integrity_check({int(max_errors)})")


def sqlite_table_sizes() -> TextClause:
    """(table, bytes with its indexes) from the dbstat virtual table (SQLite)."""
    return text(
        "SELECT s.tbl_name, sum(d.pgsize) FROM dbstat AS d "
        "JOIN sqlite_schema AS s ON s.name = d.name GROUP BY s.tbl_name"
    )


def sqlite_size() -> TextClause:
    """The database file's size in bytes, from its pages (SQLite)."""
    return text("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
