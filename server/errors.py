"""Errors as ``application/problem+json`` (RFC 9457), mapped in this one place.

Every error body has a stable ``type``, a ``title``, the ``status``, a human
``detail`` (what n8n shows its user) and, for invalid input, the failing
``errors`` as ``{"field", "message"}``. No body ever holds a stack trace,
SQL or a secret: library errors carry their own safe messages, and anything
unexpected becomes a generic 500 that is logged, not returned.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pipeline_db import (
    CommitOutcomeUnknownError,
    ConflictError,
    DatabaseError,
    InvalidInputError,
    NotFoundError,
    PipelineDBError,
    SchemaOutOfDateError,
    TransientError,
)
from pipeline_db.idempotency import KeyInProgress

logger = logging.getLogger("server")

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = "1"


class ApiError(Exception):
    """An error the API answers with a problem document."""

    status = 500
    slug = "internal"
    title = "Internal server error"

    def __init__(self, detail: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class RequestInvalid(ApiError):
    """The request's parameters or body are invalid."""

    status = 422
    slug = "invalid-request"
    title = "Invalid request"

    @classmethod
    def from_validation(cls, error: ValidationError, where: str) -> RequestInvalid:
        """Name every failing field of a pydantic validation error."""
        errors = []
        for item in error.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in item["loc"]) or where
            errors.append((field, item["msg"]))
        detail = "; ".join(f"{field}: {message}" for field, message in errors)
        return cls(f"invalid {where}: {detail}", errors)


class UnsupportedMediaType(ApiError):
    """The body is not JSON."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"

    def __init__(self, content_type: str) -> None:
        super().__init__(f"the body must be application/json, not {content_type}")


class PayloadTooLarge(ApiError):
    """The body is over the configured size."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"


class Unauthorized(ApiError):
    """No valid bearer token."""

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


_LIBRARY: list[tuple[type[BaseException], int, str, str]] = [
    (NotFoundError, 404, "not-found", "Not found"),
    (ConflictError, 409, "conflict", "Conflict"),
    (KeyInProgress, 409, "request-in-progress", "Request in progress"),
    (InvalidInputError, 422, "invalid-input", "Invalid input"),
    (SchemaOutOfDateError, 503, "schema-out-of-date", "Schema out of date"),
    (TransientError, 503, "database-busy", "Database temporarily unavailable"),
    (CommitOutcomeUnknownError, 503, "commit-outcome-unknown", "Outcome unknown"),
    (DatabaseError, 500, "database-error", "Database error"),
]


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = [{"field": f, "message": m} for f, m in errors]
    return Response(
        json.dumps(body, ensure_ascii=False),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


async def api_error(request: Request, exc: Exception) -> Response:
    """ApiError -> its problem document."""
    assert isinstance(exc, ApiError)
    return problem(
        exc.status, exc.slug, exc.title, exc.detail, instance=request.url.path, errors=exc.errors
    )


async def library_error(request: Request, exc: Exception) -> Response:
    """A pipeline-db error -> 404, 409, 422 or 503 (the MRO picks the closest match)."""
    status, slug, title = next(
        ((s, g, t) for kind, s, g, t in _LIBRARY if isinstance(exc, kind)),
        (500, "internal", "Internal server error"),
    )
    message = getattr(exc, "message", None) or str(exc) or title
    errors = None
    field = getattr(exc, "field", None)
    if field:
        errors = [(str(field), message)]
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    if status >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, status, message)
    return problem(
        status, slug, title, message, instance=request.url.path, errors=errors, headers=headers
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (404 route, 405 method) as problem+json."""
    assert isinstance(exc, HTTPException)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return problem(
        exc.status_code,
        slug,
        str(exc.detail),
        str(exc.detail),
        instance=request.url.path,
        headers=dict(exc.headers or {}),
    )


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Anything else: logged with its traceback, answered without it."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        "internal",
        "Internal server error",
        "an unexpected error occurred",
        instance=request.url.path,
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: api_error,
    PipelineDBError: library_error,
    KeyInProgress: library_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
