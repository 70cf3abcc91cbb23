"""The contract every cache backend fulfils.

Keys are tuples of primitives built by :mod:`perfkit.caching.keys` (``(namespace, type
codes, *values)``). Local backends use them as they are; shared backends turn them into
strings with :func:`perfkit.caching.keys.shared_key`. A miss is the :data:`MISSING`
sentinel, never ``None``, so a cached ``None`` stays a hit.

Backends that talk to a server raise :class:`BackendError` when it is unreachable; the
caller (the decorator, a middleware) counts the error and carries on without the cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Final


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final[Any] = _Missing()
"""Returned by ``get`` on a miss; distinct from every value a user can cache."""

Key = tuple[Hashable, ...]


class BackendError(Exception):
    """A backend could not serve the request (server down, timeout, bad payload)."""


class Backend:
    """Base class: a key/value store with per-entry TTL, sync and async.

    Subclasses implement the sync methods; a backend doing network I/O also overrides the
    ``a*`` methods. ``is_local`` tells callers that the sync methods never block on I/O,
    so an async caller may call them directly (the fast path of the async decorator).
    """

    is_local: bool = False
    supports_sync: bool = True
    unpickles_unsigned: bool = False
    """Whether a read may unpickle bytes nobody signed (whoever can write the store can
    run code in this process): the response cache refuses such a backend."""
    probe: Callable[[Key], Any] | None = None
    """A sync lookup in a local tier (no I/O, never raises); the decorator's first try."""
    rest: Callable[[Key], Any] | None = None
    """For tiered backends: the rest of a read after a ``probe`` miss."""
    arest: Callable[[Key], Awaitable[Any]] | None = None

    # -- sync -----------------------------------------------------------------------
    def get(self, key: Key) -> Any:
        raise NotImplementedError

    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        raise NotImplementedError

    def delete(self, key: Key) -> bool:
        raise NotImplementedError

    def clear_namespace(self, namespace: str) -> int:
        """Drop every entry whose key starts with ``namespace``; return how many."""
        raise NotImplementedError

    def count_namespace(self, namespace: str) -> int:
        raise NotImplementedError

    # -- async (default: the sync method, fine for local backends) -------------------
    async def aget(self, key: Key) -> Any:
        return self.get(key)

    async def aset(self, key: Key, value: Any, ttl: float | None) -> None:
        self.set(key, value, ttl)

    async def adelete(self, key: Key) -> bool:
        return self.delete(key)

    async def aclear_namespace(self, namespace: str) -> int:
        return self.clear_namespace(namespace)

    async def acount_namespace(self, namespace: str) -> int:
        return self.count_namespace(namespace)

    # -- cross-process single flight (only shared backends lock) ----------------------
    def acquire_lock(self, key: Key, lease: float) -> str | None:
        """Take the compute lock for ``key``; a token on success, ``None`` if held."""
        return "local"

    def release_lock(self, key: Key, token: str) -> None:
        return None

    async def aacquire_lock(self, key: Key, lease: float) -> str | None:
        return self.acquire_lock(key, lease)

    async def arelease_lock(self, key: Key, token: str) -> None:
        self.release_lock(key, token)

    @property
    def evictions(self) -> int:
        return 0

    def close(self) -> None:
        return None
