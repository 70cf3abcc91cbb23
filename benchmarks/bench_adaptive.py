"""Adaptive sizing and prefetch on reproducible workloads: ``python -m benchmarks.bench_adaptive``.

Two seeded workloads, each run against three caches with the same byte budget:

- **shifting Zipf**: key popularity follows Zipf(s) over a key universe, and every
  ``shift_every`` calls the popularity ranking is reshuffled (yesterday's hot keys cool);
- **sequential**: callers walk fixed sequences of keys (pages of a document, steps of a
  workflow) chosen by Zipf popularity, with a little noise (random jumps).

Caches: a fixed-size LRU holding as many entries as the budget allows; the adaptive
backend (starts small, grows on capacity misses, never past the budget); the adaptive
backend with ``prefetch=Prefetch(...)``.

The cached function's miss costs a fixed ``miss_ms`` (a real sleep, so background
prefetches overlap the caller's think time as they would in a service), and the caller
thinks ``think_ms`` between calls. Reported: hit rate (calls served without waiting for a
computation of their own), mean and p95 call latency, and the cache's bytes (mean and
peak of the backend's own accounting, sampled every 50 calls). The adaptive backend's
control clock advances 1 ms per call, so its windows do not depend on machine speed.

``cases()`` gives the per-operation cost of a hit on each of these caches for the
shared harness (``python -m benchmarks``).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from benchmarks.harness import Case
from perfkit import AdaptiveMemoryBackend, MemoryBackend, Prefetch, cached
from perfkit.caching.backends.base import Backend

VALUE_BYTES = 1000


# -- workloads ---------------------------------------------------------------------------


def _zipf_sampler(n: int, s: float, rng: random.Random) -> Callable[[], int]:
    weights = [1.0 / (rank + 1) ** s for rank in range(n)]
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    return lambda: bisect.bisect_left(cumulative, rng.random() * total)


def shifting_zipf(calls: int, universe: int = 5000, s: float = 1.0, shift_every: int = 1500,
                  seed: int = 1) -> Iterator[int]:
    """Zipf(s) popularity over ``universe`` keys, reshuffled every ``shift_every`` calls."""
    rng = random.Random(seed)
    rank = _zipf_sampler(universe, s, rng)
    ranking = list(range(universe))
    for i in range(calls):
        if i % shift_every == 0:
            rng.shuffle(ranking)
        yield ranking[rank()]


def sequential(calls: int, sequences: int = 60, length: int = 15, s: float = 0.8,
               noise: float = 0.05, seed: int = 2) -> Iterator[int]:
    """Walks of fixed key sequences; which sequence is Zipf(s); ``noise`` = random jumps."""
    rng = random.Random(seed)
    pick = _zipf_sampler(sequences, s, rng)
    produced = 0
    while produced < calls:
        start = pick() * length
        for step in range(length):
            if produced == calls:
                return
            produced += 1
            if rng.random() < noise:
                yield rng.randrange(sequences * length)
            else:
                yield start + step


WORKLOADS: dict[str, Callable[[int], Iterator[int]]] = {
    "shifting Zipf": shifting_zipf,
    "sequential": sequential,
}


# -- caches under test ---------------------------------------------------------------------


class _Ticks:
    """The adaptive controller's clock: 1 ms per call, independent of machine speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _entry_bytes() -> int:
    probe = MemoryBackend(1, max_bytes=10**9)
    probe.set(("ns", "i", 0), b"x" * VALUE_BYTES, None)
    return probe.currsize_bytes


def make_caches(budget: int, ticks: _Ticks) -> dict[str, tuple[Backend, Prefetch | None]]:
    entries = budget // _entry_bytes()

    def adaptive() -> AdaptiveMemoryBackend:
        return AdaptiveMemoryBackend(
            max_bytes=budget, min_entries=max(8, entries // 8), max_entries=entries * 4,
            interval=0.25, min_accesses=150, memory_probe=lambda: 0.5, clock=ticks,
        )

    return {
        "fixed LRU": (MemoryBackend(entries, max_bytes=budget), None),
        "adaptive": (adaptive(), None),
        "adaptive + prefetch": (
            adaptive(), Prefetch(order=1, max_inflight=4, max_fraction=0.5, min_confidence=0.4)
        ),
    }


# -- one run -------------------------------------------------------------------------------


@dataclass
class Result:
    workload: str
    cache: str
    hit_rate: float
    mean_ms: float
    p95_ms: float
    mean_kib: float
    peak_kib: float
    entries_end: int
    prefetch_accuracy: float | None
    prefetches: int
    adjustments: int


def run_one(workload: str, cache: str, backend: Backend, prefetch: Prefetch | None,
            keys: list[int], ticks: _Ticks, miss_ms: float, think_ms: float) -> Result:
    computations: list[int] = []

    @cached(backend=backend, namespace=f"bench-{cache}", prefetch=prefetch)
    def load(key: int) -> bytes:
        computations.append(key)
        time.sleep(miss_ms / 1000)
        return b"x" * VALUE_BYTES

    latencies: list[float] = []
    samples: list[int] = []
    served_without_wait = 0
    for i, key in enumerate(keys):
        ticks.now += 0.001
        start = time.perf_counter()
        load(key)
        elapsed = time.perf_counter() - start
        latencies.append(elapsed)
        if elapsed < miss_ms / 2000:  # served from the cache, no computation waited for
            served_without_wait += 1
        if i % 50 == 0:
            samples.append(getattr(backend, "currsize_bytes", 0))
        time.sleep(think_ms / 1000)
    prefetcher = load.cache_core.prefetcher
    if prefetcher is not None:
        prefetcher.wait_idle()
    stats = load.cache_stats()
    assert stats.misses <= len(computations), "every miss ran the function"
    latencies.sort()
    return Result(
        workload=workload,
        cache=cache,
        hit_rate=served_without_wait / len(keys),
        mean_ms=statistics.fmean(latencies) * 1000,
        p95_ms=latencies[int(0.95 * (len(latencies) - 1))] * 1000,
        mean_kib=statistics.fmean(samples) / 1024,
        peak_kib=max(samples) / 1024,
        entries_end=len(backend),  # type: ignore[arg-type]
        prefetch_accuracy=stats.prefetch_accuracy if prefetch is not None else None,
        prefetches=stats.prefetches,
        adjustments=getattr(backend, "adjustments", 0),
    )


def run(calls: int = 2500, budget_kib: int = 256, miss_ms: float = 1.0,
        think_ms: float = 1.0, seed: int = 0) -> list[Result]:
    results = []
    for workload, generate in WORKLOADS.items():
        keys = list(generate(calls))
        for cache, (backend, prefetch) in make_caches(budget_kib * 1024, ticks := _Ticks()).items():
            results.append(run_one(workload, cache, backend, prefetch, keys, ticks,
                                   miss_ms, think_ms))
            if cache == "adaptive":
                # The fair comparison: a fixed LRU given the memory the adaptive backend
                # held on average (the budget is only its ceiling).
                mean_bytes = int(results[-1].mean_kib * 1024)
                entries = max(1, mean_bytes // _entry_bytes())
                results.append(run_one(
                    workload, "fixed LRU at adaptive's mean memory",
                    MemoryBackend(entries, max_bytes=budget_kib * 1024), None, keys, ticks,
                    miss_ms, think_ms))
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| workload | cache | hit rate | mean latency | p95 latency | memory mean / peak "
        "| entries at end | capacity steps | prefetch accuracy (prefetches) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        accuracy = (
            "—" if r.prefetch_accuracy is None
            else f"{r.prefetch_accuracy:.0%} ({r.prefetches})"
        )
        lines.append(
            f"| {r.workload} | {r.cache} | {r.hit_rate:.1%} | {r.mean_ms:.3f} ms "
            f"| {r.p95_ms:.3f} ms | {r.mean_kib:.0f} / {r.peak_kib:.0f} KiB "
            f"| {r.entries_end} | {r.adjustments} | {accuracy} |"
        )
    return "\n".join(lines)


# -- per-op cases for ``python -m benchmarks`` --------------------------------------------


def cases() -> list[Case]:
    group = "hit cost: adaptive and prefetch"
    out = []

    def hit_case(name: str, backend: Backend, prefetch: Prefetch | None,
                 baseline: bool = False) -> Case:
        calls: list[int] = []

        @cached(backend=backend, prefetch=prefetch)
        def work(x: int) -> int:
            calls.append(x)
            return x

        def run_hits(n: int) -> None:
            for _ in range(n):
                work(1)

        def check() -> None:
            assert calls == [1], f"{name}: ran {len(calls)} times, not once"

        return Case(group, name, run=run_hits, baseline=baseline, ops=20_000, check=check)

    out.append(hit_case("MemoryBackend hit", MemoryBackend(1024), None, baseline=True))
    out.append(hit_case("AdaptiveMemoryBackend hit",
                        AdaptiveMemoryBackend(memory_probe=lambda: 0.5), None))
    out.append(hit_case("MemoryBackend + prefetch hit", MemoryBackend(1024), Prefetch()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2500)
    parser.add_argument("--budget-kib", type=int, default=256)
    parser.add_argument("--miss-ms", type=float, default=1.0)
    parser.add_argument("--think-ms", type=float, default=1.0)
    args = parser.parse_args()
    start = time.perf_counter()
    results = run(args.calls, args.budget_kib, args.miss_ms, args.think_ms)
    print(f"# adaptive caching — {args.calls} calls per run, budget {args.budget_kib} KiB "
          f"(values of {VALUE_BYTES} bytes), miss {args.miss_ms} ms, think {args.think_ms} ms")
    print(table(results))
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
