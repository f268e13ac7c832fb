"""Per-column conversion: what one backend stores, to a typed value, to what the other stores.

Every column of :mod:`pipeline_db.schema` has a :data:`Kind`. A *decoder*
turns what a source holds into the typed value: a legacy ``pipeline.db``'s
loose SQLite values (JSON text, 0/1 booleans, timestamps in two spellings),
pipeline-db's own SQLite text, or asyncpg's typed values. It raises
:class:`Problem` when a value cannot reach the target as it is, carrying the
one safe fix when there is one (NUL characters stripped, NaN/Infinity to
null). :mod:`.columns` holds the column-wise fast paths (and the encoders
into each target's storage) that agree with these decoders on every value
they accept.

Typed values: ``str``, ``int``, ``float``, ``bool``, an aware ``datetime``,
a ``date``, and JSON as JSON text (so JSON ``null`` stays distinct from SQL
NULL). :func:`canonical_json` reduces JSON to the form both sides of a
verification hash.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, Boolean, Column, Date, Float, Integer, String
from sqlalchemy.dialects import postgresql

from pipeline_db._json import dumps
from pipeline_db.schema import UTCDateTime

Kind = Literal["text", "int", "bigint", "float", "bool", "timestamp", "date", "json"]
Dialect = Literal["sqlite", "postgresql"]
Decoder = Callable[[Any], Any]

#: Spellings of a timestamp found in a source, as counted in the report.
UTC_SPELLING = "UTC 'YYYY-MM-DD HH:MM:SS'"
LOCAL_SPELLING = "local 'YYYY-MM-DDTHH:MM:SS'"
AMBIGUOUS_SPELLING = "local, in a repeated DST hour (first one taken)"
OFFSET_SPELLING = "with a UTC offset"

INT_RANGES = {"int": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


class _NoFix:
    def __repr__(self) -> str:
        return "NO_FIX"


#: A problem's fix when it has none.
NO_FIX: Any = _NoFix()


class Problem(Exception):
    """A value the target cannot take as it is: why, and its one safe fix if any."""

    def __init__(self, reason: str, fix: Any = NO_FIX) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix

    @property
    def fixable(self) -> bool:
        """Whether the problem has a safe fix (``--on-error repair`` applies it)."""
        return self.fix is not NO_FIX


def kind_of(column: Column[Any]) -> Kind:
    """The kind of a schema column, from its type on PostgreSQL (the stricter backend)."""
    impl = column.type.dialect_impl(_PG)
    if isinstance(column.type, UTCDateTime):
        return "timestamp"
    if isinstance(impl, JSON):
        return "json"
    if isinstance(impl, Boolean):
        return "bool"
    if isinstance(impl, Date):
        return "date"
    if isinstance(impl, Float):
        return "float"
    if isinstance(impl, Integer):
        return "bigint" if isinstance(impl, BigInteger) else "int"
    if isinstance(impl, String):
        return "text"
    raise TypeError(f"no conversion for {column.table.name}.{column.name} ({column.type})")


def decoder(
    kind: Kind,
    *,
    source: Dialect,
    target: Dialect,
    nullable: bool,
    zone: tzinfo = UTC,
    counts: Counter[str] | None = None,
) -> Decoder:
    """A function from what ``source`` stores in a column of ``kind`` to the typed value.

    Args:
        kind: the column's kind.
        source: the dialect the value comes from.
        target: the dialect it goes to (PostgreSQL refuses NUL characters,
            SQLite cannot keep NaN or -0.0).
        nullable: whether the target column takes NULL.
        zone: the time zone of naive local timestamps.
        counts: where lossless conversions and timestamp spellings are counted.
    """
    tally: Counter[str] = counts if counts is not None else Counter()
    if source == "postgresql":
        inner = _postgres_decoder(kind, target)
    else:
        inner = _sqlite_decoder(kind, target, zone, tally)

    if nullable:

        def decode_nullable(value: Any) -> Any:
            return None if value is None else inner(value)

        return decode_nullable

    def decode(value: Any) -> Any:
        if value is None:
            raise Problem("NULL in a NOT NULL column")
        try:
            return inner(value)
        except Problem as problem:
            if problem.fix is None:  # the fix would be NULL, which the column refuses
                raise Problem(f"{problem.reason}, in a NOT NULL column") from None
            raise

    return decode


# -- sources ---------------------------------------------------------------------


def _postgres_decoder(kind: Kind, target: Dialect) -> Decoder:
    """asyncpg hands typed values; only JSON (text) and SQLite's limits need work."""
    if kind == "float" and target == "sqlite":
        return _float_for_sqlite
    return _same


def _sqlite_decoder(kind: Kind, target: Dialect, zone: tzinfo, counts: Counter[str]) -> Decoder:
    nul_forbidden = target == "postgresql"
    if kind == "text":
        return _text(nul_forbidden, counts)
    if kind in ("int", "bigint"):
        return _integer(*INT_RANGES[kind], counts)
    if kind == "float":
        return _float(target, counts)
    if kind == "bool":
        return _boolean
    if kind == "timestamp":
        return _timestamp(zone, counts)
    if kind == "date":
        return _date
    return _json_text(nul_forbidden, counts)


def _same(value: Any) -> Any:
    return value


def _text(nul_forbidden: bool, counts: Counter[str]) -> Decoder:
    def decode(value: Any) -> Any:
        if type(value) is str:
            if nul_forbidden and "\x00" in value:
                raise Problem("NUL character in text", fix=value.replace("\x00", ""))
            return value
        if type(value) is int or type(value) is float:
            counts["number stored in a text column, as text"] += 1
            return repr(value)
        raise Problem(f"{_describe(value)} in a text column")

    return decode


def _integer(low: int, high: int, counts: Counter[str]) -> Decoder:
    def decode(value: Any) -> Any:
        if type(value) is int:
            if low <= value <= high:
                return value
            raise Problem(f"{value} does not fit the column's {high.bit_length() + 1}-bit integer")
        if type(value) is float and value.is_integer() and low <= value <= high:
            counts["REAL with an integral value, as integer"] += 1
            return int(value)
        raise Problem(f"{_describe(value)} in an integer column")

    return decode


def _float(target: Dialect, counts: Counter[str]) -> Decoder:
    def decode(value: Any) -> Any:
        if type(value) is float:
            return _float_for_sqlite(value) if target == "sqlite" else value
        if type(value) is int:
            as_float = float(value)
            if int(as_float) != value:
                raise Problem(f"integer {value} has no exact double-precision value")
            counts["integer in a REAL column, as double"] += 1
            return as_float
        raise Problem(f"{_describe(value)} in a REAL column")

    return decode


def _float_for_sqlite(value: float) -> float | None:
    if math.isnan(value):
        raise Problem("NaN (SQLite stores it as NULL)", fix=None)
    if value == 0 and math.copysign(1.0, value) < 0:
        raise Problem("-0.0 (SQLite keeps no sign on zero)", fix=0.0)
    return value


def _boolean(value: Any) -> Any:
    if value == 1 and type(value) is int:
        return True
    if value == 0 and type(value) is int:
        return False
    raise Problem(f"{_describe(value)} in a boolean column (0 or 1 expected)")


def _timestamp(zone: tzinfo, counts: Counter[str]) -> Decoder:
    parse = datetime.fromisoformat

    def decode(value: Any) -> Any:
        if type(value) is not str or len(value) < 19 or value[4] != "-" or value[10] not in " T":
            raise Problem(f"{_describe(value)} is not a timestamp")
        try:
            moment = parse(value)
            if moment.tzinfo is not None:
                counts[OFFSET_SPELLING] += 1
                return moment.astimezone(UTC)
            if value[10] == " ":
                counts[UTC_SPELLING] += 1
                return moment.replace(tzinfo=UTC)
            local = moment.replace(tzinfo=zone)
            if local.replace(fold=1).utcoffset() != local.utcoffset():
                counts[AMBIGUOUS_SPELLING] += 1
            counts[LOCAL_SPELLING] += 1
            return local.astimezone(UTC)
        except (ValueError, OverflowError) as error:
            raise Problem(f"{_describe(value)} is not a timestamp ({error})") from None

    return decode


def _date(value: Any) -> Any:
    if type(value) is str and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise Problem(f"{_describe(value)} is not a date (YYYY-MM-DD)")


class _NonFinite(ValueError):
    pass


def _refuse(name: str) -> Any:
    raise _NonFinite(name)


def _json_text(nul_forbidden: bool, counts: Counter[str]) -> Decoder:
    def decode(value: Any) -> Any:
        if type(value) is str:
            try:
                json.loads(value, parse_constant=_refuse)
            except _NonFinite:
                return _repair_json(value, nul_forbidden)
            except (ValueError, RecursionError) as error:
                raise Problem(f"not valid JSON ({error})") from None
            if nul_forbidden and ("\\u0000" in value or "\x00" in value):
                return _repair_json(value, nul_forbidden)
            return value
        if type(value) is int or type(value) is float:
            # A JSON column has NUMERIC affinity: SQLite turned the text "5" into 5.
            if type(value) is float and not math.isfinite(value):
                raise Problem(f"{value} in JSON", fix="null")
            return dumps(value)
        raise Problem(f"{_describe(value)} in a JSON column")

    return decode


def _repair_json(value: str, nul_forbidden: bool) -> str:
    """Raise the problems of JSON text that parses leniently, with the repaired text."""
    constants: list[str] = []

    def null(name: str) -> None:
        constants.append(name)

    parsed = json.loads(value, parse_constant=null)
    reasons = [f"{', '.join(sorted(set(constants)))} in JSON"] if constants else []
    if nul_forbidden:
        stripped = _strip_nul(parsed)
        if stripped != parsed:
            reasons.append("NUL character in JSON")
            parsed = stripped
    if not reasons:
        return value
    raise Problem(" and ".join(reasons), fix=dumps(parsed))


def _strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_strip_nul(item) for item in value]
    if isinstance(value, dict):
        return {_strip_nul(k): _strip_nul(v) for k, v in value.items()}
    return value


def _describe(value: Any) -> str:
    if isinstance(value, bytes):
        return f"a BLOB of {len(value)} bytes"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# -- verification ----------------------------------------------------------------


def _zero_signless(text: str) -> float:
    return float(text) + 0.0  # jsonb's numeric has no -0


_CANONICAL_DECODER = json.JSONDecoder(parse_int=float, parse_float=_zero_signless)
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True
)


def canonical_json(text: str) -> str:
    """JSON text with sorted keys and every number a double (raises ValueError if not JSON)."""
    return _CANONICAL_ENCODER.encode(_CANONICAL_DECODER.decode(text))
