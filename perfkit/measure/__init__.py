"""The measurement core shared by the pytest plugin: latency, CPU time, memory, call counts,
statistics.

Nothing here imports pytest; every piece is usable alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from perfkit.measure.bench import BenchResult, BenchSettings, abenchmark, benchmark
from perfkit.measure.calibrate import Calibration, MachineSpeed, calibrate, normalise
from perfkit.measure.calls import CallCount, CallCounter, FunctionCalls
from perfkit.measure.memory import AllocationSite, HeapPeak, HeapTracer, RssHighWater
from perfkit.measure.runs import TimedRuns
from perfkit.measure.stats import Margins, Stats, Verdict, judge
from perfkit.measure.timing import CallTimer, Timing
from perfkit.measure.units import format_duration, format_size, parse_duration, parse_size

if TYPE_CHECKING:
    from perfkit.measure.profile import ProfileEntry, ProfileResult, profile_call

__all__ = [
    "AllocationSite",
    "BenchResult",
    "BenchSettings",
    "Calibration",
    "CallCount",
    "CallCounter",
    "CallTimer",
    "FunctionCalls",
    "HeapPeak",
    "HeapTracer",
    "MachineSpeed",
    "Margins",
    "ProfileEntry",
    "ProfileResult",
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
    "profile_call",
]


def __getattr__(name: str) -> Any:
    # cProfile and pstats load on first use: the plugin imports this package in every
    # pytest session, and profiles only a failed budget.
    if name in ("ProfileEntry", "ProfileResult", "profile_call"):
        from perfkit.measure import profile

        return getattr(profile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
