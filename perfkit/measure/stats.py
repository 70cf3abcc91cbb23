"""Robust summaries of repeated timings, and the verdict of a sample set against a budget.

Shared machines add noise that only ever makes code *slower*, so the minimum of several
runs is the statistic closest to the code's own cost (measured on this project's 2-core
CI: min-of-k halves false failures against single samples; the median is worse). A
budget is judged on the minimum with a relative *and* an absolute margin, and the result
is one of three verdicts, so "too noisy to say" is reported instead of a coin toss.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["Margins", "Stats", "Verdict", "judge"]


class Verdict(str, Enum):
    """How a measurement compares with its budget."""

    OK = "ok"
    WITHIN_NOISE = "within noise"
    OVER_BUDGET = "over budget"


@dataclass(frozen=True)
class Stats:
    """Summary of a set of samples (seconds, bytes or counts)."""

    n: int
    min: float
    median: float
    p95: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("samples: need at least one sample")
        ordered = sorted(samples)
        return cls(
            n=len(ordered),
            min=ordered[0],
            median=statistics.median(ordered),
            p95=_quantile(ordered, 0.95),
            max=ordered[-1],
            mean=statistics.fmean(ordered),
        )

    @property
    def spread(self) -> float:
        """Relative distance from the minimum to the 95th percentile (0.25 = 25%)."""
        if self.min <= 0:
            return 0.0 if self.p95 <= 0 else math.inf
        return (self.p95 - self.min) / self.min


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted sequence."""
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Margins:
    """Tolerance above a budget before it counts as broken.

    ``relative`` is a fraction of the budget, ``absolute`` is in the budget's unit; both
    are added, so tiny budgets are protected by the absolute part and large ones by the
    relative part.
    """

    relative: float = 0.10
    absolute: float = 0.001

    def __post_init__(self) -> None:
        if not (self.relative >= 0 and math.isfinite(self.relative)):
            raise ValueError(f"relative: must be a finite number >= 0, got {self.relative!r}")
        if not (self.absolute >= 0 and math.isfinite(self.absolute)):
            raise ValueError(f"absolute: must be a finite number >= 0, got {self.absolute!r}")

    def limit(self, budget: float) -> float:
        return budget * (1 + self.relative) + self.absolute


def judge(statistic: float, budget: float, margins: Margins) -> Verdict:
    """OK at or under the budget, over budget past the margins, within noise in between."""
    if statistic <= budget:
        return Verdict.OK
    if statistic > margins.limit(budget):
        return Verdict.OVER_BUDGET
    return Verdict.WITHIN_NOISE
