"""Where does this machine's CPU speed drift come from? A standalone probe.

``python -m benchmarks.cpu_states [--seconds 20]``. One process per vCPU, pinned, starts
at the same moment and times a fixed pure-Python loop (thread CPU time, so run-queue waits
are out) and perfkit's reference workload beside it, in 0.5 s windows. Per window it
prints the loop's median CPU time per vCPU, the loop/reference ratio, and the steal time
(``/proc/stat``) and run-queue delay (``/proc/thread-self/schedstat``) the window saw.

On this project's Firecracker VM (2 vCPUs, AMD EPYC, no PMU) the loop took either ~5.2 ms
or ~9.1 ms of CPU time, switching within half a second and independently per vCPU, with
no steal and no run-queue delay to show for it; the loop/reference ratio stayed within
about 5%. So no guest counter explains the drift; only a reference timed beside a run
does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from multiprocessing import Process, Queue
from typing import Any


def _loop() -> int:
    total = 0
    for i in range(120_000):
        total += i % 7
    return total


def _steal(cpu: int) -> int:
    with open("/proc/stat", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(f"cpu{cpu} "):
                return int(line.split()[8])
    return 0


def _run_delay() -> float:
    with open("/proc/thread-self/schedstat", encoding="ascii") as handle:
        return int(handle.read().split()[1]) / 1e9


def _probe(cpu: int, start: float, seconds: float, out: Queue[Any]) -> None:
    from perfkit.measure.calibrate import reference_workload

    os.sched_setaffinity(0, {cpu})
    tick = os.sysconf("SC_CLK_TCK")
    while time.time() < start:
        time.sleep(0.005)
    rows = []
    end = start + seconds
    while time.time() < end:
        window = time.time() + 0.5
        steal0, delay0 = _steal(cpu), _run_delay()
        loops, ratios = [], []
        while time.time() < window:
            began = time.thread_time()
            _loop()
            loop = time.thread_time() - began
            reference_workload()
            began = time.thread_time()
            reference_workload()
            ref = time.thread_time() - began
            loops.append(loop)
            ratios.append(loop / ref)
        rows.append((statistics.median(loops), statistics.median(ratios),
                     (_steal(cpu) - steal0) / tick, _run_delay() - delay0))
    out.put((cpu, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("Linux only (/proc/stat, schedstat, sched_setaffinity)")
    cpus = sorted(os.sched_getaffinity(0))
    queue: Queue[Any] = Queue()
    start = time.time() + 1.0
    procs = [Process(target=_probe, args=(cpu, start, args.seconds, queue)) for cpu in cpus]
    for proc in procs:
        proc.start()
    results = dict(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    print("window | " + " | ".join(f"vCPU {c}: loop ms, loop/ref, steal ms, run delay ms"
                                   for c in cpus))
    for index in range(min(len(rows) for rows in results.values())):
        cells = []
        for cpu in cpus:
            loop, ratio, steal, delay = results[cpu][index]
            cells.append(f"{loop * 1e3:5.2f} {ratio:5.2f} {steal * 1e3:4.0f} {delay * 1e3:5.1f}")
        print(f"{index * 0.5:5.1f}s | " + " | ".join(cells))
    for cpu in cpus:
        loops = [row[0] for row in results[cpu]]
        ratios = [row[1] for row in results[cpu]]
        print(f"vCPU {cpu}: loop {min(loops) * 1e3:.2f}-{max(loops) * 1e3:.2f} ms "
              f"(x{max(loops) / min(loops):.2f}); loop/reference {min(ratios):.2f}-"
              f"{max(ratios):.2f} (x{max(ratios) / min(ratios):.2f}); steal "
              f"{sum(r[2] for r in results[cpu]) * 1e3:.0f} ms, run delay "
              f"{sum(r[3] for r in results[cpu]) * 1e3:.0f} ms in {len(loops) * 0.5:.0f} s")


if __name__ == "__main__":
    main()
