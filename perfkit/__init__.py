"""perfkit: make Python services fast and keep them fast.

The public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

from perfkit.caching import (
    AdaptiveMemoryBackend,
    AiocacheBackend,
    Backend,
    BackendError,
    CacheStats,
    DiskBackend,
    MemoryBackend,
    Prefetch,
    RedisBackend,
    TieredBackend,
    cached,
)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveMemoryBackend",
    "AiocacheBackend",
    "Backend",
    "BackendError",
    "CacheStats",
    "DiskBackend",
    "MemoryBackend",
    "Prefetch",
    "RedisBackend",
    "TieredBackend",
    "cached",
]
