"""A test's timed runs, each paired with the machine's speed at the moment it ran.

The plugin's confirm runs are interleaved with reference samples (see
:class:`~perfkit.measure.calibrate.MachineSpeed`): reference sample ``k`` is taken right
after run ``k`` (or, with a sample before the first run, :meth:`TimedRuns.lead`, right
before it). A run's machine factor is the mean of the samples on either side of it,
and its judged time is its ``own`` time (GC pauses and run-queue waits out) with only the
CPU part divided by that factor (:func:`~perfkit.measure.calibrate.normalise`). The
statistic judged is the median over runs: budgets are written against a test's typical
time, and judging the minimum against them let real slowdowns through.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from perfkit.measure.calibrate import MachineSpeed, normalise
from perfkit.measure.timing import Timing

__all__ = ["TimedRuns"]


class TimedRuns:
    """Runs of one callable and the reference samples between them.

    ``latency`` picks the time to judge from a :class:`Timing` (``own`` or ``wall``);
    ``speed`` is ``None`` when the speed check is off (every factor is then 1).
    """

    def __init__(self, latency: Callable[[Timing], float], speed: MachineSpeed | None,
                 *, reference: float | None = None) -> None:
        self._latency = latency
        self._speed = speed
        self._reference = reference
        self.timings: list[Timing] = []
        self.references: list[float] = []
        self.leading = False  # references[0] was taken right before the first run

    @property
    def count(self) -> int:
        return len(self.timings)

    def lead(self, seconds: float) -> None:
        """A reference sample taken right before the first run (before any :meth:`add`)."""
        if self.timings or self.references:
            raise ValueError("lead(): only before the first run and the first sample")
        self.references.append(seconds)
        self.leading = True

    def sampled_after_last(self) -> bool:
        """Whether a reference sample was taken after the latest run."""
        return len(self.references) >= self.count + self.leading

    def add(self, timing: Timing) -> None:
        self.timings.append(timing)

    def check_speed(self, at_least: int = 0) -> None:
        """Take one reference sample now (and more until there are ``at_least``)."""
        if self._speed is None:
            return
        self.references.append(self._speed.sample())
        while len(self.references) < at_least:
            self.references.append(self._speed.sample())

    def factors(self) -> list[float]:
        """Per run: how much slower than typical the machine ran (the reference beside it).

        With ``reference`` (seconds the reference workload takes on the reference machine),
        the factor is against that fixed time instead of this session's typical time, and
        is not bounded below: a run is then expressed on the reference machine, whatever
        speed this process started at. Before any sample is taken beside a run, the
        session's typical time stands in.
        """
        if self._speed is None:
            return [1.0] * self.count
        if not self.references:
            if self._reference is None:
                return [1.0] * self.count
            return [self._speed.typical() / self._reference] * self.count
        factors = []
        for index in range(self.count):
            if self.leading:  # sample k is right before run k, sample k + 1 right after
                around = self.references[index:index + 2] or self.references[-1:]
            else:  # sample k is right after run k
                around = self.references[max(0, index - 1):index + 1] or self.references[-1:]
            seconds = statistics.fmean(around)
            factors.append(seconds / self._reference if self._reference is not None
                           else self._speed.factor(seconds))
        return factors

    @property
    def factor(self) -> float:
        """The median machine factor over the runs (1.0: typical speed)."""
        return statistics.median(self.factors()) if self.timings else 1.0

    def samples(self, kind: str) -> list[float]:
        """Per-run judged times: ``"cpu"`` for CPU time, anything else for latency."""
        pairs = zip(self.timings, self.factors())
        if kind == "cpu":
            return [t.cpu / f for t, f in pairs]
        return [normalise(self._latency(t), t.cpu, f) for t, f in pairs]

    def raw_samples(self, kind: str) -> list[float]:
        """Per-run times as measured, before the machine factor is divided out."""
        return [t.cpu if kind == "cpu" else self._latency(t) for t in self.timings]

    def statistic(self, kind: str) -> float:
        return statistics.median(self.samples(kind))

    def raw_min(self, kind: str) -> float:
        """The best run before the machine factor was divided out."""
        return min(self.raw_samples(kind))

    def summary(self, *, cpu_wait_excluded: bool) -> dict[str, Any]:
        samples = self.samples("latency")
        judged = statistics.median(samples)
        return {
            "judged": judged, "median": judged, "first": samples[0], "min": min(samples),
            "max": max(samples), "runs": self.count, "cpu_min": min(self.samples("cpu")),
            "raw_min": self.raw_min("latency"),
            "wall_min": min(t.wall for t in self.timings),
            "gc_pause": sum(t.gc_pause for t in self.timings),
            "cpu_wait": sum(t.cpu_wait for t in self.timings),
            "cpu_wait_excluded": cpu_wait_excluded,
            "factor": self.factor, "reference_runs": len(self.references),
            # Per run, so a report can be re-judged (or a policy studied) after the fact.
            "samples": samples, "raw_samples": self.raw_samples("latency"),
            "cpu_samples": [t.cpu for t in self.timings], "factors": self.factors(),
        }
