"""Pure-ASGI middleware: ETags and conditional requests, a response cache that cannot leak,
gzip that honours q-values, timing and a Prometheus ``/metrics`` app.

Stack order, outermost first (``app.add_middleware`` wraps the current stack, so add
them innermost first: ETag, then the cache, then compression, then timing)::

    TimingMiddleware            # sees the final status (304s, hits) and the full duration
      CompressionMiddleware     # negotiates per request, suffixes strong ETags per coding
        ResponseCacheMiddleware # stores identity bytes once, answers hits and 304s
          ETagMiddleware        # strong ETag from the identity body
            app

Another order is not unsafe (the cache keys encoded bodies by the negotiated coding), only
slower: a cache outside compression stores one variant per coding and compresses nothing
on hits. ``MiddlewareStack(app)`` builds exactly this order as one app, and serves plain
pass-through responses in one pass instead of four.
"""

from __future__ import annotations

from perfkit.asgi.compression import CompressionMiddleware
from perfkit.asgi.conditional import conditional
from perfkit.asgi.etag import ETagMiddleware
from perfkit.asgi.response_cache import ResponseCacheMiddleware
from perfkit.asgi.sql import SQLMonitorMiddleware
from perfkit.asgi.stack import MiddlewareStack
from perfkit.asgi.timing import TimingMiddleware, metrics_app
from perfkit.spans import span

__all__ = [
    "CompressionMiddleware",
    "ETagMiddleware",
    "MiddlewareStack",
    "ResponseCacheMiddleware",
    "SQLMonitorMiddleware",
    "TimingMiddleware",
    "conditional",
    "metrics_app",
    "span",
]
