"""How well does each reference workload stand for each kind of code? A standalone probe.

``python -m benchmarks.reference_fit [--processes 6] [--seconds 40]``. Fresh processes, every
other one with a CPU busy-loop beside it, run ``plugin_trust``'s seven workloads in shuffled
order, each bracketed by a sample of the mixed reference (``sample_reference``) and of the
arithmetic one (``sample_alu``) before and after it. Printed: both references' median time
at the fast and the slow speed (mixed reference under 1.7 ms / 2.9-3.2 ms), and per workload
the spread (log-sd) of its run time divided by each policy's factor: the mixed reference,
the arithmetic one, the smaller of the two. The smaller the spread, the better the policy
stands for that code. ``--dump PATH`` keeps the raw rows.
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
from typing import Any

from benchmarks.plugin_trust import WORKLOADS, _busy


def _probe(directory: str, seconds: float, noisy: bool, out: Any) -> None:
    sys.path.insert(0, directory)
    import workloads  # type: ignore[import-not-found]

    from perfkit.measure.calibrate import sample_alu, sample_reference
    from perfkit.measure.timing import CallTimer

    busy = None
    if noisy:
        busy = multiprocessing.Process(target=_busy, args=(time.time() + seconds + 5,),
                                       daemon=True)
        busy.start()
    rows = []
    end = time.time() + seconds
    while time.time() < end:
        order = list(workloads.ALL)
        random.shuffle(order)
        for fn in order:
            before = (sample_alu(), sample_reference())
            timer = CallTimer()
            with timer:
                fn()
            after = (sample_reference(), sample_alu())
            rows.append({"workload": fn.__name__, "noisy": noisy, "own": timer.timing.own,
                         "cpu": timer.timing.cpu, "mixed": [before[1], after[0]],
                         "alu": [before[0], after[1]]})
    if busy is not None:
        busy.terminate()
    out.put(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--dump", default="")
    args = parser.parse_args()
    from perfkit.measure.calibrate import ALU_REFERENCE_SECONDS, REFERENCE_SECONDS, normalise

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "workloads.py").write_text(WORKLOADS)
        for index in range(args.processes):
            queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
            proc = multiprocessing.Process(target=_probe,
                                           args=(tmp, args.seconds, index % 2 == 1, queue))
            proc.start()
            rows.extend(queue.get())
            proc.join()
    if args.dump:
        Path(args.dump).write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [(m, a) for r in rows for m, a in zip(r["mixed"], r["alu"], strict=True)]
    for state, low, high in (("fast", 0.0, 0.0017), ("slow", 0.0029, 0.0032)):
        chosen = [(m, a) for m, a in pairs if low <= m <= high]
        if chosen:
            print(f"{state} speed ({len(chosen)} samples): mixed reference "
                  f"{statistics.median(m for m, _ in chosen) * 1e3:.2f} ms, arithmetic "
                  f"{statistics.median(a for _, a in chosen) * 1e3:.2f} ms")
    policies = {
        "mixed": lambda r: statistics.fmean(r["mixed"]) / REFERENCE_SECONDS,
        "arithmetic": lambda r: statistics.fmean(r["alu"]) / ALU_REFERENCE_SECONDS,
    }
    policies["smaller"] = lambda r: min(policies["mixed"](r), policies["arithmetic"](r))
    print(f"{len(rows)} runs; log-sd of each workload's judged time per policy:")
    for name in sorted({r["workload"] for r in rows}):
        runs = [r for r in rows if r["workload"] == name]
        cells = []
        for policy, factor in policies.items():
            logs = [math.log(normalise(r["own"], r["cpu"], factor(r))) for r in runs]
            cells.append(f"{policy} {statistics.pstdev(logs):.3f}")
        raw = statistics.pstdev([math.log(r["own"]) for r in runs])
        print(f"  {name:12s} ({len(runs)} runs) as measured {raw:.3f}; " + ", ".join(cells))


if __name__ == "__main__":
    main()
