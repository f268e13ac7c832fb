"""Bearer-token authentication, as pure ASGI middleware.

Tokens come from ``PIPELINE_API_TOKEN`` or ``server: tokens:`` and are
compared in constant time (``hmac.compare_digest``). n8n's "Bearer Auth"
credential sends ``Authorization: Bearer <token>``; its "Header Auth"
credential can send the same header. Public operations (``/health``, and
``/metrics`` when configured public) need no token.
"""

from __future__ import annotations

import hmac
import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("server.auth")


class BearerAuth:
    """Refuse requests without a valid bearer token with 401 problem+json."""

    def __init__(self, app: ASGIApp, *, tokens: dict[str, str], public: set[str]) -> None:
        self.app = app
        self._tokens = [(token.encode(), name) for token, name in tokens.items()]
        self._public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._public or not self._tokens:
            await self.app(scope, receive, send)
            return
        presented = _bearer(scope)
        name = None
        if presented is not None:
            for token, token_name in self._tokens:
                # Compare against every token, always: the time taken says nothing.
                if hmac.compare_digest(presented, token):
                    name = token_name
        if name is None:
            await _unauthorized(scope, send, "missing" if presented is None else "invalid")
            return
        scope.setdefault("state", {})["token_name"] = name
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> bytes | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = bytes(token).strip()
            return token if bytes(scheme).lower() == b"bearer" and token else None
    return None


async def _unauthorized(scope: Scope, send: Send, why: str) -> None:
    body = json.dumps(
        {
            "type": "/problems/unauthorized",
            "title": "Unauthorized",
            "status": 401,
            "detail": f"{why} bearer token: send 'Authorization: Bearer <token>'",
            "instance": scope["path"],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="pipeline-db"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
