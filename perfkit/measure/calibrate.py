"""Machine speed: a fixed reference workload, timed at session start and at the moment of a test.

A budget written on a laptop is too tight on a shared CI runner that is 1.6x slower. The
reference workload (pure-Python integer, dict and string work, no I/O, no allocation
storms) is timed several times in the running process and its typical (median) time is
compared with the time it takes on the reference machine; budgets multiplied by the
factor then mean "this fast on the reference machine". The factor is printed wherever a
budget is judged.

:class:`MachineSpeed` answers "how fast is this machine *right now*". On this project's
shared 2-core VM the speed at which the CPU executes Python drifted by 1.5x within minutes
(median/minimum of 30 runs of pure CPU work, run-queue waits already removed), and the
reference workload drifted with it. Timed right next to each of a test's confirm runs, the
reference's time against its typical time in this process gives the machine's factor at
that moment; dividing the run's CPU time by it cancels the machine, while a regression of
the test's own code, which the reference does not share, stays. Every time here is the
:class:`~perfkit.measure.timing.CallTimer` ``own`` time (GC pauses and run-queue waits
removed), the accounting tests are judged with.

That factor is relative to the session's own typical time, so it cannot correct a whole
session running at another speed than the one a budget was measured at; on the same VM
each vCPU switched between two speeds 1.75x apart within half a second. With the plugin's
``calibrate`` setting, a run's reference samples are compared with
:data:`REFERENCE_SECONDS` instead (:class:`~perfkit.measure.runs.TimedRuns` with
``reference=``), which expresses every run on the reference machine, whatever the session.
There a second, arithmetic-only reference (:func:`alu_workload`, :data:`ALU_REFERENCE_SECONDS`)
is timed beside each sample and the smaller of the two factors is used: the mixed workload
alone once read 2.1x its time beside a loop that ran 1.75x.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from perfkit.measure.timing import CallTimer

__all__ = [
    "ALU_REFERENCE_SECONDS",
    "REFERENCE_SECONDS",
    "Calibration",
    "MachineSpeed",
    "alu_workload",
    "calibrate",
    "normalise",
    "reference_workload",
    "sample_alu",
    "sample_reference",
    "time_reference",
]

#: Typical (median) time of :func:`reference_workload` on the reference machine (the
#: project's CI runner, CPython 3.11). A factor of 2.0 means this machine ran it twice as slowly.
REFERENCE_SECONDS = 0.0016

#: Typical time of :func:`alu_workload` on the reference machine, set so that on this
#: project's VM its factor agrees with :data:`REFERENCE_SECONDS`' when the vCPU runs at its
#: slow speed (0.88 ms beside 1.6 ms x 1.9); at the fast speed it reads ~1.1 where the mixed
#: reference reads 1.0, so there the mixed reference decides (see :meth:`TimedRuns.factors
#: <perfkit.measure.runs.TimedRuns.factors>`).
ALU_REFERENCE_SECONDS = 0.00088

#: How far one moment's factor may go below 1 (the machine faster than typical). Beyond it
#: a lucky reference run would inflate the test's normalised time.
MIN_FACTOR = 0.75


def reference_workload() -> int:
    """A fixed, deterministic CPU-bound workload (~1.6 ms on the reference machine)."""
    total = 0
    table: dict[int, str] = {}
    for i in range(12_000):
        total += (i * 7) % 13
        if i % 3 == 0:
            table[i] = str(i)
    total += sum(len(v) for v in table.values())
    words = ["perf", "kit", "budget"] * 500
    total += len("-".join(words))
    return total


def alu_workload() -> int:
    """Small-integer arithmetic and branches only (~0.9 ms): no dict, no string, no list.

    The second reference of budgets in reference-machine time. The mixed workload above
    leans on memory more than tight arithmetic does, and at some moments it ran 2.1x its
    time while a pure-Python loop beside it ran 1.75x; only the slowness both see is
    excused.
    """
    total = 0
    for i in range(400):
        a = i
        for j in range(25):
            a = (a * 3 + j) & 1023
            if a > 512:
                total += a - j
            else:
                total -= j
    return total


@dataclass(frozen=True)
class Calibration:
    """Result of a calibration: the reference's typical time here, the factor, the samples."""

    seconds: float
    factor: float
    runs: int
    samples: tuple[float, ...] = ()

    def describe(self) -> str:
        return (f"x{self.factor:.2f} (reference workload {self.seconds * 1e3:.2f}ms, "
                f"median of {self.runs} runs)")


def time_reference() -> float:
    """One run of :func:`reference_workload`: seconds with GC pauses and CPU waits removed."""
    timer = CallTimer(collect=False)
    with timer:
        reference_workload()
    return timer.timing.own


def sample_reference() -> float:
    """The reference workload's time now: a warm-up run, then the better of two timed runs.

    Right after a test, cold caches made a single reference run 1.3-1.5x slower than
    back-to-back runs, and one preemption can double a 2 ms run; neither is the machine.
    """
    reference_workload()
    return min(time_reference(), time_reference())


def sample_alu() -> float:
    """:func:`alu_workload`'s time now: the better of two timed runs (no warm-up: it allocates
    nothing, and is taken right beside a mixed reference sample)."""
    def once() -> float:
        timer = CallTimer(collect=False)
        with timer:
            alu_workload()
        return timer.timing.own

    return min(once(), once())


def calibrate(runs: int = 8) -> Calibration:
    """Take ``runs`` reference samples (:func:`sample_reference`); keep the median."""
    if runs < 1:
        raise ValueError(f"runs: must be >= 1, got {runs!r}")
    samples = tuple(sample_reference() for _ in range(runs))
    typical = statistics.median(samples)
    return Calibration(seconds=typical, factor=typical / REFERENCE_SECONDS, runs=runs,
                       samples=samples)


@dataclass
class MachineSpeed:
    """The reference workload's typical time in this process, and the machine's factor now.

    The first use takes ``runs`` samples (or a session calibration's samples); every later
    :meth:`sample` joins the window, so "typical" follows the session (bounded: the last
    ``window`` samples). A sample is a warm-up run, then the better of two timed runs.
    """

    runs: int = 8
    window: int = 512
    _times: deque[float] = field(default_factory=deque)

    @classmethod
    def from_calibration(cls, calibration: Calibration) -> MachineSpeed:
        speed = cls(runs=calibration.runs)
        speed._times.extend(calibration.samples)
        return speed

    @property
    def count(self) -> int:
        return len(self._times)

    def _record(self, seconds: float) -> None:
        self._times.append(seconds)
        while len(self._times) > self.window:
            self._times.popleft()

    def typical(self) -> float:
        if not self._times:
            for _ in range(self.runs):
                self._record(sample_reference())
        return statistics.median(self._times)

    def sample(self) -> float:
        """Time the reference now; the result also joins the window of typical times."""
        self.typical()
        seconds = sample_reference()
        self._record(seconds)
        return seconds

    def factor(self, seconds: float) -> float:
        """How much slower than typical a reference run of ``seconds`` was (>= MIN_FACTOR)."""
        typical = self.typical()
        if typical <= 0 or seconds <= 0:
            return 1.0
        return max(MIN_FACTOR, seconds / typical)


def normalise(own: float, cpu: float, factor: float) -> float:
    """A run's time at the machine's typical speed: only its CPU part scales with the machine.

    Time the call spent waiting on its own (sleep, I/O, locks) is kept as measured, so a
    slow disk or a longer sleep is never divided away.
    """
    if factor <= 0:
        raise ValueError(f"factor: must be > 0, got {factor!r}")
    cpu_part = min(max(cpu, 0.0), own)
    return cpu_part / factor + (own - cpu_part)
