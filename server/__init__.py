"""The HTTP service that n8n calls: a Starlette app over one shared Database."""

from server.app import create_app

__all__ = ["create_app"]
