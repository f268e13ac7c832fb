"""Every statement of the idempotency-key store, in SQLAlchemy Core."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Delete, Select, delete, select, update
from sqlalchemy.sql.dml import ReturningInsert, Update

from pipeline_db.queries import insert_for
from pipeline_db.schema import idempotency_keys

_k = idempotency_keys.c


def claim(dialect: str, key: str, fingerprint: str) -> ReturningInsert[Any]:
    """Record a new key as in progress, unless it exists (then no row is returned)."""
    return (
        insert_for(dialect, idempotency_keys)
        .values(key=key, fingerprint=fingerprint)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(_k.key)
    )


def stored(key: str) -> Select[Any]:
    """The stored fingerprint and response of a key."""
    return select(
        _k.fingerprint, _k.status_code, _k.response_body, _k.content_type, _k.headers
    ).where(_k.key == key)


def complete(
    key: str, status_code: int, body: str, content_type: str, headers: dict[str, str]
) -> Update:
    """Store the response given to the key's first request."""
    return (
        update(idempotency_keys)
        .where(_k.key == key)
        .values(
            status_code=status_code,
            response_body=body,
            content_type=content_type,
            headers=headers,
        )
    )


def release(key: str) -> Delete:
    """Forget a key whose request did not complete (a retry may run it again)."""
    return delete(idempotency_keys).where(_k.key == key, _k.status_code.is_(None))


def prune(before: Any) -> Delete:
    """Forget keys created before ``before``."""
    return delete(idempotency_keys).where(_k.created_at < before)
