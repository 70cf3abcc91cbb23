"""How long does the machine remember a reference's error? A standalone probe.

``python -m benchmarks.error_memory [--seconds 90] [--busy]``. One fresh process runs four of
``plugin_trust``'s CPU-bound workloads in turn, six runs of each, every run bracketed by
the reference samples the plugin takes in calibrated mode (right before and right after),
with a random pause of 0-1.2 s (then a fresh sample) after half of the runs. Each run's judged time is
its CPU part divided by the smaller of the two references' factors, as the plugin does;
its *error* is the log of that time over the workload's median judged time.

Printed: per lag between two runs of the same workload (start to start), the correlation
of their errors. When the machine's state (each vCPU switching between two speeds, host
contention) lasts longer than a test's runs, runs back to back share one error, and their
median cannot average it out; the lag at which the correlation falls is how far apart
runs must be to meet another moment. ``--dump PATH`` keeps the raw rows.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.plugin_trust import WORKLOADS, _busy

NAMES = ("cpu_loop", "dict_work", "json_work", "allocations")
BINS = ((0.0, 0.05), (0.05, 0.15), (0.15, 0.35), (0.35, 0.7), (0.7, 1.2), (1.2, 2.5),
        (2.5, 6.0))


def _pearson(pairs: list[tuple[float, float]]) -> float:
    xs, ys = zip(*pairs, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def probe(seconds: float, seed: int) -> list[dict]:
    from perfkit.measure.calibrate import (
        ALU_REFERENCE_SECONDS,
        REFERENCE_SECONDS,
        normalise,
        sample_alu,
        sample_reference,
    )
    from perfkit.measure.timing import CallTimer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "workloads.py").write_text(WORKLOADS)
        sys.path.insert(0, tmp)
        import workloads  # type: ignore[import-not-found]

    rng = random.Random(seed)
    functions = [getattr(workloads, name) for name in NAMES]
    for fn in functions:
        fn()
    rows: list[dict] = []
    end = time.monotonic() + seconds

    def sample() -> tuple[float, float]:  # (mixed, arithmetic), as the plugin takes them
        alu = sample_alu()
        return sample_reference(), alu

    while time.monotonic() < end:
        for fn in functions:
            # Six runs of one workload, as the plugin runs a test: each bracketed by the
            # samples right before and after it (shared between runs back to back), and
            # after some runs a random pause, followed by a fresh sample.
            before = sample()
            for _ in range(6):
                timer = CallTimer()
                with timer:
                    fn()
                after = sample()
                mixed = (before[0] + after[0]) / 2 / REFERENCE_SECONDS
                alu = (before[1] + after[1]) / 2 / ALU_REFERENCE_SECONDS
                timing = timer.timing
                rows.append({"workload": fn.__name__, "started": timing.started,
                             "own": timing.own, "cpu": timing.cpu, "mixed": mixed, "alu": alu,
                             "judged": normalise(timing.own, timing.cpu, min(mixed, alu))})
                before = after
                if rng.random() < 0.5:
                    time.sleep(rng.uniform(0.0, 1.2))
                    before = sample()
    return rows


def correlations(rows: list[dict]) -> list[tuple[str, int, float]]:
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["workload"], []).append(row)
    for runs in by_name.values():
        median = statistics.median(r["judged"] for r in runs)
        for r in runs:
            r["error"] = math.log(r["judged"] / median)
    table = []
    for low, high in BINS:
        pairs = []
        for runs in by_name.values():
            for i, a in enumerate(runs):
                for b in runs[i + 1:]:
                    lag = b["started"] - a["started"]
                    if lag >= high:
                        break
                    if lag >= low:
                        pairs.append((a["error"], b["error"]))
        table.append((f"{low:g}-{high:g} s", len(pairs),
                      _pearson(pairs) if len(pairs) > 2 else float("nan")))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--busy", action="store_true", help="a CPU busy-loop beside the probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", default="")
    args = parser.parse_args()
    busy = None
    if args.busy:
        busy = multiprocessing.Process(target=_busy, args=(time.time() + args.seconds + 5,),
                                       daemon=True)
        busy.start()
    try:
        rows = probe(args.seconds, args.seed)
    finally:
        if busy is not None:
            busy.terminate()
            busy.join()
    table = correlations(rows)  # also sets each row's "error"
    if args.dump:
        Path(args.dump).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    print(f"{len(rows)} runs; load average {Path('/proc/loadavg').read_text().split()[0]}")
    for name in NAMES:
        errors = [r["error"] for r in rows if r["workload"] == name]
        print(f"  {name}: {len(errors)} runs, log-sd of the judged time "
              f"{statistics.pstdev(errors):.3f}")
    print("| lag (start to start) | pairs | correlation of errors |")
    print("|---|---:|---:|")
    for label, count, value in table:
        print(f"| {label} | {count} | {value:.2f} |")


if __name__ == "__main__":
    main()
