"""Micro-benchmarks of one callable: warm-up, calibrated rounds, robust statistics.

Used by the pytest ``perf`` fixture and usable alone. Each round runs the callable
``loops`` times so a round lasts long enough for the clock to resolve it; the number of
rounds is bounded by ``max_time`` and ``max_rounds``, so a benchmark can never run away.
Results are per call.
"""

from __future__ import annotations

import gc
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from perfkit.measure.stats import Stats

__all__ = ["BenchResult", "BenchSettings", "abenchmark", "benchmark"]


@dataclass(frozen=True)
class BenchSettings:
    """How long and how often to run. All times in seconds."""

    warmup: int = 1
    min_rounds: int = 5
    max_rounds: int = 1000
    max_time: float = 1.0
    round_time: float = 0.002

    def __post_init__(self) -> None:
        for name in ("warmup", "min_rounds", "max_rounds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        if self.min_rounds < 1 or self.max_rounds < self.min_rounds:
            raise ValueError(
                f"min_rounds/max_rounds: need 1 <= min_rounds <= max_rounds, "
                f"got {self.min_rounds!r}/{self.max_rounds!r}"
            )
        for name in ("max_time", "round_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class BenchResult:
    """Per-call statistics, the number of rounds and loops per round, and the last value."""

    stats: Stats
    rounds: int
    loops: int
    value: Any

    def describe(self) -> str:
        s = self.stats
        return (
            f"min {s.min * 1e6:.1f}us, median {s.median * 1e6:.1f}us, p95 {s.p95 * 1e6:.1f}us, "
            f"spread {s.spread:.0%} ({self.rounds} rounds x {self.loops} loops)"
        )


def _loops_for(one_call: float, settings: BenchSettings) -> int:
    if one_call <= 0:
        return 1000
    return max(1, min(1_000_000, int(settings.round_time / one_call)))


def benchmark(
    fn: Callable[..., Any], *args: Any, settings: BenchSettings | None = None, **kwargs: Any
) -> BenchResult:
    """Run ``fn(*args, **kwargs)`` repeatedly and summarise the time per call."""
    if inspect.iscoroutinefunction(fn):
        raise TypeError("fn: is a coroutine function; use abenchmark (perf.arun in pytest)")
    settings = settings or BenchSettings()
    value: Any = None
    started = time.perf_counter()
    for _ in range(max(1, settings.warmup)):
        value = fn(*args, **kwargs)
    one = (time.perf_counter() - started) / max(1, settings.warmup)
    loops = _loops_for(one, settings)
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        deadline = time.perf_counter() + settings.max_time
        while len(samples) < settings.max_rounds:
            t0 = time.perf_counter()
            for _ in range(loops):
                value = fn(*args, **kwargs)
            samples.append((time.perf_counter() - t0) / loops)
            if len(samples) >= settings.min_rounds and time.perf_counter() >= deadline:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return BenchResult(Stats.of(samples), len(samples), loops, value)


async def abenchmark(
    fn: Callable[..., Awaitable[Any]],
    *args: Any,
    settings: BenchSettings | None = None,
    **kwargs: Any,
) -> BenchResult:
    """Like :func:`benchmark` for an async callable, awaited in the running event loop."""
    if not callable(fn):
        raise TypeError(f"fn: expected an async callable, got {fn!r}")
    settings = settings or BenchSettings()
    value: Any = None
    started = time.perf_counter()
    for _ in range(max(1, settings.warmup)):
        value = await fn(*args, **kwargs)
    one = (time.perf_counter() - started) / max(1, settings.warmup)
    loops = _loops_for(one, settings)
    samples: list[float] = []
    deadline = time.perf_counter() + settings.max_time
    gc.collect()
    while len(samples) < settings.max_rounds:
        t0 = time.perf_counter()
        for _ in range(loops):
            value = await fn(*args, **kwargs)
        samples.append((time.perf_counter() - t0) / loops)
        if len(samples) >= settings.min_rounds and time.perf_counter() >= deadline:
            break
    return BenchResult(Stats.of(samples), len(samples), loops, value)
