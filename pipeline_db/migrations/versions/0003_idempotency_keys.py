"""Idempotency keys of HTTP requests, shared by every server process.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

from pipeline_db import schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema.metadata.create_all(op.get_bind(), tables=[schema.idempotency_keys])


def downgrade() -> None:
    schema.metadata.drop_all(op.get_bind(), tables=[schema.idempotency_keys])
