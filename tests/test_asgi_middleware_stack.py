"""``MiddlewareStack`` answers exactly as the four layers do, message by message.

Every case runs the same requests through ``Timing(Compression(Cache(ETag(app))))`` and
through ``MiddlewareStack(app)`` (each with its own registry and cache) and compares what
the client receives, the cache's counters and the recorded metrics. The shortcut must
also be the path actually taken for plain pass-through responses, and leave no cycles.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from perfkit import MemoryBackend, Registry
from perfkit.asgi import (
    CompressionMiddleware,
    ETagMiddleware,
    ResponseCacheMiddleware,
    TimingMiddleware,
    conditional,
)
from perfkit.asgi import etag as etag_module
from perfkit.asgi.stack import MiddlewareStack
from tests._asgi_support import body, drive, http_scope, raw_app, start

JSON = b'{"items": [' + b", ".join(b'{"id": %d, "name": "item %d"}' % (i, i)
                                   for i in range(60)) + b"]}"

# name -> the messages the app sends (each run gets a copy)
RESPONSES: dict[str, list[dict[str, Any]]] = {
    "plain json": [start(200, [("content-type", "application/json"),
                               ("content-length", str(len(JSON)))]), body(JSON)],
    "json, storable": [start(200, [("content-type", "application/json"),
                                   ("cache-control", "max-age=60")]), body(JSON)],
    "small text": [start(200, [("content-type", "text/plain")]), body(b"hello")],
    "not compressible": [start(200, [("content-type", "image/png")]), body(b"\x89PNG" * 300)],
    "no content type": [start(200), body(b"x" * 700)],
    "own etag": [start(200, [("content-type", "application/json"), ("etag", '"v1"')]),
                 body(JSON)],
    "last-modified": [start(200, [("content-type", "text/plain"),
                                  ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")]),
                      body(b"old" * 300)],
    "encoded": [start(200, [("content-type", "application/json"),
                            ("content-encoding", "br")]), body(b"\x00" * 600)],
    "own vary": [start(200, [("content-type", "application/json"), ("vary", "Cookie")]),
                 body(JSON)],
    "no-store": [start(200, [("content-type", "application/json"),
                             ("cache-control", "no-store")]), body(JSON)],
    "private, set-cookie": [start(200, [("content-type", "application/json"),
                                        ("set-cookie", "sid=alice"),
                                        ("cache-control", "private")]), body(JSON)],
    "streamed": [start(200, [("content-type", "text/plain")]), body(b"a" * 400, more=True),
                 body(b"b" * 400, more=True), body(b"")],
    "declared too large": [start(200, [("content-type", "application/json"),
                                       ("content-length", "5000000")]), body(JSON)],
    "not found": [start(404, [("content-type", "application/json")]), body(b'{"e": 1}' * 80)],
    "no content": [start(204), body(b"")],
    "created": [start(201, [("content-type", "application/json")]), body(JSON)],
    "server error": [start(500, [("content-type", "text/plain")]), body(b"boom" * 200)],
    "trailers": [dict(start(200, [("content-type", "text/plain")]), trailers=True),
                 body(b"t" * 600), {"type": "http.response.trailers", "headers": [],
                                    "more_trailers": False}],
}

# name -> (method, request headers)
REQUESTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "identity": ("GET", [("accept-encoding", "identity")]),
    "gzip": ("GET", [("accept-encoding", "gzip, deflate")]),
    "no accept-encoding": ("GET", []),
    "gzip refused": ("GET", [("accept-encoding", "gzip;q=0")]),
    "head": ("HEAD", [("accept-encoding", "identity")]),
    "authorization": ("GET", [("authorization", "Bearer x"), ("accept-encoding", "gzip")]),
    "no-cache request": ("GET", [("cache-control", "no-cache")]),
    "post": ("POST", [("content-type", "application/json")]),
    "if-none-match *": ("GET", [("if-none-match", "*")]),
    "if-modified-since": ("GET", [("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]),
}

LAYERS = ("timing", "compression", "cache", "etag")


def layered(app: Any, registry: Registry, **off: bool) -> Any:
    """The four middleware in the documented order, leaving out those named False."""
    if off.get("etag", True):
        app = ETagMiddleware(app, max_body=4096)
    cache = None
    if off.get("cache", True):
        app = cache = ResponseCacheMiddleware(app, backend=MemoryBackend())
    if off.get("compression", True):
        app = CompressionMiddleware(app)
    if off.get("timing", True):
        app = TimingMiddleware(app, registry=registry)
    return app, cache


def stacked(app: Any, registry: Registry, **off: bool) -> Any:
    options: dict[str, Any] = {
        "etag": {"max_body": 4096}, "cache": {"backend": MemoryBackend()},
        "compression": True, "timing": {"registry": registry}}
    options.update({name: False for name, on in off.items() if not on})
    stack = MiddlewareStack(app, **options)
    return stack, stack.cache


def received(messages: list[dict[str, Any]]) -> list[Any]:
    """What a client can see, with the one value that differs by run (the timing)."""
    seen = []
    for m in messages:
        item = dict(m)
        if "headers" in item:
            item["headers"] = [(k, b"<ms>" if k == b"x-response-time" else v)
                               for k, v in item["headers"]]
        seen.append(item)
    return seen


def metrics(registry: Registry) -> Any:
    snap = registry.snapshot()
    return (dict(snap["http_requests_total"]["series"]),
            {k: v["count"] for k, v in snap["http_request_duration_seconds"]["series"].items()})


async def run_both(messages: list[dict[str, Any]], requests: list[tuple[str, list[Any]]],
                   **off: bool) -> None:
    results = []
    for build in (layered, stacked):
        registry = Registry(process_metrics=False)
        app, cache = build(raw_app(messages), registry, **off)
        seen = [received(await drive(app, http_scope("/r", method, headers)))
                for method, headers in requests]
        results.append((seen, dict(cache.stats) if cache is not None else None,
                        metrics(registry) if off.get("timing", True) else None))
    (l_seen, l_stats, l_metrics), (s_seen, s_stats, s_metrics) = results
    for i, (a, b) in enumerate(zip(l_seen, s_seen)):
        assert b == a, f"request {i} {requests[i]}"
    assert s_stats == l_stats
    assert s_metrics == l_metrics


@pytest.mark.parametrize("response", list(RESPONSES))
@pytest.mark.parametrize("request_name", list(REQUESTS))
async def test_the_stack_answers_as_the_layers_do(response: str, request_name: str) -> None:
    method, headers = REQUESTS[request_name]
    # Three times: the first may record hit-for-pass or store, the next take the shortcut
    # or hit; then an identity client after whoever came first.
    requests = [(method, headers)] * 3 + [("GET", [("accept-encoding", "identity")])]
    await run_both(RESPONSES[response], requests)


@pytest.mark.parametrize("left_out", LAYERS)
@pytest.mark.parametrize("response", ["plain json", "json, storable", "streamed", "own etag",
                                      "not found", "small text"])
async def test_any_layer_can_be_left_out(left_out: str, response: str) -> None:
    requests = [("GET", [("accept-encoding", "identity")])] * 3 + [
        ("GET", [("accept-encoding", "gzip")]), ("HEAD", [])]
    await run_both(RESPONSES[response], requests, **{left_out: False})


async def test_an_etag_from_the_first_answer_revalidates_through_the_shortcut() -> None:
    stack = MiddlewareStack(raw_app(RESPONSES["plain json"]),
                            timing={"registry": Registry(process_metrics=False)})
    first = await drive(stack, http_scope("/r", "GET", [("accept-encoding", "identity")]))
    tag = dict(first[0]["headers"])[b"etag"].decode()
    again = await drive(stack, http_scope("/r", "GET", [("if-none-match", tag)]))
    assert first[0]["status"] == 200 and again[0]["status"] == 304
    assert again[1]["body"] == b""


async def test_a_validator_first_route_keeps_its_etag_and_skips_the_handler() -> None:
    calls: list[str] = []

    @conditional(etag=lambda request: '"doc-7"')
    async def doc(request: Request) -> Response:
        calls.append("doc")
        return JSONResponse({"id": 7})

    stack = MiddlewareStack(Starlette(routes=[Route("/doc", doc)]),
                            timing={"registry": Registry(process_metrics=False)})
    first = await drive(stack, http_scope("/doc", "GET"))
    again = await drive(stack, http_scope("/doc", "GET", [("if-none-match", '"doc-7"')]))
    assert dict(first[0]["headers"])[b"etag"] == b'"doc-7"'
    assert again[0]["status"] == 304
    assert calls == ["doc"]


async def test_an_app_exception_reaches_the_caller_and_is_recorded_as_500() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise LookupError("no such thing")

    registry = Registry(process_metrics=False)
    stack = MiddlewareStack(broken, timing={"registry": registry})
    with pytest.raises(LookupError, match="no such thing"):
        await drive(stack, http_scope("/r", "GET"))
    counts, _ = metrics(registry)
    assert counts == {("GET", "<unmatched>", "5xx"): 1}
    assert registry.snapshot()["http_requests_in_progress"]["series"][()] == 0


async def test_websocket_and_lifespan_scopes_reach_the_app_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    stack = MiddlewareStack(app, timing={"registry": Registry(process_metrics=False)})
    await stack({"type": "lifespan"}, None, None)
    await stack({"type": "websocket", "path": "/ws", "headers": []}, None, None)
    assert seen == ["lifespan", "websocket"]


def count_etag_responders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    made = [0]
    original = etag_module._Responder.__init__

    def counting(self: Any, *args: Any) -> None:
        made[0] += 1
        original(self, *args)

    monkeypatch.setattr(etag_module._Responder, "__init__", counting)
    return made


@pytest.mark.parametrize(("response", "layers_used"), [
    ("plain json", 0), ("small text", 0), ("no content type", 0),
    ("streamed", 3), ("own etag", 3), ("not found", 3),
])
async def test_plain_pass_through_responses_take_the_shortcut(
    monkeypatch: pytest.MonkeyPatch, response: str, layers_used: int
) -> None:
    made = count_etag_responders(monkeypatch)
    stack = MiddlewareStack(raw_app(RESPONSES[response]),
                            timing={"registry": Registry(process_metrics=False)})
    for _ in range(4):  # the first answer records hit-for-pass; the next three pass
        await drive(stack, http_scope("/r", "GET", [("accept-encoding", "identity")]))
    assert made[0] == 1 + layers_used


@pytest.mark.parametrize("response", ["plain json", "streamed", "json, storable"])
async def test_requests_leave_no_reference_cycles(response: str) -> None:
    stack = MiddlewareStack(raw_app(RESPONSES[response]),
                            timing={"registry": Registry(process_metrics=False)})
    for _ in range(3):
        await drive(stack, http_scope("/r", "GET", [("accept-encoding", "identity")]))
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            await drive(stack, http_scope("/r", "GET", [("accept-encoding", "identity")]))
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0, f"{found} objects in reference cycles after 20 requests"


@pytest.mark.parametrize("name", LAYERS)
def test_options_must_be_a_dict_or_a_bool(name: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(TypeError, match=name):
        MiddlewareStack(app, **{name: "yes"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        MiddlewareStack(app, **{name: {"no_such_option": 1}})


def test_layers_are_reachable_and_left_out_ones_are_none() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    stack = MiddlewareStack(app, compression=False,
                            timing={"registry": Registry(process_metrics=False)})
    assert isinstance(stack.cache, ResponseCacheMiddleware)
    assert isinstance(stack.etag, ETagMiddleware)
    assert isinstance(stack.timing, TimingMiddleware)
    assert stack.compression is None



class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _SlowRemote(MemoryBackend):
    """A shared (non-local) backend whose every read takes one second of ``clock``."""

    is_local = False

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    async def aget(self, key: Any) -> Any:
        self.clock.now += 1.0
        return self.get(key)


@pytest.mark.parametrize("response", ["plain json", "json, storable"])
async def test_a_remote_backend_read_is_timed_as_the_layers_time_it(response: str) -> None:
    # Timing is the outermost layer: the cache's read of the path's record from a remote
    # backend is part of the request's duration and X-Response-Time, in both forms.
    requests = [("GET", [("accept-encoding", "identity")])] * 3 + [
        ("GET", [("authorization", "Bearer x")])]
    results = []
    for stacked_form in (False, True):
        clock = _Clock()
        registry = Registry(process_metrics=False)
        backend = _SlowRemote(clock)
        app: Any = raw_app(RESPONSES[response])
        if stacked_form:
            app = MiddlewareStack(app, cache={"backend": backend},
                                  timing={"registry": registry, "clock": clock})
        else:
            app = TimingMiddleware(CompressionMiddleware(ResponseCacheMiddleware(
                ETagMiddleware(app), backend=backend)), registry=registry, clock=clock)
        seen = [dict((await drive(app, http_scope("/r", method, headers)))[0]["headers"])
                for method, headers in requests]
        durations = registry.snapshot()["http_request_duration_seconds"]["series"]
        results.append(([h[b"x-response-time"] for h in seen],
                        {k: (v["count"], v["sum"]) for k, v in durations.items()}))
    assert results[0][0][0] != b"0.000ms"  # the reads were timed at all
    assert results[1] == results[0]


async def test_an_error_reading_a_remote_backend_is_recorded_as_a_500() -> None:
    class Failing(MemoryBackend):
        is_local = False

        async def aget(self, key: Any) -> Any:
            raise LookupError("not a BackendError")

    registry = Registry(process_metrics=False)
    stack = MiddlewareStack(raw_app(RESPONSES["plain json"]), cache={"backend": Failing()},
                            timing={"registry": registry})
    with pytest.raises(LookupError):
        await drive(stack, http_scope("/r", "GET"))
    counts, _ = metrics(registry)
    assert counts == {("GET", "<unmatched>", "5xx"): 1}
    assert registry.snapshot()["http_requests_in_progress"]["series"][()] == 0


@pytest.mark.parametrize("response", ["plain json", "json, storable", "own etag", "streamed"])
async def test_the_stack_answers_as_the_layers_do_on_redis(
    redis_url: str, unique_ns: str, response: str
) -> None:
    from perfkit import RedisBackend

    requests = [("GET", [("accept-encoding", "identity")])] * 3 + [
        ("GET", [("accept-encoding", "gzip")]), ("HEAD", []),
        ("GET", [("authorization", "Bearer x")])]
    results = []
    for form in ("layers", "stack"):
        registry = Registry(process_metrics=False)
        backend = RedisBackend(redis_url, prefix=f"{unique_ns}:{form}:", serializer="json")
        app: Any = raw_app(RESPONSES[response])
        if form == "stack":
            app = MiddlewareStack(app, etag={"max_body": 4096}, cache={"backend": backend},
                                  timing={"registry": registry})
            cache = app.cache
        else:
            app = cache = ResponseCacheMiddleware(ETagMiddleware(app, max_body=4096),
                                                  backend=backend)
            app = TimingMiddleware(CompressionMiddleware(app), registry=registry)
        try:
            seen = [received(await drive(app, http_scope("/r", method, headers)))
                    for method, headers in requests]
        finally:
            await backend.aclose()
        results.append((seen, dict(cache.stats), metrics(registry)))
    assert results[1] == results[0]


async def test_the_cache_counts_into_the_timing_registry() -> None:
    registry = Registry(process_metrics=False)
    stack = MiddlewareStack(raw_app(RESPONSES["json, storable"]), timing={"registry": registry})
    for _ in range(2):
        await drive(stack, http_scope("/r", "GET", [("accept-encoding", "identity")]))
    text = registry.render_prometheus()
    assert 'http_response_cache_events_total{namespace="perfkit.asgi",event="hit",reason=""} 1' in (
        text)
    assert "http_requests_total" in text
