"""ETags and conditional GET for any ASGI app, without buffering streams.

``ETagMiddleware`` hashes bounded, single-message 200 bodies to GET/HEAD into a strong ETag
and answers If-None-Match / If-Modified-Since with 304 (RFC 9110 §13). Responses that carry
their own ETag or Last-Modified keep them and are still evaluated, so a ``FileResponse``
gets conditional handling too. Streams, ``no-store`` responses and bodies over
``max_body`` pass through untouched and unbuffered.
"""

from __future__ import annotations

from typing import Any

from perfkit.asgi._asgi import (
    BODY,
    START,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    content_length,
    empty_body,
)
from perfkit.http_rules import (
    EtagAlgorithm,
    Precondition,
    RequestConditions,
    evaluate_preconditions,
    make_etag,
    not_modified_headers,
    parse_http_date,
)

SCOPE_ETAG = "perfkit.etag"
"""Scope key where a validator-first route leaves its ETag for the middleware to send."""

_PASS, _HOLD, _DONE = 0, 1, 2


class ETagMiddleware:
    """Strong body-hash ETags and 304/412 answers for GET and HEAD.

    Defaults: ``max_body=1 MiB`` (larger bodies get no generated ETag), ``algorithm="sha256"``
    (FIPS-safe, stable across processes; ``"xxh3"`` is faster with the ``xxhash`` package).
    Other methods pass through: a precondition on PUT/DELETE needs the current ETag *before*
    the handler runs, which is what :func:`perfkit.asgi.conditional` is for.
    """

    def __init__(
        self, app: ASGIApp, *, max_body: int = 1 << 20, algorithm: EtagAlgorithm = "sha256"
    ) -> None:
        if max_body < 0:
            raise ValueError(f"max_body must be >= 0, got {max_body!r}")
        make_etag(b"", algorithm)  # validates the name now, not on the first request
        self.app = app
        self.max_body = max_body
        self.algorithm: EtagAlgorithm = algorithm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        conditions = RequestConditions.from_asgi(scope["headers"])
        max_body = self.max_body
        algorithm = self.algorithm
        state = _PASS
        held: Message = {}

        async def send_not_modified(start: Message, outcome: Precondition) -> None:
            nonlocal state
            if outcome is Precondition.NOT_MODIFIED:
                headers = not_modified_headers(start["headers"])
                await send({"type": START, "status": 304, "headers": headers})
            else:
                await send({"type": START, "status": 412, "headers": _only_validators(start)})
            await send(empty_body())
            state = _DONE

        async def etag_send(message: Message) -> None:
            nonlocal state, held
            kind = message["type"]
            if state == _PASS:
                if kind != START:
                    await send(message)
                    return
                status: int = message["status"]
                if not 200 <= status < 300:
                    await send(message)
                    return
                own_etag, modified, no_store, length = _scan(message.get("headers", ()))
                route_etag: str | None = scope.get(SCOPE_ETAG)
                if own_etag is None and route_etag is not None:
                    own_etag = route_etag.encode("latin-1")
                    message["headers"] = [*message.get("headers", ()), (b"etag", own_etag)]
                if own_etag is not None or modified is not None:
                    # The app chose its validators; evaluate them without touching the body.
                    if conditions.any:
                        lm = parse_http_date(modified.decode("latin-1")) if modified else None
                        tag = own_etag.decode("latin-1") if own_etag else None
                        outcome = evaluate_preconditions(method, conditions, tag, lm)
                        if outcome in (Precondition.NOT_MODIFIED, Precondition.FAILED):
                            await send_not_modified(message, outcome)
                            return
                    await send(message)
                    return
                if status != 200 or no_store or (length is not None and length > max_body):
                    await send(message)
                    return
                held = message
                state = _HOLD
                return
            if state == _HOLD:
                state = _PASS
                start = held
                held = {}
                body: bytes = message.get("body", b"")
                if (
                    kind != BODY
                    or message.get("more_body", False)
                    or len(body) > max_body
                    or (method == "HEAD" and not body
                        and content_length(start.get("headers", ())) not in (None, 0))
                ):
                    # Streaming, too large, a HEAD without the body, or an unusual message:
                    # send as it came, in order, without an ETag.
                    await send(start)
                    await send(message)
                    return
                tag = make_etag(body, algorithm)
                start["headers"] = [*start.get("headers", ()), (b"etag", tag.encode("latin-1"))]
                if conditions.any:
                    outcome = evaluate_preconditions(method, conditions, tag)
                    if outcome in (Precondition.NOT_MODIFIED, Precondition.FAILED):
                        await send_not_modified(start, outcome)
                        return
                await send(start)
                await send(message)
                return
            # _DONE: a 304/412 went out; the app's body (and trailers) are dropped.
            if not kind.startswith("http.response."):
                await send(message)

        await self.app(scope, receive, etag_send)


def _scan(headers: Any) -> tuple[bytes | None, bytes | None, bool, int | None]:
    """One pass over response headers: ETag, Last-Modified, no-store?, Content-Length."""
    etag = modified = None
    no_store = False
    length: int | None = None
    for key, value in headers:
        name = key.lower()
        if name == b"etag":
            etag = value
        elif name == b"last-modified":
            modified = value
        elif name == b"cache-control":
            no_store = no_store or b"no-store" in value.lower()
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
    return etag, modified, no_store, length


def _only_validators(start: Message) -> list[tuple[bytes, bytes]]:
    keep = (b"etag", b"last-modified", b"date", b"vary", b"set-cookie")
    return [(k, v) for k, v in start.get("headers", ()) if k.lower() in keep]
