"""The exception tree of pipeline-db.

Every error the library raises derives from :class:`PipelineDBError`. Below the
root, errors are split by who is to blame, as asyncpg splits its own:

* :class:`ConfigurationError`: the configuration or the way the library is used
  is wrong; retrying cannot help.
* :class:`DatabaseError`: the database failed. :class:`TransientError` marks the
  failures that are safe to retry (serialization failures, deadlocks, lost
  connections, a busy SQLite file); the retrying transaction retries exactly
  those.
* :class:`DomainError`: the request itself cannot be honoured (not found,
  conflict, invalid input).

Driver errors (``asyncpg``, ``sqlite3``, ``sqlalchemy.exc``) never escape the
library: :mod:`pipeline_db._translate` turns them into these at one seam and
chains the original as ``__cause__``.
"""

from __future__ import annotations

from typing import Any


class PipelineDBError(Exception):
    """A pipeline-db error occurred."""

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.context = context
        super().__init__(self.message)


# -- configuration and misuse -------------------------------------------------


class ConfigurationError(PipelineDBError):
    """The configuration is invalid."""


class InterfaceError(PipelineDBError):
    """The library was used in a way it does not support."""


class SchemaOutOfDateError(ConfigurationError):
    """The database schema is behind this version of pipeline-db."""


# -- database failures --------------------------------------------------------


class DatabaseError(PipelineDBError):
    """The database reported an error."""

    def __init__(
        self, message: str | None = None, *, code: str | None = None, **context: Any
    ) -> None:
        super().__init__(message, **context)
        #: SQLSTATE (PostgreSQL) or result-code name (SQLite) of the cause, if any.
        self.code = code


class TransientError(DatabaseError):
    """A transient database error occurred; the operation is safe to retry."""

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        cause: str | None = None,
        attempts: int = 0,
        **context: Any,
    ) -> None:
        super().__init__(message, code=code, **context)
        #: A short name for the kind of failure ("serialization", "deadlock",
        #: "connection", "shutdown", "busy", "locked", "pool_timeout").
        self.cause = cause
        #: How many attempts were made before giving up (0 when not retried).
        self.attempts = attempts


class CommitOutcomeUnknownError(DatabaseError):
    """The connection was lost during COMMIT: the transaction may or may not have applied.

    Raised instead of retrying when the transaction was not declared idempotent.
    """


# -- domain errors ------------------------------------------------------------


class DomainError(PipelineDBError):
    """The request cannot be honoured as given."""


class NotFoundError(DomainError):
    """The requested record does not exist."""

    @classmethod
    def episode(cls, episode_id: str) -> NotFoundError:
        """No episode ``episode_id`` (every aggregate that refers to one says it alike)."""
        return cls(f"episode {episode_id!r} does not exist", episode_id=episode_id)


class ConflictError(DomainError):
    """The write conflicts with the current state (a duplicate or a missing reference)."""


class InvalidInputError(DomainError):
    """A value is invalid."""

    def __init__(
        self, message: str | None = None, *, field: str | None = None, **context: Any
    ) -> None:
        super().__init__(message, **context)
        #: The name of the offending field, when one is to blame.
        self.field = field
