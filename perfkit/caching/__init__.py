"""Caching: keys, backends and the ``cached`` decorator."""

from perfkit.caching.backends.adaptive import AdaptiveMemoryBackend
from perfkit.caching.backends.aiocache import AiocacheBackend
from perfkit.caching.backends.base import MISSING, Backend, BackendError
from perfkit.caching.backends.disk import DiskBackend
from perfkit.caching.backends.memory import MemoryBackend
from perfkit.caching.backends.redis import RedisBackend
from perfkit.caching.backends.tiered import TieredBackend
from perfkit.caching.decorator import CachedFunction, cached
from perfkit.caching.prefetch import Prefetch
from perfkit.caching.stats import CacheStats
from perfkit.caching.warm import Args, WarmFailure, WarmReport

__all__ = [
    "MISSING",
    "AdaptiveMemoryBackend",
    "AiocacheBackend",
    "Args",
    "Backend",
    "BackendError",
    "CacheStats",
    "CachedFunction",
    "DiskBackend",
    "MemoryBackend",
    "Prefetch",
    "RedisBackend",
    "TieredBackend",
    "WarmFailure",
    "WarmReport",
    "cached",
]
