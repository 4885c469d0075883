"""The HTTP API: an ASGI app (FastAPI) over the query layer and the client calls."""

from tether.api.app import create_app

__all__ = ["create_app"]
