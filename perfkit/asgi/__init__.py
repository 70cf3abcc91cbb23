"""Pure-ASGI middleware: ETags and conditional requests, a response cache that cannot leak,
gzip that honours q-values, timing and a Prometheus ``/metrics`` app.

Stack order, outermost first (each layer is added *after* the one inside it, since
``app.add_middleware`` wraps the current stack)::

    TimingMiddleware          # sees the final status and the full duration
      CompressionMiddleware   # negotiates per request, suffixes strong ETags per coding
        ResponseCacheMiddleware / ETagMiddleware   # store identity bytes, answer 304s
          app

:func:`check_stack_order` raises if these layers are nested in another order.
"""

from __future__ import annotations

from perfkit.asgi.compression import CompressionMiddleware
from perfkit.asgi.conditional import conditional
from perfkit.asgi.etag import ETagMiddleware
from perfkit.asgi.response_cache import ResponseCacheMiddleware
from perfkit.asgi.timing import TimingMiddleware, metrics_app
from perfkit.spans import span

__all__ = [
    "CompressionMiddleware",
    "ETagMiddleware",
    "ResponseCacheMiddleware",
    "TimingMiddleware",
    "conditional",
    "metrics_app",
    "span",
]
