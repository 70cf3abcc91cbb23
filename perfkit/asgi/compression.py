"""gzip compression that honours q-values, keeps ETags honest and never stalls the loop.

Starlette's ``GZipMiddleware`` decides with ``"gzip" in accept_encoding``, so
``gzip;q=0`` and ``notgzip`` get gzip and ``GZIP`` does not; it keeps a strong ETag on the
compressed bytes and sends ``Vary: Accept-Encoding`` only on compressed responses. This
layer negotiates per RFC 9110 §12.5.3, suffixes strong ETags per coding (``"h"`` becomes
``"h-gzip"``, §8.8.3.3) and maps a suffixed If-None-Match back for the inner layers, adds
Vary to every compressible response, flushes each streamed chunk (SSE stays live), and
compresses large bodies in a worker thread.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from collections.abc import Awaitable, Iterable
from typing import Any

from perfkit.asgi._asgi import (
    BODY,
    READY,
    SCOPE_304_TYPE,
    START,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    content_length,
    request_headers,
)
from perfkit.http_rules import merge_vary, negotiate_encoding, parse_etag

DEFAULT_CONTENT_TYPES = (
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/wasm",
    "image/svg+xml",
    "+json",
    "+xml",
)
"""Content types worth compressing (prefixes, or ``+suffix`` structured-syntax suffixes)."""

_NEVER = ("text/event-stream",)  # SSE through a compressor buffers events; leave it alone.
_SUFFIX = "-gzip"
_MEMO_MAX = 256
_SUFFIX_BYTES = b'-gzip"'
_NOTHING: Message = {}


class CompressionMiddleware:
    """gzip responses for clients that accept it (q-values honoured).

    Defaults: ``minimum_size=500`` bytes, ``compresslevel=6``, ``thread_minimum_size=256 KiB``
    (bigger bodies are compressed off the event loop), ``content_types`` =
    :data:`DEFAULT_CONTENT_TYPES`. A client that refuses every coding including identity
    (``identity;q=0``) gets identity anyway (RFC 9110 §12.5.3 allows it; a 406 helps no one).

    ``breach_padding=N`` (off by default) writes a random file name of 1..N bytes into
    each gzip header, as Django does, so identical content compresses to varying lengths:
    a BREACH attacker then needs many more requests per guessed byte. The compressed
    variant's ETag becomes weak (``W/"h-gzip"``), since its bytes now vary. It is a
    mitigation, not a fix: keep secrets (CSRF tokens) out of compressed responses that
    also reflect user input, or mask them per request.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        minimum_size: int = 500,
        compresslevel: int = 6,
        thread_minimum_size: int = 256 * 1024,
        content_types: Iterable[str] = DEFAULT_CONTENT_TYPES,
        breach_padding: int = 0,
    ) -> None:
        if minimum_size < 0:
            raise ValueError(f"minimum_size must be >= 0, got {minimum_size!r}")
        if not 0 <= compresslevel <= 9:
            raise ValueError(f"compresslevel must be 0..9, got {compresslevel!r}")
        if not 0 <= breach_padding <= 255:
            raise ValueError(f"breach_padding must be 0..255 bytes, got {breach_padding!r}")
        self.app = app
        self.minimum_size = minimum_size
        self.compresslevel = compresslevel
        self.thread_minimum_size = thread_minimum_size
        self.breach_padding = breach_padding
        self.content_types = tuple(t.lower() for t in content_types)
        # Small memo tables: header values repeat, parsing them per request is waste.
        self._gzip_ok: dict[bytes | None, bool] = {}
        self._compressible: dict[bytes, bool] = {}

    def compressible(self, content_type: bytes | None) -> bool:
        if not content_type:
            return False
        known = self._compressible.get(content_type)
        if known is not None:
            return known
        media = content_type.decode("latin-1").partition(";")[0].strip().lower()
        result = media not in _NEVER and any(
            media.endswith(t) if t.startswith("+") else media.startswith(t)
            for t in self.content_types
        )
        if len(self._compressible) >= _MEMO_MAX:
            self._compressible.clear()
        self._compressible[content_type] = result
        return result

    def accepts_gzip(self, accept: bytes | None) -> bool:
        known = self._gzip_ok.get(accept)
        if known is None:
            text = accept.decode("latin-1") if accept is not None else None
            known = negotiate_encoding(text, ("gzip",)) == "gzip"
            if len(self._gzip_ok) >= _MEMO_MAX:
                self._gzip_ok.clear()
            self._gzip_ok[accept] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = request_headers(scope)
        accept = headers.get(b"accept-encoding")
        gzip = self._gzip_ok.get(accept)
        if gzip is None:
            gzip = self.accepts_gzip(accept)
        suffixed = False
        if b"if-none-match" in headers or b"if-match" in headers:
            inm = headers.get(b"if-none-match", b"") + headers.get(b"if-match", b"")
            if _SUFFIX_BYTES in inm:
                suffixed = True
                # In place, not a copy: outer layers (timing) must see what the router adds.
                scope["headers"] = _unsuffix_conditions(scope["headers"])
        await self.app(scope, receive, _Responder(self, send, gzip, suffixed, scope).send)


_START, _PASS, _HOLD, _STREAM = 0, 1, 2, 3
_VARY = (b"vary", b"Accept-Encoding")
_SCANNED = frozenset({b"content-type", b"content-encoding", b"vary"})


class _Responder:
    """Per-request state, so nothing request-specific lives on the middleware.

    ``send`` returns the next layer's awaitable (no coroutine per message) except while
    it holds the start for the first body chunk or compresses.
    """

    __slots__ = ("compressor", "gzip", "held", "mw", "out", "scope", "state", "suffixed")

    def __init__(self, mw: CompressionMiddleware, send: Send, gzip: bool,
                 suffixed: bool, scope: Scope) -> None:
        self.mw = mw
        self.out = send
        self.gzip = gzip
        self.suffixed = suffixed
        self.scope = scope
        self.held: Message = _NOTHING
        self.compressor: Any = None
        self.state = _START

    def send(self, message: Message) -> Awaitable[None]:
        state = self.state
        if state == _PASS:
            return self.out(message)
        if state == _START:
            if message["type"] == START:
                return self._start(message)
            return self.out(message)  # e.g. early hints before the start
        if state == _HOLD:  # waiting for the first body chunk to choose
            return self._first_body(message)
        return self._stream(message)

    def _start(self, message: Message) -> Awaitable[None]:
        self.state = _PASS
        status: int = message["status"]
        headers = message.get("headers", ())
        if status == 304:
            # The Vary the 200 had (§15.4.5): a perfkit 304 names the 200's Content-Type.
            content_type = self.scope.get(SCOPE_304_TYPE)
            if self.suffixed or (content_type and self.mw.compressible(content_type)):
                headers = list(headers)
                if self.suffixed:  # the client holds the gzip variant: echo its tag
                    _suffix_etag(headers, weak=self.mw.breach_padding > 0)
                _add_vary(headers)
                message["headers"] = headers
            return self.out(message)
        if status < 200 or status == 204 or status == 206:
            return self.out(message)
        content_type = None
        has_vary = False
        for key, value in headers:
            name = key.lower()
            if name not in _SCANNED:
                continue
            if name == b"content-type":
                content_type = value
            elif name == b"vary":
                has_vary = True
            else:
                return self.out(message)  # already encoded (Content-Encoding): leave it
        mw = self.mw
        compressible = mw._compressible.get(content_type) if content_type else False
        if compressible is None:
            compressible = mw.compressible(content_type)
        if not compressible:
            return self.out(message)
        # The choice depends on Accept-Encoding, compressed or not: say so in Vary.
        if has_vary:
            headers = list(headers)
            _add_vary(headers)
            message["headers"] = headers
        else:
            message["headers"] = [*headers, _VARY]
        if not self.gzip:
            return self.out(message)
        self.held = message
        self.state = _HOLD
        return READY

    async def _first_body(self, message: Message) -> None:
        start = self.held
        self.held = _NOTHING
        self.state = _PASS
        if message["type"] != BODY:
            await self.out(start)
            await self.out(message)
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        headers: list[tuple[bytes, bytes]] = start["headers"]
        declared = content_length(headers)
        small = len(body) < self.mw.minimum_size if not more else (
            declared is not None and declared < self.mw.minimum_size
        )
        mw = self.mw
        if small:
            if (not body and not more and declared and declared >= mw.minimum_size
                    and self.scope["method"] == "HEAD"):
                # A HEAD answered without its body (a cache hit): GET's coding and ETag
                # (§9.3.2), without the Content-Length only compressing the body could tell.
                headers[:] = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                headers.append((b"content-encoding", b"gzip"))
                _suffix_etag(headers, weak=mw.breach_padding > 0)
            await self.out(start)
            await self.out(message)
            return
        self.compressor = _PaddedGzip(mw.compresslevel, mw.breach_padding) if (
            mw.breach_padding) else zlib.compressobj(mw.compresslevel, zlib.DEFLATED,
                                                     16 + zlib.MAX_WBITS)
        compressed = await self._compress(body, more)
        headers[:] = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-encoding", b"gzip"))
        if not more:
            headers.append((b"content-length", str(len(compressed)).encode()))
        _suffix_etag(headers, weak=mw.breach_padding > 0)
        self.state = _STREAM if more else _PASS
        await self.out(start)
        await self.out({**message, "body": compressed})

    async def _stream(self, message: Message) -> None:
        if message["type"] != BODY:
            await self.out(message)
            return
        more = message.get("more_body", False)
        try:
            data = await self._compress(message.get("body", b""), more)
        finally:
            if not more:
                self.state = _PASS
        await self.out({**message, "body": data})

    async def _compress(self, body: bytes, more: bool) -> bytes:
        if len(body) >= self.mw.thread_minimum_size:
            import anyio.to_thread

            data: bytes = await anyio.to_thread.run_sync(self._compress_now, body, more)
            return data
        return self._compress_now(body, more)

    def _compress_now(self, body: bytes, more: bool) -> bytes:
        compressor = self.compressor
        data: bytes = compressor.compress(body)
        if more:
            tail: bytes = compressor.flush(zlib.Z_SYNC_FLUSH)  # deliver this chunk now
        else:
            self.compressor = None
            tail = compressor.flush()
        return data + tail


def _add_vary(headers: list[tuple[bytes, bytes]]) -> None:
    for i, (key, value) in enumerate(headers):
        if key.lower() == b"vary":
            merged = merge_vary(value.decode("latin-1"), "Accept-Encoding")
            headers[i] = (key, merged.encode("latin-1"))
            return
    headers.append((b"vary", b"Accept-Encoding"))


def _suffix_etag(headers: list[tuple[bytes, bytes]], weak: bool = False) -> None:
    """A strong ETag names exact bytes: the gzip variant gets its own (``"h-gzip"``), weak
    (``W/"h-gzip"``) when BREACH padding makes those bytes vary."""
    for i, (key, value) in enumerate(headers):
        if key.lower() == b"etag":
            tag = parse_etag(value.decode("latin-1"))
            if tag is not None and not tag.weak:
                opaque = tag.opaque if tag.opaque.endswith(_SUFFIX) else tag.opaque + _SUFFIX
                tagged = f'W/"{opaque}"' if weak else f'"{opaque}"'
                headers[i] = (key, tagged.encode("latin-1"))
            return


class _PaddedGzip:
    """A gzip stream whose header carries a random-length file name (BREACH padding).

    Same ``compress``/``flush`` interface as ``zlib.compressobj``: raw deflate between a
    hand-written header (RFC 1952, FNAME flag) and the CRC-32/size trailer.
    """

    __slots__ = ("crc", "deflate", "header", "size")

    def __init__(self, level: int, max_padding: int) -> None:
        self.deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        name = secrets.token_hex(max_padding)[: 1 + secrets.randbelow(max_padding)]
        # magic, deflate, FNAME flag, mtime 0, no extra flags, OS unknown; name, NUL.
        self.header = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\xff" + name.encode() + b"\x00"
        self.crc = 0
        self.size = 0

    def compress(self, data: bytes) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        return self._head(self.deflate.compress(data))

    def flush(self, mode: int = zlib.Z_FINISH) -> bytes:
        out = self._head(self.deflate.flush(mode))
        if mode == zlib.Z_FINISH:
            out += struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF)
        return out

    def _head(self, data: bytes) -> bytes:
        if self.header:
            data, self.header = self.header + data, b""
        return data


def _unsuffix_conditions(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Add the identity form of each ``-gzip`` tag, so inner layers compare what they made."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in headers:
        if _SUFFIX_BYTES in value and key.lower() in (b"if-none-match", b"if-match"):
            value = value + b", " + value.replace(_SUFFIX_BYTES, b'"')
        out.append((key, value))
    return out
