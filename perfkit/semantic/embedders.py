"""Embedders: callables from a batch of strings to an ``(n, dim)`` float32 array.

The default, :class:`HashingEmbedder`, needs no model and no download: it hashes word and
character n-grams of the prompt's content words into a fixed number of dimensions. It
recognises rewordings that keep the key words (word order, filler words, contractions,
plurals, typos inside long words) and does *not* understand synonyms ("purchase" vs
"buy") or questions rephrased from scratch. For those, plug in a sentence-transformers
model (:class:`SentenceTransformerEmbedder`), loaded from a local path or cache.
"""

from __future__ import annotations

import functools
import itertools
import zlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from perfkit.semantic.text import content_words, tokens

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Anything callable on a batch of strings returning one row per string.

    An ``id`` attribute (name + version + dimension) is recommended: the cache stores it
    with every partition and refuses to mix vectors of different embedders.
    """

    def __call__(self, texts: Sequence[str]) -> Any: ...


def embedder_id(embedder: object) -> str:
    """The embedder's declared ``id``, else its qualified class/function name."""
    declared = getattr(embedder, "id", None)
    if isinstance(declared, str) and declared:
        return declared
    target = embedder if callable(embedder) and hasattr(embedder, "__qualname__") else (
        type(embedder))
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


class HashingEmbedder:
    """Signed feature hashing of word unigrams/bigrams and character n-grams.

    Deterministic across processes and Python versions (CRC32, not ``hash()``), about
    20-40 µs per short prompt, L2-normalised rows.
    """

    def __init__(
        self,
        dim: int = 512,
        *,
        char_ngrams: tuple[int, int] = (3, 5),
        word_weight: float = 1.0,
        bigram_weight: float = 0.5,
        char_weight: float = 0.35,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 8:
            raise ValueError(f"dim must be an int >= 8, got {dim!r}")
        lo, hi = char_ngrams
        if not (1 <= lo <= hi <= 8):
            raise ValueError(f"char_ngrams must be (lo, hi) with 1 <= lo <= hi <= 8, "
                             f"got {char_ngrams!r}")
        self.dim = dim
        self.char_ngrams = (lo, hi)
        self.weights = (word_weight, bigram_weight, char_weight)
        self._word_features = functools.lru_cache(maxsize=50_000)(self._word_uncached)
        self.id = (f"perfkit-hashing-v1:d{dim}:c{lo}-{hi}:"
                   f"w{word_weight:g}-{bigram_weight:g}-{char_weight:g}")

    def _hashed(self, feature: str, weight: float) -> tuple[int, float]:
        h = zlib.crc32(feature.encode())
        return h % self.dim, (weight if h & 0x80000000 else -weight)

    def _word_uncached(self, word: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Hashed unigram and character n-grams of one word (cached: words repeat)."""
        w_word, _, w_char = self.weights
        lo, hi = self.char_ngrams
        padded = f"<{word}>"
        grams = [padded[i:i + n] for n in range(lo, hi + 1) for i in range(len(padded) - n + 1)]
        share = w_char / len(grams) ** 0.5 if grams else 0.0
        pairs = [self._hashed("w:" + word, w_word)]
        pairs.extend(self._hashed("c:" + g, share) for g in grams)
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    def __call__(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        w_bigram = self.weights[1]
        word_features = self._word_features
        for row, text in enumerate(texts):
            words = content_words(tokens(text))
            slots: list[int] = []
            weights: list[float] = []
            for w in words:
                s, v = word_features(w)
                slots.extend(s)
                weights.extend(v)
            for a, b in itertools.pairwise(words):
                slot, weight = self._hashed("b:" + a + " " + b, w_bigram)
                slots.append(slot)
                weights.append(weight)
            if slots:
                out[row] = np.bincount(slots, weights, minlength=self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


class SentenceTransformerEmbedder:
    """A sentence-transformers model as an embedder (optional; never downloads by itself).

    ``model`` is a local path, or a model name already in the local cache: loading runs
    with ``local_files_only=True`` so a missing model is an error, not a download.
    """

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32) -> None:
        try:
            from sentence_transformers import (  # type: ignore[import-not-found,unused-ignore]
                SentenceTransformer,
            )
        except ImportError as exc:  # pragma: no cover - optional dependency
            raise ImportError(
                "SentenceTransformerEmbedder needs sentence-transformers: "
                "pip install sentence-transformers (and provide the model files locally)"
            ) from exc
        self._model = SentenceTransformer(model, device=device, local_files_only=True)
        self.batch_size = batch_size
        self.dim = int(self._model.get_sentence_embedding_dimension() or 0)
        self.id = f"sentence-transformers:{model}:d{self.dim}"

    def __call__(self, texts: Sequence[str]) -> Vectors:  # pragma: no cover - optional
        vectors = self._model.encode(list(texts), batch_size=self.batch_size,
                                     normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)
