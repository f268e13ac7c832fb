"""The durable job queue and its webhook outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

from pipeline_db import schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("jobs", "webhook_deliveries")


def upgrade() -> None:
    schema.metadata.create_all(
        op.get_bind(), tables=[schema.metadata.tables[name] for name in TABLES]
    )


def downgrade() -> None:
    schema.metadata.drop_all(
        op.get_bind(), tables=[schema.metadata.tables[name] for name in reversed(TABLES)]
    )
