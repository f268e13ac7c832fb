"""Column types and SQL functions that read and write alike on both backends.

Timestamps are ``timestamptz`` on PostgreSQL and UTC text on SQLite, both read
back as timezone-aware UTC datetimes; JSON is JSONB on PostgreSQL and JSON text
on SQLite.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

#: The SQLite text format of a timestamp (UTC).
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} (give it a timezone)")
        try:
            value = value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None
        if dialect.name != "sqlite":
            return value
        # Not strftime(SQLITE_TIMESTAMP_FORMAT): glibc's %Y does not zero-pad years
        # before 1000, and "332-07-27 ..." neither sorts as text nor reads back.
        return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


class utcnow(FunctionElement[datetime]):
    """The current UTC time as a server-side default, in each backend's format."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


# %f is SS.SSS; three more digits give the microsecond format Python writes.
SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW


class utc_after(FunctionElement[datetime]):
    """The database's current UTC time plus a number of seconds (a bound value)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(utc_after, "postgresql")
def _utc_after_postgresql(element: utc_after, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(now() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(utc_after, "sqlite")
def _utc_after_sqlite(element: utc_after, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    offset = f"printf('%+.6f seconds', {compiler.process(seconds, **kw)})"
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', {offset}) || '000')"


JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
#: A 64-bit identity key that is SQLite's rowid (INTEGER PRIMARY KEY AUTOINCREMENT).
IdentityKey = BigInteger().with_variant(Integer(), "sqlite")
