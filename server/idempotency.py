"""``Idempotency-Key`` on every POST: a repeat gets the first response, and nothing runs twice.

The key and the first response live in the database (see
:mod:`pipeline_db.idempotency`), so repeats reaching another worker process or
host are answered the same. A repeat while the first is still running gets 409
(n8n retries later); a reused key with another body gets 422. A first request
that ends in a server error (5xx) releases the key so that a retry runs again.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pipeline_db.idempotency import fingerprint
from server.api import Endpoint
from server.context import services
from server.errors import EXCEPTION_HANDLERS

HEADER = "idempotency-key"
REPLAYED = "Idempotent-Replayed"
KEPT_HEADERS = ("location",)


def idempotent(endpoint: Endpoint) -> Endpoint:
    """Wrap a POST endpoint with idempotency-key handling."""

    async def wrapped(request: Request) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return await endpoint(request)
        store = services(request).idempotency
        body = await request.body()
        print_ = fingerprint(request.method, request.url.path, body, request.url.query)
        stored = await store.begin(key, print_)
        if stored is not None:
            return Response(
                stored.body,
                status_code=stored.status_code,
                media_type=stored.content_type,
                headers=stored.headers | {REPLAYED: "true"},
            )
        try:
            response = await endpoint(request)
        except Exception as error:
            response = await _handle(request, error)
        if response.status_code >= 500:
            await store.release(key)
            return response
        headers = {k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS}
        await store.complete(
            key,
            response.status_code,
            bytes(response.body).decode(),
            response.media_type or response.headers.get("content-type", ""),
            headers,
        )
        return response

    wrapped.__name__ = getattr(endpoint, "__name__", "endpoint")
    return wrapped


async def _handle(request: Request, error: Exception) -> Response:
    for kind in type(error).__mro__:
        handler = EXCEPTION_HANDLERS.get(kind)
        if handler is not None:
            response: Response = await handler(request, error)
            return response
    raise error
