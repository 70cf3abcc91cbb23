"""What the ``loop_block`` watch (:class:`perfkit.measure.loopwatch.LoopWatch`) costs.

The watch sits beside the timed first run of an async test, so what matters is how much it
adds to that run. Each workload runs on one reused asyncio loop, alternately without and
with the watch (paired, so the VM's speed changes hit both halves alike), and the median of
the per-pair ratios is reported, with the median times:

* ``cpu``: ~20 ms of Python arithmetic (a fixed amount) in ~0.5 ms slices with ``await asyncio.sleep(0)``
  between them (busy loop thread: the watchdog needs the GIL for each heartbeat);
* ``switches``: 4 000 ``await asyncio.sleep(0)`` (task switches only);
* ``tasks``: 50 tasks each awaiting ``asyncio.sleep(0.001)`` 5 times (I/O-shaped waits);
* ``trivial``: one coroutine that returns at once (the fixed part: the profile hook until
  the loop runs, and the first heartbeat);
* ``one step``: one 20 ms slice with no await (a block under the 50 ms threshold).

Also the cost outside the timed window (``__enter__`` + ``__exit__``: the watchdog thread's
start and join) and the CPU the heartbeats take per second of an idle loop.

    python -m benchmarks.bench_loopwatch [--pairs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from perfkit.measure.loopwatch import LoopWatch

THRESHOLD = 0.05


def _work(loops: int) -> int:
    """Fixed work (not a fixed time, which would hide a slowdown)."""
    x = 0
    for _ in range(loops):
        for i in range(200):
            x += i * i
    return x


def _loops_for(seconds: float) -> int:
    started = time.perf_counter()
    _work(200)
    return max(1, int(200 * seconds / (time.perf_counter() - started)))


SLICE = _loops_for(0.0005)


async def cpu() -> None:
    for _ in range(40):
        _work(SLICE)
        await asyncio.sleep(0)


async def switches() -> None:
    for _ in range(4000):
        await asyncio.sleep(0)


async def tasks() -> None:
    async def one() -> None:
        for _ in range(5):
            await asyncio.sleep(0.001)

    await asyncio.gather(*(one() for _ in range(50)))


async def trivial() -> None:
    return None


async def one_step() -> None:
    _work(SLICE * 40)


WORKLOADS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "cpu": cpu, "switches": switches, "tasks": tasks, "trivial": trivial, "one step": one_step,
}


def _timed(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, None]],
           watched: bool) -> float:
    watch = LoopWatch(THRESHOLD) if watched else None
    if watch is not None:
        watch.__enter__()
    started = time.perf_counter()
    loop.run_until_complete(make())
    elapsed = time.perf_counter() - started
    if watch is not None:
        watch.__exit__(None, None, None)
    return elapsed


def _pairs(make: Callable[[], Coroutine[Any, Any, None]], pairs: int) -> tuple[float, float,
                                                                              float]:
    loop = asyncio.new_event_loop()
    try:
        for watched in (False, True):  # warm up both
            _timed(loop, make, watched)
        plain, watched_times, ratios = [], [], []
        for index in range(pairs):
            order = (False, True) if index % 2 == 0 else (True, False)
            times = {flag: _timed(loop, make, flag) for flag in order}
            plain.append(times[False])
            watched_times.append(times[True])
            ratios.append(times[True] / times[False])
    finally:
        loop.close()
    return statistics.median(plain), statistics.median(watched_times), statistics.median(ratios)


def _enter_exit(rounds: int) -> float:
    costs = []
    for _ in range(rounds):
        started = time.perf_counter()
        with LoopWatch(THRESHOLD):
            pass
        costs.append(time.perf_counter() - started)
    return statistics.median(costs)


def _idle_cpu(seconds: float) -> tuple[float, float]:
    """Process CPU per second of a loop that only sleeps, without and with the watch."""
    result = []
    for watched in (False, True):
        loop = asyncio.new_event_loop()
        try:
            watch = LoopWatch(THRESHOLD) if watched else None
            if watch is not None:
                watch.__enter__()
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            loop.run_until_complete(asyncio.sleep(seconds))
            cpu_used = time.process_time() - cpu_start
            wall = time.perf_counter() - wall_start
            if watch is not None:
                watch.__exit__(None, None, None)
                beats = watch.result.beats
            result.append(cpu_used / wall)
        finally:
            loop.close()
    print(f"idle loop: heartbeats ran {beats} times in {seconds:.1f} s")
    return result[0], result[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    print(f"LoopWatch({THRESHOLD * 1000:.0f} ms): heartbeat every "
          f"{LoopWatch(THRESHOLD).interval * 1000:.1f} ms; {args.pairs} pairs per workload")
    print(f"{'workload':<10} {'plain':>10} {'watched':>10} {'ratio':>8} {'added':>10}")
    for name, make in WORKLOADS.items():
        plain, watched, ratio = _pairs(make, args.pairs)
        print(f"{name:<10} {plain * 1e3:9.3f}ms {watched * 1e3:9.3f}ms {ratio:8.3f} "
              f"{(watched - plain) * 1e6:8.0f}us")
    print(f"enter + exit (outside the timed window): {_enter_exit(50) * 1e6:.0f} us")
    plain_cpu, watched_cpu = _idle_cpu(2.0)
    print(f"idle loop CPU: {plain_cpu * 100:.2f}% without, {watched_cpu * 100:.2f}% with "
          "the watch (of one core)")


if __name__ == "__main__":
    main()
