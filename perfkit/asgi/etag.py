"""ETags and conditional GET for any ASGI app, without buffering streams.

``ETagMiddleware`` hashes bounded, single-message 200 bodies to GET/HEAD into a strong ETag
and answers If-None-Match / If-Modified-Since with 304 (RFC 9110 §13). Responses that carry
their own ETag or Last-Modified keep them and are still evaluated, so a ``FileResponse``
gets conditional handling too. Streams, ``no-store`` responses and bodies over
``max_body`` pass through untouched and unbuffered.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from perfkit.asgi._asgi import (
    BODY,
    READY,
    START,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    content_length,
    empty_body,
    has_preconditions,
    not_modified_start,
)
from perfkit.http_rules import (
    EtagAlgorithm,
    Precondition,
    RequestConditions,
    etag_function,
    evaluate_preconditions,
    parse_http_date,
)

SCOPE_ETAG = "perfkit.etag"
"""Scope key where a validator-first route leaves its ETag for the middleware to send."""

_PASS, _HOLD, _DONE = 0, 1, 2
_NOTHING: Message = {}


class ETagMiddleware:
    """Strong body-hash ETags and 304/412 answers for GET and HEAD.

    Defaults: ``max_body=1 MiB`` (larger bodies get no generated ETag), ``algorithm="xxh3"``
    (xxh3-128 from ``xxhash``, which ``perfkit[asgi]`` installs: stable across processes,
    FIPS-safe, ~0.1 µs per 2 KB; ``"sha256"`` or ``"blake2b"`` for a cryptographic
    digest at ~2-3 µs; see :func:`perfkit.http_rules.make_etag`).
    Other methods pass through: a precondition on PUT/DELETE needs the current ETag *before*
    the handler runs, which is what :func:`perfkit.asgi.conditional` is for.
    """

    def __init__(
        self, app: ASGIApp, *, max_body: int = 1 << 20, algorithm: EtagAlgorithm = "xxh3"
    ) -> None:
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, got {max_body!r}")
        self.app = app
        self.max_body = max_body
        self.algorithm: EtagAlgorithm = algorithm
        self.digest = etag_function(algorithm)  # validates the name now, not per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Responder(self, scope, send).send)


class _Responder:
    """One request's state; ``send`` returns the next layer's awaitable (no coroutine)."""

    __slots__ = ("conditions", "held", "mw", "out", "scope", "state")

    def __init__(self, mw: ETagMiddleware, scope: Scope, send: Send) -> None:
        self.mw = mw
        self.scope = scope
        self.out = send
        self.state = _PASS
        self.held: Message = _NOTHING
        self.conditions: RequestConditions | None = None
        if has_preconditions(scope):
            conditions = RequestConditions.from_asgi(scope["headers"])
            if conditions.any:
                self.conditions = conditions

    def send(self, message: Message) -> Awaitable[None]:
        state = self.state
        if state == _PASS:
            if message["type"] != START or not 200 <= message["status"] < 300:
                return self.out(message)
            return self._start(message)
        if state == _HOLD:
            return self._first_body(message)
        # _DONE: a 304/412 went out; the app's body (and trailers) are dropped.
        if message["type"].startswith("http.response."):
            return READY
        return self.out(message)

    def _start(self, message: Message) -> Awaitable[None]:
        headers = message.get("headers", ())
        own_etag, modified, no_store, length = _scan(headers)
        if own_etag is None:
            route_etag: str | None = self.scope.get(SCOPE_ETAG)
            if route_etag is not None:
                own_etag = route_etag.encode("latin-1")
                message["headers"] = [*headers, (b"etag", own_etag)]
        if own_etag is not None or modified is not None:
            # The app chose its validators; evaluate them without touching the body.
            conditions = self.conditions
            if conditions is not None:
                lm = parse_http_date(modified.decode("latin-1")) if modified else None
                tag = own_etag.decode("latin-1") if own_etag else None
                outcome = evaluate_preconditions(self.scope["method"], conditions, tag, lm)
                if outcome is Precondition.NOT_MODIFIED or outcome is Precondition.FAILED:
                    self.state = _DONE
                    return self._refuse(message, outcome)
            return self.out(message)
        if message["status"] != 200 or no_store or (
            length is not None and length > self.mw.max_body
        ):
            return self.out(message)
        self.held = message
        self.state = _HOLD
        return READY

    def _first_body(self, message: Message) -> Awaitable[None]:
        self.state = _PASS
        start = self.held
        body: bytes = message.get("body", b"")
        if (
            message["type"] != BODY
            or message.get("more_body", False)
            or len(body) > self.mw.max_body
            or (not body and self.scope["method"] == "HEAD"
                and content_length(start.get("headers", ())) not in (None, 0))
        ):
            # Streaming, too large, a HEAD without the body, or an unusual message:
            # send as it came, in order, without an ETag.
            return self._both(start, message)
        tag = self.mw.digest(body)
        start["headers"] = [*start.get("headers", ()), (b"etag", tag.encode("latin-1"))]
        conditions = self.conditions
        if conditions is not None:
            outcome = evaluate_preconditions(self.scope["method"], conditions, tag)
            if outcome is Precondition.NOT_MODIFIED or outcome is Precondition.FAILED:
                self.state = _DONE
                return self._refuse(start, outcome)
        return self._both(start, message)

    async def _both(self, start: Message, message: Message) -> None:
        await self.out(start)
        await self.out(message)

    async def _refuse(self, start: Message, outcome: Precondition) -> None:
        if outcome is Precondition.NOT_MODIFIED:
            await self.out(not_modified_start(start["headers"], self.scope))
        else:
            await self.out({"type": START, "status": 412, "headers": _only_validators(start)})
        await self.out(empty_body())


_SCANNED = frozenset({b"etag", b"last-modified", b"cache-control", b"content-length"})


def _scan(headers: Any) -> tuple[bytes | None, bytes | None, bool, int | None]:
    """One pass over response headers: ETag, Last-Modified, no-store?, Content-Length."""
    etag = modified = None
    no_store = False
    length: int | None = None
    for key, value in headers:
        name = key.lower()
        if name not in _SCANNED:
            continue
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
        elif name == b"etag":
            etag = value
        elif name == b"last-modified":
            modified = value
        else:
            no_store = no_store or b"no-store" in value.lower()
    return etag, modified, no_store, length


def _only_validators(start: Message) -> list[tuple[bytes, bytes]]:
    keep = (b"etag", b"last-modified", b"date", b"vary", b"set-cookie")
    return [(k, v) for k, v in start.get("headers", ()) if k.lower() in keep]
