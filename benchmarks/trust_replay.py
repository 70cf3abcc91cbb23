"""Replay a ``plugin_trust --dump`` of calibrated mode under two machine-factor policies.

``python -m benchmarks.trust_replay DUMP [DUMP ...] [--mode calibrated] [--budgets
initial|all] [--policies "both (min)"]``. The same runs, judged three ways: with
each run's factor as the plugin used it (``factors``: the smaller of the mixed and the
arithmetic reference's), with the mixed reference's alone (``reference_factors``) and with
the arithmetic one's alone (``alu_factors``). Each
policy sets its own budgets from the dump's calibration sessions (2x the median of their
judged medians), as ``plugin_trust`` does. A replay cannot add runs: where a policy would
still be "within noise" but the live run stopped, it is counted as such.

Per policy and cell: false failures, detections, and the judged median over the budget
(max for unchanged code, min for 3x), the margin each target has left.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from perfkit.measure.calibrate import normalise
from perfkit.measure.stats import Margins
from pytest_perfkit.verdicts import timed_result

POLICIES = {"both (min)": "factors", "mixed only": "reference_factors",
            "arithmetic only": "alu_factors"}


def _samples(latency: dict, key: str) -> list[float]:
    factors = latency.get(key) or latency["factors"]
    return [normalise(raw, cpu, f) for raw, cpu, f in
            zip(latency["raw_samples"], latency["cpu_samples"], factors, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dumps", nargs="+")
    parser.add_argument("--mode", default="calibrated",
                        help="the judged mode to replay (calibrated or calibrated-b2b)")
    parser.add_argument("--budgets", choices=("initial", "all"), default="initial",
                        help="budgets from the calibration sessions before the judged rounds "
                             "(as live), or from those and the witness sessions spread over "
                             "the run (plugin_trust --witness-every)")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"which of {', '.join(POLICIES)}")
    args = parser.parse_args()
    records = [json.loads(line) for path in args.dumps
               for line in Path(path).read_text(encoding="utf-8").splitlines()]
    budget_mode = "calibrated" if args.mode.startswith("calibrated") else args.mode
    calibration = [r for r in records if r.get("calibration") and r["mode"] == budget_mode
                   and r.get("slowdown", 1) == 1
                   and (args.budgets == "all" or not r.get("witness"))]
    witness_3x = [r for r in records if r.get("calibration") and r["mode"] == budget_mode
                  and r.get("slowdown", 1) == 3]
    if witness_3x:
        # The same sessions' 1x and 3x code, as the plugin measures them: the slowdown the
        # "3x" code really has, per workload (median judged time over median judged time).
        ones: dict[str, list[float]] = defaultdict(list)
        threes: dict[str, list[float]] = defaultdict(list)
        for r in records:
            if r.get("calibration") and r.get("witness") and r["mode"] == budget_mode:
                (threes if r.get("slowdown", 1) == 3 else ones)[r["test"]].append(
                    r["latency"]["judged"])
        print("3x code over 1x code, witness sessions:",
              {name: round(statistics.median(threes[name]) / statistics.median(ones[name]), 2)
               for name in sorted(threes) if ones.get(name)})
    judged = [r for r in records if not r.get("calibration") and r["mode"] == args.mode]
    chosen = [p.strip() for p in args.policies.split(",") if p.strip()]
    for policy, key in POLICIES.items():
        if policy not in chosen:
            continue
        medians: dict[str, list[float]] = defaultdict(list)
        for record in calibration:
            medians[record["test"]].append(statistics.median(_samples(record["latency"], key)))
        budgets = {name: 2 * statistics.median(v) for name, v in medians.items()}
        print(f"== {policy}: budgets (ms) from {len(calibration) // max(1, len(budgets))} "
              f"sessions", {k: round(v * 1e3, 2) for k, v in budgets.items()})
        cells: dict[tuple, list] = defaultdict(list)
        for record in judged:
            name = record["test"]
            budget = budgets.get(name, record["budget"])
            samples = _samples(record["latency"], key)
            result = timed_result("latency", samples, budget, Margins(), scale=1.0)
            cells[(record["slowdown"], record["noisy"])].append(
                (name, result.verdict, statistics.median(samples) / budget))
        for (slowdown, noisy), rows in sorted(cells.items()):
            over = [r for r in rows if r[1] == "over budget"]
            ratios = [r[2] for r in rows]
            if slowdown == 1:
                print(f"  unchanged, {'busy core' if noisy else 'as is'}: false failures "
                      f"{len(over)} / {len(rows)}; worst median {max(ratios):.2f}x budget")
            else:
                missed = [r for r in rows if r[1] != "over budget"]
                print(f"  3x, {'busy core' if noisy else 'as is'}: detected {len(over)} / "
                      f"{len(rows)}; lowest median {min(ratios):.2f}x budget; p1 "
                      f"{statistics.quantiles(ratios, n=100)[0]:.2f}; missed "
                      f"{[(m[0], m[1], round(m[2], 2)) for m in missed]}")


if __name__ == "__main__":
    main()
