"""perfkit: make Python services fast and keep them fast.

The public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from perfkit.conversation import ConversationMemory
from perfkit.metrics import REGISTRY, Registry
from perfkit.retrying import RetryBudget, retry
from perfkit.timing import timed

if TYPE_CHECKING:
    from perfkit.semantic import SemanticCache

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
    "ConversationMemory",
    "DiskBackend",
    "MemoryBackend",
    "Prefetch",
    "RedisBackend",
    "Registry",
    "RetryBudget",
    "SemanticCache",
    "TieredBackend",
    "cached",
    "retry",
    "timed",
]


def __getattr__(name: str) -> Any:
    # SemanticCache needs numpy (extra "semantic"): imported on first use only.
    if name == "SemanticCache":
        from perfkit.semantic import SemanticCache

        return SemanticCache
    raise AttributeError(f"module 'perfkit' has no attribute {name!r}")
