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
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from perfkit.asgi._asgi import (
    BODY,
    START,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    route_template,
)
from perfkit.metrics import CONTENT_TYPE, REGISTRY, Registry
from perfkit.spans import collect, format_server_timing, stop

UNMATCHED = "<unmatched>"
RESPONSE_TIME = b"x-response-time"
RESPONSE_TIME_FORMAT = b"%.3fms"  # of milliseconds: X-Response-Time: 1.234ms
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
        in_progress = self.in_progress.unlabelled()
        self._started = in_progress.inc_one  # lock-free: one C call each per request
        self._ended = in_progress.dec_one
        self.max_series = max_series
        # (method, route, status) -> bound recorders: one dict lookup per request.
        self._series: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        timer = _Timer(self.clock, send, receive, self.response_time_header)
        token = self.begin(scope, timer)
        try:
            await self.app(scope, timer.receive, timer.send)
        except BaseException:
            timer.failed()
            raise
        finally:
            self.end(scope, timer, token)

    def begin(self, scope: Scope, timer: _Timer) -> Any:
        """Start timing a request: in-flight gauge up, spans collected if enabled."""
        gate = self.server_timing
        token = None
        if gate is not False and (gate is True or (callable(gate) and gate(scope))):
            timer.spans, token = collect()
        self._started()
        return token

    def end(self, scope: Scope, timer: _Timer, token: Any) -> None:
        """Record a request :meth:`begin` started, however it ended."""
        self._ended()
        if token is not None:
            stop(token)
        finished = timer.finished
        if finished is None:
            if timer.disconnected:
                timer.status = 499
            finished = self.clock()
        status = timer.status
        route = route_template(scope) or UNMATCHED
        key = (scope["method"], route, status)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
        series[0]()
        series[1](finished - timer.began)
        ttfb = timer.ttfb
        if ttfb is not None and series[2] is not None:
            series[2](ttfb)

    def _new_series(self, key: tuple[str, str, int]) -> tuple[Any, Any, Any]:
        method, route, status = key
        status_class = "499" if status == 499 else _STATUS_CLASS.get(status // 100, "other")
        labels: tuple[str, ...] = (method if method in _METHODS else "OTHER", route,
                                   status_class)
        if self.worker is not None:
            labels += (self.worker,)
        series = (self.requests.labels(*labels).inc_one, self.duration.labels(*labels).observe,
                  self.ttfb.labels(*labels).observe if self.ttfb is not None else None)
        if len(self._series) < self.max_series:  # past the cap, the registry folds
            self._series[key] = series
        return series


class _Timer:
    """One request's timestamps and status; ``send`` returns the next layer's awaitable."""

    __slots__ = ("began", "clock", "disconnected", "finished", "header", "out", "spans",
                 "status", "ttfb", "upstream")

    def __init__(self, clock: Callable[[], float], send: Send, receive: Receive,
                 header: bool) -> None:
        self.clock = clock
        self.out = send
        self.upstream = receive
        self.header = header
        self.spans: Any = None
        self.status = 500
        self.ttfb: float | None = None
        self.finished: float | None = None
        self.disconnected = False
        self.began = clock()

    def failed(self) -> None:
        """The app raised: a 500, or a 499 if the client had gone."""
        if self.finished is None:
            self.status = 499 if self.disconnected else 500

    async def receive(self) -> Message:
        message = await self.upstream()
        if message["type"] == "http.disconnect" and self.finished is None:
            self.disconnected = True
        return message

    def send(self, message: Message) -> Awaitable[None]:
        kind = message["type"]
        if kind == START:
            self.ttfb = ttfb = self.clock() - self.began
            self.status = message["status"]
            if self.spans is not None:
                headers = list(message.get("headers", ()))
                if self.header:
                    headers.append((RESPONSE_TIME, RESPONSE_TIME_FORMAT % (ttfb * 1000)))
                _append_server_timing(headers, [("app", ttfb, None), *self.spans])
                message["headers"] = headers
            elif self.header:
                message["headers"] = [*message.get("headers", ()),
                                      (RESPONSE_TIME, RESPONSE_TIME_FORMAT % (ttfb * 1000))]
        elif kind == BODY and not message.get("more_body", False):
            self.finished = self.clock()
        return self.out(message)


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
