"""The JSON codec shared by both backends.

Strict: NaN and Infinity are refused (PostgreSQL's jsonb rejects them, so
SQLite must too, or data could not move between the backends), and text is
kept as written (no ASCII escaping), so what is saved is what is read back.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    """Serialise ``value`` to compact JSON; raise ValueError on NaN or Infinity."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """Parse JSON text, refusing NaN and Infinity."""
    return json.loads(text, parse_constant=_refuse_constant)
