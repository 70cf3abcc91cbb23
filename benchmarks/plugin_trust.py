"""How trustworthy are perfkit's latency budgets on this noisy machine?

``python -m benchmarks.plugin_trust [--sessions 50]``. Six workloads (CPU loop,
allocation-heavy, dict/str work, sorting, JSON, SQLite in memory) get a latency budget of
2x their calibrated median (median of 30 in-process runs, measured here first). Then
``--sessions`` separate pytest processes run them with ``--perf-budget``; half of the
sessions have one CPU busy-loop process beside them. Reported: the false-failure rate
(a budget failure when nothing changed; target 0) and, with every workload made 3x
slower, the detection rate (target 100%).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

WORKLOADS = textwrap.dedent('''
    import json, os, sqlite3

    SLOW = int(os.environ.get("TRUST_SLOWDOWN", "1"))  # a real Nx slowdown: N times the work

    def _cpu_loop():
        total = 0
        for i in range(120_000):
            total += i % 7
        return total

    def _allocations():
        return sum(len([str(i)] * 3) for i in range(40_000))

    def _dict_work():
        table = {}
        for i in range(60_000):
            table[str(i)] = i
        return len(table)

    def _sorting():
        return sorted((i * 7919) % 100_003 for i in range(60_000))[0]

    def _json_work():
        doc = {"items": [{"id": i, "name": f"n{i}"} for i in range(8000)]}
        return len(json.loads(json.dumps(doc))["items"])

    def _sqlite_work():
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (a INT, b TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, str(i)) for i in range(10_000)])
        total = conn.execute("SELECT sum(a) FROM t WHERE b LIKE '1%'").fetchone()[0]
        conn.close()
        return total

    def _repeat(work):
        def run():
            return [work() for _ in range(SLOW)][-1]
        run.__name__ = work.__name__[1:]
        return run

    ALL = [_repeat(w) for w in (_cpu_loop, _allocations, _dict_work, _sorting, _json_work,
                                _sqlite_work)]
    globals().update({fn.__name__: fn for fn in ALL})
''')

TESTS = textwrap.dedent('''
    import json, os, pytest
    import workloads

    BUDGETS = json.loads(os.environ["TRUST_BUDGETS"])

    @pytest.mark.parametrize("name", [
        pytest.param(name, marks=pytest.mark.perf_budget(latency=budget))
        for name, budget in sorted(BUDGETS.items())
    ])
    def test_workload(name):
        getattr(workloads, name)()
''')


def _busy(stop: float) -> None:
    while time.time() < stop:
        pass


def calibrate(directory: Path) -> dict[str, float]:
    sys.path.insert(0, str(directory))
    import workloads  # type: ignore[import-not-found]

    budgets = {}
    for fn in workloads.ALL:
        fn()
        samples = []
        for _ in range(30):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        budgets[fn.__name__] = 2 * statistics.median(samples)
    return budgets


def session(directory: Path, budgets: dict[str, float], slowdown: int, noisy: bool,
            calibrated: bool = False) -> dict:
    env = dict(os.environ, TRUST_BUDGETS=json.dumps(budgets), TRUST_SLOWDOWN=str(slowdown),
               PYTHONPATH=str(directory))
    busy = None
    if noisy:
        busy = multiprocessing.Process(target=_busy, args=(time.time() + 60,), daemon=True)
        busy.start()
    try:
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
             "no:hypothesispytest", "--perf-budget", "--perf-report=report.json",
             f"--perf-budget-calibrate={str(calibrated).lower()}", "test_trust.py"],
            cwd=directory, env=env, capture_output=True, timeout=300, check=False,
        )
    finally:
        if busy is not None:
            busy.terminate()
            busy.join()
    document = json.loads((directory / "report.json").read_text())
    judged = [t for t in document["tests"] if any(r["budget"] == "latency"
                                                   for r in t.get("results", []))]
    if len(judged) != len(budgets):
        raise RuntimeError(f"expected {len(budgets)} latency verdicts, got {len(judged)}")
    failed = sum(1 for t in document["tests"] if t.get("failed"))
    noise = sum(1 for t in document["tests"] for r in t["results"]
                if r["verdict"] == "within noise")
    runs = [t["latency"]["runs"] for t in document["tests"]]
    return {"tests": len(document["tests"]), "failed": failed, "noise": noise,
            "runs": sum(runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--calibrated", action="store_true",
                        help="express budgets in reference-workload units and run with "
                             "--perf-budget-calibrate (same-process machine-speed factor)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "workloads.py").write_text(WORKLOADS)
        (directory / "test_trust.py").write_text(TESTS)
        (directory / "pytest.ini").write_text("[pytest]\n")
        budgets = calibrate(directory)
        print("budgets (2x median):", {k: f"{v * 1e3:.1f}ms" for k, v in budgets.items()})
        if args.calibrated:
            from perfkit.measure.calibrate import calibrate as machine_factor

            factor = machine_factor().factor
            budgets = {name: value / factor for name, value in budgets.items()}
            print(f"calibrated: budgets divided by this run's factor x{factor:.2f}; each "
                  "session multiplies them by its own factor")
        for slowdown in (1, 3):
            for noisy in (False, True):
                totals = {"sessions": 0, "tests": 0, "failed": 0, "noise": 0, "runs": 0,
                          "sessions_with_failure": 0}
                for _ in range(args.sessions // 2):
                    result = session(directory, budgets, slowdown, noisy, args.calibrated)
                    totals["sessions"] += 1
                    totals["sessions_with_failure"] += bool(result["failed"])
                    for key in ("tests", "failed", "noise", "runs"):
                        totals[key] += result[key]
                label = ("unchanged code" if slowdown == 1 else "3x slower code") + (
                    ", one busy core" if noisy else ", quiet")
                rate = totals["failed"] / max(1, totals["tests"])
                print(f"{label}: {totals['sessions']} sessions, {totals['tests']} test runs, "
                      f"failed {totals['failed']} ({rate:.1%}), within noise "
                      f"{totals['noise']}, sessions with a failure "
                      f"{totals['sessions_with_failure']}, measured runs {totals['runs']}",
                      flush=True)


if __name__ == "__main__":
    main()
