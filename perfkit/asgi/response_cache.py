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
- ``(ns, "e", ...)``: an entry, keyed by the generation, scheme, host, path, normalised
  query, principal (an HMAC) and each varied header (absent or its value), each its own
  field so values cannot collide. Shared backends get a SHA-256 of the length-prefixed
  fields instead, so no header value appears in a Redis key.
- ``(ns, "p")``: recent prefix invalidations ``[[prefix, time], ...]``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import logging
import math
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from perfkit.asgi._asgi import (
    BODY,
    SCOPE_HEADERS,
    SCOPE_ROUTE,
    START,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    empty_body,
    is_conditional,
    not_modified_start,
    request_headers,
    route_template,
)
from perfkit.caching.backends.base import MISSING, Backend, BackendError
from perfkit.http_rules import (
    DEFAULT_CACHEABLE_STATUSES,
    Precondition,
    RequestConditions,
    StoreReason,
    accept_encoding_key,
    available_etag_function,
    cache_control_seconds,
    evaluate_preconditions,
    freshness_lifetime,
    parse_cache_control,
    parse_http_date,
    parse_vary,
    request_bypass_reason,
    response_store_reason,
)
from perfkit.metrics import REGISTRY, Counter, Registry

log = logging.getLogger("perfkit.asgi.cache")

_CODINGS = ("gzip", "br", "zstd", "deflate", "compress")
# Hop-by-hop and per-response fields that a stored response must not replay.
_NOT_STORED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"age", b"cache-status",
     b"date", b"server-timing", b"x-response-time", b"set-cookie"}
)
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a 412 from a hit keeps: the validators the client needs, as ETagMiddleware's 412.
_ON_412 = frozenset({b"etag", b"last-modified", b"vary", b"age", b"cache-status"})
SCOPE_PLAN = "perfkit.cache_plan"
"""Scope key where :class:`perfkit.asgi.MiddlewareStack` leaves a plan it made for this layer."""
_DECISION_FIELDS = frozenset({b"cache-control", b"vary", b"expires", b"date", b"etag",
                              b"last-modified", b"content-encoding"})
_LOCK_POLL = 0.025  # seconds between looks for another process's entry
_LOG_REFRESH = 1.0  # seconds a process trusts its copy of an invalidation log
_ENTRY_VERSION = 2
_LOG_MAX = 256
_LOG_LEASE = 5.0  # seconds a worker may hold an invalidation log's lock (a crash frees it)
_LOG_LOCK_POLL = 0.005  # seconds between tries for that lock: held for one read and write
_MAX_TAG = 256
_MAX_REFRESHING = 256  # stale entries being refreshed at once, per middleware


@dataclass(slots=True, eq=False)  # not frozen: ``answer`` memoises the hit headers
class _Entry:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float
    ttl: float
    etag: str | None
    last_modified: float | None
    route: str | None = None
    stale: float = 0.0  # seconds it may be served stale while one task refreshes it
    tags: tuple[str, ...] = ()
    # The hit headers for one (age, remaining ttl) second: a local backend hands out the
    # same entry object, so consecutive hits reuse them instead of formatting them again.
    answer: tuple[int, int, bytes, tuple[tuple[bytes, bytes], ...]] | None = field(
        default=None, repr=False)

    def __sizeof__(self) -> int:
        # MemoryBackend(max_bytes=...) measures entries with sys.getsizeof: count the body.
        return 256 + len(self.body) + sum(len(k) + len(v) + 96 for k, v in self.headers)

    def dump(self) -> list[Any]:
        """JSON-compatible (no pickle needed): bytes as latin-1 text."""
        flat = [x.decode("latin-1") for pair in self.headers for x in pair]
        return [_ENTRY_VERSION, self.status, self.stored_at, self.ttl, flat,
                self.body.decode("latin-1"), self.etag, self.last_modified, self.route,
                self.stale, list(self.tags)]

    @classmethod
    def load(cls, raw: Any) -> _Entry | None:
        try:
            (version, status, stored_at, ttl, flat, body, etag, modified, route, stale,
             tags) = raw
            if version != _ENTRY_VERSION:
                return None
            enc = [x.encode("latin-1") for x in flat]
            return cls(int(status), list(zip(enc[::2], enc[1::2])), body.encode("latin-1"),
                       float(stored_at), float(ttl), etag, modified, route, float(stale),
                       tuple(str(t) for t in tags))
        except (TypeError, ValueError, AttributeError):
            return None  # an entry from another version, or garbage: a miss


@dataclass(slots=True)
class _Flight:
    """One in-process miss that others with the same request key wait for."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Event
    entry: _Entry | None = None
    key: tuple[Any, ...] | None = None
    vary: tuple[str, ...] = ()
    error: BaseException | None = None
    abandoned: bool = False  # the leader was cancelled (its client left): others retry


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per request
class _Request:
    method: str
    path: str
    scheme: str
    host: str
    query: str
    headers: dict[bytes, bytes]  # lower-case names, repeated lines joined with ", "
    principal: str


# Plans (see ResponseCacheMiddleware._plan): a lookup is (headers, record key, record).
_UNREAD = object()  # a lookup's record, still to be read from a remote backend
_UNSAFE_PLAN = object()  # a plan: POST/PUT/PATCH/DELETE, invalidate on success


class ResponseCacheMiddleware:
    """Cache GET responses in any perfkit backend; see the module docstring for the rules.

    Defaults: ``backend=MemoryBackend(maxsize=1024, max_bytes=64 MiB)``,
    ``default_ttl=None`` (store only explicitly fresh responses), ``max_ttl=86400``,
    ``max_body=1 MiB``, ``statuses`` = 200, 203, 204, 300, 301, 308 (add 404/410 to opt in),
    ``max_vary_value=256`` bytes, no principal keying, ``Cache-Status`` on, single flight on,
    ``pass_ttl=5`` s (after a path answers with something not storable, the next requests
    for that path go straight to the app for this long: "hit-for-pass"; 0 disables),
    ``stale_while_revalidate=0`` s (RFC 5861; a response's own ``stale-while-revalidate``
    directive wins; ``must-revalidate`` forbids it), ``tag_header="surrogate-key"``
    (space-separated tags a response carries, for :meth:`invalidate` ``(tags=...)``; at
    most ``max_tags=32`` of at most 256 characters, else the response is not stored),
    ``registry=perfkit.REGISTRY`` (where :attr:`stats` are exported, at scrape time, as
    ``http_response_cache_events_total{namespace, event, reason}``).
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
        pass_ttl: float = 5.0,
        stale_while_revalidate: float = 0.0,
        tag_header: str | None = "surrogate-key",
        max_tags: int = 32,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("max_ttl", max_ttl), ("lock_timeout", lock_timeout)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        if pass_ttl < 0:
            raise ValueError(f"pass_ttl must be >= 0 seconds, got {pass_ttl!r}")
        if stale_while_revalidate < 0:
            raise ValueError("stale_while_revalidate must be >= 0 seconds, "
                             f"got {stale_while_revalidate!r}")
        if max_tags < 1:
            raise ValueError(f"max_tags must be >= 1, got {max_tags!r}")
        if default_ttl is not None and default_ttl < 0:
            raise ValueError(f"default_ttl must be >= 0 or None, got {default_ttl!r}")
        if max_body < 0 or max_vary_value < 1:
            raise ValueError("max_body must be >= 0 and max_vary_value >= 1")
        if cache_status is not None and not cache_status.replace("-", "").isalnum():
            raise ValueError(f"cache_status must be a token like 'perfkit', got {cache_status!r}")
        if backend is not None and backend.unpickles_unsigned:
            raise ValueError(
                f"backend: this {type(backend).__name__} unpickles what it reads, so whoever "
                "can write to it could run code here; the response cache's entries are "
                "JSON-safe: pass serializer='json' (or a secret= to sign values)")
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
        self.pass_ttl = pass_ttl
        self.stale_while_revalidate = stale_while_revalidate
        self.tag_header = tag_header.lower().encode("latin-1") if tag_header else None
        self.max_tags = max_tags
        self.clock = clock
        self.stats: dict[str, int] = {}
        """Counters: ``hit``, ``miss``, ``stored``, ``collapsed``, ``bypass:<reason>``,
        ``not-stored:<reason>``, ``invalidated``, ``backend-error``."""
        self._flights: dict[tuple[str, ...], _Flight] = {}
        # Invalidation logs ("p": path prefixes, "t": tags): (read at, [[name, time], ...]).
        self._logs: dict[str, tuple[float, list[list[Any]]]] = {
            "p": (-1e18, []), "t": (-1e18, [])}
        self._tagged: dict[str, bytes] = {}  # Cache-Status text -> header value
        self._passes: dict[str, tuple[str, bytes | None]] = {}  # reason -> stat, header
        self._status_name = cache_status.encode() if cache_status is not None else b""
        self._refresh_failed = False
        self._refreshing: set[tuple[Any, ...]] = set()  # stale entries being revalidated
        self._tasks: set[asyncio.Task[None]] = set()
        self._local = backend.is_local  # store _Entry objects as they are, no encoding
        self._backend_down = False
        self._digest = available_etag_function()  # for stored 200s without an ETag
        self._hosts: dict[bytes, str] = {}  # Host header -> lower-case text
        _export(registry if registry is not None else REGISTRY, self)

    # -- public API ------------------------------------------------------------------------
    async def invalidate(self, path: str | None = None, *, tags: Iterable[str] = ()) -> None:
        """Drop every cached variant of ``path`` (all queries, hosts, headers), and every
        entry whose response carried one of ``tags`` in its ``Surrogate-Key`` header.

        Tag invalidation is logged in the backend, so every process sharing it drops the
        entries (within a second: each process re-reads the log at most once a second).
        """
        names = [tags] if isinstance(tags, str) else list(tags)
        if path is None and not names:
            raise TypeError("invalidate() needs a path, tags=[...] or both")
        if any(not isinstance(t, str) or not t or len(t) > _MAX_TAG for t in names):
            raise ValueError(f"tags must be non-empty strings of at most {_MAX_TAG} characters")
        if path is not None:
            await self._call(self.backend.adelete((self.namespace, "v", path)))
        if names:
            await self._append_log("t", names)
        self._count("invalidated")

    async def invalidate_prefix(self, prefix: str) -> None:
        """Drop every cached path starting with ``prefix`` (``"/"`` drops everything)."""
        await self._append_log("p", [prefix])
        self._count("invalidated")

    async def drain(self) -> None:
        """Wait for the stale-while-revalidate refreshes running now (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routed = scope.pop(SCOPE_PLAN, None)
        if routed is not None and routed[0] is self:
            plan = routed[1]  # decided by perfkit.asgi.stack, which runs before this layer
        else:
            plan = self._plan(scope, request_headers(scope))
            if plan.__class__ is tuple and plan[2] is _UNREAD:
                plan = self._resolve(plan, await self._get(plan[1]))
        if plan.__class__ is not tuple:
            if plan is _UNSAFE_PLAN:
                await self._unsafe(scope, receive, send)
            else:
                await self._pass(scope, receive, send, plan)
            return
        method: str = scope["method"]
        headers, record_key, record = plan
        path: str = scope["path"]
        request = None
        if record.__class__ is dict:
            vary = record.get("vary")
            if (not vary and self._local and self.key_principal is None
                    and not scope.get("query_string")):
                # What _key(_request(...)) gives here, without building the request.
                key: tuple[Any, ...] | None = (
                    self.namespace, "e", record.get("gen", ""), scope.get("scheme", "http"),
                    self._host(headers), path, "", "")
            else:
                request = self._request(scope, headers)
                key = self._key(request, record.get("gen", ""), tuple(vary) if vary else ())
            if key is None:
                reason = StoreReason.VARY_TOO_LONG
                await self._pass(scope, receive, send, self._pass_tag(
                    f"fwd=bypass; detail={reason.value}", f"bypass:{reason.value}"))
                return
            read_at, prefixes = self._logs["p"]
            if time.monotonic() - read_at >= _LOG_REFRESH:
                prefixes = await self._log("p")
            if prefixes and _invalidated(prefixes, path, record.get("created", 0.0)):
                await self._call(self.backend.adelete(record_key))
            else:
                if self._local:
                    try:
                        raw = self.backend.get(key)
                    except BackendError as exc:
                        raw = self._backend_failed(exc)
                else:
                    raw = await self._get(key)
                entry = raw if raw.__class__ is _Entry else _Entry.load(raw)
                if entry is not None:
                    age = self.clock() - entry.stored_at
                    if entry.tags and await self._tag_invalidated(entry):
                        age = math.inf
                    if age < entry.ttl + entry.stale:
                        stats = self.stats
                        if age < entry.ttl:
                            stats["hit"] = stats.get("hit", 0) + 1
                        else:
                            stats["stale"] = stats.get("stale", 0) + 1
                            self._revalidate(scope, request or self._request(scope, headers),
                                             record, key)
                        start, body = self._answer(entry, scope, None, headers, age)
                        await send(start)
                        await send(body)
                        return
        self._count("miss")
        if method == "HEAD":  # a HEAD never populates the GET entry
            await self._pass(scope, receive, send, self._pass_tag("fwd=miss", None))
            return
        await self._miss(scope, receive, send, request or self._request(scope, headers), record)

    def _plan(self, scope: Scope, headers: dict[bytes, bytes]) -> Any:
        """What an HTTP request needs, decided from the request alone.

        ``None`` or a ``Cache-Status`` header value (bytes): run the app and only tag the
        response (a bypass, or hit-for-pass; the reason is already counted). A tuple
        ``(headers, record key, record)``: a lookup; from a remote backend the record is
        still ``_UNREAD``, for the caller to await and pass to :meth:`_resolve`.
        ``_UNSAFE_PLAN``: an unsafe method, which invalidates on success.
        :class:`perfkit.asgi.MiddlewareStack` decides with it before this layer runs.
        """
        method: str = scope["method"]
        if method in _UNSAFE:
            return _UNSAFE_PLAN
        reason = None
        if (method != "GET" and method != "HEAD") or (
            b"authorization" in headers or b"cookie" in headers or b"cache-control" in headers
        ):
            reason = request_bypass_reason(
                method,
                has_authorization=b"authorization" in headers,
                has_cookie=b"cookie" in headers,
                request_cache_control=_text(headers.get(b"cache-control")),
                principal_keyed=self.key_principal is not None,
            )
        if reason is None and self.allowed_hosts is not None and (
            headers.get(b"host", b"").decode("latin-1").lower().partition(":")[0]
            not in self.allowed_hosts
        ):
            reason = StoreReason.HOST
        if reason is not None:
            fwd = "method" if reason is StoreReason.METHOD else "bypass"
            return self._pass_tag(f"fwd={fwd}; detail={reason.value}", f"bypass:{reason.value}")
        record_key = (self.namespace, "v", scope["path"])
        if not self._local:  # the caller awaits the record, then calls _resolve
            return headers, record_key, _UNREAD
        try:
            record = self.backend.get(record_key)
        except BackendError as exc:
            record = self._backend_failed(exc)
        if record.__class__ is dict and "pass" in record:
            if record.get("until", 0.0) > self.clock():
                return self._hit_for_pass(record["pass"])  # see _resolve
            record = None
        return headers, record_key, record

    def _resolve(self, plan: tuple[Any, ...], record: Any) -> Any:
        """The plan once the path's record is read: a lookup, or hit-for-pass's tag."""
        if record.__class__ is dict and "pass" in record:
            if record.get("until", 0.0) > self.clock():
                # Hit-for-pass: this path just answered with something not storable.
                return self._hit_for_pass(record["pass"])
            record = None
        return plan[0], plan[1], record

    def _pass_tag(self, text: str, stat: str | None) -> bytes | None:
        """Count ``stat``; the ``Cache-Status`` value for a response passed through."""
        if stat is not None:
            self._count(stat)
        if self.cache_status is None:
            return None
        value = self._tagged.get(text)
        if value is None:
            value = f"{self.cache_status}; {text}".encode()
            if len(self._tagged) < 256:  # a few dozen reason texts exist: bounded anyway
                self._tagged[text] = value
        return value

    def _pass(self, scope: Scope, receive: Receive, send: Send,
              tag: bytes | None) -> Awaitable[None]:
        """Run the app untouched but for the ``Cache-Status`` header ``tag``."""
        if tag is None:
            return self.app(scope, receive, send)
        return self.app(scope, receive, _Tagger(send, tag).send)

    def _hit_for_pass(self, detail: str) -> bytes | None:
        known = self._passes.get(detail)
        if known is None:
            stat = f"not-stored:{detail}"
            self._count(stat)
            known = (stat, self._pass_tag(f"fwd=uri-miss; detail={detail}", None))
            if len(self._passes) < 256:  # details come from a small enum: bounded anyway
                self._passes[detail] = known
            return known[1]
        stats = self.stats
        stats[known[0]] = stats.get(known[0], 0) + 1
        return known[1]

    # -- miss: single flight, store ---------------------------------------------------------
    async def _miss(self, scope: Scope, receive: Receive, send: Send, request: _Request,
                    record: Any, retried: bool = False) -> None:
        flight_key = (request.scheme, request.host, request.path, request.query,
                      request.principal)
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
                if flight.abandoned and not retried:
                    await self._miss(scope, receive, send, request, record, retried=True)
                    return
                if flight.entry is not None and flight.key == self._key(request, "", flight.vary):
                    self._count("collapsed")
                    await self._serve(flight.entry, scope, send, "fwd=uri-miss; collapsed",
                                      request.headers)
                    return
            # The leader's response was not shareable (or differs for us): run our own.
            await self._forward(scope, receive, send, request, record, None)
            return
        if b"range" in request.headers or is_conditional(request.headers):
            # Its 304/412/206 would answer this client only: never lead a flight that others
            # wait on in vain (it may follow one: the entry then answers its condition).
            await self._forward(scope, receive, send, request, record, None)
            return
        flight = _Flight(loop, asyncio.Event())
        self._flights[flight_key] = flight
        lock: tuple[tuple[str, ...], str] | None = None
        try:
            if not self._local:  # other processes share this backend: take its lease lock
                lock, found = await self._lock_or_wait(request, flight_key)
                if found is not None:
                    flight.entry, flight.vary = found
                    flight.key = self._key(request, "", found[1])
                    flight.done.set()
                    self._count("collapsed")
                    await self._serve(found[0], scope, send, "fwd=uri-miss; collapsed",
                                      request.headers)
                    return
            await self._forward(scope, receive, send, request, record, flight)
        except BaseException as exc:
            if flight.entry is None:
                # The app's own exception reaches every waiter; a cancellation (this client
                # disconnected) is ours alone: the waiters elect a new leader instead.
                if isinstance(exc, Exception):
                    flight.error = exc
                else:
                    flight.abandoned = True
            raise
        finally:
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]
            flight.done.set()
            if lock is not None:
                try:
                    await self.backend.arelease_lock(*lock)
                except BackendError:
                    pass  # the lease expires by itself

    async def _lock_or_wait(
        self, request: _Request, flight_key: tuple[str, ...]
    ) -> tuple[tuple[tuple[str, ...], str] | None, tuple[_Entry, tuple[str, ...]] | None]:
        """Cross-process single flight: ``(lock, None)`` to compute, or ``(None, entry)``.

        A process that cannot take the lease lock polls for the holder's entry; if the
        holder stores nothing (or crashed: the lease expires after ``lock_timeout``), it
        takes the lock itself, or computes anyway once ``lock_timeout`` has passed.
        """
        key = self._lock_key(flight_key)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                token = await self.backend.aacquire_lock(key, self.lock_timeout)
            except BackendError as exc:
                self._backend_failed(exc)
                return None, None
            if token is not None:
                # Double-check under the lock: the previous holder may have stored the
                # entry between our last look and our acquisition.
                found = await self._stored_entry(request)
                if found is not None:
                    try:
                        await self.backend.arelease_lock(key, token)
                    except BackendError:
                        pass  # the lease expires by itself
                    return None, found
                return (key, token), None
            if time.monotonic() >= deadline:
                return None, None
            await asyncio.sleep(_LOCK_POLL)
            found = await self._stored_entry(request)
            if found is not None:
                return None, found

    async def _stored_entry(
        self, request: _Request
    ) -> tuple[_Entry, tuple[str, ...]] | None:
        """The fresh stored entry for this request, if another worker has stored one."""
        record = await self._get((self.namespace, "v", request.path))
        if isinstance(record, dict) and "gen" in record:
            prefixes = await self._log("p")
            if prefixes and _invalidated(prefixes, request.path, record.get("created", 0.0)):
                return None
            vary = tuple(record.get("vary", ()))
            entry_key = self._key(request, record["gen"], vary)
            raw = await self._get(entry_key) if entry_key is not None else MISSING
            entry = raw if isinstance(raw, _Entry) else _Entry.load(raw)
            if entry is not None and self.clock() - entry.stored_at < entry.ttl and not (
                entry.tags and await self._tag_invalidated(entry)
            ):
                return entry, vary
        return None

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
                    flight.key = self._key(request, "", vary)
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
        found: dict[bytes, str] = {}
        has_set_cookie = False
        for key, value in headers:
            name = key.lower()
            if name == b"set-cookie":
                has_set_cookie = True
            elif name in _DECISION_FIELDS or name == self.tag_header:
                text = value.decode("latin-1")
                found[name] = f"{found[name]}, {text}" if name in found else text
        cc = parse_cache_control(found.get(b"cache-control"))
        vary = parse_vary(found.get(b"vary"))
        reason = response_store_reason(status, cc, vary=vary, has_set_cookie=has_set_cookie,
                                       cacheable_statuses=self.statuses)
        if reason is None and message.get("more_body", False):
            reason = StoreReason.STREAMING
        if reason is None and len(body) > self.max_body:
            reason = StoreReason.TOO_LARGE
        now = self.clock()
        ttl = 0.0
        if reason is None:
            lifetime = freshness_lifetime(cc, expires=found.get(b"expires"),
                                          date=found.get(b"date"), default=self.default_ttl,
                                          now=now)
            ttl = min(lifetime or 0.0, self.max_ttl)
            if ttl <= 0:
                reason = StoreReason.NOT_FRESH
        coding = found.get(b"content-encoding", "identity").strip().lower()
        if reason is None and coding != "identity" and "accept-encoding" not in vary:
            vary.append("accept-encoding")  # an encoded body only for clients that accept it
        if reason is None and vary and self._key(request, "", tuple(vary)) is None:
            reason = StoreReason.VARY_TOO_LONG
        tags: tuple[str, ...] = ()
        if reason is None and self.tag_header is not None and self.tag_header in found:
            tags = tuple(dict.fromkeys(found[self.tag_header].replace(",", " ").split()))
            if len(tags) > self.max_tags or any(len(t) > _MAX_TAG for t in tags):
                reason = StoreReason.TOO_MANY_TAGS  # a dropped tag could never invalidate
        stale = 0.0
        if reason is None and "must-revalidate" not in cc and "proxy-revalidate" not in cc:
            swr = cache_control_seconds(cc, "stale-while-revalidate")
            stale = min(float(swr) if swr is not None else self.stale_while_revalidate,
                        self.max_ttl)
        if reason is not None:
            self._count(f"not-stored:{reason.value}")
            if self.pass_ttl and not isinstance(record, dict) and status not in (206, 304, 412):
                # Remember for a few seconds, so the next requests skip the miss machinery.
                # Not for a 206/304/412: it answers the client's Range or condition, and
                # says nothing about whether the full representation may be stored.
                await self._call(self.backend.aset(
                    (self.namespace, "v", request.path),
                    {"pass": reason.value, "until": now + self.pass_ttl}, self.pass_ttl))
            return f"detail={reason.value}", None, ()

        etag = found.get(b"etag")
        if etag is None and status == 200:
            etag = self._digest(body)
            headers.append((b"etag", etag.encode("latin-1")))
            start["headers"] = headers
        stored_headers = [(k, v) for k, v in headers if k.lower() not in _NOT_STORED]
        entry = _Entry(status, stored_headers, body, now, ttl, etag,
                       parse_http_date(found.get(b"last-modified")), route, stale, tags)
        gen = record.get("gen") if isinstance(record, dict) else None
        if gen is None or tuple(record.get("vary", ())) != tuple(vary):
            gen = gen or secrets.token_hex(8)
            ok = await self._call(self.backend.aset(
                (self.namespace, "v", request.path),
                # A tuple in a local backend (no copy per hit); a list for JSON backends.
                {"vary": tuple(vary) if self._local else list(vary), "gen": gen,
                 "created": now}, self.max_ttl))
            if not ok:
                return "detail=backend-error", None, ()
        entry_key = self._key(request, gen, tuple(vary))
        assert entry_key is not None
        stored: Any = entry if self._local else entry.dump()
        if not await self._call(self.backend.aset(entry_key, stored, ttl + stale)):
            return "detail=backend-error", None, ()
        self._count("stored")
        return f"stored; ttl={int(ttl)}", entry, tuple(vary)

    # -- hits ----------------------------------------------------------------------------
    def _answer(self, entry: _Entry, scope: Scope, text: str | None,
                headers: dict[bytes, bytes], age: float) -> tuple[Message, Message]:
        """The start and body messages that answer from ``entry``.

        ``text`` None means a hit (fresh, or stale by ``age``); else the Cache-Status text.
        """
        if entry.route is not None:
            scope[SCOPE_ROUTE] = entry.route  # so timing labels a hit with its route
        if text is None:
            # Keyed by this middleware's status name too (by identity): two may share one
            # backend. Fresh hits only: int(ttl - age) is 0 on both sides of the end of a
            # fractional lifetime, and stale ones say ttl=-1 there.
            whole, left, name = int(age), int(entry.ttl - age), self._status_name
            memo = entry.answer
            if (memo is not None and memo[0] == whole and memo[1] == left and memo[2] is name
                    and age < entry.ttl):
                out = list(memo[3])  # a copy: an outer layer may edit the list in place
            else:
                out = self._hit_headers(entry, age)
                if age < entry.ttl:
                    entry.answer = (whole, left, name, tuple(out))
        else:
            out = [*entry.headers, (b"age", b"%d" % age if age > 0 else b"0")]
            if self.cache_status is not None:
                out.append((b"cache-status", f"{self.cache_status}; {text}".encode()))
        method = scope["method"]
        if 200 <= entry.status < 300 and (  # is_conditional(), inline: once per hit
            b"if-none-match" in headers or b"if-modified-since" in headers
            or b"if-match" in headers or b"if-unmodified-since" in headers
        ):
            conditions = RequestConditions.from_asgi(scope["headers"])
            outcome = evaluate_preconditions(method, conditions, entry.etag, entry.last_modified)
            if outcome is Precondition.NOT_MODIFIED:
                return not_modified_start(out, scope), empty_body()
            if outcome is Precondition.FAILED:  # If-Match / If-Unmodified-Since: 412, as
                # the ETag layer answers on a miss (§13.1.1), never the stored 200.
                return ({"type": START, "status": 412,
                         "headers": [(k, v) for k, v in out if k.lower() in _ON_412]},
                        empty_body())
        return ({"type": START, "status": entry.status, "headers": out},
                {"type": BODY, "body": b"" if method == "HEAD" else entry.body,
                 "more_body": False})

    def _hit_headers(self, entry: _Entry, age: float) -> list[tuple[bytes, bytes]]:
        out = [*entry.headers, (b"age", b"%d" % age if age > 0 else b"0")]
        if self.cache_status is not None:
            if age < entry.ttl:
                out.append((b"cache-status", b"%s; hit; ttl=%d" % (self._status_name,
                                                                  entry.ttl - age)))
            else:
                out.append((b"cache-status", b"%s; hit; ttl=%d; detail=stale" % (
                    self._status_name, math.floor(entry.ttl - age))))
        return out

    async def _serve(self, entry: _Entry, scope: Scope, send: Send, text: str,
                     headers: dict[bytes, bytes]) -> None:
        start, body = self._answer(entry, scope, text, headers, self.clock() - entry.stored_at)
        await send(start)
        await send(body)

    # -- stale-while-revalidate (RFC 5861) ---------------------------------------------------
    def _revalidate(self, scope: Scope, request: _Request, record: Any,
                    key: tuple[Any, ...]) -> None:
        """Refresh a stale entry in a background task, one per entry at a time."""
        if key in self._refreshing or len(self._refreshing) >= _MAX_REFRESHING:
            return
        self._refreshing.add(key)
        fresh_scope = dict(scope)
        fresh_scope["method"] = "GET"  # a stale HEAD refreshes the GET entry it was served
        # Unconditional, so the inner layers answer 200 with a body, never 304.
        fresh_scope["headers"] = [(k, v) for k, v in scope["headers"]
                                  if not k.lower().startswith(b"if-") and k.lower() != b"range"]
        fresh_scope.pop(SCOPE_HEADERS, None)
        fresh_scope.pop(SCOPE_ROUTE, None)
        task = asyncio.get_running_loop().create_task(
            self._refresh(fresh_scope, request, record, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, scope: Scope, request: _Request, record: Any,
                       key: tuple[Any, ...]) -> None:
        messages: list[Message] = []
        asked = False

        async def receive() -> Message:
            nonlocal asked
            if asked:
                return {"type": "http.disconnect"}
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def capture(message: Message) -> None:
            messages.append(message)

        try:
            await self.app(scope, receive, capture)
            start = next((m for m in messages if m["type"] == START), None)
            body = next((m for m in messages if m["type"] == BODY), None)
            entry = None
            if start is not None and body is not None:
                _, entry, _ = await self._decide(request, record, start, body,
                                                 route_template(scope))
            if entry is None:  # no longer storable: stop serving the stale copy
                await self._call(self.backend.adelete(key))
            self._count("revalidated" if entry is not None else "revalidated:not-stored")
        except Exception as exc:  # the stale copy stays until its window ends
            self._count("revalidate-error")
            if not self._refresh_failed:
                self._refresh_failed = True
                log.warning("stale-while-revalidate refresh failed (logged once): %r", exc)
        finally:
            self._refreshing.discard(key)

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
    def _request(self, scope: Scope, headers: dict[bytes, bytes]) -> _Request:
        raw_query = scope.get("query_string")
        query = raw_query.decode("latin-1") if raw_query else ""
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
                        self._host(headers), query, headers, principal)

    def _host(self, headers: dict[bytes, bytes]) -> str:
        raw = headers.get(b"host", b"")
        host = self._hosts.get(raw)
        if host is None:
            host = raw.decode("latin-1").lower()
            if len(self._hosts) < 64:  # a service answers to a few names; not a cache of them
                self._hosts[raw] = host
        return host

    def _key(self, request: _Request, gen: str,
             vary: tuple[str, ...]) -> tuple[Any, ...] | None:
        """The entry key; None if a varied value is over the cap.

        Every field is its own tuple element (so ``("ab", "c")`` and ``("a", "bc")`` differ,
        and an absent header, None, differs from an empty one). A shared backend gets a
        SHA-256 of the length-prefixed fields instead: no header value (a token named in
        Vary) ever appears in a Redis key.
        """
        if not vary and self._local:
            return (self.namespace, "e", gen, request.scheme, request.host, request.path,
                    request.query, request.principal)
        parts: list[Any] = [gen, request.scheme, request.host, request.path, request.query,
                            request.principal]
        for name in sorted(vary):
            raw = request.headers.get(name.encode("latin-1"))
            if raw is None:
                parts.append(None)
                continue
            value = raw.decode("latin-1")
            if name == "accept-encoding":
                value = accept_encoding_key(value, _CODINGS)
            elif len(value) > self.max_vary_value:
                return None
            parts.append(value)
        if self._local:
            return (self.namespace, "e", *sorted(vary), *parts)
        fields = [*sorted(vary), *("\x00absent" if p is None else p for p in parts)]
        data = "".join(f"{len(p)}:{p}," for p in fields).encode("utf-8", "surrogateescape")
        return (self.namespace, "e", hashlib.sha256(data, usedforsecurity=False).hexdigest())

    def _lock_key(self, flight_key: tuple[str, ...]) -> tuple[str, ...]:
        name = hashlib.sha256(repr(flight_key).encode(), usedforsecurity=False).hexdigest()
        return (self.namespace, "lock", name)

    async def _finish(self, send: Send, start: Message, text: str) -> None:
        if self.cache_status is not None:
            start["headers"] = [*start.get("headers", ()),
                                (b"cache-status", f"{self.cache_status}; {text}".encode())]
        await send(start)

    async def _log(self, kind: str, fresh: bool = False) -> list[list[Any]]:
        """An invalidation log (``"p"`` prefixes, ``"t"`` tags), re-read at most once a second."""
        now = time.monotonic()
        read_at, log_ = self._logs[kind]
        if fresh or now - read_at >= _LOG_REFRESH:
            value = await self._get((self.namespace, kind))
            log_ = value if isinstance(value, list) else []
            self._logs[kind] = (now, log_)
        return log_

    async def _append_log(self, kind: str, names: list[str]) -> None:
        """Add records to a log: read, extend and write back under the backend's lock, so
        two workers invalidating at once keep both records (one lost would serve stale
        entries). Without the lock in ``lock_timeout`` the write goes ahead unlocked."""
        key = (self.namespace, "lock", "log-" + kind)
        deadline = time.monotonic() + self.lock_timeout
        token = None
        try:
            while (token := await self.backend.aacquire_lock(key, _LOG_LEASE)) is None:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(_LOG_LOCK_POLL)
        except BackendError as exc:
            self._backend_failed(exc)
        try:
            await self._extend_log(kind, names)
        finally:
            if token is not None:
                try:
                    await self.backend.arelease_lock(key, token)
                except BackendError:
                    pass  # the lease expires by itself

    async def _extend_log(self, kind: str, names: list[str]) -> None:
        now = self.clock()
        kept = [p for p in await self._log(kind, fresh=True)
                if now - p[1] < 2 * self.max_ttl and p[0] not in names]
        kept.extend([name, now] for name in names)
        if len(kept) > _LOG_MAX:
            # The oldest records leave as one floor record "": everything made before the
            # last of them counts as dropped (over-invalidating is safe; forgetting is not).
            cut = len(kept) - _LOG_MAX + 1
            kept = [["", max(p[1] for p in kept[:cut])], *kept[cut:]]
        self._logs[kind] = (time.monotonic(), kept)
        await self._call(self.backend.aset((self.namespace, kind), kept, 2 * self.max_ttl))

    async def _tag_invalidated(self, entry: _Entry) -> bool:
        read_at, log_ = self._logs["t"]
        if time.monotonic() - read_at >= _LOG_REFRESH:
            log_ = await self._log("t")
        return bool(log_) and _invalidated(log_, None, entry.stored_at, entry.tags)

    async def _get(self, key: tuple[str, ...]) -> Any:
        try:
            value = self.backend.get(key) if self._local else await self.backend.aget(key)
        except BackendError as exc:
            self._backend_failed(exc)
            return MISSING
        if self._backend_down:
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

    def _backend_failed(self, exc: BaseException) -> Any:
        """Count and log (once per outage) a backend failure; MISSING, for a failed read."""
        self._count("backend-error")
        if not self._backend_down:
            self._backend_down = True
            log.warning("response cache backend failed, serving uncached: %r", exc)
        return MISSING

    def _backend_ok(self) -> None:
        if self._backend_down:
            self._backend_down = False
            log.warning("response cache backend recovered")

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


# Registry -> the live caches it exports: read at scrape time, so a request pays nothing;
# weak both ways, so neither a registry nor a cache is kept alive by the other.
_EXPORTED: weakref.WeakKeyDictionary[Registry, weakref.WeakSet[ResponseCacheMiddleware]] = (
    weakref.WeakKeyDictionary())


def _export(registry: Registry, cache: ResponseCacheMiddleware) -> None:
    caches = _EXPORTED.get(registry)
    if caches is None:
        caches = _EXPORTED[registry] = weakref.WeakSet()
        registry.add_collector(lambda: _collect(caches))
    caches.add(cache)


def _collect(caches: weakref.WeakSet[ResponseCacheMiddleware]) -> list[Counter]:
    """The caches' :attr:`~ResponseCacheMiddleware.stats` as one counter family; the
    reasons come from a small fixed set (never a path, host or header value)."""
    live = list(caches)
    if not live:
        return []
    counter = Counter("http_response_cache_events_total",
                      "Response cache decisions by event (hit, miss, stored, bypass, "
                      "not-stored, ...) and reason", ("namespace", "event", "reason"), 1000)
    for cache in live:
        for name, value in list(cache.stats.items()):
            event, _, reason = name.partition(":")
            counter.labels(cache.namespace, event, reason).inc(value)
    return [counter]


def _invalidated(log_: list[list[Any]], path: str | None, created: float,
                 tags: tuple[str, ...] = ()) -> bool:
    """Was something made at ``created`` (for ``path``, or carrying ``tags``) dropped by a
    later record of an invalidation log? The floor record ``""`` drops everything older."""
    for name, when in log_:
        if created <= when and (
            not name or name in tags or (path is not None and path.startswith(name))
        ):
            return True
    return False


class _Tagger:
    """Adds the Cache-Status header to the start; ``send`` returns the next awaitable."""

    __slots__ = ("out", "value")

    def __init__(self, send: Send, value: bytes) -> None:
        self.out = send
        self.value = value

    def send(self, message: Message) -> Awaitable[None]:
        if message["type"] == START:
            message["headers"] = [*message.get("headers", ()), (b"cache-status", self.value)]
        return self.out(message)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")

