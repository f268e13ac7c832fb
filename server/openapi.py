"""The OpenAPI 3.1 document, generated from the route table and its pydantic models."""

from __future__ import annotations

import functools
import html
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.api import REGISTRY, Operation

TITLE = "pipeline-db"
VERSION = "1"
_PARAM = re.compile(r"{([^}]+)}")

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    models: set[type[BaseModel]] = set()
    for op in REGISTRY:
        models.update(m for m in (op.query, op.body) if m is not None)
        models.update(m for _, m in op.responses.values() if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, schema = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    components: dict[str, Any] = dict(schema.get("$defs", {}))
    components["Problem"] = PROBLEM_SCHEMA
    refs = {model: keys[(model, "validation")] for model in ordered}
    paths: dict[str, dict[str, Any]] = {}
    for op in REGISTRY:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "The video pipeline's database service. Errors are RFC 9457 "
            "problem documents; every POST honours an Idempotency-Key header.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _operation(
    op: Operation, refs: dict[type[BaseModel], Any], components: dict[str, Any]
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(op.path)
    ]
    if op.query is not None:
        query_schema = components.get(op.query.__name__, {})
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": prop,
                    **({"style": "form", "explode": True} if prop.get("anyOf") else {}),
                }
            )
    if op.method == "POST":
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
            }
        )
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    responses: dict[str, Any] = {}
    for status, (description, model) in op.responses.items():
        entry: dict[str, Any] = {"description": description}
        if model is not None:
            entry["content"] = {"application/json": {"schema": refs[model]}}
        elif status >= 400:
            entry["content"] = problem  # an error a route declares is a problem document too
        responses[str(status)] = entry
    if not any(status < 300 for status in op.responses):
        schema: dict[str, Any] = {} if op.media_type == "application/json" else {"type": "string"}
        responses["200"] = {"description": "OK", "content": {op.media_type: {"schema": schema}}}
    for status, description in _problems(op).items():
        responses.setdefault(str(status), {"description": description, "content": problem})
    result: dict[str, Any] = {
        "summary": op.summary,
        "operationId": op.endpoint.__name__,
        "tags": [op.tag],
        "parameters": parameters,
        "responses": responses,
    }
    if op.public:
        result["security"] = []
    if op.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[op.body]}},
        }
    return result


def _problems(op: Operation) -> dict[int, str]:
    found = {} if op.public else {401: "Missing or invalid bearer token"}
    if op.query is not None or op.body is not None or _PARAM.search(op.path):
        found[422] = "Invalid input (the failing fields are named)"
    if _PARAM.search(op.path):
        found[404] = "Not found"
    if op.body is not None:
        found |= {413: "Body too large", 415: "Body is not JSON"}
    if op.method in ("POST", "PATCH", "DELETE"):
        found[409] = "Conflict with the current state"
    if not op.public:
        found[503] = "Database temporarily unavailable (retry)"
    return found


@functools.cache
def docs_page() -> str:
    """A self-contained HTML page describing every operation (no external assets)."""
    document = openapi_document()
    sections = []
    for path, methods in document["paths"].items():
        for method, spec in methods.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in spec.get("parameters", []))
            statuses = ", ".join(sorted(spec["responses"]))
            sections.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(spec['summary'])}</td><td>{html.escape(params)}</td>"
                f"<td>{statuses}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pipeline-db API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .6em;"
        "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}</style></head><body>"
        f"<h1>{TITLE} API</h1><p>{html.escape(document['info']['description'])} "
        "Authenticate with <code>Authorization: Bearer &lt;token&gt;</code>. "
        "The machine-readable contract is <a href='/openapi.json'>/openapi.json</a>.</p>"
        "<table><tr><th>Method</th><th>Path</th><th>What</th><th>Parameters</th>"
        "<th>Statuses</th></tr>" + "".join(sections) + "</table></body></html>"
    )
