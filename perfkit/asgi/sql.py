"""``SQLMonitorMiddleware``: one SQL scope per HTTP request, named by its route template.

Pure ASGI and free of SQLAlchemy: it only opens a :class:`perfkit.sql.SQLScopes` scope
around the request, so every engine watched by ``perfkit.sql.monitor(engine)`` records the
request's statements into it. When the response is done the scope is checked for N+1
patterns (logged once per route and shape, with the route *template*, never the raw path)
and the request's statement count and database time go to the registry. Without a running
monitor the scope sees nothing; the middleware says so once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from perfkit.asgi._asgi import ASGIApp, Receive, Scope, Send, route_template
from perfkit.asgi.timing import _METHODS, UNMATCHED
from perfkit.metrics import Registry

__all__ = ["SQLMonitorMiddleware"]

logger = logging.getLogger("perfkit.sql")



class SQLMonitorMiddleware:
    """Per-request SQL figures and N+1 detection for the engines under ``perfkit.sql.monitor``.

    Defaults: ``n_plus_one=10`` repetitions of one SELECT shape in a request,
    ``lazy_parents=3`` distinct parents of one lazily loaded relationship, ``allow=()``,
    ``registry=perfkit.REGISTRY``, ``exclude_paths=("/metrics",)``, ``max_series=500``
    route labels per metric. Place it anywhere in the stack; the route template is read
    when the response is done.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        n_plus_one: int = 10,
        lazy_parents: int = 3,
        allow: Iterable[str] = (),
        registry: Registry | None = None,
        exclude_paths: Iterable[str] = ("/metrics",),
        max_series: int = 500,
    ) -> None:
        from perfkit.sql.scope import SQLScopes

        self.app = app
        self.scopes = SQLScopes(n_plus_one=n_plus_one, lazy_parents=lazy_parents, allow=allow,
                                registry=registry, max_series=max_series)
        self.exclude_paths = frozenset(exclude_paths)
        self._checked_monitors = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        if not self._checked_monitors:
            self._warn_if_unmonitored()

        def name() -> str:  # resolved when the request is done, after routing
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            return f"{method} {route_template(scope) or UNMATCHED}"

        stats = self.scopes.open(name)
        try:
            await self.app(scope, receive, send)
        finally:
            self.scopes.close(stats)

    def _warn_if_unmonitored(self) -> None:
        self._checked_monitors = True
        from perfkit.sql.monitoring import _OPEN

        if not _OPEN:
            logger.warning(
                "SQLMonitorMiddleware: no engine is monitored, so requests will show no SQL; "
                "call perfkit.sql.monitor(engine) at startup")
