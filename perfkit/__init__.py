"""perfkit: make Python services fast and keep them fast.

The public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

from perfkit.caching import (
    AiocacheBackend,
    Backend,
    BackendError,
    CacheStats,
    MemoryBackend,
    RedisBackend,
    TieredBackend,
    cached,
)

__version__ = "0.1.0"

from perfkit.metrics import REGISTRY, Registry

__all__ = [
    "REGISTRY",
    "AiocacheBackend",
    "Backend",
    "BackendError",
    "CacheStats",
    "MemoryBackend",
    "RedisBackend",
    "Registry",
    "TieredBackend",
    "cached",
]
