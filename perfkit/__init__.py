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
from perfkit.circuit import CircuitBreaker, CircuitOpenError
from perfkit.metrics import REGISTRY, Registry
from perfkit.retrying import RetryBudget, retry
from perfkit.timing import timed

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "AdaptiveMemoryBackend",
    "AiocacheBackend",
    "Backend",
    "BackendError",
    "CacheStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "DiskBackend",
    "MemoryBackend",
    "Prefetch",
    "RedisBackend",
    "Registry",
    "RetryBudget",
    "TieredBackend",
    "cached",
    "retry",
    "timed",
]
