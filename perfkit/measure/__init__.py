"""The measurement core shared by the pytest plugin: latency, CPU time, memory, statistics.

Nothing here imports pytest; every piece is usable alone.
"""

from __future__ import annotations

from perfkit.measure.bench import BenchResult, BenchSettings, abenchmark, benchmark
from perfkit.measure.calibrate import Calibration, MachineSpeed, calibrate, normalise
from perfkit.measure.memory import AllocationSite, HeapPeak, HeapTracer, RssHighWater
from perfkit.measure.runs import TimedRuns
from perfkit.measure.stats import Margins, Stats, Verdict, judge
from perfkit.measure.timing import CallTimer, Timing
from perfkit.measure.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "AllocationSite",
    "BenchResult",
    "BenchSettings",
    "Calibration",
    "CallTimer",
    "HeapPeak",
    "HeapTracer",
    "MachineSpeed",
    "Margins",
    "RssHighWater",
    "Stats",
    "TimedRuns",
    "Timing",
    "Verdict",
    "abenchmark",
    "benchmark",
    "calibrate",
    "format_duration",
    "format_size",
    "judge",
    "normalise",
    "parse_duration",
    "parse_size",
]
