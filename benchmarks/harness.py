"""A tiny benchmark harness: cases interleaved in rounds, medians, ratios per group.

Machines here are noisy, so every case of every group runs once per round, in a shuffled
order, and the table reports the median per-operation time over rounds and its ratio to
the group's baseline case (the anchor library). Absolute times are for orientation only.

A benchmark module ``benchmarks/bench_<area>.py`` exposes ``cases() -> list[Case]``. A
case that cannot run (a missing service or library) raises :class:`Unavailable` from
``cases()`` or is returned as ``Case.unavailable(...)``; it is listed, never dropped.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


class Unavailable(Exception):
    """Raised when a case cannot run here; the message says why."""


@dataclass
class Case:
    group: str
    name: str
    run: Callable[[int], object] | None = None
    arun: Callable[[int], Awaitable[object]] | None = None
    baseline: bool = False
    ops: int = 10_000
    """Operations per round; scale down for slow cases (network, ASGI)."""
    note: str = ""
    skipped: str | None = None
    check: Callable[[], None] | None = None
    """Called once after all rounds: asserts the case did real work (e.g. one miss)."""
    samples: list[float] = field(default_factory=list)

    @classmethod
    def unavailable(cls, group: str, name: str, why: str) -> Case:
        return cls(group=group, name=name, skipped=why)


def _time_once(case: Case, loop: asyncio.AbstractEventLoop) -> float:
    gc.collect()
    if case.arun is not None:
        start = time.perf_counter()
        loop.run_until_complete(case.arun(case.ops))
    else:
        assert case.run is not None
        start = time.perf_counter()
        case.run(case.ops)
    return (time.perf_counter() - start) / case.ops


def run_cases(cases: list[Case], rounds: int = 15, seed: int = 0) -> list[Case]:
    """Run runnable cases interleaved over ``rounds`` rounds; fills ``samples``."""
    runnable = [c for c in cases if c.skipped is None]
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    try:
        for case in runnable:  # warm-up round, not recorded
            _time_once(case, loop)
        for _ in range(rounds):
            rng.shuffle(runnable)
            for case in runnable:
                case.samples.append(_time_once(case, loop))
        for case in runnable:
            if case.check is not None:
                try:
                    case.check()
                except AssertionError as exc:
                    case.skipped = f"CHECK FAILED: {exc}"
    finally:
        loop.close()
    return cases


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e3:.2f} ms"


def table(cases: list[Case]) -> str:
    """A markdown table: group, case, median per op, ratio to the group's baseline."""
    lines = ["| group | case | median / op | ratio vs baseline |", "|---|---|---:|---:|"]
    groups: dict[str, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    for group, members in groups.items():
        base = next((c for c in members if c.baseline and c.samples), None)
        base_median = statistics.median(base.samples) if base else None
        for case in members:
            label = case.name + (" (baseline)" if case.baseline else "")
            if case.note:
                label += f" — {case.note}"
            if not case.samples or case.skipped:
                lines.append(f"| {group} | {label} | not run: {case.skipped} | |")
                continue
            median = statistics.median(case.samples)
            ratio = f"{median / base_median:.2f}x" if base_median else "n/a"
            lines.append(f"| {group} | {label} | {_fmt_time(median)} | {ratio} |")
    return "\n".join(lines)
