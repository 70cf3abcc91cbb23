"""How much slower plugin_trust's "3x" code runs than its 1x code, in fresh processes.

``python -m benchmarks.trust_first_call [--processes 25] [--workloads dict_work,sorting]``.

Each measurement is a new Python process that imports plugin_trust's workloads and times
one call (the first, as a pytest session's first run is) with perfkit's ``CallTimer``
(``own`` time: GC pauses and run-queue waits out). Per workload, four cells in a shuffled
order per round: the work once, or three times either *discarding* each repetition's result
(the benchmark before session 4) or *keeping* every result until the call ends (since).
Three repetitions that discard their result reuse the memory the first one paged in, so
they pay a process's first-touch cost once, as the single call does: their ratio to the
single call is then below 3. The arithmetic reference is sampled right before and after the
call, so each time is also shown divided by it (this VM's CPU switches between two speeds).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.plugin_trust import WORKLOADS

PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import workloads
from perfkit.measure.calibrate import sample_alu
from perfkit.measure.timing import CallTimer

work = getattr(workloads, "_" + sys.argv[2])
times, keep = int(sys.argv[3]), sys.argv[4] == "keep"
before = sample_alu()
timer = CallTimer()
with timer:
    if keep:
        kept = [work() for _ in range(times)]
    else:
        for _ in range(times):
            work()
after = sample_alu()
print(json.dumps({"own": timer.timing.own, "alu": (before + after) / 2}))
"""

CELLS = (("1x", 1, "discard"), ("3x discarding", 3, "discard"), ("3x keeping", 3, "keep"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=25, help="processes per cell")
    parser.add_argument("--workloads", default="cpu_loop,allocations,dict_work,sorting,json_work")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "workloads.py").write_text(WORKLOADS)
        probe = Path(tmp) / "probe.py"
        probe.write_text(PROBE)
        env = {**os.environ, "TRUST_SLOWDOWN": "1"}
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        cells = [(name, cell) for name in names for cell in CELLS]
        for _ in range(args.processes):
            rng.shuffle(cells)
            for name, (label, times, keep) in cells:
                out = subprocess.run([sys.executable, str(probe), tmp, name, str(times), keep],
                                     env=env, capture_output=True, text=True, check=True)
                results.setdefault((name, label), []).append(json.loads(out.stdout))
    print(f"{args.processes} processes per cell; median own time of the first call, ms "
          "(divided by the arithmetic reference in brackets); ratio to 1x")
    for name in names:
        one = results[(name, "1x")]
        base = statistics.median(r["own"] for r in one)
        base_n = statistics.median(r["own"] / r["alu"] for r in one)
        parts = [f"1x {base * 1e3:6.2f}"]
        for label, _, _ in CELLS[1:]:
            rows = results[(name, label)]
            own = statistics.median(r["own"] for r in rows)
            scaled = statistics.median(r["own"] / r["alu"] for r in rows)
            parts.append(f"{label} {own * 1e3:6.2f} = {own / base:.2f}x ({scaled / base_n:.2f}x)")
        print(f"{name:12s} " + " | ".join(parts))


if __name__ == "__main__":
    main()
