"""Redis backend: redis-py sync and asyncio clients from one URL, safe when Redis is not.

- Short timeouts (250 ms by default) and an :class:`OutageGuard`: one warning per outage,
  fail-fast :class:`BackendError` while down (the decorator computes without the cache),
  recovery by itself.
- Values are pickled by default (``serializer="json"`` for JSON). With ``secret=`` every
  payload is HMAC-SHA256 signed and a payload with a bad signature is never unpickled
  (fail closed: treated as a miss and counted as an error). Without a secret, anyone who
  can write to this Redis can make this process unpickle their bytes: set a secret
  whenever Redis is shared beyond this service.
- Every key lives under ``prefix`` (``perfkit:`` by default) as
  ``<prefix><namespace>:<hash>``, so one function's entries are deleted by SCAN+UNLINK of
  its namespace, never by FLUSHDB. Nothing lives forever: ``ttl=None`` means ``max_ttl``.
- Asyncio clients are created per event loop (a client is bound to the loop it first
  ran on), so ``asyncio.run`` twice, per-test loops and threads with their own loops work.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import pickle
import secrets
from typing import Any, Literal

from perfkit.caching.backends.base import MISSING, Backend, BackendError, Key
from perfkit.caching.backends.outage import OutageGuard
from perfkit.caching.keys import namespace_pattern, shared_key

_MAX_LOOPS = 8

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def _redis() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("RedisBackend needs redis-py: pip install 'perfkit[redis]'") from None
    return redis


class RedisBackend(Backend):
    """A shared cache tier in Redis. See the module docstring for the guarantees."""

    is_local = False

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "perfkit:",
        serializer: Literal["pickle", "json"] = "pickle",
        secret: bytes | str | None = None,
        socket_timeout: float = 0.25,
        max_ttl: float = 86400.0,
        retry_interval: float = 1.0,
    ) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"url must be a redis:// URL, got {url!r}")
        if serializer not in ("pickle", "json"):
            raise ValueError(f"serializer must be 'pickle' or 'json', got {serializer!r}")
        for name, value in (
            ("socket_timeout", socket_timeout),
            ("max_ttl", max_ttl),
            ("retry_interval", retry_interval),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self._redis = _redis()
        self.url = url
        self.prefix = prefix
        self.lock_prefix = prefix + "lock:"
        self.serializer = serializer
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.unpickles_unsigned = serializer == "pickle" and not self._secret
        self.socket_timeout = socket_timeout
        self.max_ttl = max_ttl
        self.retry_interval = retry_interval
        self._sync_client: Any = None
        self._async_clients: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}
        self.guard = OutageGuard(
            f"Redis at {url}",
            retry_interval,
            outage_errors=(
                self._redis.exceptions.ConnectionError,
                self._redis.exceptions.TimeoutError,
                OSError,
            ),
            other_errors=(self._redis.exceptions.RedisError,),
        )

    # -- clients -------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "retry_on_timeout": False,
        }

    @property
    def client(self) -> Any:
        """The sync redis-py client (created on first use)."""
        if self._sync_client is None:
            self._sync_client = self._redis.Redis.from_url(self.url, **self._client_kwargs())
        return self._sync_client

    @property
    def aclient(self) -> Any:
        """The asyncio client of the running event loop.

        A client belongs to the loop it first ran on. Clients of loops that have closed
        are dropped when a new loop asks (at most ``_MAX_LOOPS`` are kept), so
        ``asyncio.run`` in a loop or per-test event loops do not pile up connections;
        call :meth:`aclose` before a loop ends to close its connections cleanly.
        """
        loop = asyncio.get_running_loop()
        entry = self._async_clients.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        for ident, (other, _client) in list(self._async_clients.items()):
            if other.is_closed() or len(self._async_clients) >= _MAX_LOOPS:
                del self._async_clients[ident]
        client = self._redis.asyncio.Redis.from_url(self.url, **self._client_kwargs())
        self._async_clients[id(loop)] = (loop, client)
        return client

    async def aclose(self) -> None:
        """Close the running loop's asyncio client (call it before the loop ends)."""
        entry = self._async_clients.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].aclose()

    @property
    def errors(self) -> int:
        return self.guard.errors

    @property
    def available(self) -> bool:
        return not self.guard.outage

    # -- payloads ------------------------------------------------------------------------
    def _key(self, key: Key) -> str:
        return shared_key(key, self.prefix)

    def _lock_key(self, key: Key) -> str:
        return shared_key(key, self.lock_prefix)

    def dumps(self, value: Any) -> bytes:
        if self.serializer == "json":
            try:
                data = json.dumps(value, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                raise TypeError(f"value is not JSON-serialisable: {exc}") from exc
        else:
            try:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise TypeError(f"value cannot be pickled for Redis: {exc}") from exc
        if self._secret is not None:
            data = hmac.new(self._secret, data, hashlib.sha256).digest() + data
        return data

    def loads(self, raw: bytes) -> Any:
        if self._secret is not None:
            signature, raw = raw[:32], raw[32:]
            expected = hmac.new(self._secret, raw, hashlib.sha256).digest()
            if not hmac.compare_digest(signature, expected):
                self.guard.errors += 1
                raise BackendError("payload signature mismatch: refusing to deserialise it")
        try:
            if self.serializer == "json":
                return json.loads(raw)
            return pickle.loads(raw)
        except Exception as exc:  # truncated, foreign, or a class renamed since it was stored
            self.guard.errors += 1
            raise BackendError(f"cannot decode the stored payload: {exc!r}") from exc

    def _px(self, ttl: float | None) -> int:
        seconds = self.max_ttl if ttl is None else min(ttl, self.max_ttl)
        return max(1, int(seconds * 1000))

    # -- sync --------------------------------------------------------------------------
    def get(self, key: Key) -> Any:
        with self.guard:
            raw = self.client.get(self._key(key))
        return MISSING if raw is None else self.loads(raw)

    def get_with_ttl(self, key: Key) -> tuple[Any, float | None]:
        """The value and its remaining time to live in seconds (one round trip)."""
        with self.guard:
            pipe = self.client.pipeline(transaction=False)
            skey = self._key(key)
            raw, pttl = pipe.get(skey).pttl(skey).execute()
        if raw is None:
            return MISSING, None
        return self.loads(raw), (pttl / 1000 if pttl and pttl > 0 else None)

    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        data = self.dumps(value)
        with self.guard:
            self.client.set(self._key(key), data, px=self._px(ttl))

    def delete(self, key: Key) -> bool:
        with self.guard:
            return bool(self.client.unlink(self._key(key)))

    def clear_namespace(self, namespace: str) -> int:
        pattern = namespace_pattern(namespace, self.prefix)
        removed = 0
        with self.guard:
            batch: list[bytes] = []
            for name in self.client.scan_iter(match=pattern, count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += self.client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += self.client.unlink(*batch)
        return removed

    def count_namespace(self, namespace: str) -> int:
        pattern = namespace_pattern(namespace, self.prefix)
        with self.guard:
            return sum(1 for _ in self.client.scan_iter(match=pattern, count=500))

    def acquire_lock(self, key: Key, lease: float) -> str | None:
        token = secrets.token_hex(8)
        with self.guard:
            ok = self.client.set(self._lock_key(key), token, nx=True, px=max(1, int(lease * 1000)))
        return token if ok else None

    def release_lock(self, key: Key, token: str) -> None:
        with self.guard:
            self.client.eval(_RELEASE, 1, self._lock_key(key), token)

    def publish(self, channel: str, message: str) -> None:
        with self.guard:
            self.client.publish(channel, message)

    # -- async -------------------------------------------------------------------------
    async def aget(self, key: Key) -> Any:
        with self.guard:
            raw = await self.aclient.get(self._key(key))
        return MISSING if raw is None else self.loads(raw)

    async def aget_with_ttl(self, key: Key) -> tuple[Any, float | None]:
        with self.guard:
            pipe = self.aclient.pipeline(transaction=False)
            skey = self._key(key)
            raw, pttl = await pipe.get(skey).pttl(skey).execute()
        if raw is None:
            return MISSING, None
        return self.loads(raw), (pttl / 1000 if pttl and pttl > 0 else None)

    async def aset(self, key: Key, value: Any, ttl: float | None) -> None:
        data = self.dumps(value)
        with self.guard:
            await self.aclient.set(self._key(key), data, px=self._px(ttl))

    async def adelete(self, key: Key) -> bool:
        with self.guard:
            return bool(await self.aclient.unlink(self._key(key)))

    async def aclear_namespace(self, namespace: str) -> int:
        pattern = namespace_pattern(namespace, self.prefix)
        removed = 0
        with self.guard:
            batch: list[bytes] = []
            async for name in self.aclient.scan_iter(match=pattern, count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += await self.aclient.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await self.aclient.unlink(*batch)
        return removed

    async def aacquire_lock(self, key: Key, lease: float) -> str | None:
        token = secrets.token_hex(8)
        with self.guard:
            ok = await self.aclient.set(
                self._lock_key(key), token, nx=True, px=max(1, int(lease * 1000))
            )
        return token if ok else None

    async def arelease_lock(self, key: Key, token: str) -> None:
        with self.guard:
            await self.aclient.eval(_RELEASE, 1, self._lock_key(key), token)

    async def apublish(self, channel: str, message: str) -> None:
        with self.guard:
            await self.aclient.publish(channel, message)

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None
