"""Alembic environment: runs on the connection pipeline-db hands it (never its own)."""

from __future__ import annotations

from alembic import context

from pipeline_db.migrations import configure_context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - alembic's own CLI is not supported
    raise RuntimeError("run migrations with `pipeline-db db upgrade`, not the alembic command")
configure_context(context, connection)
with context.begin_transaction():
    context.run_migrations()
