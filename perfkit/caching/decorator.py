"""``perfkit.cached``: one decorator for sync and async functions, methods, class- and
staticmethods, on any backend, with single flight and safe defaults.

What is decided at decoration time, once: the backend, the key builder (signature,
fast path), the wrapper variant (sync/async, stale-while-revalidate or not, plain function
or method). The per-call path of a hit is: build the key, one ``get``, one counter.

Plain functions get a plain closure (the leanest call Python has); functions defined in a
class body go through ``wrapt``, which binds methods, classmethods and staticmethods
correctly and gives ``obj.method.cache_invalidate(...)`` its instance.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, Literal, Protocol, TypeVar, overload

import wrapt
from typing_extensions import ParamSpec, Self

from perfkit.caching.backends.base import MISSING, Backend, BackendError, Key
from perfkit.caching.backends.memory import MemoryBackend
from perfkit.caching.keys import KeyBuilder, canonical, default_namespace
from perfkit.caching.prefetch import Prefetch, Prefetcher
from perfkit.caching.singleflight import TaskFlights, ThreadFlights
from perfkit.caching.stats import CacheStats, Counters
from perfkit.caching.warm import Args, WarmReport, awarm, warm
from perfkit.metrics import REGISTRY, Registry

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")
S = TypeVar("S")
R_co = TypeVar("R_co", covariant=True)

logger = logging.getLogger("perfkit.cache")

DISABLE_ENV = "PERFKIT_CACHE_DISABLED"
_DEFAULT_MAXSIZE = 1024
_UNSET: Any = object()


class CachedFunction(Protocol[P, R_co]):
    """What ``cached`` returns: the function, same signature, plus cache controls."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def cache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Drop the entry this call would use (same binding rules as the call)."""
        ...

    async def acache_invalidate(self, *args: P.args, **kwargs: P.kwargs) -> bool: ...

    def cache_clear(self) -> int:
        """Drop this function's entries only (never a whole shared store)."""
        ...

    async def acache_clear(self) -> int: ...

    def cache_stats(self) -> CacheStats: ...

    def cache_key(self, *args: P.args, **kwargs: P.kwargs) -> Key: ...

    @overload
    def cache_warm(  # type: ignore[overload-overlap]
        self: CachedFunction[P2, Awaitable[R2]], arg_sets: Iterable[Any], *, concurrency: int = 8
    ) -> Awaitable[WarmReport]: ...

    @overload
    def cache_warm(self, arg_sets: Iterable[Any], *, concurrency: int = 8) -> WarmReport: ...

    def cache_warm(self, arg_sets: Iterable[Any], *, concurrency: int = 8) -> Any:
        """Fill entries for these argument sets (awaitable for an async function)."""
        ...

    async def acache_warm(
        self, arg_sets: Iterable[Any], *, concurrency: int = 8
    ) -> WarmReport: ...

    # Methods: ``obj.method`` is the same thing without ``self`` (what wrapt binds);
    # classmethods bind ``cls`` from either side; anything else (staticmethods) is as is.
    @overload
    def __get__(
        self: CachedFunction[Concatenate[type[S], P2], R2], instance: Any, owner: type[S]
    ) -> CachedFunction[P2, R2]: ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(
        self: CachedFunction[Concatenate[S, P2], R2], instance: S, owner: type[Any] | None = None
    ) -> CachedFunction[P2, R2]: ...

    @overload
    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Self: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any: ...


InstanceKey = Callable[[Any], Hashable] | Literal["shared"] | None


class _Decorator(Protocol):
    """What ``cached(...)`` returns; keeps class- and staticmethods typed as such."""

    @overload
    def __call__(self, func: staticmethod[P, R], /) -> staticmethod[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, func: classmethod[S, P, R], /) -> classmethod[S, P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> CachedFunction[P, R]: ...

    def __call__(self, func: Any, /) -> Any: ...


@overload
def cached(func: staticmethod[P, R], /) -> staticmethod[P, R]: ...  # type: ignore[overload-overlap]


@overload
def cached(func: classmethod[S, P, R], /) -> classmethod[S, P, R]: ...


@overload
def cached(func: Callable[P, R], /) -> CachedFunction[P, R]: ...


@overload
def cached(
    *,
    ttl: float | None = None,
    maxsize: int | None = ...,
    backend: Backend | None = None,
    key: Callable[..., Hashable] | None = None,
    namespace: str | None = None,
    stale_ttl: float | None = None,
    ttl_jitter: float = 0.0,
    version: str | None = None,
    instance_key: InstanceKey = None,
    lock_lease: float = 30.0,
    prefetch: Prefetch | None = None,
    registry: Registry | None = ...,
) -> _Decorator: ...


def cached(
    func: Any = None,
    /,
    *,
    ttl: float | None = None,
    maxsize: int | None = _UNSET,
    backend: Backend | None = None,
    key: Callable[..., Hashable] | None = None,
    namespace: str | None = None,
    stale_ttl: float | None = None,
    ttl_jitter: float = 0.0,
    version: str | None = None,
    instance_key: InstanceKey = None,
    lock_lease: float = 30.0,
    prefetch: Prefetch | None = None,
    registry: Registry | None = _UNSET,
) -> Any:
    """Cache a function's results. See the README's caching section for every option.

    - ``ttl``: seconds an entry is fresh; ``None`` = no expiry (a shared backend still
      applies its own ``max_ttl``).
    - ``maxsize``: entries of the default private :class:`MemoryBackend` (1024).
    - ``backend``: a :class:`MemoryBackend`, ``RedisBackend``, ``TieredBackend``... Keys
      carry the function's namespace, so one backend can serve many functions.
    - ``key``: ``key(*args, **kwargs) -> value`` replaces the argument-based key.
    - ``namespace``: replaces ``module:qualname`` in keys (required for lambdas and
      local functions on a shared backend).
    - ``stale_ttl``: after ``ttl``, serve the stale value for this long while exactly one
      background refresh runs.
    - ``ttl_jitter``: shorten each entry's ttl by a random fraction up to this (0..1), so
      entries filled together do not expire together.
    - ``version``: a string added to the namespace; bump it when the function's meaning
      changes, or pass ``"auto"`` to derive it from the function's code.
    - ``instance_key``: for methods, how an instance is identified. Default: each
      instance has its own entries (never shared). A callable ``instance -> value`` gives
      a stable identity (e.g. ``lambda self: self.tenant_id``); ``"shared"`` makes all
      instances share entries.
    - ``lock_lease``: seconds a cross-process compute lock lives in a shared backend (a
      crashed holder blocks others at most this long).
    - ``prefetch``: a :class:`Prefetch` to learn which call follows which and compute
      the likely next one in the background (off by default).
    - ``registry``: the metrics registry the statistics are exported to, read at scrape time
      (default ``perfkit.REGISTRY``; ``None`` for none).
    """
    _check_ttl("ttl", ttl)
    _check_ttl("stale_ttl", stale_ttl)
    _check_ttl("lock_lease", lock_lease)
    if isinstance(ttl_jitter, bool) or not isinstance(ttl_jitter, (int, float)) or not (
        0 <= ttl_jitter < 1
    ):
        raise ValueError(f"ttl_jitter must be a number in [0, 1), got {ttl_jitter!r}")
    if stale_ttl is not None and ttl is None:
        raise ValueError("stale_ttl needs a ttl: a value without expiry is never stale")
    if key is not None and not callable(key):
        raise TypeError(f"key must be a callable returning the key value, got {key!r}")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
    if instance_key is not None and instance_key != "shared" and not callable(instance_key):
        raise TypeError(
            f"instance_key must be None, 'shared' or a callable(instance), got {instance_key!r}"
        )
    if prefetch is not None and not isinstance(prefetch, Prefetch):
        raise TypeError(f"prefetch must be a perfkit Prefetch(...) or None, got {prefetch!r}")
    if prefetch is not None and stale_ttl is not None:
        raise ValueError("prefetch and stale_ttl cannot be combined; choose one")
    if backend is not None and not isinstance(backend, Backend):
        raise TypeError(f"backend must be a perfkit cache backend, got {backend!r}")
    if backend is not None and maxsize is not _UNSET:
        raise ValueError("maxsize sizes the default memory backend; size your backend= instead")
    if backend is None:
        backend = MemoryBackend(_DEFAULT_MAXSIZE if maxsize is _UNSET else maxsize)

    options = _Options(
        ttl=ttl, backend=backend, key=key, namespace=namespace, stale_ttl=stale_ttl,
        ttl_jitter=float(ttl_jitter), version=version, instance_key=instance_key,
        lock_lease=lock_lease, prefetch=prefetch,
        registry=REGISTRY if registry is _UNSET else registry,
    )
    if func is None:
        return lambda f: _decorate(f, options)
    return _decorate(func, options)


class _Options:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    ttl: float | None
    backend: Backend
    key: Callable[..., Hashable] | None
    namespace: str | None
    stale_ttl: float | None
    ttl_jitter: float
    version: str | None
    instance_key: InstanceKey
    lock_lease: float
    prefetch: Prefetch | None
    registry: Registry | None


def _check_ttl(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds or None, got {value!r}")


def _decorate(target: Any, options: _Options) -> Any:
    descriptor: type | None = None
    func = target
    if isinstance(target, (classmethod, staticmethod)):
        descriptor = type(target)
        func = target.__func__
    if not callable(func):
        raise TypeError(f"cached() decorates functions, got {target!r}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"cached() cannot cache generator {_name(func)}: its values are produced "
            "lazily and can be consumed once; return a list instead"
        )
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        type(func).__call__  # a callable object with an async __call__
    )
    backend = options.backend
    if not is_async and not backend.supports_sync:
        raise TypeError(f"{type(backend).__name__} is async-only; {_name(func)} is a sync function")
    namespace = options.namespace
    if namespace is None:
        if not hasattr(func, "__qualname__"):
            raise TypeError(
                f"cannot name {func!r} for its cache keys (no __qualname__); pass namespace=..."
            )
        namespace = default_namespace(func)
        if not backend.is_local and "<" in namespace:
            raise ValueError(
                f"{namespace} is a lambda or local function: its name is not unique across "
                "processes; pass namespace=... to cache it in a shared backend"
            )
    if options.version is not None:
        version = _code_version(func) if options.version == "auto" else options.version
        namespace = f"{namespace}@{version}"
    if options.stale_ttl is not None:
        namespace += "~swr"  # entries are (fresh_until, value): never mix with plain ones

    core = _Core(func, namespace, options)
    core.is_async = is_async
    if options.prefetch is not None:
        core.prefetcher = Prefetcher(options.prefetch, core, is_async)
    if options.registry is not None:
        _export_stats(core, options.registry)
    disabled = os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes", "on")
    core.disabled = disabled
    if descriptor is not None or _defined_in_class(func):
        # wrapt binds methods, classmethods and staticmethods correctly
        return _method_wrapper(target, core, is_async, disabled)
    if disabled:
        wrapper = _passthrough(func, is_async)
    else:
        wrapper = _async_wrapper(func, core) if is_async else _sync_wrapper(func, core)
    _attach(wrapper, core)
    return wrapper


def _name(func: Any) -> str:
    return str(getattr(func, "__qualname__", None) or repr(func))


_EXPORTED = (
    ("perfkit_cache_hits", "Calls served from the cache", "hits"),
    ("perfkit_cache_misses", "Calls that computed their value", "misses"),
    ("perfkit_cache_joins", "Calls that waited for another caller's computation", "joins"),
    ("perfkit_cache_stale_serves", "Stale values served while refreshing", "stale_serves"),
    ("perfkit_cache_backend_errors", "Backend failures the cache absorbed", "backend_errors"),
    ("perfkit_cache_compute_seconds", "Time spent computing misses", "compute_seconds"),
)
_EXPORTED_PREFETCH = (
    ("perfkit_cache_prefetches", "Entries computed ahead by prefetch", "prefetched"),
    ("perfkit_cache_prefetch_used", "Prefetched entries a later call was served from", "used"),
)


def _export_stats(core: _Core, registry: Registry) -> None:
    """Counters read at scrape time: nothing is added to the call path. Holds the core
    weakly, so decorating throwaway functions (tests) does not keep them alive."""
    ref = weakref.ref(core)
    for name, help_text, field in _EXPORTED:
        def read(field: str = field) -> float:
            alive = ref()
            return float(getattr(alive.stats, field)) if alive is not None else 0.0

        registry.counter(name, help_text, ("function",)).labels(core.namespace).set_function(read)
    if core.prefetcher is not None:
        for name, help_text, field in _EXPORTED_PREFETCH:
            def read_prefetch(field: str = field) -> float:
                alive = ref()
                prefetcher = alive.prefetcher if alive is not None else None
                return float(getattr(prefetcher, field)) if prefetcher is not None else 0.0

            registry.counter(name, help_text, ("function",)).labels(
                core.namespace
            ).set_function(read_prefetch)


def _defined_in_class(func: Callable[..., Any]) -> bool:
    parts = getattr(func, "__qualname__", "").split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


def _code_version(func: Callable[..., Any]) -> str:
    code = getattr(inspect.unwrap(func), "__code__", None)
    if code is None:
        return "0"
    blob = repr((code.co_code, code.co_consts, code.co_names)).encode()
    return hashlib.blake2b(blob, digest_size=4).hexdigest()


# -- the engine --------------------------------------------------------------------------

_refresh_pool: ThreadPoolExecutor | None = None
_refresh_pool_lock = threading.Lock()


def _refresh_executor() -> ThreadPoolExecutor:
    global _refresh_pool
    if _refresh_pool is None:
        with _refresh_pool_lock:
            if _refresh_pool is None:
                _refresh_pool = ThreadPoolExecutor(4, thread_name_prefix="perfkit-refresh")
    return _refresh_pool


_DEGRADED = "degraded"  # lock token when the backend could not be asked: compute anyway


class _Core:
    """Everything one decorated function needs; the wrappers close over its parts."""

    def __init__(self, func: Callable[..., Any], namespace: str, options: _Options) -> None:
        self.func = func
        self.namespace = namespace
        self.backend = options.backend
        self.ttl = options.ttl
        self.stale_ttl = options.stale_ttl
        self.jitter = options.ttl_jitter
        self.lease = options.lock_lease
        self.instance_key = options.instance_key
        self.keys = KeyBuilder(func, namespace, options.key)
        self._method_keys: KeyBuilder | None = None
        self.stats = Counters()
        self.threads = ThreadFlights()
        self.tasks = TaskFlights()
        self.shared = not self.backend.is_local
        self.clock: Callable[[], float] = getattr(self.backend, "timer", time.time)
        self._refreshing: set[Hashable] = set()
        self._refreshing_lock = threading.Lock()
        self.is_async = False
        self.disabled = False
        self.prefetcher: Prefetcher | None = None

    # -- keys for methods ---------------------------------------------------------------
    def method_key(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
        if instance is None:  # staticmethod, or a plain function stored on a class
            return self.keys(args, kwargs)
        if self._method_keys is None:
            self._method_keys = KeyBuilder(
                self.func, self.namespace, self.keys.custom, skip_first=True
            )
        if self.instance_key == "shared":
            return self._method_keys(args, kwargs)
        return self._method_keys.with_owner(self._owner(instance), args, kwargs)

    def _owner(self, instance: Any) -> Hashable:
        if callable(self.instance_key):
            return canonical(self.instance_key(instance), "instance_key() result")
        if isinstance(instance, type):
            return ("cls", f"{instance.__module__}.{instance.__qualname__}")
        return ("obj", _instance_token(instance))

    # -- storing -----------------------------------------------------------------------
    def _entry(self, value: Any) -> tuple[Any, float | None]:
        """What to store and for how long (stale-while-revalidate wraps the value)."""
        ttl = self.ttl
        if ttl is not None and self.jitter:
            ttl *= 1.0 - self.jitter * random.random()
        if self.stale_ttl is None:
            return value, ttl
        assert ttl is not None
        return (self.clock() + ttl, value), ttl + self.stale_ttl

    def store(self, key: Key, value: Any) -> None:
        payload, ttl = self._entry(value)
        try:
            self.backend.set(key, payload, ttl)
        except BackendError:
            self.stats.backend_errors += 1
        except TypeError as exc:
            raise TypeError(f"cached {self.namespace}: cannot store its result: {exc}") from exc

    async def astore(self, key: Key, value: Any) -> None:
        payload, ttl = self._entry(value)
        try:
            if self.backend.is_local:
                self.backend.set(key, payload, ttl)
            else:
                await self.backend.aset(key, payload, ttl)
        except BackendError:
            self.stats.backend_errors += 1
        except TypeError as exc:
            raise TypeError(f"cached {self.namespace}: cannot store its result: {exc}") from exc

    def _unwrap(self, raw: Any) -> Any:
        return raw if raw is MISSING or self.stale_ttl is None else raw[1]

    def read_raw(self, key: Key) -> Any:
        try:
            return self.backend.get(key)
        except BackendError:
            self.stats.backend_errors += 1
            return MISSING

    async def aread_raw(self, key: Key) -> Any:
        try:
            if self.backend.is_local:
                return self.backend.get(key)
            return await self.backend.aget(key)
        except BackendError:
            self.stats.backend_errors += 1
            return MISSING

    def read(self, key: Key) -> Any:
        return self._unwrap(self.read_raw(key))

    async def aread(self, key: Key) -> Any:
        return self._unwrap(await self.aread_raw(key))

    # -- sync miss path ----------------------------------------------------------------
    def miss(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value, led = self.threads.run(key, lambda: self._lead(key, args, kwargs))
        if not led:
            self.stats.joins += 1
        return value

    def _lead(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value = self.read(key)  # filled between our read and our flight?
        if value is not MISSING:
            self.stats.hits += 1
            return value
        if not self.shared:
            return self._compute(key, args, kwargs)
        token = self._acquire(key)
        delay, deadline = 0.002, time.monotonic() + self.lease
        while token is None and time.monotonic() < deadline:
            time.sleep(delay)  # another process computes this key: wait for its value
            delay = min(delay * 2, 0.05)
            value = self.read(key)
            if value is not MISSING:
                self.stats.joins += 1
                return value
            token = self._acquire(key)
        try:
            if token not in (None, _DEGRADED):
                # Double-check under the lock: the previous holder may have stored the
                # value between our last read and our acquisition.
                value = self.read(key)
                if value is not MISSING:
                    self.stats.joins += 1
                    return value
            return self._compute(key, args, kwargs)
        finally:
            self._release(key, token)

    def _compute(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stats.misses += 1
        start = time.perf_counter()
        value = self.func(*args, **kwargs)
        self.stats.compute_seconds += time.perf_counter() - start
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError(
                f"cached {self.namespace}: a sync function returned an awaitable, which can "
                "be awaited only once; make it an async def so the result is cached"
            )
        self.store(key, value)
        return value

    def compute_quietly(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Compute and store for a prefetch: not a caller's miss, so not counted as one."""
        value = self.func(*args, **kwargs)
        self.store(key, value)
        return value

    def _acquire(self, key: Key) -> str | None:
        try:
            return self.backend.acquire_lock(key, self.lease)
        except BackendError:
            self.stats.backend_errors += 1
            return _DEGRADED

    def _release(self, key: Key, token: str | None) -> None:
        if token is None or token == _DEGRADED:
            return
        try:
            self.backend.release_lock(key, token)
        except BackendError:
            self.stats.backend_errors += 1

    # -- async miss path ---------------------------------------------------------------
    async def amiss(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value, led = await self.tasks.run(key, lambda: self._alead(key, args, kwargs))
        if not led:
            self.stats.joins += 1
        return value

    async def _alead(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value = await self.aread(key)
        if value is not MISSING:
            self.stats.hits += 1
            return value
        if not self.shared:
            return await self._acompute(key, args, kwargs)
        token = await self._aacquire(key)
        delay, deadline = 0.002, time.monotonic() + self.lease
        while token is None and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            value = await self.aread(key)
            if value is not MISSING:
                self.stats.joins += 1
                return value
            token = await self._aacquire(key)
        try:
            if token not in (None, _DEGRADED):  # double-check under the lock (see _lead)
                value = await self.aread(key)
                if value is not MISSING:
                    self.stats.joins += 1
                    return value
            return await self._acompute(key, args, kwargs)
        finally:
            await self._arelease(key, token)

    async def _acompute(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.stats.misses += 1
        start = time.perf_counter()
        value = await self.func(*args, **kwargs)
        self.stats.compute_seconds += time.perf_counter() - start
        await self.astore(key, value)
        return value

    async def acompute_quietly(
        self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        value = await self.func(*args, **kwargs)
        await self.astore(key, value)
        return value

    async def _aacquire(self, key: Key) -> str | None:
        try:
            return await self.backend.aacquire_lock(key, self.lease)
        except BackendError:
            self.stats.backend_errors += 1
            return _DEGRADED

    async def _arelease(self, key: Key, token: str | None) -> None:
        if token is None or token == _DEGRADED:
            return
        try:
            await self.backend.arelease_lock(key, token)
        except BackendError:
            self.stats.backend_errors += 1

    # -- stale-while-revalidate ----------------------------------------------------------
    def stale(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Count a stale serve and start one background refresh for ``key``."""
        self.stats.stale_serves += 1
        with self._refreshing_lock:
            if key in self._refreshing or self.threads.busy(key):
                return
            self._refreshing.add(key)
        _refresh_executor().submit(self._refresh, key, args, kwargs)

    def _refresh(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            token = self._acquire(key) if self.shared else "local"
            if token is None:
                return  # another process is refreshing this key
            try:
                self.threads.run(key, lambda: self._compute(key, args, kwargs))
            finally:
                self._release(key, token)
        except Exception:
            self.stats.refresh_errors += 1
            logger.debug("background refresh of %s failed", self.namespace, exc_info=True)
        finally:
            with self._refreshing_lock:
                self._refreshing.discard(key)

    def astale(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.stats.stale_serves += 1
        self.tasks.start(key, lambda: self._arefresh(key, args, kwargs))

    async def _arefresh(self, key: Key, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            token = await self._aacquire(key) if self.shared else "local"
            if token is None:
                return
            try:
                await self._acompute(key, args, kwargs)
            finally:
                await self._arelease(key, token)
        except Exception:
            self.stats.refresh_errors += 1
            logger.debug("background refresh of %s failed", self.namespace, exc_info=True)

    # -- controls ----------------------------------------------------------------------
    def invalidate(self, key: Key) -> bool:
        try:
            return self.backend.delete(key)
        except BackendError:
            self.stats.backend_errors += 1
            return False

    async def ainvalidate(self, key: Key) -> bool:
        try:
            return await self.backend.adelete(key)
        except BackendError:
            self.stats.backend_errors += 1
            return False

    def clear(self) -> int:
        try:
            return self.backend.clear_namespace(self.namespace)
        except BackendError:
            self.stats.backend_errors += 1
            return 0

    async def aclear(self) -> int:
        try:
            return await self.backend.aclear_namespace(self.namespace)
        except BackendError:
            self.stats.backend_errors += 1
            return 0

    def snapshot(self) -> CacheStats:
        s = self.stats
        try:
            currsize = self.backend.count_namespace(self.namespace)
        except (BackendError, TypeError):
            currsize = -1  # unknown: the backend is down or async-only
        return CacheStats(
            hits=s.hits,
            misses=s.misses,
            joins=s.joins,
            stale_serves=s.stale_serves,
            evictions=self.backend.evictions,
            backend_errors=s.backend_errors,
            refresh_errors=s.refresh_errors,
            currsize=currsize,
            mean_miss_seconds=s.compute_seconds / s.misses if s.misses else 0.0,
            **self._prefetch_figures(),
        )

    def _prefetch_figures(self) -> dict[str, int]:
        p = self.prefetcher
        if p is None:
            return {}
        return {"prefetches": p.prefetched, "prefetch_used": p.used,
                "prefetch_errors": p.errors}

    # -- warming -------------------------------------------------------------------------
    def warm(self, call: Callable[..., Any], key_of: Callable[..., Key],
             arg_sets: Iterable[Any], concurrency: int) -> Any:
        """``cache_warm``: a report for a sync function, an awaitable for an async one."""
        if self.disabled:
            report = _disabled_report(arg_sets)
            return _ready(report) if self.is_async else report
        if self.is_async:
            async def cached_already(a: Args) -> bool:
                return await self.aread_raw(key_of(*a.args, **a.kwargs)) is not MISSING

            return awarm(call, cached_already, arg_sets, concurrency)
        return warm(
            call, lambda a: self.read_raw(key_of(*a.args, **a.kwargs)) is not MISSING,
            arg_sets, concurrency,
        )

    async def awarm(self, call: Callable[..., Any], key_of: Callable[..., Key],
                    arg_sets: Iterable[Any], concurrency: int) -> WarmReport:
        if self.is_async or self.disabled:
            result = self.warm(call, key_of, arg_sets, concurrency)
            return await result if self.is_async else result  # type: ignore[no-any-return]
        return await asyncio.to_thread(self.warm, call, key_of, arg_sets, concurrency)


def _disabled_report(arg_sets: Iterable[Any]) -> WarmReport:
    report = WarmReport()
    report.requested = report.skipped = sum(1 for _ in arg_sets)
    return report


async def _ready(report: WarmReport) -> WarmReport:
    return report


_tokens: dict[int, tuple[weakref.ref[Any], str]] = {}
_tokens_lock = threading.Lock()
_token_counter = iter(range(1, 1 << 62))


def _instance_token(instance: Any) -> str:
    """A token unique to this live instance, never reused, never keeping it alive.

    Keyed by ``id`` but checked against a weak reference, so an object born at a dead
    one's address gets a new token (no false hits after id reuse).
    """
    ident = id(instance)
    entry = _tokens.get(ident)
    if entry is not None and entry[0]() is instance:
        return entry[1]
    with _tokens_lock:
        try:
            ref = weakref.ref(instance, functools.partial(_forget_token, ident))
        except TypeError:
            raise TypeError(
                f"cannot give instances of {type(instance).__qualname__} their own cache "
                "entries (not weak-referenceable); pass instance_key=... to cached()"
            ) from None
        token = f"{os.getpid()}-{next(_token_counter)}-{random.getrandbits(32):08x}"
        _tokens[ident] = (ref, token)
        return token


def _forget_token(ident: int, ref: weakref.ref[Any]) -> None:
    with _tokens_lock:
        entry = _tokens.get(ident)
        if entry is not None and entry[0] is ref:
            del _tokens[ident]


# -- wrappers (chosen once per function) ------------------------------------------------


def _sync_wrapper(func: Callable[..., Any], core: _Core) -> Callable[..., Any]:
    make_key, miss, stats = core.keys.build, core.miss, core.stats
    backend = core.backend
    first, rest = backend.probe or backend.get, backend.rest
    missing = MISSING

    if core.prefetcher is not None:
        return _prefetch_sync_wrapper(func, core, core.prefetcher)

    if core.stale_ttl is None:

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = make_key(args, kwargs)
            try:
                value = first(key)
                if value is missing and rest is not None:
                    value = rest(key)
            except BackendError:
                stats.backend_errors += 1
                value = missing
            if value is not missing:
                stats.hits += 1
                return value
            return miss(key, args, kwargs)

        return wrapper

    clock, stale = core.clock, core.stale

    @functools.wraps(func)
    def swr_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs)
        try:
            entry = first(key)
            if entry is missing and rest is not None:
                entry = rest(key)
        except BackendError:
            stats.backend_errors += 1
            entry = missing
        if entry is missing:
            return miss(key, args, kwargs)
        if entry[0] > clock():
            stats.hits += 1
        else:
            stale(key, args, kwargs)
        return entry[1]

    return swr_wrapper


def _async_wrapper(func: Callable[..., Any], core: _Core) -> Callable[..., Any]:
    make_key, amiss, stats = core.keys.build, core.amiss, core.stats
    backend = core.backend
    probe, arest, aget = backend.probe, backend.arest, backend.aget
    missing = MISSING

    if core.prefetcher is not None:
        return _prefetch_async_wrapper(func, core, core.prefetcher)

    if core.stale_ttl is None and probe is not None and arest is None:

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = make_key(args, kwargs)
            value = probe(key)  # local tier: no I/O, no await
            if value is not missing:
                stats.hits += 1
                return value
            return await amiss(key, args, kwargs)

        return wrapper

    clock, astale, swr = core.clock, core.astale, core.stale_ttl is not None

    @functools.wraps(func)
    async def general_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs)
        try:
            if probe is None:
                entry = await aget(key)
            else:
                entry = probe(key)
                if entry is missing and arest is not None:
                    entry = await arest(key)
        except BackendError:
            stats.backend_errors += 1
            entry = missing
        if entry is missing:
            return await amiss(key, args, kwargs)
        if not swr:
            stats.hits += 1
            return entry
        if entry[0] > clock():
            stats.hits += 1
        else:
            astale(key, args, kwargs)
        return entry[1]

    return general_wrapper


def _prefetch_sync_wrapper(
    func: Callable[..., Any], core: _Core, prefetcher: Prefetcher
) -> Callable[..., Any]:
    """The sync wrapper plus learning: each call is observed, the next one prefetched."""
    make_key, miss, stats, observe = core.keys.build, core.miss, core.stats, prefetcher.observe
    read, inflight = core.read_raw, prefetcher.inflight
    missing = MISSING

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs)
        value = read(key)
        if value is not missing:
            stats.hits += 1
            observe(key, args, kwargs, True)
            return value
        observe(key, args, kwargs, key in inflight)  # starts the next prefetch first
        return miss(key, args, kwargs)

    return wrapper


def _prefetch_async_wrapper(
    func: Callable[..., Any], core: _Core, prefetcher: Prefetcher
) -> Callable[..., Any]:
    make_key, amiss, stats, observe = core.keys.build, core.amiss, core.stats, prefetcher.observe
    aread, inflight = core.aread_raw, prefetcher.inflight
    missing = MISSING

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = make_key(args, kwargs)
        value = await aread(key)
        if value is not missing:
            stats.hits += 1
            observe(key, args, kwargs, True)
            return value
        observe(key, args, kwargs, key in inflight)
        return await amiss(key, args, kwargs)

    return wrapper


def _passthrough(func: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """The kill switch: call through, keep the cache controls so callers do not break."""
    if is_async:

        @functools.wraps(func)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            return await func(*args, **kwargs)

        return awrapper

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def _attach(wrapper: Any, core: _Core) -> None:
    def cache_key(*args: Any, **kwargs: Any) -> Key:
        return core.keys(args, kwargs)

    def cache_invalidate(*args: Any, **kwargs: Any) -> bool:
        return core.invalidate(core.keys(args, kwargs))

    async def acache_invalidate(*args: Any, **kwargs: Any) -> bool:
        return await core.ainvalidate(core.keys(args, kwargs))

    def cache_warm(arg_sets: Iterable[Any], *, concurrency: int = 8) -> Any:
        return core.warm(wrapper, cache_key, arg_sets, concurrency)

    async def acache_warm(arg_sets: Iterable[Any], *, concurrency: int = 8) -> WarmReport:
        return await core.awarm(wrapper, cache_key, arg_sets, concurrency)

    wrapper.cache_key = cache_key
    wrapper.cache_invalidate = cache_invalidate
    wrapper.acache_invalidate = acache_invalidate
    wrapper.cache_warm = cache_warm
    wrapper.acache_warm = acache_warm
    wrapper.cache_clear = core.clear
    wrapper.acache_clear = core.aclear
    wrapper.cache_stats = core.snapshot
    wrapper.cache_core = core


# -- methods, classmethods, staticmethods (wrapt) ---------------------------------------


class _BoundCachedMethod(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    """``obj.method`` as wrapt binds it: cache controls resolve the instance as a call does."""

    def _resolve(self, args: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
        # Mirrors wrapt's BoundFunctionWrapper.__call__, so controls and calls agree.
        if self._self_binding in ("function", "callable"):
            instance = self._self_instance
            if instance is None and args and isinstance(args[0], self._self_owner):
                return args[0], args[1:]
            return instance, args
        return getattr(self.__wrapped__, "__self__", None), args

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
        instance, rest = self._resolve(args)
        core: _Core = self._self_parent._self_core
        return core.method_key(instance, rest, kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> Key:
        return self._key(args, kwargs)

    def cache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        core: _Core = self._self_parent._self_core
        return core.invalidate(self._key(args, kwargs))

    async def acache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        core: _Core = self._self_parent._self_core
        return await core.ainvalidate(self._key(args, kwargs))

    def cache_clear(self) -> int:
        return int(self._self_parent._self_core.clear())

    async def acache_clear(self) -> int:
        return int(await self._self_parent._self_core.aclear())

    def cache_stats(self) -> CacheStats:
        return self._self_parent._self_core.snapshot()  # type: ignore[no-any-return]

    def cache_warm(self, arg_sets: Iterable[Any], *, concurrency: int = 8) -> Any:
        return self._self_parent._self_core.warm(self, self.cache_key, arg_sets, concurrency)

    async def acache_warm(self, arg_sets: Iterable[Any], *, concurrency: int = 8) -> WarmReport:
        core: _Core = self._self_parent._self_core
        return await core.awarm(self, self.cache_key, arg_sets, concurrency)


class _CachedMethod(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    __bound_function_wrapper__ = _BoundCachedMethod

    def __init__(self, wrapped: Any, wrapper: Any, core: _Core) -> None:
        super().__init__(wrapped, wrapper)
        self._self_core = core

    def cache_key(self, *args: Any, **kwargs: Any) -> Key:
        return self._self_core.method_key(None, args, kwargs)

    def cache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        core = self._self_core
        return core.invalidate(core.method_key(None, args, kwargs))

    async def acache_invalidate(self, *args: Any, **kwargs: Any) -> bool:
        core = self._self_core
        return await core.ainvalidate(core.method_key(None, args, kwargs))

    def cache_clear(self) -> int:
        return self._self_core.clear()

    async def acache_clear(self) -> int:
        return await self._self_core.aclear()

    def cache_stats(self) -> CacheStats:
        return self._self_core.snapshot()

    def cache_warm(self, arg_sets: Iterable[Any], *, concurrency: int = 8) -> Any:
        return self._self_core.warm(self, self.cache_key, arg_sets, concurrency)

    async def acache_warm(self, arg_sets: Iterable[Any], *, concurrency: int = 8) -> WarmReport:
        return await self._self_core.awarm(self, self.cache_key, arg_sets, concurrency)


def _method_wrapper(target: Any, core: _Core, is_async: bool, disabled: bool) -> Any:
    method_key, stats = core.method_key, core.stats
    if disabled:  # the kill switch: call through, keep the controls

        def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            return wrapped(*args, **kwargs)

        return _CachedMethod(target, passthrough, core)
    missing = MISSING
    swr = core.stale_ttl is not None
    clock = core.clock
    prefetcher = core.prefetcher

    if not is_async:

        def sync_method(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            key = method_key(instance, args, kwargs)
            entry = core.read_raw(key)
            if prefetcher is not None:
                served = entry is not missing or key in prefetcher.inflight
                prefetcher.observe(key, _full_args(instance, args), kwargs, served)
            if entry is missing:
                return core.miss(key, _full_args(instance, args), kwargs)
            if not swr:
                stats.hits += 1
                return entry
            if entry[0] > clock():
                stats.hits += 1
            else:
                core.stale(key, _full_args(instance, args), kwargs)
            return entry[1]

        return _CachedMethod(target, sync_method, core)

    async def async_method(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        key = method_key(instance, args, kwargs)
        entry = await core.aread_raw(key)
        if prefetcher is not None:
            served = entry is not missing or key in prefetcher.inflight
            prefetcher.observe(key, _full_args(instance, args), kwargs, served)
        if entry is missing:
            return await core.amiss(key, _full_args(instance, args), kwargs)
        if not swr:
            stats.hits += 1
            return entry
        if entry[0] > clock():
            stats.hits += 1
        else:
            core.astale(key, _full_args(instance, args), kwargs)
        return entry[1]

    return _CachedMethod(target, async_method, core)


def _full_args(instance: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Arguments for ``core.func`` (the raw function): put ``self``/``cls`` back in front."""
    if instance is None:
        return tuple(args)
    return (instance, *args)
