"""Column-wise fast paths of the conversion: a whole batch's column at C speed.

Most columns of most batches need no conversion at all (text without NUL,
integers, doubles) or one C call per value (timestamps, dates, booleans), so
a batch is converted column by column with ``map`` over C functions, never a
Python call per value. A column decoder returns None when any value of the
column needs a closer look (a wrong type, NaN in JSON, a NUL character, a
timestamp with an offset or in a DST change, an unparseable value): the
batch then goes through the per-value decoders of
:mod:`pipeline_db.transfer.convert`, which find and describe each problem.
They agree with those decoders on every value they accept.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from itertools import repeat
from math import isnan
from operator import add, contains, itemgetter, methodcaller
from typing import Any

from pipeline_db.transfer.convert import (
    INT_RANGES,
    LOCAL_SPELLING,
    UTC_SPELLING,
    Dialect,
    Kind,
    canonical_json,
)

ColumnDecoder = Callable[[Sequence[Any]], Sequence[Any] | None]
ColumnEncoder = Callable[[Sequence[Any]], Sequence[Any]]

_NONE = type(None)
_HOUR = itemgetter(slice(0, 13))
_SEPARATOR = itemgetter(10)
_BOOLS = {0: False, 1: True, None: None}
_BOOL_INTS = {False: 0, True: 1, None: None}
_TO_UTC = methodcaller("astimezone", UTC)
_NAIVE = methodcaller("replace", tzinfo=None)
_SQLITE_TEXT = methodcaller("isoformat", " ", "microseconds")
#: Offsets cached per local hour at most (one per hour of the source's history).
_MAX_CACHED_HOURS = 200_000


def column_decoder(
    kind: Kind,
    *,
    source: Dialect,
    target: Dialect,
    nullable: bool,
    zone: tzinfo,
    counts: Counter[str],
) -> ColumnDecoder:
    """The fast decoder of a column (see the module docstring)."""
    if source == "postgresql":
        if kind == "float" and target == "sqlite":
            return _checked_nulls(_floats_for_sqlite, nullable)
        return _checked_nulls(_as_is, nullable)
    if kind == "text":
        return _checked_nulls(_texts(target == "postgresql"), nullable)
    if kind in ("int", "bigint"):
        return _checked_nulls(_integers(*INT_RANGES[kind]), nullable)
    if kind == "float":
        return _checked_nulls(_floats_for_sqlite if target == "sqlite" else _floats, nullable)
    if kind == "bool":
        return _checked_nulls(_booleans, nullable)
    if kind == "timestamp":
        return _scattered(_Timestamps(zone, counts), nullable)
    if kind == "date":
        return _scattered(_dates, nullable)
    return _scattered(_json_texts(target == "postgresql"), nullable)


def column_encoder(kind: Kind, target: Dialect) -> ColumnEncoder | None:
    """The column-wise encoder into ``target``'s storage; None when values go as they are."""
    if target == "postgresql":
        return None
    if kind == "bool":
        return lambda values: list(map(_BOOL_INTS.__getitem__, values))
    if kind == "timestamp":
        return _skipping_nulls(
            lambda values: list(map(_SQLITE_TEXT, map(_NAIVE, map(_TO_UTC, values))))
        )
    if kind == "date":
        return _skipping_nulls(lambda values: list(map(date.isoformat, values)))
    return None


def canonical_column(kind: Kind, values: Sequence[Any]) -> Sequence[Any]:
    """The column as a verification hashes it (the same on both sides).

    Rows are hashed with Python's ``hash`` within one process: equal values
    hash alike whatever their spelling (an aware datetime as its UTC instant,
    a float by its exact value), so only JSON needs reducing
    (:func:`~pipeline_db.transfer.convert.canonical_json`).
    """
    if kind != "json":
        return values
    if None in values:
        return [None if v is None else canonical_json(v) for v in values]
    return list(map(canonical_json, values))


# -- nulls -----------------------------------------------------------------------


def _checked_nulls(decode: ColumnDecoder, nullable: bool) -> ColumnDecoder:
    """For decoders that pass NULL through: refuse it in a NOT NULL column."""
    if nullable:
        return decode

    def run(values: Sequence[Any]) -> Sequence[Any] | None:
        return None if None in values else decode(values)

    return run


def _scattered(decode: ColumnDecoder, nullable: bool) -> ColumnDecoder:
    """For decoders of non-NULL values: decode the others, keep NULL where it was."""

    def run(values: Sequence[Any]) -> Sequence[Any] | None:
        if None not in values:
            return decode(values)
        if not nullable:
            return None
        positions = [i for i, v in enumerate(values) if v is not None]
        decoded = decode([values[i] for i in positions]) if positions else []
        if decoded is None:
            return None
        result: list[Any] = [None] * len(values)
        for position, value in zip(positions, decoded, strict=True):
            result[position] = value
        return result

    return run


def _skipping_nulls(encode: ColumnEncoder) -> ColumnEncoder:
    def run(values: Sequence[Any]) -> Sequence[Any]:
        if None not in values:
            return encode(values)
        positions = [i for i, v in enumerate(values) if v is not None]
        result: list[Any] = [None] * len(values)
        for position, value in zip(positions, encode([values[i] for i in positions]), strict=True):
            result[position] = value
        return result

    return run


# -- kinds -----------------------------------------------------------------------


def _as_is(values: Sequence[Any]) -> Sequence[Any] | None:
    return values


def _texts(nul_forbidden: bool) -> ColumnDecoder:
    def decode(values: Sequence[Any]) -> Sequence[Any] | None:
        if not set(map(type, values)) <= {str, _NONE}:
            return None
        if nul_forbidden and any(map(contains, filter(None, values), repeat("\x00"))):
            return None
        return values

    return decode


def _integers(low: int, high: int) -> ColumnDecoder:
    def decode(values: Sequence[Any]) -> Sequence[Any] | None:
        if not set(map(type, values)) <= {int, _NONE}:
            return None
        present = [v for v in values if v is not None] if None in values else values
        if present and (min(present) < low or max(present) > high):
            return None
        return values

    return decode


def _floats(values: Sequence[Any]) -> Sequence[Any] | None:
    return values if set(map(type, values)) <= {float, _NONE} else None


def _floats_for_sqlite(values: Sequence[Any]) -> Sequence[Any] | None:
    """Doubles SQLite keeps as they are: no NaN (stored as NULL), no -0.0 (stored as 0.0)."""
    if not set(map(type, values)) <= {float, _NONE}:
        return None
    if any(map(isnan, filter(None, values))) or 0.0 in values:
        return None  # the per-value decoder tells NaN, -0.0 and a harmless 0.0 apart
    return values


def _booleans(values: Sequence[Any]) -> Sequence[Any] | None:
    if not set(map(type, values)) <= {int, _NONE} or not set(values) <= {0, 1, None}:
        return None
    return list(map(_BOOLS.__getitem__, values))


def _dates(values: Sequence[Any]) -> Sequence[Any] | None:
    if set(map(type, values)) != {str} or set(map(len, values)) != {10}:
        return None
    try:
        return list(map(date.fromisoformat, values))
    except ValueError:
        return None


def _json_texts(nul_forbidden: bool) -> ColumnDecoder:
    """JSON text passes as written; canonical hashing parses (and so validates) it."""
    needles = ("NaN", "Infinity", "\\u0000", "\x00") if nul_forbidden else ("NaN", "Infinity")

    def decode(values: Sequence[Any]) -> Sequence[Any] | None:
        if set(map(type, values)) != {str}:
            return None
        for needle in needles:
            if any(map(contains, values, repeat(needle))):
                return None
        return values

    return decode


class _Offsets(dict[str, str]):
    """The UTC offset to append to a naive timestamp, by its first 13 characters.

    ``YYYY-MM-DD HH`` (SQLite's UTC spelling) gets ``+00:00``; ``YYYY-MM-DDTHH``
    (Python's local spelling) gets the zone's offset in that hour, unless the
    offset changes within the hour or the hour is repeated (DST), where ``!``
    sends the value to the exact per-value decoder.
    """

    def __init__(self, zone: tzinfo) -> None:
        super().__init__()
        self.zone = zone

    def __missing__(self, key: str) -> str:
        if len(self) >= _MAX_CACHED_HOURS:
            self.clear()
        suffix = self._suffix(key)
        self[key] = suffix
        return suffix

    def _suffix(self, key: str) -> str:
        if len(key) != 13 or key[10] not in " T":
            return "!"
        if key[10] == " ":
            return "+00:00"
        try:
            start = datetime.fromisoformat(f"{key}:00")
        except ValueError:
            return "!"
        end = start + timedelta(minutes=59, seconds=59, microseconds=999_999)
        offsets = {
            moment.replace(tzinfo=self.zone, fold=fold).utcoffset()
            for moment in (start, end)
            for fold in (0, 1)
        }
        if len(offsets) != 1:
            return "!"
        (offset,) = offsets
        if offset is None:
            return "!"
        return _offset_text(offset)


def _offset_text(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    seconds = int(abs(offset).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")


class _Timestamps:
    """Both legacy spellings of a column at once, each value given its zone's offset."""

    def __init__(self, zone: tzinfo, counts: Counter[str]) -> None:
        self.offsets = _Offsets(zone)
        self.counts = counts

    def __call__(self, values: Sequence[Any]) -> Sequence[Any] | None:
        if set(map(type, values)) != {str} or min(map(len, values)) < 19:
            return None
        suffixes = map(self.offsets.__getitem__, map(_HOUR, values))
        try:
            moments = list(map(datetime.fromisoformat, map(add, values, suffixes)))
        except ValueError:
            return None
        spellings = Counter(map(_SEPARATOR, values))
        for separator, label in ((" ", UTC_SPELLING), ("T", LOCAL_SPELLING)):
            if spellings[separator]:
                self.counts[label] += spellings[separator]
        return moments
