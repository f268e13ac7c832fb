"""The route table: one declaration per operation gives the Starlette route and its OpenAPI.

Each endpoint is declared with :func:`operation`: its method and path, the
pydantic models of its query string and body, and its responses. Requests are
parsed and validated from those same models, so the OpenAPI document at
``/openapi.json`` cannot drift from what the server accepts.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from server.errors import RequestInvalid, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Operation:
    """One HTTP operation: how to serve it and how to document it."""

    method: str
    path: str
    endpoint: Endpoint
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    responses: Mapping[int, tuple[str, type[BaseModel] | None]] = field(default_factory=dict)
    public: bool = False
    #: The media type of a success without a declared model (/metrics is text, /docs HTML).
    media_type: str = "application/json"


REGISTRY: list[Operation] = []


def operation(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    responses: Mapping[int, tuple[str, type[BaseModel] | None]] | None = None,
    public: bool = False,
    media_type: str = "application/json",
) -> Callable[[Endpoint], Endpoint]:
    """Declare an endpoint (a decorator); see the module docstring."""

    def register(endpoint: Endpoint) -> Endpoint:
        REGISTRY.append(
            Operation(
                method,
                path,
                endpoint,
                summary,
                tag,
                query,
                body,
                responses or {},
                public,
                media_type,
            )
        )
        return endpoint

    return register


def public_paths() -> set[tuple[str, str]]:
    """(method, path template) of operations that need no token."""
    return {(op.method, op.path) for op in REGISTRY if op.public}


def parse_query(request: Request, model: type[M]) -> M:
    """Validate the query string against ``model`` (repeated keys become lists).

    Raises:
        RequestInvalid: naming each failing parameter.
    """
    data: dict[str, Any] = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        annotation = model.model_fields.get(key)
        wants_list = annotation is not None and "list" in str(annotation.annotation)
        data[key] = values if wants_list else values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestInvalid.from_validation(error, "query") from None


async def parse_body(request: Request, model: type[M], *, raw: bytes | None = None) -> M:
    """Validate a JSON request body against ``model``.

    Raises:
        UnsupportedMediaType: the body is not declared as JSON.
        RequestInvalid: not JSON, or naming each failing field.
    """
    content_type = request.headers.get("content-type", "")
    body = raw if raw is not None else await request.body()
    if not body and not content_type:
        body, content_type = b"{}", "application/json"
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(content_type or "(none)")
    try:
        data = _load_json(body)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError and ours
        raise RequestInvalid(
            f"the body is not valid JSON: {error}", [("body", str(error))]
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestInvalid.from_validation(error, "body") from None


def _load_json(body: bytes) -> Any:
    """Parse strict JSON: no NaN or Infinity, no unpaired surrogate in a string."""
    data = json.loads(body or b"null", parse_constant=_refuse_constant)
    if b"\\u" in body:
        # "\ud800" parses to a str that UTF-8 cannot encode: no database can store it.
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise ValueError("a string holds an unpaired UTF-16 surrogate") from None
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def path_param(request: Request, name: str) -> str:
    """A path parameter as text."""
    return str(request.path_params[name])
