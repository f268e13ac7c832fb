"""The time zone of a legacy pipeline.db's naive local timestamps (``--source-timezone``)."""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline_db.errors import ConfigurationError

_LOCALTIME = Path("/etc/localtime")


def resolve_zone(name: str | None) -> ZoneInfo:
    """The named IANA zone, or the machine's own when ``name`` is None.

    Raises:
        ConfigurationError: the name is not a time zone.
    """
    if name is None:
        return machine_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"--source-timezone {name!r} is not a time zone (an IANA name such as Europe/Paris)"
        ) from None


def machine_zone() -> ZoneInfo:
    """The machine's zone with its DST rules: ``$TZ``, else ``/etc/localtime``, else UTC.

    The zone, not today's offset: a timestamp written in winter converts with
    the winter offset even when the migration runs in summer.
    """
    named = os.environ.get("TZ", "").lstrip(":")
    if named:
        try:
            return ZoneInfo(named)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    if _LOCALTIME.exists():
        target = str(_LOCALTIME.resolve())
        if "zoneinfo/" in target:
            try:
                return ZoneInfo(target.split("zoneinfo/", 1)[1])
            except (ZoneInfoNotFoundError, ValueError):
                pass
        with _LOCALTIME.open("rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    return ZoneInfo("UTC")
