"""TimingMiddleware, Server-Timing spans and metrics_app, parsed back by prometheus_client."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from _asgi_support import drive, http_scope
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from perfkit import MemoryBackend, Registry
from perfkit.asgi import ResponseCacheMiddleware, TimingMiddleware, metrics_app, span


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def series(registry: Registry, name: str) -> dict[tuple[str, ...], Any]:
    return dict(registry.snapshot()[name]["series"])


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def build(registry: Registry, clock: Clock | None = None, **kw: Any) -> Starlette:
    async def item(request: Request) -> Response:
        with span("db", desc="lookup"):
            pass
        return PlainTextResponse(f"item {list(request.path_params.values())}")

    def sync_item(request: Request) -> Response:
        with span("sync-work"):
            pass
        return PlainTextResponse("sync", headers={"server-timing": "cdn;dur=1"})

    async def slow_background(request: Request) -> Response:
        assert clock is not None
        clock.now += 1.0  # the handler's own time

        async def after() -> None:
            clock.now += 100.0  # background work must not count

        return PlainTextResponse("done", background=BackgroundTask(after))

    async def boom(request: Request) -> Response:
        raise KeyError("boom")

    async def gauge(request: Request) -> Response:
        value = series(registry, "http_requests_in_progress")[()]
        return PlainTextResponse(str(value))

    async def cached_page(request: Request) -> Response:
        return PlainTextResponse("cached", headers={"cache-control": "max-age=60"})

    app = Starlette(routes=[
        Route("/items/{id}", item), Route("/sync", sync_item), Route("/bg", slow_background),
        Route("/boom", boom), Route("/gauge", gauge), Route("/cached/{x}", cached_page),
        Mount("/api", routes=[Route("/users/{uid}", item)]),
        Route("/metrics", metrics_app(registry), methods=["GET", "HEAD", "POST"]),
    ])
    kw.setdefault("registry", registry)
    if clock is not None:
        kw["clock"] = clock
    return TimingMiddleware(app, **kw)  # type: ignore[return-value]


async def test_route_templates_not_raw_paths_and_unmatched_collapse() -> None:
    reg = Registry(process_metrics=False)
    async with client(build(reg)) as c:
        for i in range(3):
            await c.get(f"/items/{i}")
        await c.get("/api/users/7")
        for i in range(5):
            await c.get(f"/scanner/{i}.php")
    counts = series(reg, "http_requests_total")
    assert counts[("GET", "/items/{id}", "2xx")] == 3
    assert counts[("GET", "/api/users/{uid}", "2xx")] == 1
    assert counts[("GET", "<unmatched>", "4xx")] == 5
    assert len(counts) == 3


async def test_series_cap_folds_overflow() -> None:
    reg = Registry(process_metrics=False)
    async with client(build(reg, max_series=2)) as c:
        await c.get("/items/1")
        await c.get("/sync")
        await c.get("/gauge")
        await c.get("/api/users/1")
    counts = series(reg, "http_requests_total")
    assert len(counts) == 3  # two real series and one overflow series, however many routes
    assert counts[("__overflow__", "__overflow__", "__overflow__")] == 2


async def test_duration_ends_at_the_last_body_byte_not_after_background_tasks() -> None:
    reg = Registry(process_metrics=False)
    clock = Clock()
    async with client(build(reg, clock)) as c:
        r = await c.get("/bg")
    assert r.text == "done"
    hist = series(reg, "http_request_duration_seconds")[("GET", "/bg", "2xx")]
    assert hist["count"] == 1
    assert 0.99 <= hist["sum"] <= 1.01  # 1 s of handler, not the 100 s background task


async def test_exception_records_500_reraises_and_decrements_the_gauge() -> None:
    reg = Registry(process_metrics=False)
    app = build(reg)
    with pytest.raises(KeyError):
        await drive(app, http_scope("/boom"))
    assert series(reg, "http_requests_total")[("GET", "/boom", "5xx")] == 1
    assert series(reg, "http_requests_in_progress")[()] == 0


async def test_in_progress_gauge_counts_the_current_request() -> None:
    reg = Registry(process_metrics=False)
    async with client(build(reg)) as c:
        r = await c.get("/gauge")
    assert float(r.text) == 1
    assert series(reg, "http_requests_in_progress")[()] == 0


async def test_client_disconnect_before_the_response_records_499() -> None:
    reg = Registry(process_metrics=False)

    async def waits_for_client(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    mw = TimingMiddleware(waits_for_client, registry=reg)
    sent = await drive(mw, http_scope("/long"), incoming=[
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ])
    assert sent == []
    assert series(reg, "http_requests_total")[("GET", "<unmatched>", "499")] == 1
    assert series(reg, "http_requests_in_progress")[()] == 0


async def test_x_response_time_on_and_server_timing_off_by_default() -> None:
    reg = Registry(process_metrics=False)
    async with client(build(reg)) as c:
        r = await c.get("/items/1")
    assert r.headers["x-response-time"].endswith("ms")
    assert "server-timing" not in r.headers


async def test_server_timing_spans_from_the_request_appended_to_an_existing_header() -> None:
    reg = Registry(process_metrics=False)
    async with client(build(reg, server_timing=True)) as c:
        item = await c.get("/items/1")
        sync = await c.get("/sync")
    assert item.headers["server-timing"].startswith("app;dur=")
    assert 'db;dur=' in item.headers["server-timing"]
    assert 'desc="lookup"' in item.headers["server-timing"]
    timing = sync.headers.get_list("server-timing")
    assert len(timing) == 1  # appended, not a second header
    assert timing[0].startswith("cdn;dur=1, app;dur=")
    assert "sync-work;dur=" in timing[0]  # a sync handler in a worker thread


async def test_server_timing_gated_by_a_predicate() -> None:
    reg = Registry(process_metrics=False)
    gate = build(reg, server_timing=lambda scope: scope["client"][0] == "10.0.0.1")
    async with client(gate) as c:
        r = await c.get("/items/1")
    assert "server-timing" not in r.headers


async def test_perfkit_timed_calls_inside_the_request_become_spans() -> None:
    import perfkit

    reg = Registry(process_metrics=False)

    @perfkit.timed(name="load_user", registry=reg)
    async def load_user() -> str:
        return "alice"

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(await load_user())

    app = TimingMiddleware(Starlette(routes=[Route("/u", endpoint)]), registry=reg,
                           server_timing=True)
    async with client(app) as c:
        r = await c.get("/u")
    assert "load_user;dur=" in r.headers["server-timing"]
    assert await load_user() == "alice"  # outside a request: no span, no error


def test_span_outside_a_request_is_a_no_op() -> None:
    with span("free"):
        pass


async def test_metrics_endpoint_parses_and_excludes_itself() -> None:
    reg = Registry(process_metrics=False)
    reg.counter("odd_labels", "label escaping", ("v",)).labels('a"b\\c\nd').inc()
    async with client(build(reg)) as c:
        await c.get("/items/1")
        await c.get("/metrics")
        r = await c.get("/metrics")
        head = await c.head("/metrics")
        post = await c.post("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert head.status_code == 200 and head.content == b""
    assert post.status_code == 405
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    hist = families["http_request_duration_seconds"]
    assert hist.type == "histogram" and hist.documentation
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+inf" or buckets[-1].labels["le"] == "+Inf"
    values = [s.value for s in buckets]
    assert values == sorted(values)  # cumulative
    names = {s.name for s in hist.samples}
    assert {"http_request_duration_seconds_sum", "http_request_duration_seconds_count"} <= names
    odd = families["odd_labels"].samples[0]
    assert odd.labels["v"] == 'a"b\\c\nd'
    routes = {s.labels.get("route") for s in families["http_requests"].samples}
    assert routes == {"/items/{id}"}  # /metrics excluded from its own metrics
    seen = [(s.name, tuple(sorted(s.labels.items()))) for f in families.values()
            for s in f.samples]
    assert len(seen) == len(set(seen))  # no duplicate series


async def test_cache_hits_keep_their_route_label() -> None:
    reg = Registry(process_metrics=False)

    async def page(request: Request) -> Response:
        return PlainTextResponse("p", headers={"cache-control": "max-age=60"})

    inner = Starlette(routes=[Route("/pages/{n}", page)])
    stack = TimingMiddleware(ResponseCacheMiddleware(inner, backend=MemoryBackend()),
                             registry=reg)
    async with client(stack) as c:
        await c.get("/pages/1")
        hit = await c.get("/pages/1")
    assert hit.headers["cache-status"].startswith("perfkit; hit")
    assert series(reg, "http_requests_total")[("GET", "/pages/{n}", "2xx")] == 2


async def test_worker_label_and_two_registries_are_independent() -> None:
    regs = [Registry(process_metrics=False), Registry(process_metrics=False)]
    for i, reg in enumerate(regs):
        async with client(build(reg, worker=f"w{i}")) as c:
            for _ in range(i + 1):
                await c.get("/items/1")
    assert series(regs[0], "http_requests_total") == {("GET", "/items/{id}", "2xx", "w0"): 1}
    assert series(regs[1], "http_requests_total") == {("GET", "/items/{id}", "2xx", "w1"): 2}


async def test_lifespan_and_websocket_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = TimingMiddleware(app, registry=Registry(process_metrics=False))
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket", "path": "/ws"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


async def test_ttfb_histogram_is_opt_in() -> None:
    reg = Registry(process_metrics=False)
    async with client(build(reg)) as c:
        await c.get("/items/1")
    assert "http_request_ttfb_seconds" not in reg.snapshot()
    reg2 = Registry(process_metrics=False)
    async with client(build(reg2, ttfb=True)) as c:
        await c.get("/items/1")
    ttfb = dict(reg2.snapshot()["http_request_ttfb_seconds"]["series"])
    assert ttfb[("GET", "/items/{id}", "2xx")]["count"] == 1


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="max_series"):
        TimingMiddleware(lambda s, r, se: None, max_series=0)  # type: ignore[arg-type,return-value]


async def test_server_timing_names_are_tokens_and_descriptions_are_quoted() -> None:
    reg = Registry(process_metrics=False)

    async def endpoint(request: Request) -> Response:
        with span('db query; "x", y', desc='say "hi"\\'):
            pass
        return PlainTextResponse("ok")

    app = TimingMiddleware(Starlette(routes=[Route("/", endpoint)]), registry=reg,
                           server_timing=True)
    async with client(app) as c:
        r = await c.get("/")
    entries = r.headers["server-timing"].split(", ")
    assert [e.split(";")[0] for e in entries] == ["app", "db_query___x___y"]
    assert entries[1].endswith(';desc="say \\"hi\\"\\\\"')
