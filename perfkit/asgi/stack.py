"""The four middleware in their documented order, answering common requests in one pass.

``MiddlewareStack(app)`` builds ``TimingMiddleware > CompressionMiddleware >
ResponseCacheMiddleware > ETagMiddleware > app``, each the ordinary middleware with its own
options, and adds one shortcut: a GET/HEAD without preconditions that the cache passes
through (a bypass such as ``Authorization``, or hit-for-pass) and that the app answers with
a plain 200 in one body message gets its ``ETag``, ``Cache-Status`` and ``Vary`` from one
responder instead of three layers. Anything else (cache lookups and hits, preconditions,
gzip clients, streams, other statuses, a response with validators or an encoding of its
own) is replayed into the layers' own responders, so the behaviour is theirs. The shortcut
is checked against the layered stack, response by response, in
``tests/test_asgi_middleware_stack.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from perfkit.asgi import compression as _compression
from perfkit.asgi import etag as _etag
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
    request_headers,
)
from perfkit.asgi.compression import CompressionMiddleware
from perfkit.asgi.etag import SCOPE_ETAG, ETagMiddleware
from perfkit.asgi.response_cache import _UNREAD, SCOPE_PLAN, ResponseCacheMiddleware, _Tagger
from perfkit.asgi.timing import (
    RESPONSE_TIME,
    RESPONSE_TIME_FORMAT,
    TimingMiddleware,
    _Timer,
)

__all__ = ["MiddlewareStack"]

_VARY = (b"vary", b"Accept-Encoding")
# Response fields that send a response through the layers' own responders.
_SCANNED = frozenset({b"etag", b"last-modified", b"content-encoding", b"vary",
                      b"cache-control", b"content-length", b"content-type"})


def _options(name: str, value: Any) -> dict[str, Any] | None:
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{name} must be True, False or a dict of {name} options, got {value!r}")


class MiddlewareStack:
    """Timing > compression > response cache > ETag around ``app``, as one ASGI app.

    Each keyword takes the options of its middleware as a dict (``cache={"backend":
    RedisBackend(...)}``), True for its defaults or False to leave it out. The layers are
    reachable as ``.timing``, ``.compression``, ``.cache`` and ``.etag`` (e.g. for
    ``stack.cache.invalidate(...)``); ``None`` where left out. The cache exports its
    counters to timing's ``registry`` unless given one of its own.
    """

    def __init__(self, app: ASGIApp, *, timing: bool | Mapping[str, Any] = True,
                 compression: bool | Mapping[str, Any] = True,
                 cache: bool | Mapping[str, Any] = True,
                 etag: bool | Mapping[str, Any] = True) -> None:
        self.app = app
        inner: ASGIApp = app
        options = _options("etag", etag)
        self.etag = ETagMiddleware(inner, **options) if options is not None else None
        inner = self.etag or inner
        options = _options("cache", cache)
        timing_options = _options("timing", timing)
        if options is not None and timing_options and "registry" not in options:
            options["registry"] = timing_options.get("registry")  # one registry for both
        self.cache = ResponseCacheMiddleware(inner, **options) if options is not None else None
        inner = self.cache or inner
        options = _options("compression", compression)
        self.compression = (CompressionMiddleware(inner, **options)
                            if options is not None else None)
        self.layered: ASGIApp = self.compression or inner
        """Everything under timing, as ordinary layers: what the shortcut falls back to."""
        self.timing = (TimingMiddleware(self.layered, **timing_options)
                       if timing_options is not None else None)
        self._outer: ASGIApp = self.timing or self.layered
        self._extras: dict[tuple[bytes | None, bool], tuple[tuple[bytes, bytes], ...]] = {}

    def _extra(self, tag: bytes | None, vary: bool) -> tuple[tuple[bytes, bytes], ...]:
        """Cache-Status and Vary as the layers add them (memo: few distinct values)."""
        extra = self._extras.get((tag, vary))
        if extra is None:
            extra = ((((b"cache-status", tag),) if tag is not None else ())
                     + ((_VARY,) if vary else ()))
            if len(self._extras) < 512:  # tags come from a bounded set anyway
                self._extras[(tag, vary)] = extra
        return extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._outer(scope, receive, send)
            return
        method = scope["method"]
        headers = request_headers(scope)
        timing = self.timing
        if (method != "GET" and method != "HEAD") or (
            b"if-none-match" in headers or b"if-modified-since" in headers
            or b"if-match" in headers or b"if-unmodified-since" in headers
        ) or (timing is not None and scope["path"] in timing.exclude_paths):
            await self._outer(scope, receive, send)
            return
        tag = None
        unread = None
        cache = self.cache
        if cache is not None:
            plan = cache._plan(scope, headers)
            if plan.__class__ is tuple and plan[2] is _UNREAD and timing is not None:
                unread = plan  # a remote backend: read below, once timing has begun
            else:
                if plan.__class__ is tuple and plan[2] is _UNREAD:
                    plan = cache._resolve(plan, await cache._get(plan[1]))
                if plan.__class__ is tuple:  # a lookup: the cache layer picks its plan up
                    scope[SCOPE_PLAN] = (cache, plan)
                    await self._outer(scope, receive, send)
                    return
                tag = plan
        gzip = False
        compression = self.compression
        if compression is not None:
            accept = headers.get(b"accept-encoding")
            known = compression._gzip_ok.get(accept)
            gzip = known if known is not None else compression.accepts_gzip(accept)
        if timing is None:
            fused = _Fused(_no_clock, send, receive, False)
        else:
            fused = _Fused(timing.clock, send, receive, timing.response_time_header)
        fused.stack = self  # set here, not in an __init__ of its own: one call fewer
        fused.scope = scope
        fused.gzip = gzip
        fused.tag = tag
        fused.held = None
        fused.chain = None
        if timing is None:
            try:
                await self.app(scope, receive, fused.send)
            finally:
                fused.chain = None  # the layers' responders end in fused.emit: a cycle
            return
        token = timing.begin(scope, fused)
        try:
            if unread is not None:  # timing is outermost: it covers the cache's read too
                assert cache is not None
                plan = cache._resolve(unread, await cache._get(unread[1]))
                if plan.__class__ is tuple:  # a lookup: the layers under timing serve it
                    scope[SCOPE_PLAN] = (cache, plan)
                    fused.chain = _DONE
                    await self.layered(scope, fused.receive, fused.send)
                    return
                fused.tag = plan
            await self.app(scope, fused.receive, fused.send)
        except BaseException:
            fused.failed()
            raise
        finally:
            fused.chain = None
            timing.end(scope, fused, token)


_DONE = object()  # _Fused.chain once the shortcut has sent the start: emit the rest


def _no_clock() -> float:
    return 0.0


class _Fused(_Timer):
    """One request's responder for ETag, the cache's Cache-Status, compression's Vary and
    (as a ``_Timer``) timing.

    ``send`` returns the next awaitable (no coroutine per message). ``chain`` is None while
    the shortcut holds; then either ``emit`` (done: pass the rest) or the layers' own
    responders, built when the response turned out not to be a plain one. Without timing
    the timer parts only stamp a dummy clock and add no header.
    """

    __slots__ = ("chain", "extra", "gzip", "held", "scope", "stack", "tag")

    emit = _Timer.send  # the timer's own send: stamps, then the server's send

    chain: Any
    extra: tuple[tuple[bytes, bytes], ...]
    gzip: bool
    held: Message | None
    scope: Scope
    stack: MiddlewareStack
    tag: bytes | None

    def send(self, message: Message) -> Awaitable[None]:
        chain = self.chain
        if chain is not None:
            if chain is _DONE:
                return self.emit(message)
            return chain(message)  # type: ignore[no-any-return]
        start = self.held
        if start is None:
            extra = self._plain(message) if message["type"] == START else None
            if extra is None:
                return self._layers()(message)  # type: ignore[no-any-return]
            if self.stack.etag is None:
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
                self.chain = _DONE
                return self.emit(message)
            self.held = message
            self.extra = extra
            return READY
        etag = self.stack.etag
        assert etag is not None
        body = message.get("body", b"") if message["type"] == BODY else None
        if (
            body is None
            or message.get("more_body", False)
            or len(body) > etag.max_body
            or (not body and self.scope["method"] == "HEAD"
                and content_length(start.get("headers", ())) not in (None, 0))
        ):
            return _replay(self._layers(), start, message)
        self.chain = _DONE
        # What the layers add to a plain 200, in their order: ETag, Cache-Status, Vary.
        tag = (b"etag", etag.digest(body).encode("latin-1"))
        if self.spans is not None:  # Server-Timing: the timer's own send does it all
            start["headers"] = [*start.get("headers", ()), tag, *self.extra]
            return _replay(self.emit, start, message)
        # The timer's work for these two messages, inline (see _Timer.send): the response
        # starts now, and ends when the body is handed on.
        self.ttfb = ttfb = self.clock() - self.began
        self.status = 200
        if self.header:
            start["headers"] = [*start.get("headers", ()), tag, *self.extra,
                                (RESPONSE_TIME, RESPONSE_TIME_FORMAT % (ttfb * 1000))]
        else:
            start["headers"] = [*start.get("headers", ()), tag, *self.extra]
        return _send_both(self, start, message)

    def _plain(self, start: Message) -> tuple[tuple[bytes, bytes], ...] | None:
        """For a 200 the layers would only add headers to, the Cache-Status and Vary fields
        they add (after the ETag); None for any other response."""
        if start["status"] != 200 or SCOPE_ETAG in self.scope:
            return None
        content_type = None
        for key, value in start.get("headers", ()):
            name = key.lower()
            if name not in _SCANNED:
                continue
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                etag = self.stack.etag
                try:
                    if etag is not None and int(value) > etag.max_body:
                        return None
                except ValueError:
                    return None
            elif name == b"cache-control":
                if b"no-store" in value.lower():
                    return None
            else:  # validators, an encoding or a Vary of the app's own
                return None
        vary = False
        compression = self.stack.compression
        if compression is not None and content_type:
            known = compression._compressible.get(content_type)
            if known is None:
                known = compression.compressible(content_type)
            if known:
                if self.gzip:
                    return None  # compressing is the compression layer's job
                vary = True
        return self.stack._extra(self.tag, vary)

    def _layers(self) -> Any:
        """The responders the layers would have made for this request, outermost last."""
        stack = self.stack
        out: Any = self.emit
        if stack.compression is not None:
            out = _compression._Responder(stack.compression, out, self.gzip, False,
                                          self.scope).send
        if self.tag is not None:
            out = _Tagger(out, self.tag).send
        if stack.etag is not None:
            out = _etag._Responder(stack.etag, self.scope, out).send
        self.chain = out
        return out


async def _send_both(fused: _Fused, start: Message, message: Message) -> None:
    await fused.out(start)
    fused.finished = fused.clock()
    await fused.out(message)


async def _replay(send: Any, start: Message, message: Message) -> None:
    await send(start)
    await send(message)
