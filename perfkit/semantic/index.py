"""One partition's vectors: a preallocated, L2-normalised float32 matrix searched by one
matrix-vector product. Entries live in a slot list beside it; the search path touches
only numpy arrays.

With compression (a projection basis fitted by the cache), rows are searched in the
projected space and re-ranked on float16 copies of the full vectors. The projection
keeps, per row, the norm of what it dropped, so ``projected + |q_rest| * |x_rest|`` is an
upper bound of the true similarity (Cauchy-Schwarz): rows whose bound is below the
threshold cannot match, and the rest are re-scored exactly. Compression changes speed and
memory, not which entries can hit (up to float16 rounding, ~1e-3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_INITIAL_ROWS = 4
_EINSUM_MAX_ELEMENTS = 16_000_000
MAX_RERANK = 256  # re-scored rows per lookup when compression cannot narrow further

F32 = npt.NDArray[np.float32]


class PartitionIndex:
    """Rows ``0..size`` of ``vectors``; freed rows are zeroed (similarity 0) and reused."""

    __slots__ = ("_free", "_scores", "basis", "dim", "embedder_id", "entries", "exact", "full",
                 "residual", "size", "vectors")

    def __init__(self, embedder_id: str, dim: int, basis: F32 | None = None) -> None:
        self.embedder_id = embedder_id
        self.dim = dim
        self.size = 0  # high-water mark of used rows
        self.entries: list[Any] = []  # slot -> entry or None
        self.exact: dict[str, int] = {}  # normalised prompt -> slot
        self._free: list[int] = []
        self.basis: F32 | None = None
        self.full: npt.NDArray[np.float16] | None = None
        self.residual: F32 | None = None
        self.vectors: F32 = np.zeros((_INITIAL_ROWS, dim), dtype=np.float32)
        self._scores: F32 = np.zeros(_INITIAL_ROWS, dtype=np.float32)
        if basis is not None:
            self.compress(basis)

    def __len__(self) -> int:
        return len(self.exact)

    @property
    def nbytes(self) -> int:
        arrays = (self.vectors, self.full, self.residual)
        return sum(a.nbytes for a in arrays if a is not None)

    def compress(self, basis: F32) -> None:
        """Switch to projected search with ``basis`` (dim x k, orthonormal columns)."""
        full = self.vectors
        projected = np.ascontiguousarray(full @ basis, dtype=np.float32)
        rest = np.einsum("ij,ij->i", full, full) - np.einsum("ij,ij->i", projected, projected)
        self.residual = np.sqrt(np.maximum(rest, 0.0)).astype(np.float32)
        self.full = full.astype(np.float16)
        self.vectors = projected
        self.basis = basis

    def _grow(self) -> None:
        def grown(a: Any) -> Any:
            rows = len(a) * 2 if len(a) < 65_536 else len(a) + len(a) // 2
            bigger = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
            bigger[: len(a)] = a
            return bigger

        self.vectors = grown(self.vectors)
        self._scores = np.zeros(len(self.vectors), dtype=np.float32)
        if self.full is not None:
            self.full = grown(self.full)
            self.residual = grown(self.residual)

    def add(self, vector: F32, normalized: str, entry: Any) -> int:
        old = self.exact.get(normalized)
        if old is not None:
            self.remove(old)
        if self._free:
            slot = self._free.pop()
        else:
            slot = self.size
            if slot == len(self.vectors):
                self._grow()
            self.size += 1
            self.entries.append(None)
        if self.basis is None:
            self.vectors[slot] = vector
        else:
            assert self.full is not None and self.residual is not None
            projected = vector @ self.basis
            self.vectors[slot] = projected
            self.full[slot] = vector
            self.residual[slot] = np.sqrt(max(0.0, float(vector @ vector)
                                              - float(projected @ projected)))
        self.entries[slot] = entry
        self.exact[normalized] = slot
        return slot

    def remove(self, slot: int) -> Any:
        entry = self.entries[slot]
        if entry is None:
            return None
        self.entries[slot] = None
        self.vectors[slot] = 0.0
        if self.full is not None and self.residual is not None:
            self.full[slot] = 0.0
            self.residual[slot] = 0.0
        self.exact.pop(entry.normalized, None)
        if slot == self.size - 1:
            self.size -= 1
            self.entries.pop()
        else:
            self._free.append(slot)
        return entry

    def _dot(self, matrix: F32, query: F32) -> F32:
        # Into a preallocated buffer, no allocation per lookup. Up to ~16M
        # elements einsum's single-threaded SIMD loop wins: BLAS gemv spreads a small
        # product over threads and waits for them, which costs milliseconds as soon as
        # the cores are busy. Above that, BLAS's bandwidth wins (measured on 2 cores).
        rows = matrix[: self.size]
        out = self._scores[: self.size]
        if rows.size <= _EINSUM_MAX_ELEMENTS:
            np.einsum("ij,j->i", rows, query, out=out)
        else:
            np.dot(rows, query, out=out)
        return out

    def candidates(self, query: F32, threshold: float, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` slots with similarity >= ``threshold``, best first."""
        if self.size == 0:
            return []
        if self.basis is not None:
            return self._compressed_candidates(query, threshold, k)
        sims = self._dot(self.vectors, query)
        best = int(np.argmax(sims))
        if sims[best] < threshold:
            return []
        if k == 1 or self.size == 1:
            return [(best, min(1.0, float(sims[best])))]
        k = min(k, self.size)
        top = np.argpartition(sims, -k)[-k:]
        top = top[np.argsort(sims[top])[::-1]]
        return [(int(s), min(1.0, float(sims[s]))) for s in top if sims[s] >= threshold]

    def _compressed_candidates(self, query: F32, threshold: float, k: int) -> list[
            tuple[int, float]]:
        assert self.basis is not None and self.full is not None and self.residual is not None
        q_projected = query @ self.basis
        q_rest = float(np.sqrt(max(0.0, float(query @ query) - float(q_projected @ q_projected))))
        upper = self._dot(self.vectors, q_projected)
        upper += q_rest * self.residual[: self.size]
        rows = np.flatnonzero(upper >= threshold)
        if rows.size == 0:
            return []
        if rows.size > MAX_RERANK:
            rows = rows[np.argpartition(upper[rows], -MAX_RERANK)[-MAX_RERANK:]]
        sims = self.full[rows].astype(np.float32) @ query
        order = np.argsort(sims)[::-1][:k]
        return [(int(rows[i]), min(1.0, float(sims[i]))) for i in order if sims[i] >= threshold]
