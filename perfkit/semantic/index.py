"""One partition's vectors: a preallocated, L2-normalised float32 matrix searched by one
matrix-vector product. Entries live in a slot list beside it; the search path touches
only numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_INITIAL_ROWS = 4


class PartitionIndex:
    """Rows ``0..size`` of ``vectors``; freed rows are zeroed (similarity 0) and reused."""

    __slots__ = ("_free", "dim", "embedder_id", "entries", "exact", "size", "vectors")

    def __init__(self, embedder_id: str, dim: int) -> None:
        self.embedder_id = embedder_id
        self.dim = dim
        self.vectors: npt.NDArray[np.float32] = np.zeros((_INITIAL_ROWS, dim), dtype=np.float32)
        self.size = 0  # high-water mark of used rows
        self.entries: list[Any] = []  # slot -> entry or None
        self.exact: dict[str, int] = {}  # normalised prompt -> slot
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self.exact)

    def add(self, vector: npt.NDArray[np.float32], normalized: str, entry: Any) -> int:
        old = self.exact.get(normalized)
        if old is not None:
            self.remove(old)
        if self._free:
            slot = self._free.pop()
        else:
            slot = self.size
            if slot == len(self.vectors):
                grown = np.zeros((2 * len(self.vectors), self.dim), dtype=np.float32)
                grown[:slot] = self.vectors[:slot]
                self.vectors = grown
            self.size += 1
            self.entries.append(None)
        self.vectors[slot] = vector
        self.entries[slot] = entry
        self.exact[normalized] = slot
        return slot

    def remove(self, slot: int) -> Any:
        entry = self.entries[slot]
        if entry is None:
            return None
        self.entries[slot] = None
        self.vectors[slot] = 0.0
        self.exact.pop(entry.normalized, None)
        if slot == self.size - 1:
            self.size -= 1
            self.entries.pop()
        else:
            self._free.append(slot)
        return entry

    def similarities(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.vectors[: self.size] @ query

    def candidates(self, query: npt.NDArray[np.float32], threshold: float, k: int) -> list[
            tuple[int, float]]:
        """Up to ``k`` slots with similarity >= ``threshold``, best first."""
        if self.size == 0:
            return []
        sims = self.similarities(query)
        best = int(np.argmax(sims))
        if sims[best] < threshold:
            return []
        if k == 1 or self.size == 1:
            return [(best, min(1.0, float(sims[best])))]
        k = min(k, self.size)
        top = np.argpartition(sims, -k)[-k:]
        top = top[np.argsort(sims[top])[::-1]]
        return [(int(s), min(1.0, float(sims[s]))) for s in top if sims[s] >= threshold]
