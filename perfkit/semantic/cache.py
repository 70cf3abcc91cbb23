"""``SemanticCache``: an LLM response cache that recognises a question asked in other
words, and never answers one context with another context's entry.

Safety rules, by construction:

* **Hard partitions.** ``context`` (user or tenant, model, system prompt, temperature,
  conversation, tools...) is a required argument of every lookup and write, and each
  distinct context is a separate index. A lookup cannot see another partition's entries;
  there is no filter to forget.
* **Exact first, then similar, then guarded.** A lookup tries the normalised prompt text
  (case, whitespace, punctuation and contractions ignored), then the nearest neighbour by
  cosine similarity (``threshold`` is a cosine *similarity* in [0, 1], higher = stricter),
  then a lexical guard (numbers, negations, antonyms, names must agree).
* **One embedder per partition.** Each partition records the embedder id and dimension it
  was built with and refuses vectors from another.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np
import numpy.typing as npt

from perfkit.metrics import REGISTRY, Registry
from perfkit.semantic.embedders import Embedder, HashingEmbedder, embedder_id
from perfkit.semantic.index import PartitionIndex
from perfkit.semantic.shared import RedisSync, decode_vector, encode_vector
from perfkit.semantic.text import guard_conflict, normalize

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_THRESHOLD = 0.75
"""Cosine similarity. With the default embedder and guard, on the held-out pairs (never
tuned on): precision 0.97, recall 0.80; on the development pairs the guard was written
against: 1.0 / 0.92 (``python -m perfkit.semantic``)."""

_CANDIDATES = 4  # how many neighbours above the threshold the guard may look at
_SIMILARITY_SAMPLES = 1024  # bounded reservoir of hit similarities for stats()

Guard = Callable[[str, str], "str | None"]
Price = float | Callable[[Any], float]
TokenCount = int | Callable[[Any], int]


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A served entry: the response, how similar its prompt was and whether it matched
    exactly (after normalisation)."""

    response: Any
    similarity: float
    exact: bool
    prompt: str


@dataclass(slots=True)
class _Entry:
    prompt: str
    normalized: str
    response: Any
    expires_at: float | None
    tags: frozenset[str]
    tokens: int
    cost: float
    partition: str
    slot: int = -1


@dataclass(slots=True)
class _Stats:
    hits: int = 0
    exact_hits: int = 0
    misses: int = 0
    guard_rejections: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0
    tokens_saved: int = 0
    cost_saved: float = 0.0
    similarities: list[float] = field(default_factory=list)
    similarity_count: int = 0
    shared_skipped: int = 0
    bypassed: int = 0


def partition_key(context: object) -> str:
    """Canonical, type-preserving text for a context (str, number, bool, None, and
    tuples/lists/mappings of those). ``None`` alone is refused: context is required."""
    if context is None:
        raise ValueError(
            "context is required: pass what makes an answer valid only for some callers "
            "(user/tenant, model, system prompt, temperature...), e.g. "
            "context={'tenant': t, 'model': m}"
        )

    def canon(value: object) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return {"f": repr(value)}
        if isinstance(value, Mapping):  # keys keep their types too: {1: x} != {"1": x}
            items = [(_dump(canon(k)), canon(v)) for k, v in value.items()]
            return {"m": sorted(items, key=lambda item: item[0])}
        if isinstance(value, list | tuple):
            return {"l": [canon(v) for v in value]}
        raise ValueError(
            f"context values must be str, int, float, bool, None, or tuples/lists/mappings "
            f"of those; got {type(value).__name__}"
        )

    return _dump(canon(context))


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _positive(name: str, value: object, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"{name} must be a finite number > 0"
                         f"{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return value


class SemanticCache:
    """Similarity-based LLM response cache with hard context partitions.

    * ``threshold``: minimum cosine similarity for a non-exact hit (0 < t <= 1).
    * ``embedder``: callable from a batch of strings to an ``(n, dim)`` array
      (default: :class:`~perfkit.semantic.embedders.HashingEmbedder`, no download).
    * ``max_entries``: bound over all partitions (least recently used entry evicted).
    * ``ttl``: seconds an entry may be served (``None``: until evicted).
    * ``guard``: ``True`` (the built-in lexical guard), ``False``, or a callable
      ``(cached_prompt, prompt) -> reason | None``.
    * ``price`` / ``tokens``: what one call costs (number or function of the response),
      credited to ``stats()`` on each hit; ``set(..., cost=, tokens=)`` overrides.
    * ``compress``: search in ``compress`` dimensions (an SVD basis fitted once
      ``compress_after`` vectors of one embedder are stored) and re-score candidates on
      float16 full vectors; faster lookups on large caches, same hits up to float16
      rounding (see :mod:`perfkit.semantic.index`).
    * ``shared``: a Redis URL or :class:`~perfkit.semantic.shared.RedisSync` so several
      workers share entries (responses must then be JSON-serialisable); while Redis is
      down each worker serves and fills its local cache alone.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        embedder: Embedder | None = None,
        *,
        max_entries: int = 10_000,
        ttl: float | None = 86_400.0,
        guard: bool | Guard = True,
        price: Price | None = None,
        tokens: TokenCount | None = None,
        compress: int | None = None,
        compress_after: int = 2048,
        shared: RedisSync | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if compress is not None and (
            isinstance(compress, bool) or not isinstance(compress, int) or compress < 2
        ):
            raise ValueError(f"compress must be an int >= 2 (dimensions) or None, got {compress!r}")
        if isinstance(compress_after, bool) or not isinstance(compress_after, int) or (
            compress_after < 16
        ):
            raise ValueError(f"compress_after must be an int >= 16, got {compress_after!r}")
        self.compress = compress
        self.compress_after = compress_after
        self._bases: dict[tuple[str, int], npt.NDArray[np.float32]] = {}
        self._stored_by_embedder: dict[tuple[str, int], int] = {}
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not (
            0 < threshold <= 1
        ):
            raise ValueError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
        if embedder is not None and not callable(embedder):
            raise ValueError("embedder must be a callable from a list of str to vectors")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.threshold = float(threshold)
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.max_entries = max_entries
        self.ttl = _positive("ttl", ttl, allow_none=True)
        if guard is True:
            self.guard: Guard | None = guard_conflict
        elif guard is False:
            self.guard = None
        elif callable(guard):
            self.guard = guard
        else:
            raise ValueError("guard must be True, False or a callable (cached, prompt) -> reason")
        for name, value in (("price", price), ("tokens", tokens)):
            if value is not None and not callable(value) and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ValueError(f"{name} must be a number >= 0, a callable, or None")
        self.price = price
        self.tokens = tokens
        self._clock = clock
        self._lock = threading.RLock()
        self._pull_lock = threading.Lock()
        self._partitions: dict[str, PartitionIndex] = {}
        self._lru: OrderedDict[int, _Entry] = OrderedDict()  # id(entry) -> entry
        self._tags: dict[str, set[int]] = {}
        self._stats = _Stats()
        if isinstance(shared, str):
            shared = RedisSync(shared)
        if shared is not None and not isinstance(shared, RedisSync):
            raise ValueError("shared must be a Redis URL, a RedisSync or None")
        self.shared: RedisSync | None = shared

    # -- embedding ----------------------------------------------------------------------
    def _embed(self, prompt: str) -> tuple[str, npt.NDArray[np.float32]]:
        """Embed one prompt: the embedder id, and a 1-D normalised float32 vector."""
        emb_id = embedder_id(self.embedder)
        raw = np.asarray(self.embedder([prompt]), dtype=np.float32)
        if raw.ndim != 2 or raw.shape[0] != 1 or raw.shape[1] < 1:
            raise ValueError(f"embedder must return shape (1, dim) for one prompt, got "
                             f"{raw.shape}")
        vector = raw[0]
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm):
            raise ValueError("embedder returned a non-finite vector")
        return emb_id, (vector / norm if norm > 0 else vector)

    async def _aembed(self, prompt: str) -> tuple[str, npt.NDArray[np.float32]]:
        """Embedding off the event loop: in a worker thread (the embedder may be slow)."""
        return await asyncio.to_thread(self._embed, prompt)

    @staticmethod
    def _check_prompt(prompt: object) -> str:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        return prompt

    def _partition(self, key: str, emb_id: str, dim: int, create: bool) -> PartitionIndex | None:
        index = self._partitions.get(key)
        if index is None:
            if not create:
                return None
            index = self._partitions[key] = PartitionIndex(
                emb_id, dim, self._bases.get((emb_id, dim)))
        elif index.embedder_id != emb_id or index.dim != dim:
            raise ValueError(
                f"this partition holds vectors of embedder {index.embedder_id!r} "
                f"(dim {index.dim}); refusing to mix with {emb_id!r} (dim {dim}). "
                "Use a new SemanticCache (or clear()) after changing the embedder."
            )
        return index

    # -- lookup -------------------------------------------------------------------------
    def _exact(self, key: str, prompt: str) -> SemanticHit | None:
        with self._lock:
            index = self._partitions.get(key)
            if index is None:
                return None
            slot = index.exact.get(normalize(prompt))
            if slot is None:
                return None
            entry = index.entries[slot]
            if self._expired(entry):
                self._drop(entry, expired=True)
                return None
            return self._serve(entry, 1.0, exact=True)

    def _nearest(self, key: str, prompt: str, emb_id: str,
                 vector: npt.NDArray[np.float32]) -> SemanticHit | None:
        with self._lock:
            index = self._partition(key, emb_id, len(vector), create=False)
            if index is None:
                return None
            for slot, similarity in index.candidates(vector, self.threshold, _CANDIDATES):
                entry = index.entries[slot]
                if entry is None:
                    continue
                if self._expired(entry):
                    self._drop(entry, expired=True)
                    continue
                if self.guard is not None and self.guard(entry.prompt, prompt) is not None:
                    self._stats.guard_rejections += 1
                    continue
                return self._serve(entry, similarity, exact=False)
            return None

    def _expired(self, entry: _Entry) -> bool:
        return entry.expires_at is not None and self._clock() >= entry.expires_at

    def _serve(self, entry: _Entry, similarity: float, *, exact: bool) -> SemanticHit:
        s = self._stats
        s.hits += 1
        s.exact_hits += exact
        s.tokens_saved += entry.tokens
        s.cost_saved += entry.cost
        s.similarity_count += 1
        if len(s.similarities) < _SIMILARITY_SAMPLES:
            s.similarities.append(similarity)
        else:  # a rolling window over the latest hits
            s.similarities[s.similarity_count % _SIMILARITY_SAMPLES] = similarity
        self._lru.move_to_end(id(entry))  # only the entry actually served is refreshed
        return SemanticHit(entry.response, similarity, exact, entry.prompt)

    def get(self, prompt: str, *, context: object) -> SemanticHit | None:
        """The cached answer for ``prompt`` within ``context``, or ``None``."""
        prompt = self._check_prompt(prompt)
        key = partition_key(context)
        if self.shared is not None and self.shared.due():
            self._pull()
        hit = self._exact(key, prompt)
        if hit is None and key in self._partitions:
            hit = self._nearest(key, prompt, *self._embed(prompt))
        if hit is None:
            self._stats.misses += 1
        return hit

    async def aget(self, prompt: str, *, context: object) -> SemanticHit | None:
        """``get`` for async code; the embedder runs in a worker thread."""
        prompt = self._check_prompt(prompt)
        key = partition_key(context)
        if self.shared is not None and self.shared.due():
            await asyncio.to_thread(self._pull)  # network and applying, off the loop
        hit = self._exact(key, prompt)
        if hit is None and key in self._partitions:
            hit = self._nearest(key, prompt, *(await self._aembed(prompt)))
        if hit is None:
            self._stats.misses += 1
        return hit

    # -- writes -------------------------------------------------------------------------
    def _entry(self, prompt: str, response: Any, key: str, ttl: float | None,
               tags: Iterable[str], tokens: int | None, cost: float | None) -> _Entry:
        ttl = self.ttl if ttl is None else _positive("ttl", ttl)
        if self.shared is not None:
            try:
                json.dumps(response)
            except (TypeError, ValueError) as exc:
                raise ValueError("response must be JSON-serialisable when the cache is shared "
                                 f"through Redis: {exc}") from None
        tag_set = frozenset(tags)
        if not all(isinstance(t, str) for t in tag_set):
            raise ValueError("tags must be strings")
        if tokens is None:
            tokens = (self.tokens(response) if callable(self.tokens) else self.tokens) or 0
        if cost is None:
            cost = (self.price(response) if callable(self.price) else self.price) or 0.0
        return _Entry(prompt=prompt, normalized=normalize(prompt), response=response,
                      expires_at=None if ttl is None else self._clock() + ttl,
                      tags=tag_set, tokens=int(tokens), cost=float(cost), partition=key)

    def _insert(self, entry: _Entry, emb_id: str, vector: npt.NDArray[np.float32]) -> None:
        with self._lock:
            index = self._partition(entry.partition, emb_id, len(vector), create=True)
            assert index is not None
            old = index.exact.get(entry.normalized)
            if old is not None:
                self._drop(index.entries[old])
                index = self._partition(entry.partition, emb_id, len(vector), create=True)
                assert index is not None
            while len(self._lru) >= self.max_entries:
                oldest = next(iter(self._lru.values()))  # least recently served
                if self._expired(oldest):
                    self._drop(oldest, expired=True)
                else:
                    self._drop(oldest)
                    self._stats.evictions += 1
            entry.slot = index.add(vector, entry.normalized, entry)
            self._lru[id(entry)] = entry
            for tag in entry.tags:
                self._tags.setdefault(tag, set()).add(id(entry))
            if self.compress is not None and index.basis is None:
                kind = (emb_id, len(vector))
                stored = self._stored_by_embedder[kind] = self._stored_by_embedder.get(kind, 0) + 1
                if stored >= self.compress_after and self.compress < len(vector):
                    self._fit_compression(kind, self.compress)

    def _fit_compression(self, kind: tuple[str, int], dims: int) -> None:
        """Fit the projection basis on the stored vectors and switch the partitions."""
        indexes = [i for i in self._partitions.values() if (i.embedder_id, i.dim) == kind]
        rows = [i.vectors[: i.size][[e is not None for e in i.entries]] for i in indexes]
        sample = np.concatenate(rows)[:8192]
        _, _, vt = np.linalg.svd(sample, full_matrices=False)
        basis = np.ascontiguousarray(vt[:dims].T, dtype=np.float32)
        self._bases[kind] = basis
        for index in indexes:
            index.compress(basis)

    def _drop(self, entry: _Entry, *, expired: bool = False) -> None:
        index = self._partitions.get(entry.partition)
        if index is not None and index.entries[entry.slot] is entry:
            index.remove(entry.slot)
            if len(index) == 0:
                del self._partitions[entry.partition]
            elif index.compact():
                for slot, live in enumerate(index.entries):
                    live.slot = slot
        self._lru.pop(id(entry), None)
        for tag in entry.tags:
            ids = self._tags.get(tag)
            if ids is not None:
                ids.discard(id(entry))
                if not ids:
                    del self._tags[tag]
        if expired:
            self._stats.expirations += 1

    def set(self, prompt: str, response: Any, *, context: object, ttl: float | None = None,
            tags: Iterable[str] = (), tokens: int | None = None,
            cost: float | None = None) -> None:
        """Store ``response`` for ``prompt`` in ``context``'s partition.

        ``tags`` (e.g. ``"doc:42@v3"``) let :meth:`invalidate_tags` drop answers grounded
        on data that changed; ``tokens``/``cost`` override the cache's ``tokens``/``price``.
        """
        prompt = self._check_prompt(prompt)
        entry = self._entry(prompt, response, partition_key(context), ttl, tags, tokens, cost)
        emb_id, vector = self._embed(prompt)
        self._insert(entry, emb_id, vector)
        if self.shared is not None:
            self.shared.publish(self._set_op(entry, emb_id, vector))

    async def aset(self, prompt: str, response: Any, *, context: object,
                   ttl: float | None = None, tags: Iterable[str] = (),
                   tokens: int | None = None, cost: float | None = None) -> None:
        prompt = self._check_prompt(prompt)
        entry = self._entry(prompt, response, partition_key(context), ttl, tags, tokens, cost)
        emb_id, vector = await self._aembed(prompt)
        self._insert(entry, emb_id, vector)
        if self.shared is not None:
            await asyncio.to_thread(self.shared.publish, self._set_op(entry, emb_id, vector))

    def set_many(self, items: Iterable[tuple[str, Any]], *, context: object,
                 ttl: float | None = None, tags: Iterable[str] = ()) -> int:
        """Store many ``(prompt, response)`` pairs in one partition with one embedder call
        (warming a cache from logs); returns how many were stored."""
        pairs = [(self._check_prompt(p), r) for p, r in items]
        if not pairs:
            return 0
        key = partition_key(context)
        tag_list = tuple(tags)
        entries = [self._entry(p, r, key, ttl, tag_list, None, None) for p, r in pairs]
        emb_id = embedder_id(self.embedder)
        raw = np.asarray(self.embedder([p for p, _ in pairs]), dtype=np.float32)
        if raw.ndim != 2 or raw.shape[0] != len(pairs):
            raise ValueError(f"embedder must return shape ({len(pairs)}, dim), got {raw.shape}")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        np.divide(raw, norms, out=raw, where=norms > 0)
        for entry, vector in zip(entries, raw):
            self._insert(entry, emb_id, vector)
            if self.shared is not None:
                self.shared.publish(self._set_op(entry, emb_id, vector))
        return len(entries)

    # -- sharing through Redis ----------------------------------------------------------
    def _set_op(self, entry: _Entry, emb_id: str,
                vector: npt.NDArray[np.float32]) -> dict[str, Any]:
        left = None if entry.expires_at is None else entry.expires_at - self._clock()
        return {"op": "set", "p": entry.partition, "prompt": entry.prompt,
                "response": entry.response, "exp": None if left is None else time.time() + left,
                "tags": sorted(entry.tags), "tokens": entry.tokens, "cost": entry.cost,
                "emb": emb_id, "vec": encode_vector(vector)}

    def _pull(self) -> None:
        """Read and apply what other workers wrote. One puller at a time, from the poll to
        the last operation applied, so two polls are never applied out of order; other
        callers do not wait for it (they serve from the local copy). No cache lock is held
        across the network round trip."""
        assert self.shared is not None
        if not self._pull_lock.acquire(blocking=False):
            return
        try:
            self._apply(self.shared.poll())
        finally:
            self._pull_lock.release()

    def _apply(self, ops: list[dict[str, Any]]) -> None:
        """Apply other workers' operations to the local indexes (without re-publishing)."""
        for op in ops:
            kind = op.get("op")
            if kind == "reset":  # our place in the shared log is gone: start again
                self._clear(None)
            elif kind == "set":
                self._apply_set(op)
            elif kind == "del":
                self._delete(op["p"], op["n"])
            elif kind == "tags":
                self._invalidate(op["tags"])
            elif kind == "clear":
                self._clear(op["p"])

    def _apply_set(self, op: dict[str, Any]) -> None:
        vector = decode_vector(op["vec"])
        if op["emb"] != embedder_id(self.embedder):
            self._stats.shared_skipped += 1  # another embedder's vectors: never mixed
            return
        expires_at = None
        if op["exp"] is not None:
            left = op["exp"] - time.time()
            if left <= 0:
                return
            expires_at = self._clock() + left
        prompt = op["prompt"]
        entry = _Entry(prompt=prompt, normalized=normalize(prompt), response=op["response"],
                       expires_at=expires_at, tags=frozenset(op["tags"]),
                       tokens=int(op["tokens"]), cost=float(op["cost"]), partition=op["p"])
        try:
            self._insert(entry, op["emb"], vector)
        except ValueError:
            self._stats.shared_skipped += 1

    # -- invalidation -------------------------------------------------------------------
    def _publish(self, op: dict[str, Any] | None) -> None:
        if op is not None and self.shared is not None:
            self.shared.publish(op)

    async def _apublish(self, op: dict[str, Any] | None) -> None:
        if op is not None and self.shared is not None:
            await asyncio.to_thread(self.shared.publish, op)

    @staticmethod
    def _tags_op(tags: tuple[str, ...]) -> dict[str, Any]:
        if not all(isinstance(t, str) for t in tags):
            raise ValueError("tags must be strings")
        return {"op": "tags", "tags": list(tags)}

    def _delete_op(self, prompt: str, context: object) -> dict[str, Any]:
        return {"op": "del", "p": partition_key(context),
                "n": normalize(self._check_prompt(prompt))}

    @staticmethod
    def _clear_op(context: object) -> dict[str, Any]:
        return {"op": "clear", "p": None if context is None else partition_key(context)}

    def invalidate_tags(self, *tags: str) -> int:
        """Drop every entry carrying any of ``tags`` (here and, when shared, in every
        worker); returns how many were dropped here."""
        op = self._tags_op(tags)
        self._publish(op)
        return self._invalidate(tags)

    async def ainvalidate_tags(self, *tags: str) -> int:
        op = self._tags_op(tags)
        await self._apublish(op)
        return self._invalidate(tags)

    def _invalidate(self, tags: Iterable[str]) -> int:
        with self._lock:
            ids = set().union(*(self._tags.get(t, set()) for t in tags))
            for entry_id in ids:
                entry = self._lru.get(entry_id)
                if entry is not None:
                    self._drop(entry)
            self._stats.invalidations += len(ids)
        return len(ids)

    def delete(self, prompt: str, *, context: object) -> bool:
        """Drop the entry stored for exactly this (normalised) prompt in ``context``."""
        op = self._delete_op(prompt, context)
        self._publish(op)
        return self._delete(op["p"], op["n"])

    async def adelete(self, prompt: str, *, context: object) -> bool:
        op = self._delete_op(prompt, context)
        await self._apublish(op)
        return self._delete(op["p"], op["n"])

    def _delete(self, key: str, normalized: str) -> bool:
        with self._lock:
            index = self._partitions.get(key)
            slot = None if index is None else index.exact.get(normalized)
            if index is None or slot is None:
                return False
            self._drop(index.entries[slot])
            return True

    def clear(self, *, context: object = None) -> None:
        """Drop one partition (``context=...``) or, without it, everything."""
        op = self._clear_op(context)
        self._publish(op)
        self._clear(op["p"])

    async def aclear(self, *, context: object = None) -> None:
        op = self._clear_op(context)
        await self._apublish(op)
        self._clear(op["p"])

    def _clear(self, key: str | None) -> None:
        with self._lock:
            if key is None:
                self._partitions.clear()
                self._lru.clear()
                self._tags.clear()
                return
            index = self._partitions.get(key)
            if index is not None:
                for entry in [e for e in index.entries if e is not None]:
                    self._drop(entry)

    def __len__(self) -> int:
        return len(self._lru)

    # -- stats --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Hits, misses, hit rate, similarity of hits (min/p10/p50), savings, sizes."""
        with self._lock:
            s = self._stats
            sims = np.array(s.similarities, dtype=np.float64)
            lookups = s.hits + s.misses
            return {
                "hits": s.hits,
                "exact_hits": s.exact_hits,
                "semantic_hits": s.hits - s.exact_hits,
                "misses": s.misses,
                "hit_rate": s.hits / lookups if lookups else 0.0,
                "guard_rejections": s.guard_rejections,
                "similarity": {
                    "min": float(sims.min()) if sims.size else None,
                    "p10": float(np.quantile(sims, 0.10)) if sims.size else None,
                    "p50": float(np.quantile(sims, 0.50)) if sims.size else None,
                },
                "tokens_saved": s.tokens_saved,
                "cost_saved": s.cost_saved,
                "entries": len(self._lru),
                "partitions": len(self._partitions),
                "vector_bytes": sum(i.nbytes for i in self._partitions.values()),
                "compressed": bool(self._bases),
                "evictions": s.evictions,
                "expirations": s.expirations,
                "invalidations": s.invalidations,
                "shared_skipped": s.shared_skipped,
                "bypassed": s.bypassed,
                "shared_errors": self.shared.errors if self.shared is not None else 0,
            }

    def export_metrics(self, name: str, registry: Registry | None = None) -> None:
        """Expose this cache's counters in a metrics registry (default
        ``perfkit.REGISTRY``) under the label ``cache=name``, read at scrape time."""
        reg = registry if registry is not None else REGISTRY
        s = self._stats
        counters: dict[str, tuple[str, Callable[[], float]]] = {
            "perfkit_semantic_hits": ("Semantic cache hits (exact and similar)", lambda: s.hits),
            "perfkit_semantic_misses": ("Semantic cache misses", lambda: s.misses),
            "perfkit_semantic_guard_rejections": (
                "Similar entries refused by the lexical guard", lambda: s.guard_rejections),
            "perfkit_semantic_evictions": ("Entries evicted by max_entries", lambda: s.evictions),
            "perfkit_semantic_tokens_saved": ("Tokens not spent thanks to hits",
                                              lambda: s.tokens_saved),
            "perfkit_semantic_cost_saved": ("Money not spent thanks to hits",
                                            lambda: s.cost_saved),
        }
        for metric, (help_text, read) in counters.items():
            reg.counter(metric, help_text, labels=("cache",)).labels(name).set_function(read)
        reg.gauge("perfkit_semantic_entries", "Entries held", labels=("cache",)).labels(
            name).set_function(lambda: float(len(self._lru)))

    # -- decorator ----------------------------------------------------------------------
    def cached(
        self,
        *,
        prompt: str | Callable[..., str],
        context: Sequence[str] | Callable[..., object],
        ttl: float | None = None,
        tags: Iterable[str] = (),
        temperature: str | None = "temperature",
        cache_sampled: bool = False,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Cache a function that calls an LLM (sync or async).

        ``prompt``: the name of the parameter holding the prompt, or a function of the
        call's arguments returning it. ``context``: parameter names whose values form the
        partition (e.g. ``("user_id", "model", "temperature")``), or a function of the
        arguments. Both are required: there is no implicit shared partition. Exceptions
        are never cached.

        Sampled calls: if the function has a parameter named ``temperature`` (another name
        with ``temperature="..."``, ``None`` to switch this off) and a call passes a number
        > 0, the caller wants variety, so the call bypasses the cache (neither read nor
        written; counted in ``stats()["bypassed"]``). With ``cache_sampled=True`` such calls
        are cached instead, in a partition of their own per temperature. ``0`` and ``None``
        count as deterministic.
        """
        tag_list = tuple(tags)
        if not isinstance(cache_sampled, bool):
            raise ValueError(f"cache_sampled must be a bool, got {cache_sampled!r}")
        if temperature is not None and not isinstance(temperature, str):
            raise ValueError(f"temperature must be a parameter name or None, "
                             f"got {temperature!r}")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
                raise TypeError("SemanticCache.cached cannot cache generators")
            signature = inspect.signature(fn)
            names = set(signature.parameters)
            if isinstance(prompt, str) and prompt not in names:
                raise ValueError(f"prompt={prompt!r} is not a parameter of {fn.__qualname__}")
            if not callable(context):
                missing = [c for c in context if c not in names]
                if isinstance(context, str) or missing:
                    raise ValueError(f"context must be parameter names of {fn.__qualname__} "
                                     f"(a tuple) or a callable; unknown: {missing or context}")

            sampling = temperature if temperature in names else None

            def key_of(args: Any, kwargs: Any) -> tuple[str, object] | None:
                """(prompt, context) of a call, or ``None`` for a call that bypasses."""
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                a = bound.arguments
                text = prompt(*args, **kwargs) if callable(prompt) else a[prompt]
                ctx = (context(*args, **kwargs) if callable(context)
                       else {name: a[name] for name in context})
                if sampling is not None:
                    t = a[sampling]
                    if isinstance(t, int | float) and not isinstance(t, bool) and t > 0:
                        if not cache_sampled:
                            with self._lock:
                                self._stats.bypassed += 1
                            return None
                        ctx = {"sampled_temperature": t, "context": ctx}
                return text, ctx

            if inspect.iscoroutinefunction(fn):
                afn = cast(Callable[..., Awaitable[Any]], fn)

                @functools.wraps(fn)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    key = key_of(args, kwargs)
                    if key is None:
                        return await afn(*args, **kwargs)
                    text, ctx = key
                    hit = await self.aget(text, context=ctx)
                    if hit is not None:
                        return hit.response
                    result = await afn(*args, **kwargs)
                    await self.aset(text, result, context=ctx, ttl=ttl, tags=tag_list)
                    return result

                return cast(Callable[P, R], async_wrapper)

            @functools.wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                key = key_of(args, kwargs)
                if key is None:
                    return fn(*args, **kwargs)
                text, ctx = key
                hit = self.get(text, context=ctx)
                if hit is not None:
                    return cast(R, hit.response)
                result = fn(*args, **kwargs)
                self.set(text, result, context=ctx, ttl=ttl, tags=tag_list)
                return result

            return wrapper

        return decorate
