"""Caching: keys, backends and the ``cached`` decorator."""

from perfkit.caching.backends.aiocache import AiocacheBackend
from perfkit.caching.backends.base import MISSING, Backend, BackendError
from perfkit.caching.backends.memory import MemoryBackend
from perfkit.caching.backends.redis import RedisBackend
from perfkit.caching.backends.tiered import TieredBackend
from perfkit.caching.decorator import CachedFunction, cached
from perfkit.caching.stats import CacheStats

__all__ = [
    "MISSING",
    "AiocacheBackend",
    "Backend",
    "BackendError",
    "CacheStats",
    "CachedFunction",
    "MemoryBackend",
    "RedisBackend",
    "TieredBackend",
    "cached",
]
