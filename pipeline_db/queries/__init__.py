"""SQL, kept per aggregate: each module holds every statement of one aggregate.

Statements are SQLAlchemy Core, one function per query with a one-line
docstring, portable across both backends unless the function says otherwise.
The API modules (``pipeline_db.episodes`` and friends) run them; nothing above
them writes SQL.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(dialect: str, table: Table) -> postgresql.Insert:
    """An INSERT with ``on_conflict_do_nothing`` / ``on_conflict_do_update`` for the dialect.

    Both backends spell ``INSERT ... ON CONFLICT`` the same way, but SQLAlchemy
    builds it from each dialect's own ``insert``.
    """
    if dialect == "postgresql":
        return postgresql.insert(table)
    # SQLite's Insert offers the same on_conflict_* methods as PostgreSQL's.
    return cast(postgresql.Insert, sqlite.insert(table))
