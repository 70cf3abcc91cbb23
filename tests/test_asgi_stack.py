"""The documented stack (timing > compression > cache > ETag > app) on FastAPI, and
through a real uvicorn server on loopback: built from the four middleware, and as one
``MiddlewareStack`` (its own equivalence tests are in test_asgi_middleware_stack.py)."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from _asgi_support import body, drive, http_scope, raw_app, start
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from perfkit import MemoryBackend, Registry
from perfkit.asgi import (
    CompressionMiddleware,
    ETagMiddleware,
    ResponseCacheMiddleware,
    TimingMiddleware,
    metrics_app,
)
from perfkit.asgi.stack import MiddlewareStack

ROWS = [{"id": i, "name": f"row {i}", "tags": ["a", "b"]} for i in range(60)]


def build(registry: Registry, compression: Any = CompressionMiddleware,
          events_gap: float = 0.0, stacked: bool = False) -> tuple[Any, Counter[str]]:
    calls: Counter[str] = Counter()
    background_done: list[str] = []
    app = FastAPI()

    @app.get("/rows/{page}")
    async def rows(page: int) -> Response:
        calls["rows"] += 1
        return JSONResponse(ROWS, headers={"cache-control": "max-age=60"})

    @app.get("/events")
    async def events() -> Response:
        async def gen() -> Any:
            for i in range(3):
                if i:
                    await asyncio.sleep(events_gap)
                yield f"data: {i}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.get("/with-background")
    async def with_background() -> Response:
        async def after() -> None:
            background_done.append("done")

        return JSONResponse(ROWS, background=BackgroundTask(after))

    @app.get("/background-count")
    async def background_count() -> dict[str, int]:
        return {"n": len(background_done)}

    app.add_route("/metrics", metrics_app(registry))
    if stacked:
        return MiddlewareStack(app, timing={"registry": registry},
                               cache={"backend": MemoryBackend(maxsize=100)}), calls
    # Innermost first: add_middleware wraps the current stack.
    app.add_middleware(ETagMiddleware)
    app.add_middleware(ResponseCacheMiddleware, backend=MemoryBackend(maxsize=100))
    app.add_middleware(compression)
    app.add_middleware(TimingMiddleware, registry=registry)
    return app, calls


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture(params=["layers", "MiddlewareStack"])
def stacked(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "MiddlewareStack")


async def test_gzip_client_then_identity_client_through_the_stack(stacked: bool) -> None:
    reg = Registry(process_metrics=False)
    app, calls = build(reg, stacked=stacked)
    async with client(app) as c:
        gz = await c.get("/rows/1", headers={"accept-encoding": "gzip"})
        plain = await c.get("/rows/1", headers={"accept-encoding": "identity"})
        revalidate = await c.get("/rows/1", headers={"accept-encoding": "gzip",
                                                      "if-none-match": gz.headers["etag"]})
    assert gz.headers["content-encoding"] == "gzip"
    assert gz.headers["etag"].endswith('-gzip"')
    assert "content-encoding" not in plain.headers
    assert plain.json() == gz.json() == ROWS
    assert plain.headers["cache-status"].startswith("perfkit; hit")
    assert plain.headers["etag"] == gz.headers["etag"].replace("-gzip", "")
    assert revalidate.status_code == 304
    assert revalidate.headers["etag"] == gz.headers["etag"]
    assert calls["rows"] == 1
    counts = dict(reg.snapshot()["http_requests_total"]["series"])
    assert counts[("GET", "/rows/{page}", "2xx")] == 2
    assert counts[("GET", "/rows/{page}", "3xx")] == 1


async def test_starlette_gzip_in_the_stack_keeps_the_cache_safe_but_not_the_etag() -> None:
    reg = Registry(process_metrics=False)
    app, calls = build(reg, compression=GZipMiddleware)
    async with client(app) as c:
        gz = await c.get("/rows/1", headers={"accept-encoding": "gzip"})
        plain = await c.get("/rows/1", headers={"accept-encoding": "identity"})
        refused = await c.get("/rows/1", headers={"accept-encoding": "gzip;q=0"})
    # Safe: the cache sits inside and stores identity bytes, so nobody gets the wrong coding.
    assert "content-encoding" not in plain.headers and plain.json() == ROWS
    assert calls["rows"] == 1
    if refused.headers.get("content-encoding") != "gzip" and gz.headers["etag"] != (
        plain.headers["etag"]
    ):
        pytest.skip("Starlette's GZipMiddleware now honours q=0 and varies the ETag")
    # Starlette's bugs, which CompressionMiddleware fixes: gzip;q=0 is gzipped, and the
    # gzip and identity bodies share one strong ETag.
    assert refused.headers.get("content-encoding") == "gzip"
    assert gz.headers["etag"] == plain.headers["etag"]


async def test_streams_pass_through_the_stack_uncached_and_uncompressed(stacked: bool) -> None:
    reg = Registry(process_metrics=False)
    app, _ = build(reg, stacked=stacked)
    async with client(app) as c:
        r = await c.get("/events", headers={"accept-encoding": "gzip"})
    assert r.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert "content-encoding" not in r.headers
    assert r.headers["cache-status"].endswith("detail=streaming")


async def test_head_from_a_cached_get_has_the_get_validators_for_a_gzip_client(
    stacked: bool,
) -> None:
    # RFC 9110 §9.3.2: HEAD gets the header fields GET would. A hit answers HEAD without a
    # body, so compression cannot measure it, but the coding and the ETag must match GET's.
    reg = Registry(process_metrics=False)
    app, calls = build(reg, stacked=stacked)
    async with client(app) as c:
        for accept in ("gzip", "identity"):
            get = await c.get("/rows/3", headers={"accept-encoding": accept})
            head = await c.head("/rows/3", headers={"accept-encoding": accept})
            assert head.status_code == 200 and head.content == b""
            assert head.headers["cache-status"].startswith("perfkit; hit")
            assert head.headers["etag"] == get.headers["etag"]
            assert head.headers.get("content-encoding") == get.headers.get("content-encoding")
            assert head.headers["vary"] == get.headers["vary"]
            assert head.headers.get("content-length", get.headers["content-length"]) == (
                get.headers["content-length"])
    assert calls["rows"] == 1


# -- ASGI hygiene, for every layer and the stack --------------------------------------------

def _layer(name: str, app: Any) -> Any:
    registry = Registry(process_metrics=False)
    return {
        "etag": lambda: ETagMiddleware(app),
        "compression": lambda: CompressionMiddleware(app),
        "cache": lambda: ResponseCacheMiddleware(app, backend=MemoryBackend(maxsize=100)),
        "timing": lambda: TimingMiddleware(app, registry=registry),
        "layers": lambda: TimingMiddleware(CompressionMiddleware(ResponseCacheMiddleware(
            ETagMiddleware(app), backend=MemoryBackend(maxsize=100))), registry=registry),
        "MiddlewareStack": lambda: MiddlewareStack(
            app, timing={"registry": registry}, cache={"backend": MemoryBackend(maxsize=100)}),
    }[name]()


LAYER_NAMES = ["etag", "compression", "cache", "timing", "layers", "MiddlewareStack"]


@pytest.mark.parametrize("name", LAYER_NAMES)
@pytest.mark.parametrize("size", [10, 3000])  # under and over compression's minimum_size
async def test_unknown_messages_pass_every_layer_unchanged_and_in_order(
    name: str, size: int,
) -> None:
    hint = {"type": "http.response.early_hint", "links": ["</a.css>; rel=preload"]}
    debug = {"type": "http.response.debug", "info": {"template": "x"}}
    trailers = {"type": "http.response.trailers", "headers": [(b"x-checksum", b"1")],
                "more_trailers": False}
    messages = [hint, start(200, [("content-type", "text/plain"),
                                  ("cache-control", "max-age=60")]),
                debug, body(b"x" * size), trailers]
    app = _layer(name, raw_app(messages))
    for accept in ("gzip", "identity", "gzip"):
        sent = await drive(app, http_scope("/", headers=[("accept-encoding", accept)]))
        assert [m["type"] for m in sent] == [m["type"] for m in messages]
        assert sent[0] == hint and sent[2] == debug and sent[4] == trailers


class Boom(Exception):
    pass


@pytest.mark.parametrize("name", LAYER_NAMES)
@pytest.mark.parametrize("when", ["before the start", "after the first chunk"])
async def test_the_apps_exception_comes_out_unchanged_and_a_context_var_stays_visible(
    name: str, when: str,
) -> None:
    # Pure ASGI: the app runs in the caller's task, so what it sets in a ContextVar is
    # visible after the call (unlike BaseHTTPMiddleware), and its exception is its own
    # (not an ExceptionGroup, not a 500 response).
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        var.set("set by the endpoint")
        await raw_app([start(200, [("content-type", "text/plain")]), body(b"x" * 900)])(
            scope, receive, send)

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        if when != "before the start":
            await send(start(200, [("content-type", "text/plain")]))
            await send(body(b"x" * 900, more=True))
        raise Boom("the app's own")

    scope = http_scope("/", headers=[("accept-encoding", "gzip")])
    await drive(_layer(name, ok), scope)
    assert var.get() == "set by the endpoint"
    with pytest.raises(Boom, match="the app's own"):
        await drive(_layer(name, broken), http_scope("/", headers=[("accept-encoding", "gzip")]))


@pytest.mark.parametrize("name", LAYER_NAMES)
async def test_a_background_task_runs_after_the_response_and_does_not_delay_it(
    name: str,
) -> None:
    events: list[str] = []

    async def task() -> None:
        events.append("task started")
        await asyncio.sleep(0.3)
        events.append("task done")

    async def endpoint(request: Request) -> Response:
        return JSONResponse(ROWS, headers={"cache-control": "max-age=60"},
                            background=BackgroundTask(task))

    app = _layer(name, Starlette(routes=[Route("/", endpoint)]))
    began = time.perf_counter()
    seen: dict[str, float] = {}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            seen["body"] = time.perf_counter() - began
            events.append("body")

    async def receive() -> Any:
        await asyncio.sleep(10)  # the client stays connected
        return {"type": "http.disconnect"}

    scope = http_scope("/", headers=[("accept-encoding", "gzip")])
    await asyncio.wait_for(app(scope, receive, send), 5)
    assert events == ["body", "task started", "task done"]
    assert seen["body"] < 0.2  # the last byte went out before the 300 ms task, not after


async def test_concurrent_requests_through_the_stack_interleave_safely(stacked: bool) -> None:
    async def echo(request: Request) -> Response:
        n = int(request.path_params["n"])
        await anyio.sleep(0.001 * (n % 5))  # finish in another order than started
        return JSONResponse([n] * 400, headers={"cache-control": "max-age=60"})

    reg = Registry(process_metrics=False)
    inner = Starlette(routes=[Route("/n/{n}", echo)])
    if stacked:
        app: Any = MiddlewareStack(inner, timing={"registry": reg},
                                   cache={"backend": MemoryBackend(maxsize=100)})
    else:
        app = _layer("layers", inner)
    results: list[tuple[int, str, Any, str | None]] = []

    async with client(app) as c:
        async def one(n: int, accept: str) -> None:
            r = await c.get(f"/n/{n}", headers={"accept-encoding": accept})
            results.append((n, accept, r.json(), r.headers.get("content-encoding")))

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(one, i % 12, "gzip" if i % 2 else "identity")
    assert len(results) == 60
    for n, accept, payload, coding in results:
        assert payload == [n] * 400
        assert coding == ("gzip" if accept == "gzip" else None)


# -- a real server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(stacked: bool) -> Iterator[str]:
    reg = Registry(process_metrics=False)
    app, _ = build(reg, events_gap=0.3, stacked=stacked)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def test_through_uvicorn_on_loopback(server: str) -> None:
    with httpx.Client(base_url=server, timeout=10) as c:
        gz = c.get("/rows/2", headers={"accept-encoding": "gzip"})
        plain = c.get("/rows/2", headers={"accept-encoding": "identity"})
        not_modified = c.get("/rows/2", headers={"accept-encoding": "gzip",
                                                  "if-none-match": gz.headers["etag"]})
        head = c.head("/rows/2", headers={"accept-encoding": "identity"})
        with_bg = c.get("/with-background")
        background = c.get("/background-count").json()
        metrics = c.get("/metrics")
    assert gz.headers["content-encoding"] == "gzip" and gz.json() == ROWS
    assert "content-encoding" not in plain.headers and plain.json() == ROWS
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == plain.headers["etag"]
    assert with_bg.json() == ROWS and background == {"n": 1}
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    routes = {s.labels["route"] for s in families["http_requests"].samples}
    assert "/rows/{page}" in routes and "/metrics" not in routes


def test_sse_events_arrive_one_by_one_through_uvicorn(server: str) -> None:
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.Client(base_url=server, timeout=10) as c, c.stream(
        "GET", "/events", headers={"accept-encoding": "gzip"}
    ) as r:
        for chunk in r.iter_raw():
            if chunk:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 2
    # Events are 300 ms apart: the first must arrive long before the stream ends.
    assert arrivals[-1] - arrivals[0] > 0.3
