"""Semantic (similarity-based) LLM response cache with hard context partitions.

Needs numpy: ``pip install 'perfkit[semantic]'``.
"""

try:
    import numpy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("perfkit.semantic needs numpy: pip install 'perfkit[semantic]'") from exc

from perfkit.semantic.cache import DEFAULT_THRESHOLD, SemanticCache, SemanticHit, partition_key
from perfkit.semantic.embedders import (
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    embedder_id,
)
from perfkit.semantic.evaluation import evaluate, load_pairs
from perfkit.semantic.text import guard_conflict, normalize

__all__ = [
    "DEFAULT_THRESHOLD",
    "Embedder",
    "HashingEmbedder",
    "SemanticCache",
    "SemanticHit",
    "SentenceTransformerEmbedder",
    "embedder_id",
    "evaluate",
    "guard_conflict",
    "load_pairs",
    "normalize",
    "partition_key",
]
