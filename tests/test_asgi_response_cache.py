"""ResponseCacheMiddleware on real Starlette/FastAPI apps, MemoryBackend and real Redis."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from perfkit import MemoryBackend
from perfkit.asgi import CompressionMiddleware, ResponseCacheMiddleware
from perfkit.caching.backends.base import Backend, BackendError, Key


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class App:
    """A Starlette app whose routes count their calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.starlette = Starlette(routes=[
            Route("/page", self.page), Route("/custom", self.custom),
            Route("/headers", self.headers), Route("/vary", self.vary),
            Route("/me", self.me), Route("/slow", self.slow), Route("/boom", self.boom),
            Route("/items", self.items, methods=["GET", "POST"]),
            Route("/items/{id}", self.item, methods=["GET", "PUT", "DELETE"]),
            Route("/selfzip", self.selfzip),
        ])

    def count(self, request: Request) -> int:
        self.calls[request.url.path] += 1
        return self.calls[request.url.path]

    async def page(self, request: Request) -> Response:
        n = self.count(request)
        return PlainTextResponse(f"page {n} {request.url.query}",
                                 headers={"cache-control": "max-age=60"})

    async def custom(self, request: Request) -> Response:
        n = self.count(request)
        return PlainTextResponse(f"custom {n}", status_code=203,
                                 headers={"cache-control": "max-age=60", "x-custom": "kept"},
                                 media_type="text/csv")

    async def headers(self, request: Request) -> Response:
        """Answers with whatever headers the test put in the query (``?h=name:value``)."""
        n = self.count(request)
        headers = dict(item.split(":", 1) for item in request.query_params.getlist("h"))
        status = int(request.query_params.get("status", "200"))
        size = int(request.query_params.get("size", "0"))
        if request.query_params.get("stream"):
            async def gen() -> Any:
                yield b"a"
                yield b"b"
            return StreamingResponse(gen(), status_code=status, headers=headers)
        response = PlainTextResponse(f"headers {n} " + "x" * size, status_code=status,
                                     headers=headers)
        if request.query_params.get("cookie"):
            response.set_cookie("session", f"s{n}")
        return response

    async def vary(self, request: Request) -> Response:
        n = self.count(request)
        lang = request.headers.get("accept-language", "<none>")
        return PlainTextResponse(f"{lang} {n}", headers={
            "cache-control": "max-age=60",
            "vary": request.query_params.get("vary", "Accept-Language"),
        })

    async def me(self, request: Request) -> Response:
        n = self.count(request)
        user = request.headers.get("authorization") or request.cookies.get("session")
        if user is None:
            return PlainTextResponse("login first", status_code=401)
        response = PlainTextResponse(f"private data of {user} {n}",
                                     headers={"cache-control": "max-age=60"})
        response.set_cookie("seen", user) if request.query_params.get("cookie") else None
        return response

    async def slow(self, request: Request) -> Response:
        n = self.count(request)
        await anyio.sleep(0.05)
        return PlainTextResponse(f"slow {n}", headers={"cache-control": "max-age=60"})

    async def boom(self, request: Request) -> Response:
        self.count(request)
        await anyio.sleep(0.05)
        raise RuntimeError("handler failed")

    async def items(self, request: Request) -> Response:
        n = self.count(request)
        if request.method == "POST":
            return PlainTextResponse("created", status_code=201,
                                     headers={"location": "/items/9"})
        return PlainTextResponse(f"items {n}", headers={"cache-control": "max-age=60"})

    async def item(self, request: Request) -> Response:
        n = self.count(request)
        if request.method != "GET":
            return PlainTextResponse("changed")
        return PlainTextResponse(f"item {n}", headers={"cache-control": "max-age=60"})

    async def selfzip(self, request: Request) -> Response:
        """Compresses on its own, and forgets Vary: the Litestar bug class."""
        n = self.count(request)
        data = f"zipped {n} ".encode() * 50
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(gzip.compress(data), media_type="text/plain",
                            headers={"content-encoding": "gzip", "cache-control": "max-age=60"})
        return Response(data, media_type="text/plain", headers={"cache-control": "max-age=60"})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def cached(app: App | None = None, **kw: Any) -> tuple[App, ResponseCacheMiddleware]:
    app = app or App()
    kw.setdefault("backend", MemoryBackend(maxsize=1000))
    return app, ResponseCacheMiddleware(app.starlette, **kw)


async def test_miss_then_hit_restores_status_and_headers_and_adds_age() -> None:
    clock = Clock()
    app, mw = cached(clock=clock)
    async with client(mw) as c:
        first = await c.get("/custom")
        clock.now += 7
        second = await c.get("/custom")
    assert first.headers["cache-status"] == "perfkit; fwd=uri-miss; stored; ttl=60"
    assert second.status_code == 203
    assert second.text == first.text == "custom 1"
    assert second.headers["x-custom"] == "kept"
    assert second.headers["content-type"].startswith("text/csv")
    assert second.headers["age"] == "7"
    assert second.headers["cache-status"] == "perfkit; hit; ttl=53"  # remaining freshness
    assert second.headers["cache-control"] == "max-age=60"  # not reset: Age tells the rest
    assert app.calls["/custom"] == 1
    assert mw.stats["hit"] == 1 and mw.stats["stored"] == 1


def q(*headers: str, **params: str) -> str:
    parts = [f"h={h}" for h in headers] + [f"{k}={v}" for k, v in params.items()]
    return "/headers?" + "&".join(parts)


@pytest.mark.parametrize(
    ("url", "request_headers", "reason"),
    [
        (q("cache-control:no-store"), {}, "no-store"),
        (q("cache-control:private, max-age=60"), {}, "private"),
        (q("cache-control:no-cache, max-age=60"), {}, "no-cache"),
        (q("cache-control:max-age=60", "vary:*"), {}, "vary-star"),
        (q("cache-control:max-age=60", cookie="1"), {}, "set-cookie"),
        (q("cache-control:max-age=60", status="404"), {}, "status"),
        (q("cache-control:max-age=60", status="500"), {}, "status"),
        (q("cache-control:max-age=60", status="206"), {}, "partial"),
        (q("cache-control:max-age=60", stream="1"), {}, "streaming"),
        (q("cache-control:max-age=60", size="3000"), {}, "too-large"),
        (q("cache-control:max-age=0"), {}, "not-fresh"),
        (q(), {}, "not-fresh"),  # no explicit freshness and no default_ttl
        (q("cache-control:max-age=60"), {"cache-control": "no-store"}, "request-no-store"),
        (q("cache-control:max-age=60"), {"authorization": "Bearer a"}, "authorization"),
        (q("cache-control:public, max-age=60"), {"authorization": "Bearer a"}, "authorization"),
        (q("cache-control:max-age=60"), {"cookie": "session=a"}, "cookie"),
    ],
)
async def test_never_stored_by_default(url: str, request_headers: dict[str, str],
                                       reason: str) -> None:
    app, mw = cached(max_body=2000)
    async with client(mw) as c:
        first = await c.get(url, headers=request_headers)
        second = await c.get(url, headers=request_headers)
    assert app.calls["/headers"] == 2
    assert first.headers["cache-status"].endswith(f"detail={reason}")
    assert second.text != first.text or "stream" in url


async def test_statuses_are_opt_in() -> None:
    app, mw = cached(statuses={200, 404})
    async with client(mw) as c:
        for _ in range(2):
            r = await c.get(q("cache-control:max-age=60", status="404"))
    assert r.status_code == 404 and app.calls["/headers"] == 1


async def test_two_identities_never_share_a_body_or_cookie() -> None:
    app, mw = cached()
    async with client(mw) as c:
        alice = await c.get("/me?cookie=1", headers={"authorization": "alice"})
        bob = await c.get("/me?cookie=1", headers={"authorization": "bob"})
        alice_cookie = await c.get("/me", headers={"cookie": "session=alice"})
        bob_cookie = await c.get("/me", headers={"cookie": "session=bob"})
        anonymous = await c.get("/me")
    assert "alice" in alice.text and "alice" not in bob.text and "bob" in bob.text
    assert "alice" not in bob.headers.get("set-cookie", "")
    assert "alice" in alice_cookie.text and "bob" in bob_cookie.text
    assert anonymous.status_code == 401
    assert app.calls["/me"] == 5


async def test_principal_keying_caches_per_user_and_still_rejects_anonymous() -> None:
    def principal(scope: Any) -> str | None:
        for k, v in scope["headers"]:
            if k == b"authorization":
                return str(v.decode())
        return None

    app, mw = cached(key_principal=principal, principal_secret="s3cret")
    async with client(mw) as c:
        a1 = await c.get("/me", headers={"authorization": "alice"})
        b1 = await c.get("/me", headers={"authorization": "bob"})
        a2 = await c.get("/me", headers={"authorization": "alice"})
        b2 = await c.get("/me", headers={"authorization": "bob"})
        anonymous = await c.get("/me")
    assert a1.text == a2.text and "alice" in a2.text
    assert b1.text == b2.text and "bob" in b2.text
    assert a2.headers["cache-status"].startswith("perfkit; hit")
    assert "alice" not in a2.headers["cache-status"]
    assert anonymous.status_code == 401
    assert app.calls["/me"] == 3


async def test_fastapi_auth_dependency_still_rejects_on_a_cached_route() -> None:
    api = FastAPI()
    calls = Counter[str]()

    def user(authorization: str | None = Header(default=None)) -> str:
        if authorization != "token-ok":
            raise HTTPException(status_code=401, detail="no")
        return authorization

    @api.get("/report")
    async def report(who: str = Depends(user)) -> Response:
        calls["report"] += 1
        return JSONResponse({"report": 1}, headers={"cache-control": "max-age=60"})

    mw = ResponseCacheMiddleware(api, backend=MemoryBackend(maxsize=10),
                                 key_principal=lambda scope: dict(scope["headers"]).get(
                                     b"authorization", b"").decode() or None)
    async with client(mw) as c:
        ok1 = await c.get("/report", headers={"authorization": "token-ok"})
        ok2 = await c.get("/report", headers={"authorization": "token-ok"})
        denied = await c.get("/report")
        wrong = await c.get("/report", headers={"authorization": "stolen"})
    assert ok1.status_code == ok2.status_code == 200
    assert ok2.headers["cache-status"].startswith("perfkit; hit")
    assert denied.status_code == 401 and wrong.status_code == 401
    assert calls["report"] == 1


async def test_vary_keys_by_each_varied_header() -> None:
    app, mw = cached()
    async with client(mw) as c:
        en1 = await c.get("/vary", headers={"accept-language": "en"})
        fr = await c.get("/vary", headers={"accept-language": "fr"})
        en2 = await c.get("/vary", headers={"Accept-Language": "en"})
        absent = await c.get("/vary")
        empty = await c.get("/vary", headers={"accept-language": ""})
    assert en1.text == en2.text == "en 1"
    assert fr.text == "fr 2"
    assert absent.text != empty.text  # an absent header differs from an empty one
    assert app.calls["/vary"] == 4


async def test_vary_values_are_length_prefixed_and_name_order_is_irrelevant() -> None:
    app, mw = cached()
    async with client(mw) as c:
        url = "/vary?vary=X-A, X-B"
        one = await c.get(url, headers={"x-a": "ab", "x-b": "c"})
        two = await c.get(url, headers={"x-a": "a", "x-b": "bc"})
        reordered = await c.get("/vary?vary=X-B, x-a", headers={"x-a": "ab", "x-b": "c"})
    assert one.text != two.text
    assert app.calls["/vary"] == 3  # reordered is another URL (query), so another miss ...
    async with client(mw) as c:
        again = await c.get(url, headers={"x-b": "c", "x-a": "ab"})
    assert again.text == one.text  # ... but the same names in another order hit
    assert reordered.status_code == 200


async def test_over_long_varied_values_bypass() -> None:
    _app, mw = cached(max_vary_value=16)
    async with client(mw) as c:
        await c.get("/vary", headers={"accept-language": "en"})
        r = await c.get("/vary", headers={"accept-language": "x" * 100})
    assert r.headers["cache-status"] == "perfkit; fwd=bypass; detail=vary-too-long"


async def test_an_encoded_body_never_reaches_a_client_that_did_not_accept_it() -> None:
    app, mw = cached()
    async with client(mw) as c:
        zipped = await c.get("/selfzip", headers={"accept-encoding": "gzip"})
        plain = await c.get("/selfzip", headers={"accept-encoding": "identity"})
        zipped_again = await c.get("/selfzip", headers={"accept-encoding": "gzip, deflate"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert plain.content.startswith(b"zipped")
    assert zipped_again.headers["cache-status"].startswith("perfkit; hit")
    assert app.calls["/selfzip"] == 2


async def test_behind_compression_the_cache_stores_identity_and_serves_both() -> None:
    app, mw = cached()
    stack = CompressionMiddleware(mw)
    async with client(stack) as c:
        url = q("cache-control:max-age=60", size="2000")
        gz = await c.get(url, headers={"accept-encoding": "gzip"})
        plain = await c.get(url, headers={"accept-encoding": "identity"})
    assert gz.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert plain.headers["cache-status"].startswith("perfkit; hit")
    assert plain.text == gz.text
    assert app.calls["/headers"] == 1


async def test_freshness_precedence_and_expiry_with_an_injected_clock() -> None:
    clock = Clock()
    _app, mw = cached(clock=clock, default_ttl=5)
    async with client(mw) as c:
        s = await c.get(q("cache-control:s-maxage=30, max-age=10"))
        assert s.headers["cache-status"].endswith("ttl=30")
        d = await c.get(q(x="default"))
        assert d.headers["cache-status"].endswith("ttl=5")
        clock.now += 6
        expired = await c.get(q(x="default"))
        fresh = await c.get(q("cache-control:s-maxage=30, max-age=10"))
    assert "stored" in expired.headers["cache-status"]
    assert fresh.headers["cache-status"].startswith("perfkit; hit")


async def test_request_no_cache_and_pragma_do_not_force_recomputation() -> None:
    app, mw = cached()
    async with client(mw) as c:
        await c.get("/page")
        r1 = await c.get("/page", headers={"cache-control": "no-cache"})
        r2 = await c.get("/page", headers={"pragma": "no-cache", "clear-site-data": '"cache"'})
    assert r1.headers["cache-status"].startswith("perfkit; hit")
    assert r2.headers["cache-status"].startswith("perfkit; hit")
    assert app.calls["/page"] == 1


async def test_conditional_request_on_a_hit_gets_304_without_the_app() -> None:
    app, mw = cached()
    async with client(mw) as c:
        first = await c.get("/page")
        r = await c.get("/page", headers={"if-none-match": first.headers["etag"]})
    assert r.status_code == 304 and r.content == b""
    assert r.headers["etag"] == first.headers["etag"]
    assert "content-type" not in r.headers
    assert app.calls["/page"] == 1


async def test_head_uses_the_get_entry_and_never_populates_it() -> None:
    app, mw = cached()
    async with client(mw) as c:
        head_miss = await c.head("/page")
        get = await c.get("/page")
        head_hit = await c.head("/page")
    assert head_miss.headers["cache-status"] == "perfkit; fwd=miss"
    assert "stored" in get.headers["cache-status"]
    assert head_hit.headers["cache-status"].startswith("perfkit; hit")
    assert head_hit.content == b""
    assert head_hit.headers["content-length"] == str(len(get.content))
    assert app.calls["/page"] == 2


async def test_query_is_normalised_and_ignored_params_dropped() -> None:
    app, mw = cached(ignore_query_params=["utm_*"])
    async with client(mw) as c:
        a = await c.get("/page?b=2&a=1")
        b = await c.get("/page?a=1&b=2&utm_source=mail")
        other = await c.get("/page?a=1&b=3")
    assert a.text == b.text
    assert other.text != a.text
    assert app.calls["/page"] == 2


async def test_hosts_outside_the_allowlist_bypass() -> None:
    _app, mw = cached(allowed_hosts=["testserver"])
    async with client(mw) as c:
        r = await c.get("/page", headers={"host": "evil.example"})
    assert r.headers["cache-status"] == "perfkit; fwd=bypass; detail=host"


async def test_stampede_50_concurrent_misses_run_the_handler_once() -> None:
    app, mw = cached()
    bodies: list[str] = []

    async with client(mw) as c:
        async def one() -> None:
            bodies.append((await c.get("/slow")).text)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
    assert app.calls["/slow"] == 1
    assert bodies == ["slow 1"] * 50
    assert mw.stats["collapsed"] == 49


async def test_stampede_exception_reaches_every_waiter_and_is_not_cached() -> None:
    app, mw = cached()
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            async with client(mw) as c:
                await c.get("/boom")
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(errors) == 10 and all("handler failed" in str(e) for e in errors)
    assert app.calls["/boom"] == 1
    await one()
    assert app.calls["/boom"] == 2  # not cached


async def test_unsafe_methods_invalidate_the_path_and_location() -> None:
    _app, mw = cached()
    async with client(mw) as c:
        await c.get("/items")
        await c.get("/items?page=2")
        await c.get("/items/9")
        await c.post("/items")  # 201 with Location: /items/9
        after = await c.get("/items")
        after_q = await c.get("/items?page=2")
        after_item = await c.get("/items/9")
    assert "stored" in after.headers["cache-status"]
    assert "stored" in after_q.headers["cache-status"]
    assert "stored" in after_item.headers["cache-status"]


async def test_failed_unsafe_request_does_not_invalidate() -> None:
    _app, mw = cached()
    async with client(mw) as c:
        await c.get("/items/1")
        await c.post("/items/1")  # 405: not successful
        r = await c.get("/items/1")
    assert r.headers["cache-status"].startswith("perfkit; hit")


async def test_invalidation_api_by_path_and_prefix() -> None:
    _app, mw = cached()
    async with client(mw) as c:
        for path in ("/items/1", "/items/2", "/page"):
            await c.get(path)
        await mw.invalidate("/items/1")
        one = await c.get("/items/1")
        two = await c.get("/items/2")
        await mw.invalidate_prefix("/items/")
        two_after = await c.get("/items/2")
        page = await c.get("/page")
    assert "stored" in one.headers["cache-status"]
    assert two.headers["cache-status"].startswith("perfkit; hit")
    assert "stored" in two_after.headers["cache-status"]
    assert page.headers["cache-status"].startswith("perfkit; hit")


class DownBackend(Backend):
    is_local = False

    def get(self, key: Key) -> Any:
        raise BackendError("connection refused")

    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        raise BackendError("connection refused")

    def delete(self, key: Key) -> bool:
        raise BackendError("connection refused")


async def test_backend_failure_fails_open_logged_once_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, mw = cached(backend=DownBackend())
    with caplog.at_level(logging.WARNING, logger="perfkit.asgi.cache"):
        async with client(mw) as c:
            responses = [await c.get("/page") for _ in range(3)]
            post = await c.post("/items")
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert post.status_code == 201
    assert app.calls["/page"] == 3
    assert mw.stats["backend-error"] >= 3
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    mw = ResponseCacheMiddleware(inner)
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await mw({"type": "websocket", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


def test_defaults_are_bounded_and_bad_arguments_are_named() -> None:
    mw = ResponseCacheMiddleware(App().starlette)
    assert isinstance(mw.backend, MemoryBackend)
    assert mw.backend.maxsize is not None and mw.backend.max_bytes is not None
    for kwargs, name in (({"max_ttl": 0}, "max_ttl"), ({"default_ttl": -1}, "default_ttl"),
                         ({"lock_timeout": 0}, "lock_timeout"), ({"pass_ttl": -1}, "pass_ttl"),
                         ({"cache_status": "a b"}, "cache_status")):
        with pytest.raises(ValueError, match=name):
            ResponseCacheMiddleware(App().starlette, **kwargs)


def test_a_backend_that_would_unpickle_unsigned_bytes_is_refused() -> None:
    # Whoever can write to the Redis could otherwise run code in every worker; the entries
    # are JSON-safe, so JSON (or signed values) costs nothing.
    from perfkit import RedisBackend, TieredBackend

    url = "redis://127.0.0.1:6379/0"  # never connected: the check is at construction
    for backend in (RedisBackend(url), TieredBackend(MemoryBackend(10), RedisBackend(url))):
        with pytest.raises(ValueError, match=r"backend: .*serializer='json'"):
            ResponseCacheMiddleware(App().starlette, backend=backend)
    for backend in (RedisBackend(url, serializer="json"), RedisBackend(url, secret="s"),
                    TieredBackend(MemoryBackend(10), RedisBackend(url, serializer="json"))):
        assert ResponseCacheMiddleware(App().starlette, backend=backend).backend is backend


def test_an_aiocache_cache_that_unpickles_what_others_wrote_is_refused() -> None:
    from aiocache import RedisCache, SimpleMemoryCache
    from aiocache.serializers import JsonSerializer, PickleSerializer

    from perfkit.caching.backends.aiocache import AiocacheBackend

    shared = AiocacheBackend(RedisCache(serializer=PickleSerializer()))  # never connected
    with pytest.raises(ValueError, match=r"backend: this AiocacheBackend unpickles"):
        ResponseCacheMiddleware(App().starlette, backend=shared)
    for backend in (AiocacheBackend(RedisCache(serializer=JsonSerializer())),
                    AiocacheBackend(SimpleMemoryCache(serializer=PickleSerializer()))):
        assert ResponseCacheMiddleware(App().starlette, backend=backend).backend is backend


# -- real Redis ------------------------------------------------------------------------------


@pytest.fixture
def redis_workers(redis_url: str, unique_ns: str) -> Any:
    """Two cache middleware instances (two workers) over one Redis namespace, one app."""
    from perfkit import RedisBackend

    app = App()
    backends = [RedisBackend(redis_url, prefix=f"{unique_ns}:", serializer="json")
                for _ in range(2)]
    workers = [ResponseCacheMiddleware(app.starlette, backend=b) for b in backends]
    try:
        yield app, workers[0], workers[1]
    finally:
        backends[0].clear_namespace("perfkit.asgi")
        for backend in backends:
            backend.close()


@pytest.mark.redis
async def test_redis_backend_shares_entries_and_invalidations_between_instances(
    redis_workers: Any,
) -> None:
    app, worker_a, worker_b = redis_workers
    async with client(worker_a) as a, client(worker_b) as b:
        first = await a.get("/custom")
        second = await b.get("/custom")
        await b.put("/items/1")
        await a.get("/items/1")
        await b.delete("/items/1")
        after = await a.get("/items/1")
    assert second.headers["cache-status"].startswith("perfkit; hit")
    assert second.status_code == 203 and second.text == first.text
    assert "stored" in after.headers["cache-status"]
    assert app.calls["/custom"] == 1


@pytest.mark.redis
async def test_concurrent_prefix_invalidations_from_two_workers_all_take_effect(
    redis_workers: Any, redis_url: str, unique_ns: str,
) -> None:
    """The invalidation log is read, extended and written back: two workers doing that at
    the same moment must not drop each other's records (a lost one serves stale data)."""
    from perfkit import RedisBackend

    app, worker_a, worker_b = redis_workers
    paths = [f"/items/{n}" for n in range(8)]
    async with client(worker_a) as a:
        for path in paths:
            await a.get(path)
    await asyncio.gather(*(
        (worker_a if n % 2 else worker_b).invalidate_prefix(path)
        for n, path in enumerate(paths)
    ))
    backend = RedisBackend(redis_url, prefix=f"{unique_ns}:", serializer="json")
    try:
        fresh = ResponseCacheMiddleware(app.starlette, backend=backend)  # reads the log anew
        async with client(fresh) as c:
            statuses = [(await c.get(path)).headers["cache-status"] for path in paths]
    finally:
        backend.close()
    assert [s for s in statuses if "hit" in s] == []
    assert all(app.calls[path] == 2 for path in paths)


@pytest.mark.redis
async def test_redis_going_down_fails_open(redis_server: Any, unique_ns: str) -> None:
    from perfkit import RedisBackend

    app = App()
    backend = RedisBackend(redis_server.url, prefix=f"{unique_ns}:", serializer="json",
                           retry_interval=0.05)
    mw = ResponseCacheMiddleware(app.starlette, backend=backend)
    try:
        async with client(mw) as c:
            await c.get("/page")
            assert (await c.get("/page")).headers["cache-status"].startswith("perfkit; hit")
            redis_server.stop()
            down = await c.get("/page")
            assert down.status_code == 200
            assert app.calls["/page"] == 2
            assert mw.stats["backend-error"] >= 1
            redis_server.start()
            recovered = False
            for _ in range(40):  # bounded: the guard retries every 50 ms
                await anyio.sleep(0.05)
                r = await c.get("/page")
                if "stored" in r.headers["cache-status"] or "hit" in r.headers["cache-status"]:
                    recovered = True
                    break
            assert recovered
    finally:
        backend.close()


async def test_hit_for_pass_skips_the_miss_machinery_then_expires() -> None:
    clock = Clock()
    app, mw = cached(clock=clock, pass_ttl=5)
    async with client(mw) as c:
        first = await c.get(q("cache-control:no-store"))
        second = await c.get(q("cache-control:no-store"))
        clock.now += 6
        third = await c.get(q("cache-control:no-store"))
    assert first.headers["cache-status"] == second.headers["cache-status"] == (
        "perfkit; fwd=uri-miss; detail=no-store"
    )
    assert third.headers["cache-status"].endswith("detail=no-store")
    assert app.calls["/headers"] == 3
    assert mw.stats["not-stored:no-store"] == 3


async def test_a_pass_record_does_not_stop_a_later_cacheable_answer_after_it_expires() -> None:
    clock = Clock()
    app, mw = cached(clock=clock, pass_ttl=1)
    async with client(mw) as c:
        missing = await c.get(q(status="404"))
        during = await c.get(q("cache-control:max-age=60"))
        clock.now += 2
        stored = await c.get(q("cache-control:max-age=60"))
    assert missing.headers["cache-status"].endswith("detail=status")
    assert during.headers["cache-status"].endswith("detail=status")  # passing, by path
    assert "stored" in stored.headers["cache-status"]
    assert app.calls["/headers"] == 3


def test_entries_count_their_body_for_the_memory_bound() -> None:
    import sys

    from perfkit.asgi.response_cache import _Entry

    entry = _Entry(200, [(b"content-type", b"text/plain")], b"x" * 100_000, 0.0, 60.0, None, None)
    assert sys.getsizeof(entry) > 100_000


@pytest.mark.redis
async def test_redis_single_flight_across_two_workers_and_a_crashed_holder(
    redis_url: str, unique_ns: str,
) -> None:
    from perfkit import RedisBackend

    app = App()
    backends = [RedisBackend(redis_url, prefix=f"{unique_ns}:", serializer="json")
                for _ in range(2)]
    workers = [ResponseCacheMiddleware(app.starlette, backend=b, lock_timeout=5)
               for b in backends]
    bodies: list[str] = []
    try:
        async def one(worker: ResponseCacheMiddleware) -> None:
            async with client(worker) as c:
                bodies.append((await c.get("/slow")).text)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(one, workers[i % 2])
        assert app.calls["/slow"] == 1
        assert bodies == ["slow 1"] * 20

        # A holder that took the lock and died: the lease expires, then a worker computes.
        lock_key = workers[0]._lock_key(("http", "testserver", "/page", "", ""))
        assert await backends[1].aacquire_lock(lock_key, 0.3) is not None
        async with client(workers[0]) as c:
            r = await c.get("/page")
        assert r.status_code == 200 and app.calls["/page"] == 1
        assert "stored" in r.headers["cache-status"]
    finally:
        backends[0].clear_namespace("perfkit.asgi")
        for b in backends:
            b.close()


async def test_a_cancelled_leader_does_not_cancel_the_waiters() -> None:
    from _asgi_support import drive, http_scope

    app, mw = cached()
    statuses: list[int] = []

    async def follower() -> None:
        sent = await drive(mw, http_scope("/slow"))
        statuses.append(sent[0]["status"])

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.01):
            async with anyio.create_task_group() as leader:
                leader.start_soon(drive, mw, http_scope("/slow"))
                await anyio.sleep(0.001)
                for _ in range(5):
                    tg.start_soon(follower)
                await anyio.sleep(1)
    assert statuses == [200] * 5
    assert app.calls["/slow"] == 2  # the cancelled leader's run, then one for all five


# -- stale-while-revalidate (RFC 5861) and tag invalidation -----------------------------------

SWR = {"h": "cache-control:max-age=10, stale-while-revalidate=30"}


async def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_background() -> None:
    clock = Clock()
    app, mw = cached(clock=clock)
    async with client(mw) as c:
        first = await c.get("/headers", params=SWR)
        clock.now += 15  # stale for 5 s, inside the 30 s window
        stale = await c.get("/headers", params=SWR)
        stale_again = await c.get("/headers", params=SWR)  # one refresh is already running
        await mw.drain()
        fresh = await c.get("/headers", params=SWR)
    assert first.text.startswith("headers 1")
    assert stale.text == first.text and stale_again.text == first.text
    assert stale.headers["cache-status"] == "perfkit; hit; ttl=-5; detail=stale"
    assert stale.headers["age"] == "15"
    assert app.calls["/headers"] == 2  # the two stale hits shared one refresh
    assert fresh.text.startswith("headers 2")
    assert fresh.headers["cache-status"].startswith("perfkit; hit; ttl=")
    assert mw.stats["stale"] == 2 and mw.stats["revalidated"] == 1


async def test_stale_entry_past_its_window_is_a_miss() -> None:
    clock = Clock()
    app, mw = cached(clock=clock)
    async with client(mw) as c:
        await c.get("/headers", params=SWR)
        clock.now += 41
        late = await c.get("/headers", params=SWR)
    assert "stored" in late.headers["cache-status"] and late.text.startswith("headers 2")
    assert app.calls["/headers"] == 2


@pytest.mark.parametrize("directive", ["must-revalidate", "proxy-revalidate"])
async def test_must_revalidate_forbids_serving_stale(directive: str) -> None:
    clock = Clock()
    app, mw = cached(clock=clock, stale_while_revalidate=30)
    params = {"h": f"cache-control:max-age=10, {directive}, stale-while-revalidate=30"}
    async with client(mw) as c:
        await c.get("/headers", params=params)
        clock.now += 15
        r = await c.get("/headers", params=params)
    assert "stored" in r.headers["cache-status"]
    assert app.calls["/headers"] == 2


async def test_default_stale_window_applies_when_the_response_names_none() -> None:
    clock = Clock()
    _app, mw = cached(clock=clock, stale_while_revalidate=20)
    async with client(mw) as c:
        await c.get("/page")  # max-age=60
        clock.now += 70
        r = await c.get("/page")
        await mw.drain()
    assert r.headers["cache-status"] == "perfkit; hit; ttl=-10; detail=stale"


async def test_refresh_that_is_no_longer_storable_drops_the_stale_copy() -> None:
    clock = Clock()
    answers = iter(["max-age=10, stale-while-revalidate=30", "no-store", "no-store"])

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("x", headers={"cache-control": next(answers)})

    mw = ResponseCacheMiddleware(Starlette(routes=[Route("/r", endpoint)]),
                                 backend=MemoryBackend(), clock=clock)
    async with client(mw) as c:
        await c.get("/r")
        clock.now += 15
        stale = await c.get("/r")
        await mw.drain()
        after = await c.get("/r")
    assert stale.headers["cache-status"].endswith("detail=stale")
    assert after.headers["cache-status"] == "perfkit; fwd=uri-miss; detail=no-store"
    assert mw.stats["revalidated:not-stored"] == 1


async def test_a_failing_refresh_keeps_the_stale_copy_and_is_counted() -> None:
    clock = Clock()
    calls = Counter[str]()

    async def endpoint(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("backend down")
        return PlainTextResponse("v1", headers={
            "cache-control": "max-age=10, stale-while-revalidate=30"})

    mw = ResponseCacheMiddleware(Starlette(routes=[Route("/r", endpoint)]),
                                 backend=MemoryBackend(), clock=clock)
    async with client(mw) as c:
        await c.get("/r")
        clock.now += 15
        await c.get("/r")
        await mw.drain()
        again = await c.get("/r")
        await mw.drain()
    assert again.text == "v1" and again.headers["cache-status"].endswith("detail=stale")
    assert mw.stats["revalidate-error"] == 2


TAGGED = {"h": ["cache-control:max-age=60", "surrogate-key:user:42 posts"]}


async def test_tag_invalidation_drops_only_entries_carrying_the_tag() -> None:
    app, mw = cached()
    async with client(mw) as c:
        tagged = await c.get("/headers", params=TAGGED)
        await c.get("/page")
        await mw.invalidate(tags=["user:42"])
        after = await c.get("/headers", params=TAGGED)
        page = await c.get("/page")
        await mw.invalidate(tags="posts")  # one tag as a plain string
        after_posts = await c.get("/headers", params=TAGGED)
    assert tagged.headers["surrogate-key"] == "user:42 posts"  # passed through, not stripped
    assert "stored" in after.headers["cache-status"] and after.text.startswith("headers 2")
    assert page.headers["cache-status"].startswith("perfkit; hit")
    assert "stored" in after_posts.headers["cache-status"]
    assert app.calls["/headers"] == 3


async def test_tagged_entry_stored_after_the_invalidation_is_served() -> None:
    clock = Clock()
    _app, mw = cached(clock=clock)
    async with client(mw) as c:
        await mw.invalidate(tags=["posts"])
        clock.now += 1
        await c.get("/headers", params=TAGGED)
        hit = await c.get("/headers", params=TAGGED)
    assert hit.headers["cache-status"].startswith("perfkit; hit")


async def test_too_many_tags_are_not_stored_and_bad_invalidations_are_refused() -> None:
    _app, mw = cached(max_tags=2)
    params = {"h": ["cache-control:max-age=60", "surrogate-key:a b c"]}
    async with client(mw) as c:
        r = await c.get("/headers", params=params)
    assert r.headers["cache-status"].endswith("detail=too-many-tags")
    with pytest.raises(TypeError, match="path, tags"):
        await mw.invalidate()
    with pytest.raises(ValueError, match="tags"):
        await mw.invalidate(tags=[""])


async def test_tag_log_keeps_a_floor_when_trimmed_so_old_entries_stay_invalid() -> None:
    from perfkit.asgi import response_cache

    clock = Clock()
    _app, mw = cached(clock=clock)
    async with client(mw) as c:
        await c.get("/headers", params=TAGGED)
        clock.now += 1
        await mw.invalidate(tags=["user:42"])
        for i in range(response_cache._LOG_MAX + 5):  # push user:42 out of the log
            clock.now += 1
            await mw.invalidate(tags=[f"other:{i}"])
        after = await c.get("/headers", params=TAGGED)
    assert len(mw._logs["t"][1]) == response_cache._LOG_MAX
    assert "stored" in after.headers["cache-status"]


@pytest.mark.redis
async def test_redis_tag_invalidation_reaches_another_instance(redis_workers: Any) -> None:
    app, worker_a, worker_b = redis_workers
    async with client(worker_a) as a, client(worker_b) as b:
        await a.get("/headers", params=TAGGED)
        await worker_a.invalidate(tags=["user:42"])
        from_b = await b.get("/headers", params=TAGGED)
    assert "stored" in from_b.headers["cache-status"]
    assert app.calls["/headers"] == 2


async def test_a_stale_hit_is_labelled_stale_in_the_same_second_as_a_fresh_one() -> None:
    # A fractional lifetime: 2.2 s old is fresh (ttl=0), 2.7 s old is stale (ttl=-1); both
    # have the same whole age, and int(ttl - age) is 0 for both.
    clock = Clock()
    _app, mw = cached(clock=clock, default_ttl=2.5, stale_while_revalidate=30)
    async with client(mw) as c:
        await c.get("/headers")
        clock.now += 2.2
        fresh = await c.get("/headers")
        clock.now += 0.5
        stale = await c.get("/headers")
        await mw.drain()
    assert fresh.headers["cache-status"] == "perfkit; hit; ttl=0"
    assert stale.headers["cache-status"] == "perfkit; hit; ttl=-1; detail=stale"
    assert mw.stats["stale"] == 1


async def test_a_failed_if_match_on_a_hit_gets_412() -> None:
    # RFC 9110 §13.1.1: If-Match fails for any method; the hit path must not answer 200
    # where the ETag layer under it answers 412.
    from perfkit.asgi import ETagMiddleware

    app = App()
    mw = ResponseCacheMiddleware(ETagMiddleware(app.starlette), backend=MemoryBackend())
    async with client(mw) as c:
        first = await c.get("/items")
        hit = await c.get("/items", headers={"if-match": '"stale"'})
        weak = await c.get("/items", headers={"if-match": "W/" + first.headers["etag"]})
        ok = await c.get("/items", headers={"if-match": first.headers["etag"]})
    assert hit.status_code == 412 and hit.content == b""
    assert hit.headers["etag"] == first.headers["etag"]
    assert "content-type" not in hit.headers
    assert weak.status_code == 412  # strong comparison: a weak tag never satisfies If-Match
    assert ok.status_code == 200 and ok.text == first.text
    assert ok.headers["cache-status"].startswith("perfkit; hit")
    assert app.calls["/items"] == 1  # the hits never ran the app


@pytest.mark.parametrize("condition", [{"if-none-match": "*"}, {"if-match": '"stale"'}])
async def test_a_conditional_miss_does_not_make_the_path_pass(condition: dict[str, str]) -> None:
    # A 304/412 answers the client's condition; it says nothing about whether the resource
    # may be stored. Recording hit-for-pass for it would keep a path uncached after a cold
    # start, while browsers revalidate.
    from perfkit.asgi import ETagMiddleware

    app = App()
    mw = ResponseCacheMiddleware(ETagMiddleware(app.starlette), backend=MemoryBackend())
    async with client(mw) as c:
        conditional = await c.get("/page", headers=condition)
        first = await c.get("/page")
        second = await c.get("/page")
    assert conditional.status_code in (304, 412)
    assert "stored" in first.headers["cache-status"]
    assert second.headers["cache-status"].startswith("perfkit; hit")
    assert app.calls["/page"] == 2


async def test_the_key_covers_scheme_and_host() -> None:
    # One path under two hosts (or http and https) is two resources: never one entry.
    calls = Counter[str]()

    async def where(request: Request) -> Response:
        calls[request.url.netloc] += 1
        return PlainTextResponse(f"{request.url.scheme}://{request.url.netloc}",
                                 headers={"cache-control": "max-age=60"})

    mw = ResponseCacheMiddleware(Starlette(routes=[Route("/w", where)]),
                                 backend=MemoryBackend())
    answers = []
    for base in ("http://a.example", "http://b.example", "https://a.example",
                 "http://a.example", "https://a.example"):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=mw),
                                     base_url=base) as c:
            answers.append((await c.get("/w")).text)
    assert answers == ["http://a.example", "http://b.example", "https://a.example",
                       "http://a.example", "https://a.example"]
    assert mw.stats["stored"] == 3 and mw.stats["hit"] == 2


@pytest.mark.redis
async def test_tiered_backend_shares_entries_and_invalidations_between_workers(
    redis_url: str, unique_ns: str,
) -> None:
    # Memory over Redis in each worker: B hits what A stored, and B's POST reaches A's L1.
    from perfkit import RedisBackend, TieredBackend

    app = App()
    backends = [TieredBackend(MemoryBackend(100), RedisBackend(
        redis_url, prefix=f"{unique_ns}:", serializer="json")) for _ in range(2)]
    worker_a, worker_b = (ResponseCacheMiddleware(app.starlette, backend=b) for b in backends)
    try:
        async with client(worker_a) as a, client(worker_b) as b:
            first = await a.get("/items/1")
            from_b = await b.get("/items/1")
            again_a = await a.get("/items/1")
            await b.put("/items/1")
            after = None
            for _ in range(40):  # bounded: the L1 drop arrives by Redis pub/sub
                after = await a.get("/items/1")
                if "stored" in after.headers["cache-status"]:
                    break
                await anyio.sleep(0.05)
        assert from_b.headers["cache-status"].startswith("perfkit; hit")
        assert from_b.text == first.text == again_a.text
        assert after is not None and "stored" in after.headers["cache-status"]
        assert after.text != first.text
    finally:
        backends[0].l2.clear_namespace("perfkit.asgi")
        for backend in backends:
            backend.close()


async def test_an_unsafe_request_invalidates_its_content_location_too() -> None:
    calls = Counter[str]()

    async def doc(request: Request) -> Response:
        calls[request.url.path] += 1
        if request.method == "PATCH":  # answers with the changed document's own URI
            return PlainTextResponse("patched", headers={"content-location": "/docs/7?v=2"})
        return PlainTextResponse(f"{request.url.path} {calls[request.url.path]}",
                                 headers={"cache-control": "max-age=60"})

    mw = ResponseCacheMiddleware(Starlette(routes=[
        Route("/docs/{id}", doc), Route("/edit/{id}", doc, methods=["PATCH"])]),
        backend=MemoryBackend())
    async with client(mw) as c:
        await c.get("/docs/7")
        await c.get("/docs/8")
        await c.patch("/edit/7")
        seven = await c.get("/docs/7")
        eight = await c.get("/docs/8")
    assert "stored" in seven.headers["cache-status"] and seven.text == "/docs/7 2"
    assert eight.headers["cache-status"].startswith("perfkit; hit")


async def test_a_range_request_first_does_not_make_the_path_pass(tmp_path: Any) -> None:
    # A 206 answers the client's Range (a video player, a resumed download); the full
    # representation may still be stored, so it must not record hit-for-pass either.
    from starlette.responses import FileResponse

    path = tmp_path / "f.txt"
    path.write_bytes(b"0123456789" * 100)
    calls = Counter[str]()

    async def file(request: Request) -> Response:
        calls["f"] += 1
        return FileResponse(path, headers={"cache-control": "max-age=60"})

    mw = ResponseCacheMiddleware(Starlette(routes=[Route("/f", file)]), backend=MemoryBackend())
    async with client(mw) as c:
        partial = await c.get("/f", headers={"range": "bytes=0-9"})
        full = await c.get("/f")
        hit = await c.get("/f")
    assert partial.status_code == 206 and partial.content == b"0123456789"
    assert partial.headers["cache-status"].endswith("detail=partial")
    assert "stored" in full.headers["cache-status"] and len(full.content) == 1000
    assert hit.headers["cache-status"].startswith("perfkit; hit") and hit.content == full.content
    assert calls["f"] == 2


async def test_every_decision_is_exported_to_the_registry_with_its_reason() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from perfkit import Registry

    registry = Registry(process_metrics=False)
    _app, mw = cached(registry=registry)
    _other, second = cached(registry=registry, namespace="second")
    async with client(mw) as c, client(second) as c2:
        await c.get("/page")
        await c.get("/page")
        await c.get("/page", headers={"authorization": "Bearer alice-token"})
        await c.get(q("cache-control:no-store"))
        await c2.get("/page")
    text = registry.render_prometheus()
    assert "alice-token" not in text and "/page" not in text  # no key material
    family = {f.name: f for f in text_string_to_metric_families(text)}[
        "http_response_cache_events"]
    assert family.type == "counter" and family.documentation
    seen = {(s.labels["namespace"], s.labels["event"], s.labels["reason"]): s.value
            for s in family.samples if s.name.endswith("_total")}
    assert seen[("perfkit.asgi", "hit", "")] == 1
    assert seen[("perfkit.asgi", "stored", "")] == 1
    assert seen[("perfkit.asgi", "bypass", "authorization")] == 1
    assert seen[("perfkit.asgi", "not-stored", "no-store")] == 1
    assert seen[("second", "stored", "")] == 1  # two caches on one registry: both counted


@pytest.mark.redis
async def test_redis_keys_length_prefix_varied_values_and_hold_none_of_them(
    redis_workers: Any,
) -> None:
    # A shared backend gets a SHA-256 of netstring-framed fields: ("gh", "i") and
    # ("g", "hi") must stay two entries, and no header value may appear in a Redis key
    # (the values use letters a hex digest cannot contain).
    app, worker, _ = redis_workers
    url = "/vary?vary=X-A, X-B"
    async with client(worker) as c:
        one = await c.get(url, headers={"x-a": "gh", "x-b": "i"})
        two = await c.get(url, headers={"x-a": "g", "x-b": "hi"})
        again = await c.get(url, headers={"x-b": "i", "x-a": "gh"})
    assert "stored" in one.headers["cache-status"] and "stored" in two.headers["cache-status"]
    assert one.text != two.text
    assert again.headers["cache-status"].startswith("perfkit; hit") and again.text == one.text
    assert app.calls["/vary"] == 2
    keys = [k.decode() for k in worker.backend.client.keys(f"{worker.backend.prefix}*")]
    assert keys and not any("gh" in k or "hi" in k for k in keys)


async def test_a_conditional_request_never_leads_a_stampede_it_cannot_share() -> None:
    # A 304 (or 206) answers one client only: if the first of a burst of misses is
    # conditional and leads the single flight, every follower runs the handler itself.
    from perfkit.asgi import ETagMiddleware

    app = App()
    mw = ResponseCacheMiddleware(ETagMiddleware(app.starlette), backend=MemoryBackend())
    statuses: list[int] = []

    async with client(mw) as c:
        async def one(headers: dict[str, str]) -> None:
            statuses.append((await c.get("/slow", headers=headers)).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, {"if-none-match": "*"})
            await anyio.sleep(0.01)  # the conditional request is in the handler first
            for _ in range(20):
                tg.start_soon(one, {})
    assert sorted(statuses) == [200] * 20 + [304]
    assert app.calls["/slow"] == 2  # the conditional one, and one for the twenty
