"""Adapter: any ``aiocache`` cache (memcached, its Redis or memory cache) as a backend.

Async only: a sync function decorated with it gets a ``TypeError`` at decoration time.
aiocache returns ``None`` for a miss, so values travel in a one-element envelope and a
cached ``None`` stays a hit. aiocache wraps every call in ``asyncio.wait_for`` unless the
cache was built with ``timeout=0`` (or ``None``): do that for speed, perfkit's breaker
already bounds an outage.

memcached cannot list keys, so ``clear_namespace`` bumps a per-namespace generation that
is part of every key; other processes see a bump within ``generation_ttl`` seconds.
Nothing is stored without expiry (``ttl=None`` means ``max_ttl``); memcached rounds TTLs
up to whole seconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from perfkit.caching.backends.base import MISSING, Backend, Key
from perfkit.caching.backends.outage import OutageGuard
from perfkit.caching.keys import shared_key


class AiocacheBackend(Backend):
    is_local = False
    supports_sync = False

    def __init__(
        self,
        cache: Any,
        *,
        prefix: str = "perfkit:",
        retry_interval: float = 1.0,
        generation_ttl: float = 1.0,
        max_ttl: float = 86400.0,
    ) -> None:
        if not all(hasattr(cache, name) for name in ("get", "set", "delete")):
            raise TypeError(f"cache must be an aiocache cache object, got {cache!r}")
        self.cache = cache
        self.prefix = prefix
        self.generation_ttl = generation_ttl
        self.max_ttl = max_ttl
        # memcached counts expiry in whole seconds; the other aiocache caches take floats
        self._whole_seconds = "memcached" in type(cache).__name__.lower()
        # aiocache's PickleSerializer over a store other processes write (Redis, memcached):
        # whoever can write there could run code here. In-process memory is only ours.
        self.unpickles_unsigned = (
            "pickle" in type(getattr(cache, "serializer", None)).__name__.lower()
            and "memory" not in type(cache).__name__.lower())
        self.guard = OutageGuard(
            f"aiocache {type(cache).__name__}",
            retry_interval,
            outage_errors=(OSError, ConnectionError, asyncio.TimeoutError),
            other_errors=(Exception,),
        )
        self._generations: dict[str, tuple[int, float]] = {}

    async def _generation(self, namespace: str) -> int:
        known = self._generations.get(namespace)
        now = time.monotonic()
        if known is not None and known[1] > now:
            return known[0]
        with self.guard:
            raw = await self.cache.get(f"{self.prefix}gen:{namespace}")
        generation = int(raw[0]) if isinstance(raw, (list, tuple)) and raw else 0
        self._generations[namespace] = (generation, now + self.generation_ttl)
        return generation

    async def _key(self, key: Key) -> str:
        generation = await self._generation(str(key[0]))
        return shared_key((f"{key[0]}#{generation}", *key[1:]), self.prefix)

    async def aget(self, key: Key) -> Any:
        skey = await self._key(key)
        with self.guard:
            raw = await self.cache.get(skey)
        if isinstance(raw, (list, tuple)) and len(raw) == 1:
            return raw[0]
        return MISSING

    async def aset(self, key: Key, value: Any, ttl: float | None) -> None:
        skey = await self._key(key)
        with self.guard:
            await self.cache.set(skey, (value,), ttl=self._ttl(ttl))

    def _ttl(self, ttl: float | None) -> float:
        seconds = self.max_ttl if ttl is None else min(ttl, self.max_ttl)
        return math.ceil(seconds) if self._whole_seconds else seconds

    async def adelete(self, key: Key) -> bool:
        skey = await self._key(key)
        with self.guard:
            return bool(await self.cache.delete(skey))

    async def aclear_namespace(self, namespace: str) -> int:
        generation = await self._generation(namespace) + 1
        with self.guard:
            await self.cache.set(
                f"{self.prefix}gen:{namespace}", (generation,), ttl=self._ttl(self.max_ttl)
            )
        self._generations[namespace] = (generation, time.monotonic() + self.generation_ttl)
        return 0  # memcached cannot count what it dropped

    async def acount_namespace(self, namespace: str) -> int:
        return -1

    def get(self, key: Key) -> Any:
        raise TypeError("AiocacheBackend is async-only; use it with async functions")

    set = delete = clear_namespace = count_namespace = get  # type: ignore[assignment]
