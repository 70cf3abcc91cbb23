"""CompressionMiddleware: q-values, Vary, skips, streaming, ETag variants; Starlette's GZip."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import httpx
import pytest
from _asgi_support import body, drive, header, http_scope, raw_app, start
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from perfkit.asgi import CompressionMiddleware, ETagMiddleware

TEXT = "hello world " * 200  # 2400 bytes, compressible


def text_app() -> Starlette:
    async def page(request: Request) -> Response:
        return PlainTextResponse(TEXT)

    async def small(request: Request) -> Response:
        return PlainTextResponse("tiny")

    async def varied(request: Request) -> Response:
        return PlainTextResponse(TEXT, headers={"vary": "accept-encoding, Accept-Language"})

    return Starlette(routes=[Route("/", page), Route("/small", small), Route("/varied", varied)])


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


CASES = [
    ("gzip", True),
    ("GZIP", True),
    ("gzip;q=0", False),
    ("identity, gzip;q=0", False),
    ("notgzip", False),
    ("*", True),
    ("deflate", False),
    ("br, gzip;q=0.5", True),
    ("identity;q=0", False),  # documented: nothing acceptable -> identity, never 406
]


async def fetch_raw(app: Any, accept: str, path: str = "/") -> httpx.Response:
    async with client(app) as c:
        request = c.build_request("GET", path, headers={"accept-encoding": accept})
        return await c.send(request, stream=False)


@pytest.mark.parametrize(("accept", "gzipped"), CASES)
async def test_q_values_are_honoured(accept: str, gzipped: bool) -> None:
    r = await fetch_raw(CompressionMiddleware(text_app()), accept)
    assert (r.headers.get("content-encoding") == "gzip") is gzipped
    assert r.text == TEXT  # httpx decodes gzip; identity comes as is
    assert "accept-encoding" in r.headers["vary"].lower()


async def test_starlette_gzip_gets_q_values_wrong_which_is_why_we_ship_our_own() -> None:
    wrong = []
    for accept, gzipped in CASES[:5]:
        r = await fetch_raw(GZipMiddleware(text_app()), accept)
        if (r.headers.get("content-encoding") == "gzip") is not gzipped:
            wrong.append(accept)
    if not wrong:
        pytest.skip("Starlette's GZipMiddleware now honours q-values")
    assert "gzip;q=0" in wrong


async def test_vary_on_every_compressible_response_merged_not_duplicated() -> None:
    app = CompressionMiddleware(text_app())
    small = await fetch_raw(app, "gzip", "/small")
    assert small.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in small.headers  # under minimum_size
    identity = await fetch_raw(app, "identity", "/")
    assert identity.headers["vary"] == "Accept-Encoding"
    varied = await fetch_raw(app, "gzip", "/varied")
    assert varied.headers["vary"] == "accept-encoding, Accept-Language"


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, [("content-type", "text/plain"), ("content-encoding", "br")]),
        (206, [("content-type", "text/plain")]),
        (200, [("content-type", "multipart/byteranges; boundary=x")]),
        (200, [("content-type", "text/event-stream")]),
        (200, [("content-type", "image/png")]),
        (200, []),
    ],
)
async def test_skipped_responses(status: int, headers: list[tuple[str, str]]) -> None:
    app = CompressionMiddleware(raw_app([start(status, headers), body(TEXT.encode())]))
    sent = await drive(app, http_scope("/", headers=[("accept-encoding", "gzip")]))
    assert sent[1]["body"] == TEXT.encode()
    assert header(sent[0], "content-encoding") in (None, "br")


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_statuses_are_untouched(status: int) -> None:
    app = CompressionMiddleware(raw_app([start(status, [("content-type", "text/plain")]),
                                         body(b"")]))
    sent = await drive(app, http_scope("/", headers=[("accept-encoding", "gzip")]))
    assert header(sent[0], "content-encoding") is None


async def test_content_length_is_correct_for_one_body() -> None:
    sent = await drive(
        CompressionMiddleware(raw_app([start(200, [("content-type", "text/plain"),
                                                   ("content-length", str(len(TEXT)))]),
                                       body(TEXT.encode())])),
        http_scope("/", headers=[("accept-encoding", "gzip")]),
    )
    assert header(sent[0], "content-length") == str(len(sent[1]["body"]))
    assert gzip.decompress(sent[1]["body"]).decode() == TEXT


async def test_streams_are_flushed_per_chunk_and_lose_content_length() -> None:
    chunks = [f"event: {i}\n".encode() * 60 for i in range(3)]
    app = CompressionMiddleware(raw_app(
        [start(200, [("content-type", "text/plain"), ("content-length", "99999")])]
        + [body(c, more=True) for c in chunks] + [body(b"")]
    ))
    sent = await drive(app, http_scope("/", headers=[("accept-encoding", "gzip")]))
    assert header(sent[0], "content-length") is None
    assert header(sent[0], "content-encoding") == "gzip"
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for i, chunk in enumerate(chunks):
        # Each chunk decodes as soon as it arrives: nothing is held back in the compressor.
        assert decoder.decompress(sent[1 + i]["body"]) == chunk
    assert decoder.decompress(sent[-1]["body"]) + decoder.flush() == b""


async def test_small_stream_with_declared_length_honours_minimum_size() -> None:
    app = CompressionMiddleware(raw_app([start(200, [("content-type", "text/plain"),
                                                     ("content-length", "4")]),
                                         body(b"ab", more=True), body(b"cd")]))
    sent = await drive(app, http_scope("/", headers=[("accept-encoding", "gzip")]))
    assert header(sent[0], "content-encoding") is None
    assert b"".join(m["body"] for m in sent[1:]) == b"abcd"


async def test_sse_is_not_compressed_and_stays_incremental() -> None:
    async def events(request: Request) -> Response:
        async def gen() -> Any:
            for i in range(3):
                yield f"data: {i}\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    app = CompressionMiddleware(Starlette(routes=[Route("/sse", events)]))
    sent = await drive(app, http_scope("/sse", headers=[("accept-encoding", "gzip")]))
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body" and m["body"]]
    assert bodies == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]


async def test_strong_etag_gets_a_per_coding_suffix_and_either_form_revalidates() -> None:
    app = CompressionMiddleware(ETagMiddleware(text_app()))
    async with client(app) as c:
        zipped = await c.get("/", headers={"accept-encoding": "gzip"})
        plain = await c.get("/", headers={"accept-encoding": "identity"})
        assert zipped.headers["etag"].endswith('-gzip"')
        assert plain.headers["etag"] == zipped.headers["etag"].replace("-gzip", "")
        again_zip = await c.get("/", headers={"accept-encoding": "gzip",
                                               "if-none-match": zipped.headers["etag"]})
        again_plain = await c.get("/", headers={"accept-encoding": "gzip",
                                                 "if-none-match": plain.headers["etag"]})
    assert again_zip.status_code == 304
    assert again_zip.headers["etag"] == zipped.headers["etag"]  # echoes the client's variant
    assert again_plain.status_code == 304


async def test_weak_etags_are_left_alone() -> None:
    app = CompressionMiddleware(raw_app([start(200, [("content-type", "text/plain"),
                                                     ("etag", 'W/"w"')]), body(TEXT.encode())]))
    sent = await drive(app, http_scope("/", headers=[("accept-encoding", "gzip")]))
    assert header(sent[0], "etag") == 'W/"w"'


async def test_large_bodies_are_compressed_in_a_thread_and_round_trip() -> None:
    big = ("payload " * 40_000).encode()
    app = CompressionMiddleware(raw_app([start(200, [("content-type", "text/plain")]),
                                         body(big)]), thread_minimum_size=1024)
    sent = await drive(app, http_scope("/", headers=[("accept-encoding", "gzip")]))
    assert gzip.decompress(sent[1]["body"]) == big


async def test_client_disconnect_mid_stream_propagates_and_stops_compressing() -> None:
    class Gone(Exception):
        pass

    calls = {"n": 0}

    async def send(message: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Gone

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    app = CompressionMiddleware(raw_app([start(200, [("content-type", "text/plain")])]
                                        + [body(TEXT.encode(), more=True)] * 5 + [body(b"")]))
    with pytest.raises(Gone):
        await app(http_scope("/", headers=[("accept-encoding", "gzip")]), receive, send)


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="minimum_size"):
        CompressionMiddleware(raw_app([]), minimum_size=-1)
    with pytest.raises(ValueError, match="compresslevel"):
        CompressionMiddleware(raw_app([]), compresslevel=11)


async def test_a_10_mib_body_does_not_stall_a_concurrent_small_request() -> None:
    import os
    import time

    import anyio

    big = os.urandom(5 << 20) + b"a" * (5 << 20)  # 10 MiB, half incompressible

    async def app(scope: Any, receive: Any, send: Any) -> None:
        payload = big if scope["path"] == "/big" else b"ok"
        await send(start(200, [("content-type", "text/plain")]))
        await send(body(payload))

    mw = CompressionMiddleware(app)
    timings: dict[str, float] = {}

    async def timed(path: str) -> None:
        began = time.perf_counter()
        await drive(mw, http_scope(path, headers=[("accept-encoding", "gzip")]))
        timings[path] = max(timings.get(path, 0.0), time.perf_counter() - began)

    async with anyio.create_task_group() as tg:
        tg.start_soon(timed, "/big")
        await anyio.sleep(0.01)  # the big body is in the worker thread by now
        for _ in range(5):
            await timed("/health")
    # Wide margin: the small request must not wait for the big compression to finish.
    assert timings["/health"] < timings["/big"] / 2


# -- BREACH padding ----------------------------------------------------------------------------


async def test_breach_padding_varies_the_length_of_identical_content_and_round_trips() -> None:
    app = CompressionMiddleware(ETagMiddleware(text_app()), breach_padding=64)
    scope = http_scope("/", headers=[("accept-encoding", "gzip")])
    responses = [await drive(app, dict(scope)) for _ in range(12)]
    lengths = {len(sent[1]["body"]) for sent in responses}
    assert len(lengths) > 1  # 12 draws of 1..64 padding bytes: all equal has odds ~1e-20
    for sent in responses:
        assert header(sent[0], "content-encoding") == "gzip"
        assert int(header(sent[0], "content-length") or -1) == len(sent[1]["body"])
        assert gzip.decompress(sent[1]["body"]).decode() == TEXT
        # The bytes vary, so the gzip variant's validator is weak.
        etag = header(sent[0], "etag") or ""
        assert etag.startswith('W/"') and etag.endswith('-gzip"')


async def fetch_raw_from(c: httpx.AsyncClient, accept: str, **headers: str) -> httpx.Response:
    request = c.build_request("GET", "/", headers={"accept-encoding": accept, **headers})
    return await c.send(request, stream=False)


async def test_breach_padded_variant_still_revalidates_and_identity_is_untouched() -> None:
    app = CompressionMiddleware(ETagMiddleware(text_app()), breach_padding=32)
    async with client(app) as c:
        zipped = await fetch_raw_from(c, "gzip")
        again = await fetch_raw_from(c, "gzip", **{"if-none-match": zipped.headers["etag"]})
        plain = await fetch_raw_from(c, "identity")
    assert again.status_code == 304 and again.headers["etag"] == zipped.headers["etag"]
    assert plain.headers["etag"].startswith('"') and plain.text == TEXT


async def test_breach_padded_stream_round_trips_chunk_by_chunk() -> None:
    async def chunks() -> Any:
        for i in range(3):
            yield (f"chunk {i} " * 100).encode()

    async def stream(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = CompressionMiddleware(Starlette(routes=[Route("/s", stream)]), breach_padding=16,
                                minimum_size=0)
    sent = await drive(app, http_scope("/s", headers=[("accept-encoding", "gzip")]))
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert header(sent[0], "content-encoding") == "gzip"
    assert gzip.decompress(data) == b"".join((f"chunk {i} " * 100).encode() for i in range(3))
    first = next(m["body"] for m in sent if m["type"] == "http.response.body" and m["body"])
    assert zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(first).startswith(b"chunk 0")


def test_breach_padding_must_fit_a_gzip_header() -> None:
    with pytest.raises(ValueError, match="breach_padding"):
        CompressionMiddleware(text_app(), breach_padding=256)


async def test_a_304_carries_the_vary_its_200_would_whatever_the_tag_form() -> None:
    # RFC 9110 §15.4.5: a 304 MUST carry the Vary a 200 would. The identity variant's 200
    # has Vary: Accept-Encoding (compressible), so its 304 must too; an image's has none.
    from perfkit import MemoryBackend
    from perfkit.asgi import ResponseCacheMiddleware

    async def image(request: Request) -> Response:
        return Response(b"\x89PNG" * 300, media_type="image/png")

    inner = text_app()
    inner.router.routes.append(Route("/image", image))
    for app in (CompressionMiddleware(ETagMiddleware(inner)),
                CompressionMiddleware(ResponseCacheMiddleware(
                    ETagMiddleware(inner), backend=MemoryBackend(), default_ttl=60))):
        async with client(app) as c:
            for accept in ("identity", "gzip"):
                first = await c.get("/", headers={"accept-encoding": accept})
                again = await c.get("/", headers={"accept-encoding": accept,
                                                  "if-none-match": first.headers["etag"]})
                assert again.status_code == 304
                assert again.headers.get("vary") == first.headers["vary"] == "Accept-Encoding"
            png = await c.get("/image", headers={"accept-encoding": "gzip"})
            png_again = await c.get("/image", headers={"accept-encoding": "gzip",
                                                       "if-none-match": png.headers["etag"]})
            assert png_again.status_code == 304
            assert "vary" not in png.headers and "vary" not in png_again.headers


async def test_behind_a_layer_that_streams_every_response_minimum_size_still_holds() -> None:
    # BaseHTTPMiddleware (inside compression) turns every response into a stream of
    # chunks; its Content-Length survives, and compression decides by it.
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware

    class Streams(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            response: Response = await call_next(request)
            return response

    inner = Starlette(routes=text_app().routes, middleware=[Middleware(Streams)])
    app = CompressionMiddleware(inner)
    small = await drive(app, http_scope("/small", headers=[("accept-encoding", "gzip")]))
    assert any(m.get("more_body") for m in small[1:])  # it really came as a stream
    assert header(small[0], "content-encoding") is None
    assert b"".join(m["body"] for m in small[1:]) == b"tiny"
    big = await fetch_raw(app, "gzip", "/")
    assert big.headers["content-encoding"] == "gzip" and big.text == TEXT


async def test_compressor_memory_is_released_when_the_client_disconnects_mid_stream() -> None:
    # Each gzip stream holds ~256 KiB of zlib state (allocated through Python's allocator,
    # so tracemalloc sees it). 40 streams abandoned mid-way must not keep theirs.
    import tracemalloc

    class Gone(Exception):
        pass

    app = CompressionMiddleware(raw_app([start(200, [("content-type", "text/plain")])]
                                        + [body(TEXT.encode(), more=True)] * 5 + [body(b"")]))

    async def abandoned() -> None:
        sent = {"n": 0}

        async def send(message: Any) -> None:
            sent["n"] += 1
            if sent["n"] == 3:
                raise Gone

        async def receive() -> Any:
            return {"type": "http.disconnect"}

        try:
            await app(http_scope("/", headers=[("accept-encoding", "gzip")]), receive, send)
        except Gone:
            pass
        else:  # pragma: no cover - the stream must have been cut
            raise AssertionError("the send failure did not reach the caller")

    await abandoned()  # warm-up: first-use allocations are not a leak
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = []
        for _ in range(40):
            await abandoned()
            held.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    assert held[-1] < 2 << 20, f"{held[-1]} bytes still held after 40 abandoned streams"


async def test_a_conditional_routes_own_304_carries_vary_when_its_media_type_is_declared() -> None:
    from starlette.responses import JSONResponse

    from perfkit.asgi import conditional

    @conditional(etag=lambda request: "v1", media_type="application/json")
    async def declared(request: Request) -> Response:
        return JSONResponse({"text": "x" * 2000})

    @conditional(etag=lambda request: "v1")
    async def undeclared(request: Request) -> Response:
        return JSONResponse({"text": "x" * 2000})

    @conditional(etag=lambda request: "v1", media_type="image/png")
    async def image(request: Request) -> Response:
        return Response(b"\x89PNG" * 300, media_type="image/png")

    app = CompressionMiddleware(Starlette(routes=[
        Route("/declared", declared), Route("/undeclared", undeclared), Route("/image", image)]))
    async with client(app) as c:
        # (path, the 200's Vary, the 304's): undeclared, the 304 cannot know (documented)
        for path, vary_200, vary_304 in (("/declared", "Accept-Encoding", "Accept-Encoding"),
                                         ("/undeclared", "Accept-Encoding", None),
                                         ("/image", None, None)):
            first = await c.get(path, headers={"accept-encoding": "identity"})
            again = await c.get(path, headers={"accept-encoding": "identity",
                                               "if-none-match": first.headers["etag"]})
            assert first.status_code == 200 and again.status_code == 304, path
            assert first.headers.get("vary") == vary_200, path
            assert again.headers.get("vary") == vary_304, path


def test_conditional_media_type_is_checked() -> None:
    from perfkit.asgi import conditional

    with pytest.raises(ValueError, match="media_type"):
        conditional(etag=lambda request: "x", media_type="")
