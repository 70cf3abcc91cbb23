"""A test's timed runs, each paired with the machine's speed at the moment it ran.

The plugin's confirm runs are interleaved with reference samples (see
:class:`~perfkit.measure.calibrate.MachineSpeed`): a sample is taken right after each run
(and, with :meth:`TimedRuns.lead`, right before the first). A run's machine factor is the
mean of the samples taken right before and right after it; after a :meth:`TimedRuns.pause`
(runs spaced out in time, so that they meet other moments of the machine) the run that
follows gets a fresh sample right before it, never one from before the pause. A run's
judged time is its ``own`` time (GC pauses and run-queue waits out) with only the CPU part
divided by that factor (:func:`~perfkit.measure.calibrate.normalise`). The statistic
judged is the median over runs: budgets are written against a test's typical time, and
judging the minimum against them let real slowdowns through.

With a second, arithmetic-only reference (``alu_reference=``, budgets in reference-machine
time only), every sample of the mixed reference has a
:func:`~perfkit.measure.calibrate.sample_alu` beside it, and a run's factor is the smaller
of the two references' factors: only slowness both workloads see is excused.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from perfkit.measure.calibrate import MachineSpeed, normalise, sample_alu
from perfkit.measure.timing import Timing

__all__ = ["TimedRuns"]


class TimedRuns:
    """Runs of one callable and the reference samples between them.

    ``latency`` picks the time to judge from a :class:`Timing` (``own`` or ``wall``);
    ``speed`` is ``None`` when the speed check is off (every factor is then 1); ``sleep``
    is what :meth:`pause` waits with (injectable for tests).
    """

    def __init__(self, latency: Callable[[Timing], float], speed: MachineSpeed | None,
                 *, reference: float | None = None, alu_reference: float | None = None,
                 alu: Callable[[], float] = sample_alu,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        if alu_reference is not None and reference is None:
            raise ValueError("alu_reference: only with reference (reference-machine time)")
        self._latency = latency
        self._speed = speed
        self._reference = reference
        self._alu_reference = alu_reference
        self._alu = alu
        self._sleep = sleep
        self.timings: list[Timing] = []
        self.references: list[float] = []
        self.alu_references: list[float] = []  # beside references[k], when alu_reference
        self.leading = False  # references[0] was taken right before the first run
        # Per run, the index of the sample taken right before / right after it (None: none
        # was), and what happened last: "run", "sample", or "" (nothing yet, or a pause).
        self._before: list[int | None] = []
        self._after: list[int | None] = []
        self._last = ""
        self.pauses: list[float] = []  # seconds paused before each spaced run

    @property
    def count(self) -> int:
        return len(self.timings)

    def lead(self, seconds: float, alu: float | None = None) -> None:
        """A reference sample taken right before the first run (before any :meth:`add`);
        ``alu``: the arithmetic reference's sample beside it (with ``alu_reference``)."""
        if self.timings or self.references:
            raise ValueError("lead(): only before the first run and the first sample")
        if (alu is None) != (self._alu_reference is None or self._speed is None):
            raise ValueError("lead(): an alu sample exactly when alu_reference is set")
        self._record(seconds, alu)
        self.leading = True

    def sampled_after_last(self) -> bool:
        """Whether a reference sample was taken after the latest run."""
        return bool(self._after) and self._after[-1] is not None

    def add(self, timing: Timing) -> None:
        self.timings.append(timing)
        self._before.append(len(self.references) - 1 if self._last == "sample" else None)
        self._after.append(None)
        self._last = "run"

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the next run, then (with the speed check) take a fresh
        reference sample right before it.

        On this project's VM each vCPU held one of two speeds 1.75x apart for ~0.5 s or
        more while a test's runs lasted milliseconds, so back-to-back runs all met the
        same moment, and a reference that misread that moment misread it for every run.
        Runs spaced out meet other moments; each is still judged beside its own samples.
        """
        if seconds < 0:
            raise ValueError(f"seconds: must be >= 0, got {seconds!r}")
        if seconds:
            self._sleep(seconds)
        self._last = ""
        self.pauses.append(seconds)
        self.check_speed()

    def _record(self, seconds: float, alu: float | None) -> None:
        self.references.append(seconds)
        if alu is not None:
            self.alu_references.append(alu)
        if self._last == "run":
            self._after[-1] = len(self.references) - 1
        self._last = "sample"

    def check_speed(self, at_least: int = 0) -> None:
        """Take one reference sample now (and more until there are ``at_least``)."""
        if self._speed is None:
            return
        self._sample(self._speed)
        while len(self.references) < at_least:
            self._sample(self._speed)

    def _sample(self, speed: MachineSpeed) -> None:
        seconds = speed.sample()
        self._record(seconds, self._alu() if self._alu_reference is not None else None)

    def factors(self) -> list[float]:
        """Per run: how much slower than typical the machine ran (the reference beside it).

        With ``reference`` (seconds the reference workload takes on the reference machine),
        the factor is against that fixed time instead of this session's typical time, and
        is not bounded below: a run is then expressed on the reference machine, whatever
        speed this process started at. Before any sample is taken beside a run, the
        session's typical time stands in.

        With ``alu_reference`` too, the factor is the smaller of the mixed reference's and
        the arithmetic reference's (each the mean of its samples around the run): only
        slowness both see is excused.
        """
        factors = self.reference_factors()
        alu = self.alu_factors()
        if alu:
            factors = [min(f, g) for f, g in zip(factors, alu, strict=True)]
        return factors

    def alu_factors(self) -> list[float]:
        """Per run: the arithmetic reference's factor alone (empty without it)."""
        if self._alu_reference is None or not self.alu_references:
            return []
        return self._around(self.alu_references, self._alu_reference)

    def reference_factors(self) -> list[float]:
        """Per run: the mixed reference's factor alone (:meth:`factors` without the
        arithmetic reference)."""
        if self._speed is None:
            return [1.0] * self.count
        if not self.references:
            if self._reference is None:
                return [1.0] * self.count
            return [self._speed.typical() / self._reference] * self.count
        if self._reference is not None:
            return self._around(self.references, self._reference)
        return [self._speed.factor(seconds) for seconds in self._around(self.references, 1.0)]

    def _around(self, samples: list[float], reference: float) -> list[float]:
        """Per run: the mean of the samples right before and right after it, over
        ``reference`` (the latest sample when neither was taken)."""
        factors = []
        for before, after in zip(self._before, self._after, strict=True):
            around = [samples[k] for k in (before, after) if k is not None] or samples[-1:]
            factors.append(statistics.fmean(around) / reference)
        return factors

    @property
    def factor(self) -> float:
        """The median machine factor over the runs (1.0: typical speed)."""
        return statistics.median(self.factors()) if self.timings else 1.0

    def samples(self, kind: str) -> list[float]:
        """Per-run judged times: ``"cpu"`` for CPU time, anything else for latency."""
        return self._divided(kind, self.factors())

    def _divided(self, kind: str, factors: list[float]) -> list[float]:
        pairs = zip(self.timings, factors, strict=True)
        if kind == "cpu":
            return [t.cpu / f for t, f in pairs]
        return [normalise(self._latency(t), t.cpu, f) for t, f in pairs]

    def raw_samples(self, kind: str) -> list[float]:
        """Per-run times as measured, before the machine factor is divided out."""
        return [t.cpu if kind == "cpu" else self._latency(t) for t in self.timings]

    def statistic(self, kind: str) -> float:
        return statistics.median(self.samples(kind))

    def typical_factor(self) -> float:
        """The session's typical machine factor (1.0 without reference-machine time)."""
        if self._speed is None or self._reference is None:
            return 1.0
        return self._speed.typical() / self._reference

    def statistic_at_typical(self, kind: str) -> float:
        """The statistic with every run divided by the session's typical factor instead of
        the factor of its own moment: what the runs say if that moment was not unusual."""
        return statistics.median(self._divided(kind, [self.typical_factor()] * self.count))

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
            "reference_factors": self.reference_factors(), "alu_factors": self.alu_factors(),
            # When each run started, in seconds after the first; pauses before spaced runs.
            "offsets": [t.started - self.timings[0].started for t in self.timings],
            "pauses": list(self.pauses),
        }
