"""Two or three tiers: a process-local L1 in front of shared tiers (disk, Redis).

``TieredBackend(l1, l2)``: memory over a shared tier (usually Redis).
``TieredBackend(l1, l2, l3)``: memory over a host-local tier (usually ``DiskBackend``)
over a shared tier (usually Redis).

Reads try each tier in order. A hit in a lower tier fills the tiers above it (for at most
the entry's remaining lifetime, and at most ``l1_ttl`` in L1); with ``promote_after=N``
only once the key has been read N times from below, so one-off reads of large values do
not churn memory. Writes go to every tier, except that with ``l2_writes="on_evict"`` the
middle tier of three receives entries only when L1 evicts them (demotion) or when a read
promotes them from L3: a victim cache that spares disk writes for entries memory still holds.

When a tier is down, the others keep serving and accepting writes; the error still
reaches the decorator, which counts it.

Invalidation reaches every tier and other processes: ``delete`` and ``clear_namespace``
remove from each tier, then publish on a Redis pub/sub channel; every TieredBackend
listening drops the entry from its L1 and, with three tiers, from its host's middle tier
(other hosts have their own disks). When the subscription drops (Redis restarts), a
process cannot know what it missed, so it clears its L1 (and, with three tiers, its host's
middle tier) once it is back: slower for a moment, never stale. Without a Redis tier, other
processes' L1s see an invalidation only when their entry's ``l1_ttl`` runs out.
"""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from perfkit.caching.backends.base import MISSING, Backend, BackendError, Key
from perfkit.caching.backends.memory import MemoryBackend

logger = logging.getLogger("perfkit.cache.tiered")

_READ_COUNTS_MAX = 10_000


class TieredBackend(Backend):
    """L1 (a :class:`MemoryBackend`) over one or two more tiers; see the module docstring."""

    is_local = False

    def __init__(
        self,
        l1: MemoryBackend | None = None,
        l2: Backend | None = None,
        l3: Backend | None = None,
        *,
        l1_ttl: float | None = 60.0,
        channel: str = "perfkit:invalidate",
        listen: bool = True,
        promote_after: int = 1,
        l2_writes: Literal["through", "on_evict"] = "through",
        subscribe_timeout: float = 1.0,
    ) -> None:
        if l2 is None:
            raise ValueError("l2 is required: the shared tier (e.g. RedisBackend(url))")
        if l1 is None:
            l1 = MemoryBackend(1024)
        if not isinstance(l1, MemoryBackend):
            raise TypeError(f"l1 must be a MemoryBackend, got {l1!r}")
        for name, tier in (("l2", l2), ("l3", l3)):
            if tier is not None and not isinstance(tier, Backend):
                raise TypeError(f"{name} must be a perfkit cache backend, got {tier!r}")
        if l1_ttl is not None and not l1_ttl > 0:
            raise ValueError(f"l1_ttl must be > 0 seconds or None, got {l1_ttl!r}")
        if isinstance(promote_after, bool) or not isinstance(promote_after, int) or (
            promote_after < 1
        ):
            raise ValueError(f"promote_after must be an int >= 1, got {promote_after!r}")
        if l2_writes not in ("through", "on_evict"):
            raise ValueError(f"l2_writes must be 'through' or 'on_evict', got {l2_writes!r}")
        if l2_writes == "on_evict" and l3 is None:
            raise ValueError("l2_writes='on_evict' needs three tiers: l2 would never be shared")
        self.l1 = l1
        self.l2 = l2
        self.l3 = l3
        self.lower: tuple[Backend, ...] = (l2,) if l3 is None else (l2, l3)
        self.shared = self.lower[-1]
        """The last tier: it holds the locks and counts, and carries invalidations."""
        self.l1_ttl = l1_ttl
        self.channel = channel
        self.promote_after = promote_after
        self.l2_writes = l2_writes
        self.demote_errors = 0
        self._read_counts: OrderedDict[Key, int] = OrderedDict()
        self._counts_lock = threading.Lock()
        # the tiers a write reaches below L1
        self._write_tiers = self.lower[1:] if l2_writes == "on_evict" else self.lower
        if l2_writes == "on_evict":
            l1.on_evict = self._demote
        self.supports_sync = all(t.supports_sync for t in self.lower)
        self.unpickles_unsigned = any(t.unpickles_unsigned for t in (l1, *self.lower))
        self.probe = l1.get  # the decorator tries L1 without any I/O first
        self._origin = uuid.uuid4().hex
        self._listener: _Listener | None = None
        if listen and hasattr(self.shared, "client") and hasattr(self.shared, "publish"):
            self._listener = _Listener(self)
            self._listener.start()
            # A backend dropped without close() stops its listener too (the thread holds
            # only a weak reference to it, so the backend can be collected at all).
            weakref.finalize(self, self._listener.stop_soon)
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
        """The lower-tier part of a read (after an L1 miss); promotes on a hit."""
        error: BackendError | None = None
        for depth, tier in enumerate(self.lower):
            try:
                get_with_ttl = getattr(tier, "get_with_ttl", None)
                if get_with_ttl is not None:
                    value, remaining = get_with_ttl(key)
                else:
                    value, remaining = tier.get(key), None
            except BackendError as exc:
                error = error or exc
                continue
            if value is not MISSING:
                for upper in self._promote(key, value, remaining, depth):
                    try:
                        upper.set(key, value, remaining)
                    except BackendError as exc:
                        logger.debug("promotion to %r failed: %s", upper, exc)
                return value
        if error is not None:
            raise error
        return MISSING

    async def aget(self, key: Key) -> Any:
        value = self.l1.get(key)
        if value is not MISSING:
            return value
        return await self.arest(key)

    async def arest(self, key: Key) -> Any:
        error: BackendError | None = None
        for depth, tier in enumerate(self.lower):
            try:
                aget_with_ttl = getattr(tier, "aget_with_ttl", None)
                if aget_with_ttl is not None:
                    value, remaining = await aget_with_ttl(key)
                else:
                    value, remaining = await tier.aget(key), None
            except BackendError as exc:
                error = error or exc
                continue
            if value is not MISSING:
                for upper in self._promote(key, value, remaining, depth):
                    try:
                        await upper.aset(key, value, remaining)
                    except BackendError as exc:
                        logger.debug("promotion to %r failed: %s", upper, exc)
                return value
        if error is not None:
            raise error
        return MISSING

    def _promote(
        self, key: Key, value: Any, remaining: float | None, depth: int
    ) -> tuple[Backend, ...]:
        """A hit at ``depth`` below L1: fill L1 if the key is due (``promote_after``) and
        return the lower tiers above ``depth`` that the caller must fill too."""
        if not self._promotes(key):
            return ()
        self.l1.set(key, value, self._l1_ttl(remaining))
        return self.lower[:depth]  # with l2_writes="on_evict" too: a read is not a write

    def _promotes(self, key: Key) -> bool:
        if self.promote_after == 1:
            return True
        with self._counts_lock:
            reads = self._read_counts.pop(key, 0) + 1
            if reads >= self.promote_after:
                return True
            self._read_counts[key] = reads
            if len(self._read_counts) > _READ_COUNTS_MAX:
                self._read_counts.popitem(last=False)
            return False

    def _demote(self, key: Key, value: Any, remaining: float | None) -> None:
        """L1 evicted a live entry: keep it in the middle tier (``l2_writes='on_evict'``)."""
        try:
            add = getattr(self.l2, "add", None)
            if add is not None:
                add(key, value, remaining)
            else:
                self.l2.set(key, value, remaining)
        except (BackendError, TypeError):
            self.demote_errors += 1

    # -- writes and invalidation: every tier, first error re-raised after the rest ----
    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        # Lower tiers first: a value they cannot serialise must not live on in L1 alone.
        try:
            _each(self._write_tiers, lambda t: t.set(key, value, ttl))
        except BackendError:
            self.l1.set(key, value, self._l1_ttl(ttl))  # a tier is down: L1 keeps working
            raise
        self.l1.set(key, value, self._l1_ttl(ttl))

    async def aset(self, key: Key, value: Any, ttl: float | None) -> None:
        try:
            await _aeach(self._write_tiers, lambda t: t.aset(key, value, ttl))
        except BackendError:
            self.l1.set(key, value, self._l1_ttl(ttl))
            raise
        self.l1.set(key, value, self._l1_ttl(ttl))

    def delete(self, key: Key) -> bool:
        local = self.l1.delete(key)
        found = _each(self.lower, lambda t: t.delete(key))
        self._publish({"key": repr(key)})
        return local or any(found)

    async def adelete(self, key: Key) -> bool:
        local = self.l1.delete(key)
        found = await _aeach(self.lower, lambda t: t.adelete(key))
        await self._apublish({"key": repr(key)})
        return local or any(found)

    def clear_namespace(self, namespace: str) -> int:
        self.l1.clear_namespace(namespace)
        removed = _each(self.lower, lambda t: t.clear_namespace(namespace))
        self._publish({"ns": namespace})
        return int(removed[-1])

    async def aclear_namespace(self, namespace: str) -> int:
        self.l1.clear_namespace(namespace)
        removed = await _aeach(self.lower, lambda t: t.aclear_namespace(namespace))
        await self._apublish({"ns": namespace})
        return int(removed[-1])

    def count_namespace(self, namespace: str) -> int:
        return self.shared.count_namespace(namespace)

    def _publish(self, message: dict[str, str]) -> None:
        publish = getattr(self.shared, "publish", None)
        if publish is not None:
            publish(self.channel, json.dumps({"origin": self._origin, **message}))

    async def _apublish(self, message: dict[str, str]) -> None:
        apublish = getattr(self.shared, "apublish", None)
        if apublish is not None:
            await apublish(self.channel, json.dumps({"origin": self._origin, **message}))

    # -- locks and counters come from the shared tier ---------------------------------
    def acquire_lock(self, key: Key, lease: float) -> str | None:
        return self.shared.acquire_lock(key, lease)

    def release_lock(self, key: Key, token: str) -> None:
        self.shared.release_lock(key, token)

    async def aacquire_lock(self, key: Key, lease: float) -> str | None:
        return await self.shared.aacquire_lock(key, lease)

    async def arelease_lock(self, key: Key, token: str) -> None:
        await self.shared.arelease_lock(key, token)

    @property
    def evictions(self) -> int:
        return self.l1.evictions

    def apply_invalidation(self, raw: bytes | str) -> None:
        """Act on one pub/sub message: drop a key or a namespace from L1 (and this host's
        middle tier, with three tiers)."""
        local = (self.l1, self.l2) if self.l3 is not None else (self.l1,)
        try:
            message = json.loads(raw)
            if "ns" in message:
                for tier in local:
                    tier.clear_namespace(str(message["ns"]))
            else:
                key = ast.literal_eval(message["key"])
                for tier in local:
                    tier.delete(key)
        except BackendError:
            logger.debug("could not apply an invalidation to the middle tier", exc_info=True)
        except (ValueError, KeyError, TypeError, SyntaxError, MemoryError):
            self.l1.clear()  # cannot tell what it meant: be safe, drop everything local

    def forget_local(self) -> None:
        """Drop what this process and host hold locally (L1, and with three tiers the middle
        tier): after a lost subscription, invalidations may have been missed."""
        self.l1.clear()
        clear = getattr(self.l2, "clear", None) if self.l3 is not None else None
        if clear is not None:
            try:
                clear()
            except BackendError:
                logger.debug("could not clear the middle tier after a lost subscription",
                             exc_info=True)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def _each(tiers: tuple[Backend, ...], op: Any) -> list[Any]:
    """Apply ``op`` to every tier; a tier that is down does not stop the others."""
    results: list[Any] = []
    error: BackendError | None = None
    for tier in tiers:
        try:
            results.append(op(tier))
        except BackendError as exc:
            error = error or exc
            results.append(0)
    if error is not None:
        raise error
    return results


async def _aeach(tiers: tuple[Backend, ...], op: Any) -> list[Any]:
    results: list[Any] = []
    error: BackendError | None = None
    for tier in tiers:
        try:
            results.append(await op(tier))
        except BackendError as exc:
            error = error or exc
            results.append(0)
    if error is not None:
        raise error
    return results


class _Listener(threading.Thread):
    """Background subscriber to the invalidation channel; reconnects by itself.

    It holds its backend weakly and ends once the backend is gone: a strong reference from
    a running thread kept every TieredBackend built without ``close()`` (one per test, per
    request-scoped cache) alive with its thread and Redis connection for the process's life.
    """

    def __init__(self, tiered: TieredBackend) -> None:
        super().__init__(name="perfkit-tiered-invalidation", daemon=True)
        self._tiered = weakref.ref(tiered)
        self._client = tiered.shared.client  # type: ignore[attr-defined]
        self._channel = tiered.channel
        self._stop_event = threading.Event()
        self.subscribed = threading.Event()

    def stop_soon(self) -> None:
        """Ask the thread to end, without waiting (safe from a finalizer)."""
        self._stop_event.set()

    def stop(self) -> None:
        self._stop_event.set()
        if self is not threading.current_thread():
            self.join(timeout=2)

    def _running(self) -> bool:
        return not self._stop_event.is_set() and self._tiered() is not None

    def _call(self, action: Callable[..., object], *args: object) -> None:
        """``action(backend, *args)`` if the backend still exists; the strong reference
        lives only for the call, never across the wait for the next message."""
        tiered = self._tiered()
        if tiered is not None:
            action(tiered, *args)

    def run(self) -> None:
        delay = 0.1
        lost = False
        while self._running():
            pubsub = None
            try:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                if lost:  # we may have missed invalidations while disconnected
                    self._call(TieredBackend.forget_local)
                    lost = False
                self.subscribed.set()
                delay = 0.1
                while self._running():
                    message = pubsub.get_message(timeout=0.2)
                    if message and message.get("type") == "message":
                        self._call(TieredBackend.apply_invalidation, message["data"])
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
