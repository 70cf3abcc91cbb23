"""A shared (RFC 9111) response cache as pure ASGI middleware that cannot leak by default.

What it stores: final GET responses that are explicitly fresh (``s-maxage`` > ``max-age`` >
``Expires`` > ``default_ttl``), in a single body message no larger than ``max_body``, with a
status in the allowlist. What it never stores by default: ``no-store``/``private``/
``no-cache`` responses, ``Set-Cookie`` responses, ``Vary: *``, 206, streams, and any request
with ``Authorization`` or ``Cookie`` (unless ``key_principal`` keys entries per user).
Every decision is reported in a ``Cache-Status`` header (RFC 9211) with a reason, never
key material, and counted in :attr:`ResponseCacheMiddleware.stats`.

Layout in the backend (namespace ``ns``):

- ``(ns, "v", path)``: the *vary record* of a path: the request headers its responses vary
  on, a generation token and its creation time. Deleting it invalidates every entry of
  the path (all queries, hosts and variants) in one operation.
- ``(ns, "e", digest)``: an entry. ``digest`` hashes length-prefixed fields (generation,
  scheme, host, path, normalised query, principal, each varied header as absent/value),
  so values cannot collide and nothing secret appears in a key.
- ``(ns, "p")``: recent prefix invalidations ``[[prefix, time], ...]``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from perfkit.asgi._asgi import (
    BODY,
    SCOPE_ROUTE,
    START,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    empty_body,
    route_template,
)
from perfkit.caching.backends.base import MISSING, Backend, BackendError
from perfkit.http_rules import (
    DEFAULT_CACHEABLE_STATUSES,
    Precondition,
    RequestConditions,
    StoreReason,
    accept_encoding_key,
    evaluate_preconditions,
    freshness_lifetime,
    make_etag,
    not_modified_headers,
    parse_cache_control,
    parse_http_date,
    parse_vary,
    request_bypass_reason,
    response_store_reason,
)

log = logging.getLogger("perfkit.asgi.cache")

_CODINGS = ("gzip", "br", "zstd", "deflate", "compress")
# Hop-by-hop and per-response fields that a stored response must not replay.
_NOT_STORED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"age", b"cache-status",
     b"date", b"server-timing", b"x-response-time", b"set-cookie"}
)
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
_ENTRY_VERSION = 1
_PREFIX_LOG_MAX = 256


@dataclass(frozen=True, slots=True)
class _Entry:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    ttl: float
    etag: str | None
    last_modified: float | None
    route: str | None = None

    def dump(self) -> list[Any]:
        """JSON-compatible (no pickle needed): bytes as latin-1 text."""
        flat = [x.decode("latin-1") for pair in self.headers for x in pair]
        return [_ENTRY_VERSION, self.status, self.stored_at, self.ttl, flat,
                self.body.decode("latin-1"), self.etag, self.last_modified, self.route]

    @classmethod
    def load(cls, raw: Any) -> _Entry | None:
        try:
            version, status, stored_at, ttl, flat, body, etag, modified, route = raw
            if version != _ENTRY_VERSION:
                return None
            enc = [x.encode("latin-1") for x in flat]
            return cls(int(status), list(zip(enc[::2], enc[1::2])), body.encode("latin-1"),
                       float(stored_at), float(ttl), etag, modified, route)
        except (TypeError, ValueError, AttributeError):
            return None  # an entry from another version, or garbage: a miss


@dataclass(slots=True)
class _Flight:
    """One in-process miss that others with the same request key wait for."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Event
    entry: _Entry | None = None
    digest: str | None = None
    vary: tuple[str, ...] = ()
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    scheme: str
    host: str
    query: str
    headers: dict[str, str]  # lower-case names, repeated lines joined with ", "
    principal: str


class ResponseCacheMiddleware:
    """Cache GET responses in any perfkit backend; see the module docstring for the rules.

    Defaults: ``backend=MemoryBackend(maxsize=1024, max_bytes=64 MiB)``,
    ``default_ttl=None`` (store only explicitly fresh responses), ``max_ttl=86400``,
    ``max_body=1 MiB``, ``statuses`` = 200, 203, 204, 300, 301, 308 (add 404/410 to opt in),
    ``max_vary_value=256`` bytes, no principal keying, ``Cache-Status`` on, single flight on.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        backend: Backend | None = None,
        namespace: str = "perfkit.asgi",
        default_ttl: float | None = None,
        max_ttl: float = 86400.0,
        max_body: int = 1 << 20,
        statuses: Iterable[int] = DEFAULT_CACHEABLE_STATUSES,
        key_principal: Callable[[Scope], str | None] | None = None,
        principal_secret: bytes | str | None = None,
        ignore_query_params: Iterable[str] = (),
        allowed_hosts: Iterable[str] | None = None,
        max_vary_value: int = 256,
        cache_status: str | None = "perfkit",
        lock_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("max_ttl", max_ttl), ("lock_timeout", lock_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if default_ttl is not None and default_ttl < 0:
            raise ValueError(f"default_ttl must be >= 0 or None, got {default_ttl!r}")
        if max_body < 0 or max_vary_value < 1:
            raise ValueError("max_body must be >= 0 and max_vary_value >= 1")
        if cache_status is not None and not cache_status.replace("-", "").isalnum():
            raise ValueError(f"cache_status must be a token like 'perfkit', got {cache_status!r}")
        if backend is None:
            from perfkit.caching.backends.memory import MemoryBackend

            backend = MemoryBackend(maxsize=1024, max_bytes=64 << 20)
        self.app = app
        self.backend = backend
        self.namespace = namespace
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_body = max_body
        self.statuses = frozenset(statuses)
        self.key_principal = key_principal
        if isinstance(principal_secret, str):
            principal_secret = principal_secret.encode()
        self._secret = principal_secret or secrets.token_bytes(32)
        self.ignore_query_params = tuple(ignore_query_params)
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts else None
        self.max_vary_value = max_vary_value
        self.cache_status = cache_status
        self.lock_timeout = lock_timeout
        self.clock = clock
        self.stats: dict[str, int] = {}
        """Counters: ``hit``, ``miss``, ``stored``, ``collapsed``, ``bypass:<reason>``,
        ``not-stored:<reason>``, ``invalidated``, ``backend-error``."""
        self._flights: dict[str, _Flight] = {}
        self._backend_down = False

    # -- public API ------------------------------------------------------------------------
    async def invalidate(self, path: str) -> None:
        """Drop every cached variant of ``path`` (all queries, hosts, headers)."""
        await self._call(self.backend.adelete((self.namespace, "v", path)))
        self._count("invalidated")

    async def invalidate_prefix(self, prefix: str) -> None:
        """Drop every cached path starting with ``prefix`` (``"/"`` drops everything)."""
        now = self.clock()
        log_ = await self._prefix_log()
        log_ = [p for p in log_ if now - p[1] < self.max_ttl and p[0] != prefix]
        log_.append([prefix, now])
        await self._call(self.backend.aset((self.namespace, "p"), log_[-_PREFIX_LOG_MAX:],
                                           self.max_ttl))
        self._count("invalidated")

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        if method in _UNSAFE:
            await self._unsafe(scope, receive, send)
            return
        request = self._request(scope)
        reason = request_bypass_reason(
            method,
            has_authorization="authorization" in request.headers,
            has_cookie="cookie" in request.headers,
            request_cache_control=request.headers.get("cache-control"),
            principal_keyed=self.key_principal is not None,
        )
        if reason is None and self.allowed_hosts is not None and (
            request.host.partition(":")[0] not in self.allowed_hosts
        ):
            reason = StoreReason.HOST
        if reason is not None:
            self._count(f"bypass:{reason}")
            fwd = "method" if reason is StoreReason.METHOD else "bypass"
            await self.app(scope, receive, self._tagging(send, f"fwd={fwd}; detail={reason}"))
            return

        record = await self._get((self.namespace, "v", request.path))
        vary: tuple[str, ...] = ()
        if isinstance(record, dict):
            vary = tuple(record.get("vary", ()))
            digest = self._digest(request, record.get("gen", ""), vary)
            if digest is None:
                reason = StoreReason.VARY_TOO_LONG
                self._count(f"bypass:{reason}")
                await self.app(scope, receive, self._tagging(send, f"fwd=bypass; detail={reason}"))
                return
            if await self._invalidated_by_prefix(request.path, float(record.get("created", 0))):
                await self._call(self.backend.adelete((self.namespace, "v", request.path)))
            else:
                entry = _Entry.load(await self._get((self.namespace, "e", digest)))
                if entry is not None and self.clock() - entry.stored_at < entry.ttl:
                    self._count("hit")
                    await self._serve(entry, scope, send, "hit")
                    return
        self._count("miss")
        if method == "HEAD":  # a HEAD never populates the GET entry
            await self.app(scope, receive, self._tagging(send, "fwd=miss"))
            return
        await self._miss(scope, receive, send, request, record)

    # -- miss: single flight, store ---------------------------------------------------------
    async def _miss(self, scope: Scope, receive: Receive, send: Send, request: _Request,
                    record: Any) -> None:
        flight_key = self._digest(request, "flight", ()) or ""
        loop = asyncio.get_running_loop()
        flight = self._flights.get(flight_key)
        if flight is not None and flight.loop is loop:
            try:
                await asyncio.wait_for(asyncio.shield(flight.done.wait()), self.lock_timeout)
            except asyncio.TimeoutError:
                flight = None
            if flight is not None:
                if flight.error is not None:
                    raise flight.error
                if flight.entry is not None and flight.digest == self._digest(
                    request, "", flight.vary
                ):
                    self._count("collapsed")
                    await self._serve(flight.entry, scope, send, "fwd=uri-miss; collapsed")
                    return
            # The leader's response was not shareable (or differs for us): run our own.
            await self._forward(scope, receive, send, request, record, None)
            return
        flight = _Flight(loop, asyncio.Event())
        self._flights[flight_key] = flight
        try:
            await self._forward(scope, receive, send, request, record, flight)
        except BaseException as exc:
            if flight.entry is None:
                flight.error = exc
            raise
        finally:
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]
            flight.done.set()

    async def _forward(self, scope: Scope, receive: Receive, send: Send, request: _Request,
                       record: Any, flight: _Flight | None) -> None:
        """Run the app; store its response if every rule allows; tell the followers."""
        held: Message | None = None
        decided = False

        async def capture(message: Message) -> None:
            nonlocal held, decided
            if decided:
                await send(message)
                return
            kind = message["type"]
            if kind == START:
                held = message
                return
            if held is None:  # early hints before the start
                await send(message)
                return
            decided = True
            start, held = held, None
            if kind != BODY:
                await self._finish(send, start, "fwd=uri-miss")
                await send(message)
                return
            detail, entry, vary = await self._decide(request, record, start, message,
                                                     route_template(scope))
            if flight is not None:
                if entry is not None:
                    flight.entry = entry
                    flight.vary = vary
                    flight.digest = self._digest(request, "", vary)
                flight.done.set()  # followers may go now: share this entry or run their own
            await self._finish(send, start, f"fwd=uri-miss; {detail}")
            await send(message)

        await self.app(scope, receive, capture)
        if held is not None:  # the app sent a start but never a body
            await self._finish(send, held, "fwd=uri-miss")

    async def _decide(self, request: _Request, record: Any, start: Message, message: Message,
                      route: str | None) -> tuple[str, _Entry | None, tuple[str, ...]]:
        """Store the response if allowed: ``(Cache-Status detail, entry, vary names)``."""
        status: int = start["status"]
        headers: list[tuple[bytes, bytes]] = list(start.get("headers", ()))
        body: bytes = message.get("body", b"")
        found: dict[bytes, bytes] = {}
        has_set_cookie = False
        for key, value in headers:
            name = key.lower()
            if name == b"set-cookie":
                has_set_cookie = True
            elif name in found:
                found[name] += b", " + value
            else:
                found[name] = value
        text = {k.decode("latin-1"): v.decode("latin-1") for k, v in found.items()
                if k in (b"cache-control", b"vary", b"expires", b"date", b"etag",
                         b"last-modified", b"content-encoding")}
        cc = parse_cache_control(text.get("cache-control"))
        vary = parse_vary(text.get("vary"))
        reason = response_store_reason(status, cc, vary=vary, has_set_cookie=has_set_cookie,
                                       cacheable_statuses=self.statuses)
        if reason is None and message.get("more_body", False):
            reason = StoreReason.STREAMING
        if reason is None and len(body) > self.max_body:
            reason = StoreReason.TOO_LARGE
        now = self.clock()
        ttl = 0.0
        if reason is None:
            lifetime = freshness_lifetime(cc, expires=text.get("expires"), date=text.get("date"),
                                          default=self.default_ttl, now=now)
            ttl = min(lifetime or 0.0, self.max_ttl)
            if ttl <= 0:
                reason = StoreReason.NOT_FRESH
        coding = text.get("content-encoding", "identity").strip().lower()
        if reason is None and coding != "identity" and "accept-encoding" not in vary:
            vary.append("accept-encoding")  # an encoded body only for clients that accept it
        if reason is None and vary and self._digest(request, "", tuple(vary)) is None:
            reason = StoreReason.VARY_TOO_LONG
        if reason is not None:
            self._count(f"not-stored:{reason}")
            return f"detail={reason}", None, ()

        etag = text.get("etag")
        if etag is None and status == 200:
            etag = make_etag(body)
            headers.append((b"etag", etag.encode("latin-1")))
            start["headers"] = headers
        stored_headers = [(k, v) for k, v in headers if k.lower() not in _NOT_STORED]
        entry = _Entry(status, stored_headers, body, now, ttl, etag,
                       parse_http_date(text.get("last-modified")), route)
        gen = record.get("gen") if isinstance(record, dict) else None
        if gen is None or tuple(record.get("vary", ())) != tuple(vary):
            gen = gen or secrets.token_hex(8)
            ok = await self._call(self.backend.aset(
                (self.namespace, "v", request.path),
                {"vary": list(vary), "gen": gen, "created": now}, self.max_ttl))
            if not ok:
                return f"detail={StoreReason.BACKEND_ERROR}", None, ()
        digest = self._digest(request, gen, tuple(vary))
        assert digest is not None
        entry_key = (self.namespace, "e", digest)
        if not await self._call(self.backend.aset(entry_key, entry.dump(), ttl)):
            return f"detail={StoreReason.BACKEND_ERROR}", None, ()
        self._count("stored")
        return f"stored; ttl={int(ttl)}", entry, tuple(vary)

    # -- hits ----------------------------------------------------------------------------
    async def _serve(self, entry: _Entry, scope: Scope, send: Send, status_text: str) -> None:
        if entry.route is not None:
            scope[SCOPE_ROUTE] = entry.route  # so timing labels a hit with its route
        now = self.clock()
        age = max(0, int(now - entry.stored_at))
        remaining = max(0, int(entry.ttl - (now - entry.stored_at)))
        headers = [*entry.headers, (b"age", str(age).encode())]
        cache_status = f"{status_text}; ttl={remaining}" if status_text == "hit" else status_text
        if self.cache_status is not None:
            headers.append((b"cache-status", f"{self.cache_status}; {cache_status}".encode()))
        method = scope["method"]
        conditions = RequestConditions.from_asgi(scope["headers"])
        if conditions.any and 200 <= entry.status < 300:
            outcome = evaluate_preconditions(method, conditions, entry.etag, entry.last_modified)
            if outcome is Precondition.NOT_MODIFIED:
                await send({"type": START, "status": 304, "headers": not_modified_headers(headers)})
                await send(empty_body())
                return
        await send({"type": START, "status": entry.status, "headers": headers})
        await send({"type": BODY, "body": b"" if method == "HEAD" else entry.body,
                    "more_body": False})

    # -- unsafe methods invalidate (RFC 9111 §4.4) ------------------------------------------
    async def _unsafe(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]

        async def invalidating(message: Message) -> None:
            if message["type"] == START and 200 <= message["status"] < 400:
                paths = {path}
                for key, value in message.get("headers", ()):
                    if key.lower() in (b"location", b"content-location"):
                        target = value.decode("latin-1")
                        if target.startswith("/"):
                            paths.add(target.split("?", 1)[0])
                for p in paths:
                    await self._call(self.backend.adelete((self.namespace, "v", p)))
                self._count("invalidated")
            await send(message)

        await self.app(scope, receive, invalidating)

    # -- helpers -----------------------------------------------------------------------------
    def _request(self, scope: Scope) -> _Request:
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            name = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[name] = f"{headers[name]}, {text}" if name in headers else text
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if self.ignore_query_params:
                pairs = [(k, v) for k, v in pairs
                         if not any(fnmatch.fnmatchcase(k, p) for p in self.ignore_query_params)]
            query = urlencode(sorted(pairs))
        principal = ""
        if self.key_principal is not None:
            who = self.key_principal(scope)
            principal = "-" if who is None else hmac.new(
                self._secret, who.encode(), hashlib.sha256).hexdigest()
        return _Request(scope["method"], scope["path"], scope.get("scheme", "http"),
                        headers.get("host", "").lower(), query, headers, principal)

    def _digest(self, request: _Request, gen: str, vary: tuple[str, ...]) -> str | None:
        """Hash of length-prefixed key fields; None if a varied value is over the cap."""
        parts = [gen, request.scheme, request.host, request.path, request.query,
                 request.principal]
        for name in sorted(vary):
            value = request.headers.get(name)
            if value is None:
                parts.append(f"{name}\x00absent")
                continue
            if name == "accept-encoding":
                value = accept_encoding_key(value, _CODINGS)
            elif len(value) > self.max_vary_value:
                return None
            parts.append(f"{name}\x00={value}")
        data = "".join(f"{len(p)}:{p}," for p in parts).encode("utf-8", "surrogateescape")
        return hashlib.sha256(data, usedforsecurity=False).hexdigest()

    def _tagging(self, send: Send, text: str) -> Send:
        if self.cache_status is None:
            return send
        value = f"{self.cache_status}; {text}".encode()

        async def tag(message: Message) -> None:
            if message["type"] == START:
                message["headers"] = [*message.get("headers", ()), (b"cache-status", value)]
            await send(message)

        return tag

    async def _finish(self, send: Send, start: Message, text: str) -> None:
        if self.cache_status is not None:
            start["headers"] = [*start.get("headers", ()),
                                (b"cache-status", f"{self.cache_status}; {text}".encode())]
        await send(start)

    async def _invalidated_by_prefix(self, path: str, created: float) -> bool:
        for prefix, when in await self._prefix_log():
            if created <= when and path.startswith(prefix):
                return True
        return False

    async def _prefix_log(self) -> list[list[Any]]:
        value = await self._get((self.namespace, "p"))
        return value if isinstance(value, list) else []

    async def _get(self, key: tuple[str, ...]) -> Any:
        try:
            value = await self.backend.aget(key)
        except BackendError as exc:
            self._backend_failed(exc)
            return MISSING
        self._backend_ok()
        return value

    async def _call(self, op: Any) -> bool:
        """Await a backend write; False (logged once, counted) if the backend failed."""
        try:
            await op
        except BackendError as exc:
            self._backend_failed(exc)
            return False
        self._backend_ok()
        return True

    def _backend_failed(self, exc: BaseException) -> None:
        self._count("backend-error")
        if not self._backend_down:
            self._backend_down = True
            log.warning("response cache backend failed, serving uncached: %r", exc)

    def _backend_ok(self) -> None:
        if self._backend_down:
            self._backend_down = False
            log.warning("response cache backend recovered")

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

