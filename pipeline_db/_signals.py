"""In-process wake-ups: a producer in this process wakes consumers in this process."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Signals:
    """Named channels of asyncio events (the in-process half of LISTEN/NOTIFY)."""

    def __init__(self) -> None:
        self._events: defaultdict[str, set[asyncio.Event]] = defaultdict(set)

    def subscribe(self, channel: str) -> asyncio.Event:
        """An event set on every :meth:`notify` of ``channel`` (clear it after waking)."""
        event = asyncio.Event()
        self._events[channel].add(event)
        return event

    def unsubscribe(self, channel: str, event: asyncio.Event) -> None:
        """Stop setting ``event``."""
        self._events[channel].discard(event)

    def notify(self, channel: str) -> None:
        """Wake every subscriber of ``channel``."""
        for event in self._events.get(channel, ()):
            event.set()
