"""Caching: keys, backends and the ``cached`` decorator."""

from perfkit.caching.backends.base import MISSING, Backend, BackendError
from perfkit.caching.backends.memory import MemoryBackend
from perfkit.caching.decorator import CachedFunction, cached
from perfkit.caching.stats import CacheStats

__all__ = [
    "MISSING",
    "Backend",
    "BackendError",
    "CacheStats",
    "CachedFunction",
    "MemoryBackend",
    "cached",
]
