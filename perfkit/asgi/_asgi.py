"""ASGI types and the few header helpers every middleware here shares.

Kept free of Starlette so the middleware runs under any ASGI 3 server or framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

START = "http.response.start"
BODY = "http.response.body"


def content_length(headers: Any) -> int | None:
    """The declared Content-Length, or None if absent or malformed."""
    for key, value in headers:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def empty_body() -> Message:
    return {"type": BODY, "body": b"", "more_body": False}


SCOPE_ROUTE = "perfkit.route"
"""Scope key where the response cache leaves the route template of an entry it serves."""


def route_template(scope: Scope) -> str | None:
    """The matched route's path template (Starlette/FastAPI set ``scope["route"]``)."""
    cached = scope.get(SCOPE_ROUTE)
    if cached is not None:
        return str(cached)
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    # Inside a Mount, root_path holds the mount prefix (beyond the app's own root path).
    mount: str = scope.get("root_path", "")[len(scope.get("app_root_path", "")):]
    return mount + path
