"""Two tiers: a process-local L1 in front of a shared L2 (usually Redis).

Reads try L1, then L2; an L2 hit fills L1 for at most the entry's remaining L2 lifetime
(and at most ``l1_ttl``). Writes go through both. When L2 is down, L1 keeps serving and
accepting writes; the L2 error still reaches the decorator, which counts it.

Invalidation reaches other processes: ``delete`` and ``clear_namespace`` publish on a
Redis pub/sub channel, and every TieredBackend listening on it drops the entry from its
own L1. When the subscription drops (Redis restarts), a process cannot know what it
missed, so it clears its L1 once it is back: slower for a moment, never stale.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
import uuid
from typing import Any

from perfkit.caching.backends.base import MISSING, Backend, BackendError, Key
from perfkit.caching.backends.memory import MemoryBackend

logger = logging.getLogger("perfkit.cache.tiered")


class TieredBackend(Backend):
    """L1 (a :class:`MemoryBackend`) over L2 (any backend, usually ``RedisBackend``)."""

    is_local = False

    def __init__(
        self,
        l1: MemoryBackend | None = None,
        l2: Backend | None = None,
        *,
        l1_ttl: float | None = 60.0,
        channel: str = "perfkit:invalidate",
        listen: bool = True,
        subscribe_timeout: float = 1.0,
    ) -> None:
        if l2 is None:
            raise ValueError("l2 is required: the shared tier (e.g. RedisBackend(url))")
        if l1 is None:
            l1 = MemoryBackend(1024)
        if not isinstance(l1, MemoryBackend):
            raise TypeError(f"l1 must be a MemoryBackend, got {l1!r}")
        if not isinstance(l2, Backend):
            raise TypeError(f"l2 must be a perfkit cache backend, got {l2!r}")
        if l1_ttl is not None and not l1_ttl > 0:
            raise ValueError(f"l1_ttl must be > 0 seconds or None, got {l1_ttl!r}")
        self.l1 = l1
        self.l2 = l2
        self.l1_ttl = l1_ttl
        self.channel = channel
        self.supports_sync = l2.supports_sync
        self.probe = l1.get  # the decorator tries L1 without any I/O first
        self._origin = uuid.uuid4().hex
        self._listener: _Listener | None = None
        if listen and hasattr(l2, "client") and hasattr(l2, "publish"):
            self._listener = _Listener(self)
            self._listener.start()
            # Subscribe before first use, so no invalidation sent from now on is missed
            # (bounded: a Redis that is down must not block start-up).
            self._listener.subscribed.wait(subscribe_timeout)

    @property
    def timer(self) -> Any:
        return time.time  # entries are shared across processes: wall clock

    def _l1_ttl(self, remaining: float | None) -> float | None:
        if remaining is None:
            return self.l1_ttl
        return remaining if self.l1_ttl is None else min(remaining, self.l1_ttl)

    # -- reads -----------------------------------------------------------------------
    def get(self, key: Key) -> Any:
        value = self.l1.get(key)
        if value is not MISSING:
            return value
        return self.rest(key)

    def rest(self, key: Key) -> Any:
        """The L2 part of a read (after an L1 miss); fills L1 on a hit."""
        get_with_ttl = getattr(self.l2, "get_with_ttl", None)
        if get_with_ttl is not None:
            value, remaining = get_with_ttl(key)
        else:
            value, remaining = self.l2.get(key), None
        if value is not MISSING:
            self.l1.set(key, value, self._l1_ttl(remaining))
        return value

    async def aget(self, key: Key) -> Any:
        value = self.l1.get(key)
        if value is not MISSING:
            return value
        return await self.arest(key)

    async def arest(self, key: Key) -> Any:
        aget_with_ttl = getattr(self.l2, "aget_with_ttl", None)
        if aget_with_ttl is not None:
            value, remaining = await aget_with_ttl(key)
        else:
            value, remaining = await self.l2.aget(key), None
        if value is not MISSING:
            self.l1.set(key, value, self._l1_ttl(remaining))
        return value

    # -- writes ----------------------------------------------------------------------
    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        # L2 first: a value it cannot serialise must not live on in L1 alone.
        try:
            self.l2.set(key, value, ttl)
        except BackendError:
            self.l1.set(key, value, self._l1_ttl(ttl))  # L2 down: L1 keeps working
            raise
        self.l1.set(key, value, self._l1_ttl(ttl))

    async def aset(self, key: Key, value: Any, ttl: float | None) -> None:
        try:
            await self.l2.aset(key, value, ttl)
        except BackendError:
            self.l1.set(key, value, self._l1_ttl(ttl))
            raise
        self.l1.set(key, value, self._l1_ttl(ttl))

    def delete(self, key: Key) -> bool:
        local = self.l1.delete(key)
        shared = self.l2.delete(key)
        self._publish({"key": repr(key)})
        return local or shared

    async def adelete(self, key: Key) -> bool:
        local = self.l1.delete(key)
        shared = await self.l2.adelete(key)
        await self._apublish({"key": repr(key)})
        return local or shared

    def clear_namespace(self, namespace: str) -> int:
        self.l1.clear_namespace(namespace)
        removed = self.l2.clear_namespace(namespace)
        self._publish({"ns": namespace})
        return removed

    async def aclear_namespace(self, namespace: str) -> int:
        self.l1.clear_namespace(namespace)
        removed = await self.l2.aclear_namespace(namespace)
        await self._apublish({"ns": namespace})
        return removed

    def count_namespace(self, namespace: str) -> int:
        return self.l2.count_namespace(namespace)

    def _publish(self, message: dict[str, str]) -> None:
        publish = getattr(self.l2, "publish", None)
        if publish is not None:
            publish(self.channel, json.dumps({"origin": self._origin, **message}))

    async def _apublish(self, message: dict[str, str]) -> None:
        apublish = getattr(self.l2, "apublish", None)
        if apublish is not None:
            await apublish(self.channel, json.dumps({"origin": self._origin, **message}))

    # -- locks and counters come from the shared tier ---------------------------------
    def acquire_lock(self, key: Key, lease: float) -> str | None:
        return self.l2.acquire_lock(key, lease)

    def release_lock(self, key: Key, token: str) -> None:
        self.l2.release_lock(key, token)

    async def aacquire_lock(self, key: Key, lease: float) -> str | None:
        return await self.l2.aacquire_lock(key, lease)

    async def arelease_lock(self, key: Key, token: str) -> None:
        await self.l2.arelease_lock(key, token)

    @property
    def evictions(self) -> int:
        return self.l1.evictions

    def apply_invalidation(self, raw: bytes | str) -> None:
        """Act on one pub/sub message: drop a key or a namespace from L1."""
        try:
            message = json.loads(raw)
            if "ns" in message:
                self.l1.clear_namespace(str(message["ns"]))
            else:
                self.l1.delete(ast.literal_eval(message["key"]))
        except (ValueError, KeyError, TypeError, SyntaxError, MemoryError):
            self.l1.clear()  # cannot tell what it meant: be safe, drop everything local

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


class _Listener(threading.Thread):
    """Background subscriber to the invalidation channel; reconnects by itself."""

    def __init__(self, tiered: TieredBackend) -> None:
        super().__init__(name="perfkit-tiered-invalidation", daemon=True)
        self.tiered = tiered
        self._stop_event = threading.Event()
        self.subscribed = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)

    def run(self) -> None:
        delay = 0.1
        lost = False
        while not self._stop_event.is_set():
            pubsub = None
            try:
                pubsub = self.tiered.l2.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[attr-defined]
                pubsub.subscribe(self.tiered.channel)
                if lost:  # we may have missed invalidations while disconnected
                    self.tiered.l1.clear()
                    lost = False
                self.subscribed.set()
                delay = 0.1
                while not self._stop_event.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message.get("type") == "message":
                        self.tiered.apply_invalidation(message["data"])
            except Exception as exc:
                self.subscribed.clear()
                if not lost:
                    logger.debug("invalidation subscription lost: %s", exc)
                lost = True
                self._stop_event.wait(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
