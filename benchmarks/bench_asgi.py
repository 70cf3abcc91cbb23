"""In-process cost per request of perfkit's ASGI middleware against a bare Starlette/FastAPI
app, BaseHTTPMiddleware, Starlette's GZipMiddleware, fastapi-cache2, starlette-exporter and
prometheus-fastapi-instrumentator.

Requests are driven straight through the ASGI callable (no HTTP client, no server), so
the figures are the middleware's own cost. Every case checks the last response's status
and body; cache-hit cases check that the handler ran exactly once.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

from benchmarks.harness import Case

PAYLOAD = [{"id": i, "name": f"item-{i:03d}", "ok": True} for i in range(50)]
BODY = json.dumps(PAYLOAD, separators=(",", ":")).encode()  # ~2 KB
OPS = 2_000

App = Callable[..., Any]


def _scope(path: str, accept_encoding: str | None) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept", b"*/*")]
    if accept_encoding is not None:
        headers.append((b"accept-encoding", accept_encoding.encode()))
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
        "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("bench", 80),
    }


def _case(group: str, name: str, app: App, *, baseline: bool = False, note: str = "",
          accept_encoding: str | None = None, expect_gzip: bool = False,
          calls: list[int] | None = None, path: str = "/data") -> Case:
    template = _scope(path, accept_encoding)
    last: list[dict[str, Any]] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def arun(n: int) -> None:
        for _ in range(n):
            sent.clear()
            scope = dict(template)
            scope["headers"] = list(template["headers"])
            await app(scope, receive, send)
        last[:] = sent

    def check() -> None:
        start = next(m for m in last if m["type"] == "http.response.start")
        assert start["status"] == 200, f"{name}: status {start['status']}"
        body = b"".join(m.get("body", b"") for m in last if m["type"] == "http.response.body")
        if expect_gzip:
            body = gzip.decompress(body)
        assert json.loads(body) == PAYLOAD, f"{name}: wrong body"
        if calls is not None:
            assert len(calls) == 1, f"{name}: the handler ran {len(calls)} times, not once"

    return Case(group, name, arun=arun, baseline=baseline, note=note, ops=OPS, check=check)


def _starlette(calls: list[int] | None = None, cache_control: str | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    headers = {"cache-control": cache_control} if cache_control else None

    async def data(request: Request) -> Response:
        if calls is not None:
            calls.append(1)
        return Response(BODY, media_type="application/json", headers=headers)

    return Starlette(routes=[Route("/data", data)])


def _noop_pure(app: App) -> App:
    async def layer(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    return layer


def overhead_cases() -> list[Case]:
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware

    from perfkit import MemoryBackend, Registry
    from perfkit.asgi import (
        CompressionMiddleware,
        ETagMiddleware,
        ResponseCacheMiddleware,
        TimingMiddleware,
    )
    from perfkit.asgi.stack import MiddlewareStack

    group = "ASGI layer on a 2 KB JSON Starlette route"

    class NoopBase(BaseHTTPMiddleware):
        async def dispatch(self, request: Any, call_next: Any) -> Any:
            return await call_next(request)

    def with_base() -> App:
        from starlette.applications import Starlette

        inner = _starlette()
        return Starlette(routes=inner.routes, middleware=[Middleware(NoopBase)])

    registry = Registry(process_metrics=False)
    cases = [
        _case(group, "bare Starlette", _starlette(), baseline=True),
        _case(group, "+ no-op pure-ASGI layer", _noop_pure(_starlette())),
        _case(group, "+ no-op BaseHTTPMiddleware", with_base()),
        _case(group, "+ perfkit ETagMiddleware (xxh3, default)", ETagMiddleware(_starlette())),
        _case(group, "+ perfkit ETagMiddleware (sha256)",
              ETagMiddleware(_starlette(), algorithm="sha256")),
        _case(group, "+ perfkit CompressionMiddleware", CompressionMiddleware(_starlette()),
              accept_encoding="identity", note="client without gzip: negotiation + Vary"),
        _case(group, "+ perfkit TimingMiddleware", TimingMiddleware(
            _starlette(), registry=registry)),
        _case(group, "+ perfkit ResponseCacheMiddleware (miss, not storable)",
              ResponseCacheMiddleware(_starlette(), backend=MemoryBackend()),
              note="no Cache-Control: lookup + decision on every request"),
        _case(group, "+ all four perfkit layers", TimingMiddleware(CompressionMiddleware(
            ResponseCacheMiddleware(ETagMiddleware(_starlette()), backend=MemoryBackend())),
            registry=Registry(process_metrics=False)), accept_encoding="identity",
            note="timing > compression > cache (miss) > ETag"),
        _case(group, "+ perfkit MiddlewareStack", MiddlewareStack(
            _starlette(), timing={"registry": Registry(process_metrics=False)},
            cache={"backend": MemoryBackend()}), accept_encoding="identity",
            note="the same four as one layer"),
    ]
    return cases


def compression_cases() -> list[Case]:
    from starlette.middleware.gzip import GZipMiddleware

    from perfkit.asgi import CompressionMiddleware

    group = "gzip a 2 KB JSON body (client accepts gzip)"
    return [
        _case(group, "Starlette GZipMiddleware (level 9)", GZipMiddleware(_starlette()),
              baseline=True, accept_encoding="gzip, br", expect_gzip=True),
        _case(group, "perfkit CompressionMiddleware (level 6)",
              CompressionMiddleware(_starlette()), accept_encoding="gzip, br",
              expect_gzip=True),
        _case(group, "perfkit CompressionMiddleware (level 9)",
              CompressionMiddleware(_starlette(), compresslevel=9),
              accept_encoding="gzip, br", expect_gzip=True),
    ]


def cache_cases() -> list[Case]:
    from perfkit import MemoryBackend
    from perfkit.asgi import ResponseCacheMiddleware

    group = "response cache hit"
    calls: list[int] = []
    cases = [
        _case(group, "bare Starlette (no cache)", _starlette(), baseline=True),
        _case(group, "perfkit ResponseCacheMiddleware hit (memory)", ResponseCacheMiddleware(
            _starlette(calls, "max-age=3600"), backend=MemoryBackend()), calls=calls),
    ]
    cases.extend(fastapi_cache_cases(group))
    return cases


def fastapi_cache_cases(group: str) -> list[Case]:
    try:
        from fastapi import FastAPI
        from fastapi_cache import FastAPICache
        from fastapi_cache.backends.inmemory import InMemoryBackend
        from fastapi_cache.decorator import cache
    except ImportError as exc:
        return [Case.unavailable(group, "fastapi-cache2 hit (in-memory)", f"not installed: {exc}")]
    from starlette.responses import Response

    from perfkit import MemoryBackend
    from perfkit.asgi import ResponseCacheMiddleware

    def fastapi_app(calls: list[int] | None, decorate: bool) -> Any:
        app = FastAPI()

        async def data() -> Any:
            if calls is not None:
                calls.append(1)
            if decorate:
                return PAYLOAD
            return Response(BODY, media_type="application/json",
                            headers={"cache-control": "max-age=3600"})

        endpoint = cache(expire=3600)(data) if decorate else data
        app.get("/data")(endpoint)
        return app

    FastAPICache.init(InMemoryBackend(), prefix="bench-asgi")
    fc_calls: list[int] = []
    pk_calls: list[int] = []
    def fastapi_dict_app() -> Any:
        app = FastAPI()

        @app.get("/data")
        async def data() -> Any:
            return PAYLOAD

        return app

    return [
        _case(group, "bare FastAPI (no cache)", fastapi_app(None, False)),
        _case(group, "bare FastAPI returning the list (no cache)", fastapi_dict_app(),
              note="what fastapi-cache2 re-serialises on every hit"),
        _case(group, "fastapi-cache2 hit (in-memory)", fastapi_app(fc_calls, True),
              calls=fc_calls),
        _case(group, "perfkit ResponseCacheMiddleware hit on FastAPI", ResponseCacheMiddleware(
            fastapi_app(pk_calls, False), backend=MemoryBackend()), calls=pk_calls),
    ]


def timing_cases() -> list[Case]:
    from perfkit import Registry
    from perfkit.asgi import TimingMiddleware

    group = "request metrics (per-route histogram)"
    cases = [
        _case(group, "bare Starlette", _starlette(), baseline=True),
        _case(group, "perfkit TimingMiddleware", TimingMiddleware(
            _starlette(), registry=Registry(process_metrics=False))),
    ]
    try:
        from starlette_exporter import PrometheusMiddleware

        cases.append(_case(group, "starlette-exporter PrometheusMiddleware",
                           PrometheusMiddleware(_starlette(), group_paths=True)))
    except ImportError as exc:
        cases.append(Case.unavailable(group, "starlette-exporter", f"not installed: {exc}"))
    try:
        from fastapi import FastAPI
        from prometheus_client import CollectorRegistry
        from prometheus_fastapi_instrumentator import Instrumentator
        from starlette.responses import Response

        def fastapi_app() -> Any:
            app = FastAPI()

            @app.get("/data")
            async def data() -> Response:
                return Response(BODY, media_type="application/json")

            return app

        instrumented = fastapi_app()
        Instrumentator(registry=CollectorRegistry()).instrument(instrumented)
        cases.append(_case(group, "bare FastAPI", fastapi_app()))
        cases.append(_case(group, "prometheus-fastapi-instrumentator on FastAPI", instrumented))
    except ImportError as exc:
        cases.append(Case.unavailable(group, "prometheus-fastapi-instrumentator",
                                      f"not installed: {exc}"))
    return cases


def cases() -> list[Case]:
    return overhead_cases() + compression_cases() + cache_cases() + timing_cases()
