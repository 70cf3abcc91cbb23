"""perfkit.asgi.testing: the assertions pass on correct stacks and fail, with the rule named,
on broken ones (a leaky path-only cache, an app that ignores If-None-Match, bad headers)."""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

with warnings.catch_warnings():  # Starlette 1.x nudges towards httpx2; httpx is what we have
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from perfkit import MemoryBackend
from perfkit.asgi import ETagMiddleware, ResponseCacheMiddleware
from perfkit.asgi.testing import (
    aassert_conditional,
    aassert_no_leak,
    assert_conditional,
    assert_headers_lint,
    assert_no_leak,
    header_problems,
)


async def doc(request: Request) -> Response:
    return PlainTextResponse("the document " * 20, headers={"cache-control": "max-age=60"})


async def me(request: Request) -> Response:
    user = request.headers.get("authorization", "anonymous")
    response = PlainTextResponse(f"hello {user}", headers={"cache-control": "public, max-age=60"})
    response.set_cookie("session", f"token-of-{user}")
    return response


def app() -> Starlette:
    return Starlette(routes=[Route("/doc", doc), Route("/me", me)])


class PathOnlyCache:
    """The bug the leak assertion exists for: a cache keyed by path alone."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.store: dict[str, list[dict[str, Any]]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] in self.store:
            for message in self.store[scope["path"]]:
                await send(message)
            return
        recorded: list[dict[str, Any]] = []

        async def record(message: Any) -> None:
            recorded.append(message)
            await send(message)

        await self.inner(scope, receive, record)
        self.store[scope["path"]] = recorded


def test_conditional_passes_on_the_etag_middleware_with_a_sync_client() -> None:
    first = assert_conditional(TestClient(ETagMiddleware(app())), "/doc")
    assert first.status_code == 200 and first.headers["etag"].startswith('"')


async def test_conditional_passes_on_cache_hits_with_an_async_client() -> None:
    stack = ResponseCacheMiddleware(ETagMiddleware(app()), backend=MemoryBackend())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack),
                                 base_url="http://testserver") as client:
        await aassert_conditional(client, "/doc")


def test_conditional_fails_without_an_etag_or_without_a_304() -> None:
    with pytest.raises(AssertionError, match="no ETag"):
        assert_conditional(TestClient(app()), "/doc")

    async def ignores_conditions(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"etag", b'"v1"'), (b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x"})

    with pytest.raises(AssertionError, match='If-None-Match: "v1" got 200, not 304'):
        assert_conditional(TestClient(ignores_conditions), "/doc")


def test_conditional_names_a_304_that_keeps_representation_headers() -> None:
    async def sloppy(scope: Any, receive: Any, send: Any) -> None:
        conditional = any(k == b"if-none-match" for k, _ in scope["headers"])
        headers = [(b"etag", b'"v1"'), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 304 if conditional else 200,
                    "headers": headers})
        await send({"type": "http.response.body", "body": b"" if conditional else b"x"})

    with pytest.raises(AssertionError, match="the 304 carries content-type"):
        assert_conditional(TestClient(sloppy), "/doc")


def test_no_leak_passes_through_the_response_cache_and_catches_a_path_only_cache() -> None:
    alice, bob = {"authorization": "alice"}, {"authorization": "bob"}
    safe = ResponseCacheMiddleware(app(), backend=MemoryBackend())
    assert_no_leak(TestClient(safe), "/me", alice=alice, bob=bob)
    with pytest.raises(
        AssertionError, match="Bob got Alice's body; Bob got Alice's Set-Cookie 'session'"
    ):
        assert_no_leak(TestClient(PathOnlyCache(app())), "/me", alice=alice, bob=bob)


async def test_no_leak_async_form() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=PathOnlyCache(app())),
                                 base_url="http://testserver") as client:
        with pytest.raises(AssertionError, match="Bob got Alice's body"):
            await aassert_no_leak(client, "/me", alice={"authorization": "alice"},
                                  bob={"authorization": "bob"})


@pytest.mark.parametrize(("headers", "problem"), [
    ({"etag": "W/123"}, "not a quoted entity tag"),
    ({"etag": "abc"}, "not a quoted entity tag"),
    ({"content-encoding": "gzip"}, "without Vary: Accept-Encoding"),
    ({"content-encoding": "br", "vary": "Accept-Language"}, "without Vary: Accept-Encoding"),
])
def test_header_lint_names_the_problem(headers: dict[str, str], problem: str) -> None:
    response = httpx.Response(200, headers=headers)
    assert any(problem in p for p in header_problems(response))
    with pytest.raises(AssertionError, match=problem):
        assert_headers_lint(response)


def test_header_lint_accepts_correct_headers() -> None:
    response = httpx.Response(200, headers={"etag": 'W/"a-gzip"', "content-encoding": "gzip",
                                            "vary": "accept-encoding, Cookie"})
    assert header_problems(response) == []
    assert_headers_lint(response)
