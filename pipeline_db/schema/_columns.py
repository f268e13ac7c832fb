"""Column and constraint helpers the tables share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Column, ForeignKey

from pipeline_db.schema.types import UTCDateTime, utcnow


def _episode_fk(**kw: Any) -> ForeignKey:
    return ForeignKey("episodes.id", ondelete="CASCADE", onupdate="CASCADE", **kw)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _created_at() -> Column[datetime]:
    return Column("created_at", UTCDateTime(), nullable=False, server_default=utcnow())
