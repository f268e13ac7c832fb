"""Idempotency keys: a request repeated with the same key gets the first answer.

Shared through the database, so it holds across every server process and host.
A key is first recorded as in progress; when the first request is answered,
its status, body and content type are stored and every repeat with the same
fingerprint (method, path and body) gets them back. A repeat with another
fingerprint is refused. A request that fails with a server error releases its
key, so a retry may run it again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from pipeline_db.database import Database
from pipeline_db.errors import InvalidInputError
from pipeline_db.queries import idempotency as q

MAX_KEY_LENGTH = 255


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response given to a key's first request."""

    status_code: int
    body: str
    content_type: str
    headers: dict[str, str]


class KeyInProgress(Exception):
    """The first request with this key has not been answered yet."""


class IdempotencyStore:
    """Idempotency keys of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def begin(self, key: str, fingerprint: str) -> StoredResponse | None:
        """Claim ``key`` for a new request, or return the stored response of its first.

        Returns:
            None when the key is new (answer the request, then :meth:`complete`).

        Raises:
            InvalidInputError: the key was used with another request (field ``Idempotency-Key``).
            KeyInProgress: the first request with this key is still being answered.
        """
        if not key or len(key) > MAX_KEY_LENGTH:
            raise InvalidInputError(
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
                field="Idempotency-Key",
            )
        dialect = self._db.dialect

        def work(conn: Connection) -> StoredResponse | None:
            if conn.execute(q.claim(dialect, key, fingerprint)).first() is not None:
                return None
            row = conn.execute(q.stored(key)).one()
            if row.fingerprint != fingerprint:
                raise InvalidInputError(
                    "this Idempotency-Key was already used with a different request",
                    field="Idempotency-Key",
                )
            if row.status_code is None:
                raise KeyInProgress(key)
            return StoredResponse(
                row.status_code, row.response_body or "", row.content_type or "", row.headers or {}
            )

        return await self._db.run_sync(work)

    async def complete(
        self,
        key: str,
        status_code: int,
        body: str,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Store the response of the key's first request."""
        statement = q.complete(key, status_code, body, content_type, headers or {})
        await self._db.run_sync(lambda conn: conn.execute(statement))

    async def release(self, key: str) -> None:
        """Forget an unanswered key (the request failed), so a retry runs it again."""
        await self._db.run_sync(lambda conn: conn.execute(q.release(key)))

    async def prune(self, *, older_than: timedelta) -> int:
        """Forget keys older than ``older_than``; returns how many."""
        before = datetime.now(UTC) - older_than

        def work(conn: Connection) -> int:
            return int(conn.execute(q.prune(before)).rowcount)

        return await self._db.run_sync(work)


def fingerprint(method: str, path: str, body: bytes, extra: Any = "") -> str:
    """A stable hash of what a request asks."""
    digest = hashlib.sha256()
    for part in (method.upper(), path, str(extra)):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()
