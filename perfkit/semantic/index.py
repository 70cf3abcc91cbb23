"""One partition's vectors: a preallocated, L2-normalised float32 matrix searched by one
matrix-vector product. Entries live in a slot list beside it; the search path touches
only numpy arrays.

With compression (a projection basis fitted by the cache), rows are searched in the
projected space and re-ranked on float16 copies of the full vectors. Each row keeps the
norm of what the projection dropped, so ``projected + |q_rest| * |x_rest|`` is an upper
bound of the true similarity (Cauchy-Schwarz). Rows whose bound is below the threshold
cannot match; the rest are re-scored exactly. (The norms live in their own array: an
extra matrix column makes rows 65 floats wide, which slows gemv by a third.)
Compression changes speed and memory, not which entries can hit (up to float16 rounding,
~1e-3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_INITIAL_ROWS = 4
MAX_RERANK = 256  # re-scored rows per lookup when compression cannot narrow further

F32 = npt.NDArray[np.float32]


class PartitionIndex:
    """Rows ``0..size`` of ``vectors``; freed rows are zeroed (similarity 0) and reused."""

    __slots__ = ("_free", "_scores", "_spare", "basis", "dim", "embedder_id", "entries", "exact",
                 "full", "residual", "size", "vectors")

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
        self._spare: F32 | None = None
        self.vectors: F32 = np.zeros((_INITIAL_ROWS, dim), dtype=np.float32)
        self._scores: F32 = np.zeros(_INITIAL_ROWS, dtype=np.float32)
        if basis is not None:
            self.compress(basis)

    def __len__(self) -> int:
        return len(self.exact)

    @property
    def nbytes(self) -> int:
        arrays = (self.vectors, self.full, self.residual, self._scores, self._spare)
        return sum(a.nbytes for a in arrays if a is not None)

    def compress(self, basis: F32) -> None:
        """Switch to projected search with ``basis`` (dim x k, orthonormal columns)."""
        full = self.vectors
        self.vectors, self.residual = self._project(full, basis)
        self.full = full.astype(np.float16)
        self._spare = np.zeros(len(full), dtype=np.float32)
        self.basis = basis

    @staticmethod
    def _project(rows: F32, basis: F32) -> tuple[F32, F32]:
        """``rows @ basis`` and, per row, the norm of the part the projection drops."""
        projected = np.ascontiguousarray(rows @ basis, dtype=np.float32)
        rest = np.einsum("ij,ij->i", rows, rows) - np.einsum("ij,ij->i", projected, projected)
        return projected, np.sqrt(np.maximum(rest, 0.0)).astype(np.float32)

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
            self._spare = np.zeros(len(self.vectors), dtype=np.float32)

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
            projected, rest = self._project(vector[None, :], self.basis)
            self.vectors[slot] = projected[0]
            self.residual[slot] = rest[0]
            self.full[slot] = vector
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

    def compact(self) -> bool:
        """Shrink the matrices when at most a quarter of their rows is alive, so memory
        follows the live entries, not the partition's high-water mark (a partition that
        once held 10k entries and now holds 3 must not keep 10k rows). Live rows move to
        ``0..n-1`` in slot order; returns whether anything moved (callers then re-read
        each entry's slot from ``entries``)."""
        live = [slot for slot, e in enumerate(self.entries) if e is not None]
        rows = len(self.vectors)
        if rows <= _INITIAL_ROWS or len(live) * 4 > rows:
            return False
        keep = max(_INITIAL_ROWS, 1 << (2 * len(live) - 1).bit_length())
        order = np.asarray(live, dtype=np.intp)

        def shrunk(a: Any) -> Any:
            small = np.zeros((keep, *a.shape[1:]), dtype=a.dtype)
            small[: len(live)] = a[order]
            return small

        self.vectors = shrunk(self.vectors)
        self._scores = np.zeros(keep, dtype=np.float32)
        if self.full is not None:
            self.full = shrunk(self.full)
            self.residual = shrunk(self.residual)
            self._spare = np.zeros(keep, dtype=np.float32)
        self.entries = [self.entries[slot] for slot in live]
        self.exact = {e.normalized: slot for slot, e in enumerate(self.entries)}
        self._free = []
        self.size = len(live)
        return True

    def _dot(self, matrix: F32, query: F32) -> F32:
        """``matrix[:size] @ query`` into a preallocated buffer (no allocation per lookup)."""
        out = self._scores[: self.size]
        np.dot(matrix[: self.size], query, out=out)
        return out

    def candidates(self, query: F32, threshold: float, k: int) -> list[tuple[int, float]]:
        """Up to ``k`` slots with similarity >= ``threshold``, best first."""
        if self.size == 0:
            return []
        if self.basis is not None:
            return self._compressed_candidates(query, threshold, k)
        sims = self._dot(self.vectors, query)
        rows = np.flatnonzero(sims >= threshold)
        if rows.size > k:
            rows = rows[np.argpartition(sims[rows], -k)[-k:]]
        rows = rows[np.argsort(sims[rows])[::-1]]
        return [(int(r), min(1.0, float(sims[r]))) for r in rows]

    def _compressed_candidates(self, query: F32, threshold: float, k: int) -> list[
            tuple[int, float]]:
        assert self.basis is not None and self.full is not None
        assert self.residual is not None and self._spare is not None
        projected, rest = self._project(query[None, :], self.basis)
        upper = self._dot(self.vectors, projected[0])
        if rest[0] > 0:
            spare = self._spare[: self.size]
            np.multiply(self.residual[: self.size], rest[0], out=spare)
            upper += spare
        rows = np.flatnonzero(upper >= threshold)
        if rows.size == 0:
            return []
        if rows.size > MAX_RERANK:
            rows = rows[np.argpartition(upper[rows], -MAX_RERANK)[-MAX_RERANK:]]
        sims = self.full[rows].astype(np.float32) @ query
        order = np.argsort(sims)[::-1][:k]
        return [(int(rows[i]), min(1.0, float(sims[i]))) for i in order if sims[i] >= threshold]
