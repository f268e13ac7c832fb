"""The pipeline's schema: episodes and everything hanging off them.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

from pipeline_db import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = (
    "episodes",
    "processing_log",
    "processing_metrics",
    "episode_dependencies",
    "json_metadata_index",
    "clips",
    "clip_assets",
    "backup_log",
    "social_jobs",
)


def upgrade() -> None:
    # Tables come from the one schema source; its after_create hook adds the
    # dialect's triggers and full-text search.
    schema.metadata.create_all(
        op.get_bind(), tables=[schema.metadata.tables[name] for name in TABLES]
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute(f"DROP TABLE IF EXISTS {schema.SQLITE_FTS_TABLE}")
    schema.metadata.drop_all(bind, tables=[schema.metadata.tables[name] for name in TABLES])
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS pipeline_db_touch_updated_at()")
        op.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {schema.POSTGRES_SEARCH_CONFIG}")
        op.execute("DROP TEXT SEARCH DICTIONARY IF EXISTS pipeline_db_porter")
