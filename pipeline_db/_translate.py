"""The one seam where driver errors become pipeline-db errors.

SQLAlchemy wraps DBAPI errors in ``sqlalchemy.exc.DBAPIError`` whose ``orig``
is the driver's exception; the backend classifies that by SQLSTATE or SQLite
result code. Messages never include SQL text or statement parameters.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from pipeline_db.backends import Backend, Fault
from pipeline_db.errors import (
    ConfigurationError,
    ConflictError,
    DatabaseError,
    InterfaceError,
    InvalidInputError,
    PipelineDBError,
    TransientError,
)


def translate(error: BaseException, backend: Backend) -> PipelineDBError | None:
    """Return the pipeline-db error for ``error``, or None when it is not a database error."""
    if isinstance(error, PipelineDBError):
        return error
    if isinstance(error, sa_exc.DBAPIError):
        fault = backend.classify(error.orig) if error.orig is not None else None
        if error.connection_invalidated and (fault is None or fault.kind != "transient"):
            fault = Fault(
                "transient",
                "connection",
                fault.code if fault else None,
                fault.message if fault else "the database connection was lost",
            )
        return from_fault(fault or Fault("other", "database", None, _describe(error.orig)))
    if isinstance(error, sa_exc.TimeoutError):
        return TransientError(
            "timed out waiting for a connection from the pool", cause="pool_timeout"
        )
    if isinstance(error, sa_exc.StatementError) and isinstance(error.orig, ValueError | TypeError):
        # Raised while binding a parameter (e.g. a JSON value that cannot be serialised).
        return InvalidInputError(f"a value could not be stored: {error.orig}")
    if isinstance(error, sa_exc.SQLAlchemyError):
        return InterfaceError(f"{type(error).__name__} raised by the SQL layer")
    fault = backend.classify(error)
    return from_fault(fault) if fault is not None else None


def _describe(error: BaseException | None) -> str:
    """The driver's own message (first line), never SQL text or parameters."""
    if error is None:
        return "the database reported an error"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def from_fault(fault: Fault) -> PipelineDBError:
    """Build the pipeline-db error for a classified fault."""
    if fault.kind == "transient":
        return TransientError(fault.message, code=fault.code, cause=fault.cause)
    if fault.kind == "conflict":
        return ConflictError(fault.message, code=fault.code, cause=fault.cause)
    if fault.kind == "invalid":
        return InvalidInputError(fault.message, code=fault.code, cause=fault.cause)
    if fault.kind == "config":
        return ConfigurationError(fault.message, code=fault.code, cause=fault.cause)
    if fault.kind == "misuse":
        return InterfaceError(fault.message, code=fault.code, cause=fault.cause)
    return DatabaseError(fault.message, code=fault.code)
