"""perfkit: make Python services fast and keep them fast.

The public names are listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from perfkit.circuit import CircuitBreaker, CircuitOpenError
from perfkit.metrics import REGISTRY, Registry
from perfkit.retrying import RetryBudget, retry
from perfkit.timing import timed

__all__: list[str] = [
    "REGISTRY",
    "CircuitBreaker",
    "CircuitOpenError",
    "Registry",
    "RetryBudget",
    "retry",
    "timed",
]
