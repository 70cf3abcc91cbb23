"""ETagMiddleware and the validator-first ``conditional`` decorator on real apps."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _asgi_support import body, drive, header, http_scope, raw_app, start
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from perfkit.asgi import ETagMiddleware, conditional
from perfkit.http_rules import make_etag, parse_etag

PAYLOAD = {"items": list(range(200))}


def make_app(**mw: Any) -> Starlette:
    async def data(request: Request) -> Response:
        return JSONResponse(PAYLOAD, headers={"cache-control": "max-age=60", "vary": "Accept"})

    async def cookie(request: Request) -> Response:
        response = PlainTextResponse("hello")
        response.set_cookie("session", "abc")
        return response

    async def missing(request: Request) -> Response:
        return PlainTextResponse("nope", status_code=404, headers={"etag": '"x"'})

    async def no_store(request: Request) -> Response:
        return PlainTextResponse("secret", headers={"cache-control": "no-store"})

    async def big(request: Request) -> Response:
        return PlainTextResponse("x" * 5000)

    async def stream(request: Request) -> Response:
        async def gen() -> Any:
            yield b"a"
            yield b"b"

        return StreamingResponse(gen(), media_type="text/plain")

    async def dated(request: Request) -> Response:
        return PlainTextResponse("d", headers={"last-modified": "Sun, 06 Nov 1994 08:49:37 GMT"})

    async def post(request: Request) -> Response:
        return PlainTextResponse("posted")

    app = Starlette(routes=[
        Route("/data", data), Route("/cookie", cookie), Route("/missing", missing),
        Route("/no-store", no_store), Route("/big", big), Route("/stream", stream),
        Route("/dated", dated), Route("/post", post, methods=["POST"]),
    ])
    app.add_middleware(ETagMiddleware, **mw)
    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_generated_etag_is_strong_quoted_hash_of_body() -> None:
    async with client(make_app()) as c:
        r = await c.get("/data")
    assert r.status_code == 200
    assert r.headers["etag"] == make_etag(r.content)
    tag = parse_etag(r.headers["etag"])
    assert tag is not None and not tag.weak


async def test_matching_if_none_match_gives_304_with_exactly_the_kept_headers() -> None:
    async with client(make_app()) as c:
        first = await c.get("/data")
        r = await c.get("/data", headers={"if-none-match": first.headers["etag"]})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == first.headers["etag"]
    assert r.headers["cache-control"] == "max-age=60"
    assert r.headers["vary"] == "Accept"
    for name in ("content-type", "content-encoding", "content-length"):
        assert name not in r.headers


@pytest.mark.parametrize(
    "inm",
    ['"nope", {tag}', "{tag}, garbage", "W/{tag}", "*", ' {tag} ,"x"'],
)
async def test_if_none_match_forms_that_match(inm: str) -> None:
    async with client(make_app()) as c:
        tag = (await c.get("/data")).headers["etag"]
        r = await c.get("/data", headers={"if-none-match": inm.format(tag=tag)})
    assert r.status_code == 304


@pytest.mark.parametrize("inm", ['"nope"', "garbage", "W/123", '"unterminated', ",,,", "*, x"])
async def test_if_none_match_that_does_not_match_or_is_malformed_gives_200(inm: str) -> None:
    async with client(make_app()) as c:
        r = await c.get("/data", headers={"if-none-match": inm})
    assert r.status_code == 200
    assert r.json() == PAYLOAD


async def test_set_cookie_survives_304() -> None:
    async with client(make_app()) as c:
        tag = (await c.get("/cookie")).headers["etag"]
        r = await c.get("/cookie", headers={"if-none-match": tag})
    assert r.status_code == 304
    assert "session=abc" in r.headers["set-cookie"]


async def test_preconditions_only_for_2xx() -> None:
    async with client(make_app()) as c:
        r = await c.get("/missing", headers={"if-none-match": '"x"'})
    assert r.status_code == 404
    assert r.text == "nope"


async def test_if_match_mismatch_on_get_gives_412() -> None:
    async with client(make_app()) as c:
        tag = (await c.get("/data")).headers["etag"]
        r = await c.get("/data", headers={"if-match": '"other"'})
        star = await c.get("/data", headers={"if-match": "*"})
        exact = await c.get("/data", headers={"if-match": tag})
    assert r.status_code == 412
    assert r.content == b""
    assert star.status_code == 200 and exact.status_code == 200


async def test_no_store_and_oversized_and_streaming_get_no_etag() -> None:
    async with client(make_app(max_body=1000)) as c:
        no_store = await c.get("/no-store")
        big = await c.get("/big")
        stream = await c.get("/stream")
    assert "etag" not in no_store.headers
    assert "etag" not in big.headers and len(big.content) == 5000
    assert "etag" not in stream.headers and stream.text == "ab"


async def test_if_modified_since_only_without_if_none_match() -> None:
    async with client(make_app()) as c:
        lm = "Sun, 06 Nov 1994 08:49:37 GMT"
        hit = await c.get("/dated", headers={"if-modified-since": lm})
        both = await c.get("/dated", headers={"if-modified-since": lm, "if-none-match": '"x"'})
    assert hit.status_code == 304
    assert hit.headers["last-modified"] == lm
    assert both.status_code == 200


async def test_head_has_the_get_etag_and_conditional_head_gives_304() -> None:
    async with client(make_app()) as c:
        get = await c.get("/data")
        head = await c.head("/data")
        cond = await c.head("/data", headers={"if-none-match": get.headers["etag"]})
    assert head.status_code == 200
    assert head.headers["etag"] == get.headers["etag"]
    assert cond.status_code == 304


async def test_post_passes_through_untouched() -> None:
    async with client(make_app()) as c:
        r = await c.post("/post", headers={"if-none-match": "*"})
    assert r.status_code == 200 and r.text == "posted"
    assert "etag" not in r.headers


async def test_own_etag_is_kept_and_range_with_matching_tag_gives_304(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"0123456789" * 100)

    async def file(request: Request) -> Response:
        return FileResponse(path)

    app = ETagMiddleware(Starlette(routes=[Route("/f", file)]))
    async with client(app) as c:
        full = await c.get("/f")
        tag = full.headers["etag"]
        ranged = await c.get("/f", headers={"range": "bytes=0-9", "if-none-match": tag})
        if_range = await c.get("/f", headers={"range": "bytes=0-9", "if-range": '"stale"'})
        partial = await c.get("/f", headers={"range": "bytes=0-9", "if-range": tag})
    assert tag != make_etag(full.content)  # Starlette's own tag, kept as it is
    assert ranged.status_code == 304
    assert if_range.status_code == 200 and len(if_range.content) == 1000
    assert partial.status_code == 206 and partial.content == b"0123456789"


async def test_streaming_is_forwarded_chunk_by_chunk_unbuffered() -> None:
    seen_before_second: list[int] = []
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start(200, [("content-type", "text/plain")]))
        await send(body(b"first", more=True))
        seen_before_second.append(len(sent))
        await send(body(b"second"))

    async def capture(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    await ETagMiddleware(app)(http_scope("/"), receive, capture)
    assert seen_before_second == [2]  # start and first chunk already out
    assert header(sent[0], "etag") is None


# -- ASGI hygiene ---------------------------------------------------------------------------


async def test_unknown_messages_are_forwarded_in_order() -> None:
    messages = [
        {"type": "http.response.early_hint", "links": ["</a.css>; rel=preload"]},
        start(200, [("content-type", "text/plain")]),
        {"type": "http.response.debug", "info": {}},
        body(b"hi"),
        {"type": "http.response.trailers", "headers": [], "more_trailers": False},
    ]
    sent = await drive(ETagMiddleware(raw_app(messages)), http_scope("/"))
    assert [m["type"] for m in sent] == [m["type"] for m in messages]


async def test_websocket_and_lifespan_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await send({"type": f"{scope['type']}.marker"})

    mw = ETagMiddleware(app)
    for kind in ("websocket", "lifespan"):
        sent = await drive(mw, {"type": kind, "headers": []})
        assert sent == [{"type": f"{kind}.marker"}]
    assert seen == ["websocket", "lifespan"]


class Boom(Exception):
    pass


async def test_app_exception_propagates_as_the_same_type() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise Boom("x")

    with pytest.raises(Boom):
        await drive(ETagMiddleware(app), http_scope("/"))


async def test_context_var_set_by_endpoint_is_visible_after_the_call() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        var.set("set-by-endpoint")
        await raw_app([start(), body(b"x")])(scope, receive, send)

    await drive(ETagMiddleware(app), http_scope("/"))
    assert var.get() == "set-by-endpoint"


async def test_background_task_runs_after_the_last_byte() -> None:
    order: list[str] = []

    async def task() -> None:
        order.append("background")

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("body", background=BackgroundTask(task))

    app = ETagMiddleware(Starlette(routes=[Route("/", endpoint)]))

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            order.append("body")

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    await app(http_scope("/"), receive, send)
    assert order == ["body", "background"]


async def test_concurrent_requests_do_not_share_state() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        payload = scope["path"].encode() * 10
        await send(start(200, [("content-type", "text/plain")]))
        await anyio.sleep(0)
        await send(body(payload))

    mw = ETagMiddleware(app)
    results: dict[str, str | None] = {}

    async def one(i: int) -> None:
        sent = await drive(mw, http_scope(f"/{i}"))
        results[f"/{i}"] = header(sent[0], "etag")

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(one, i)
    assert results == {f"/{i}": make_etag(f"/{i}".encode() * 10) for i in range(30)}


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="max_body"):
        ETagMiddleware(raw_app([]), max_body=-1)
    with pytest.raises(ValueError, match="algorithm"):
        ETagMiddleware(raw_app([]), algorithm="md5")  # type: ignore[arg-type]


# -- validator first ------------------------------------------------------------------------


class Store:
    def __init__(self) -> None:
        self.version = 1
        self.handler_calls = 0
        self.writes = 0


def starlette_conditional_app(store: Store) -> Starlette:
    @conditional(etag=lambda request: f"v{store.version}", cache_control="max-age=0")
    async def item(request: Request) -> Response:
        if request.method == "PUT":
            store.writes += 1
            store.version += 1
            return PlainTextResponse("updated")
        store.handler_calls += 1
        return PlainTextResponse(f"item version {store.version}")

    return Starlette(routes=[Route("/item", item, methods=["GET", "PUT"])])


async def test_validator_first_skips_the_handler_on_match() -> None:
    store = Store()
    async with client(starlette_conditional_app(store)) as c:
        first = await c.get("/item")
        again = await c.get("/item", headers={"if-none-match": first.headers["etag"]})
    assert first.headers["etag"] == '"v1"'
    assert first.headers["cache-control"] == "max-age=0"
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == '"v1"'
    assert store.handler_calls == 1


async def test_validator_first_if_match_guards_unsafe_methods() -> None:
    store = Store()
    async with client(starlette_conditional_app(store)) as c:
        stale = await c.put("/item", headers={"if-match": '"v0"'})
        weak = await c.put("/item", headers={"if-match": 'W/"v1"'})
        create_only = await c.put("/item", headers={"if-none-match": "*"})
        ok = await c.put("/item", headers={"if-match": '"v1"'})
    assert [stale.status_code, weak.status_code, create_only.status_code] == [412, 412, 412]
    assert ok.status_code == 200
    assert store.writes == 1  # the failed preconditions never ran the handler


async def test_validator_first_on_fastapi_with_a_dict_return_and_the_middleware() -> None:
    calls = {"n": 0}
    app = FastAPI()

    @app.get("/users/{uid}")
    @conditional(etag=lambda request: f"user-{request.path_params['uid']}-7")
    async def user(uid: int, request: FastAPIRequest) -> dict[str, int]:
        calls["n"] += 1
        return {"uid": uid}

    wrapped = ETagMiddleware(app)
    async with client(wrapped) as c:
        first = await c.get("/users/3")
        again = await c.get("/users/3", headers={"if-none-match": '"user-3-7"'})
    assert first.json() == {"uid": 3}
    assert first.headers["etag"] == '"user-3-7"'  # the validator's, not a body hash
    assert again.status_code == 304
    assert calls["n"] == 1


async def test_validator_first_async_validator_and_sync_handler() -> None:
    async def tag(request: Request) -> str:
        return '"async-tag"'

    @conditional(etag=tag)
    async def a(request: Request) -> Response:
        return PlainTextResponse("a")

    @conditional(etag=lambda r: "sync-tag")
    def s(request: Request) -> Response:
        return PlainTextResponse("s")

    app = Starlette(routes=[Route("/a", a), Route("/s", s)])
    async with client(app) as c:
        ra = await c.get("/a", headers={"if-none-match": '"async-tag"'})
        rs = await c.get("/s")
    assert ra.status_code == 304
    assert rs.headers["etag"] == '"sync-tag"'


def test_conditional_rejects_bad_use() -> None:
    with pytest.raises(TypeError, match="etag="):
        conditional()
    with pytest.raises(TypeError, match="request"):

        @conditional(etag=lambda r: "x")
        async def no_request(item_id: int) -> None: ...


async def test_validator_returning_a_malformed_tag_is_a_clear_error() -> None:
    @conditional(etag=lambda r: 'has"quote')
    async def bad(request: Request) -> Response:
        return PlainTextResponse("x")

    app = Starlette(routes=[Route("/", bad)])
    async with client(app) as c:
        with pytest.raises(ValueError, match="etag validator"):
            await c.get("/")


@pytest.mark.parametrize(("names", "expected"), [
    ([b"host", b"accept"], False),
    ([b"host", b"If-None-Match"], True),
    ([b"IF-MODIFIED-SINCE"], True),
    ([b"iF-mAtCh"], True),
    ([b"if-unmodified-since"], True),
    ([b"if-range", b"x-if-none-match"], False),
])
def test_preconditions_are_found_in_any_case_with_or_without_the_shared_map(
    names: list[bytes], expected: bool
) -> None:
    from perfkit.asgi._asgi import has_preconditions, request_headers

    scope = {"headers": [(name, b'"x"') for name in names]}
    assert has_preconditions(scope) is expected
    request_headers(scope)  # an outer layer built the map: the answer comes from it
    assert has_preconditions(scope) is expected
