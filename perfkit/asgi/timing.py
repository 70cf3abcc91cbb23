"""Request timing and metrics as pure ASGI, and the ``/metrics`` app that serves them.

``TimingMiddleware`` records, per method, route *template* and status class:

- ``http_requests_total`` (counter);
- ``http_request_duration_seconds`` (histogram; ends at the last body byte, so background
  tasks are excluded) and, with ``ttfb=True``, ``http_request_ttfb_seconds`` (until the
  response start);
- ``http_requests_in_progress`` (gauge; always decremented, even on errors).

An exception in the app is recorded as 500 and re-raised unchanged; a client that
disconnects before the response completes is recorded as 499. Unmatched paths share the
route label ``<unmatched>`` and every family has a series cap, so a scanner cannot blow up
cardinality. Each worker process keeps its own registry: scrape every worker (or label
them with ``worker=``), never one worker behind a load balancer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from perfkit.asgi._asgi import START, ASGIApp, Message, Receive, Scope, Send, route_template
from perfkit.metrics import CONTENT_TYPE, REGISTRY, Registry
from perfkit.spans import collect, format_server_timing, stop

UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASS = {n: f"{n}xx" for n in range(1, 6)}


class TimingMiddleware:
    """Latency histograms, counters and an in-flight gauge; ``X-Response-Time``.

    Defaults: ``registry=perfkit.REGISTRY``, ``exclude_paths=("/metrics",)``,
    ``response_time_header=True`` (``X-Response-Time: 1.234ms``, time to the response
    start), ``server_timing=False`` (it reveals internals: pass True, or a predicate
    ``(scope) -> bool`` such as an allowlist of client addresses), ``max_series=500`` per
    family, ``worker=None`` (pass e.g. ``str(os.getpid())`` to label series per process),
    ``ttfb=False`` (True adds the time-to-first-byte histogram, ~0.6 µs per request).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: Registry | None = None,
        exclude_paths: Iterable[str] = ("/metrics",),
        response_time_header: bool = True,
        server_timing: bool | Callable[[Scope], bool] = False,
        max_series: int = 500,
        worker: str | None = None,
        ttfb: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series!r}")
        registry = registry if registry is not None else REGISTRY
        labels = ("method", "route", "status") + (("worker",) if worker is not None else ())
        self.app = app
        self.registry = registry
        self.exclude_paths = frozenset(exclude_paths)
        self.response_time_header = response_time_header
        self.server_timing = server_timing
        self.worker = worker
        self.clock = clock
        self.requests = registry.counter(
            "http_requests", "HTTP requests by method, route template and status class",
            labels, max_series=max_series)
        self.duration = registry.histogram(
            "http_request_duration_seconds", "Time to the last response body byte",
            labels, max_series=max_series)
        self.ttfb = registry.histogram(
            "http_request_ttfb_seconds", "Time to the response start",
            labels, max_series=max_series) if ttfb else None
        self.in_progress = registry.gauge(
            "http_requests_in_progress", "Requests being served now")
        self.max_series = max_series
        # labels -> the three series: one dict lookup per request instead of three.
        self._series: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        clock = self.clock
        began = clock()
        status = 500
        ttfb: float | None = None
        finished: float | None = None
        disconnected = False
        gate = self.server_timing
        spans, token = collect() if gate is True or (callable(gate) and gate(scope)) else (
            None, None)
        response_time = self.response_time_header

        async def timed_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and finished is None:
                disconnected = True
            return message

        async def timed_send(message: Message) -> None:
            nonlocal status, ttfb, finished
            kind = message["type"]
            if kind == START:
                ttfb = clock() - began
                status = message["status"]
                if response_time or spans is not None:
                    headers = list(message.get("headers", ()))
                    if response_time:
                        headers.append((b"x-response-time", f"{ttfb * 1000:.3f}ms".encode()))
                    if spans is not None:
                        _append_server_timing(headers, [("app", ttfb, None), *spans])
                    message["headers"] = headers
            elif kind == "http.response.body" and not message.get("more_body", False):
                finished = clock()
            await send(message)

        self.in_progress.inc()
        try:
            await self.app(scope, timed_receive, timed_send)
        except BaseException:
            if finished is None:
                status = 499 if disconnected else 500
            raise
        finally:
            self.in_progress.dec()
            if token is not None:
                stop(token)
            if finished is None and disconnected:
                status = 499
            end = finished if finished is not None else clock()
            self._record(scope, status, end - began, ttfb)

    def _record(self, scope: Scope, status: int, duration: float, ttfb: float | None) -> None:
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        route = route_template(scope) or UNMATCHED
        status_class = "499" if status == 499 else _STATUS_CLASS.get(status // 100, "other")
        labels: tuple[str, ...] = (method, route, status_class)
        if self.worker is not None:
            labels += (self.worker,)
        series = self._series.get(labels)
        if series is None:
            series = (self.requests.labels(*labels), self.duration.labels(*labels),
                      self.ttfb.labels(*labels) if self.ttfb is not None else None)
            if len(self._series) < self.max_series:  # past the cap, the registry folds
                self._series[labels] = series
        series[0].inc()
        series[1].observe(duration)
        if ttfb is not None and series[2] is not None:
            series[2].observe(ttfb)


def _append_server_timing(headers: list[tuple[bytes, bytes]], spans: Any) -> None:
    """Append to an existing Server-Timing header instead of adding a second one."""
    value = format_server_timing(spans).encode()
    for i, (key, existing) in enumerate(headers):
        if key.lower() == b"server-timing":
            headers[i] = (key, existing + b", " + value)
            return
    headers.append((b"server-timing", value))


def metrics_app(registry: Registry | None = None) -> ASGIApp:
    """An ASGI app serving ``registry`` (default ``perfkit.REGISTRY``) as Prometheus text.

    Route it at ``/metrics``: ``Route("/metrics", metrics_app())`` in Starlette,
    ``app.add_route("/metrics", metrics_app())`` in FastAPI (``mount`` works too, at
    ``/metrics/``). GET and HEAD get 200, other methods 405. Keep ``/metrics`` in
    ``TimingMiddleware(exclude_paths=...)`` (the default) so scrapes are not counted.
    """
    return _MetricsApp(registry if registry is not None else REGISTRY)


class _MetricsApp:
    """A class, not a function, so Starlette's ``Route`` treats it as an ASGI app."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reg = self.registry
        content_type = CONTENT_TYPE.encode()
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": START, "status": 405,
                        "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = reg.render_prometheus().encode()
        await send({"type": START, "status": 200, "headers": [
            (b"content-type", content_type), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})


def worker_id() -> str:
    """A label value for this process (its pid), for ``TimingMiddleware(worker=...)``."""
    return str(os.getpid())
