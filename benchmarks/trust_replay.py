"""Replay a ``plugin_trust --dump`` of calibrated mode under two machine-factor policies.

``python -m benchmarks.trust_replay DUMP [DUMP ...]``. The same runs, judged three ways: with
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

import json
import statistics
import sys
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
    records = [json.loads(line) for path in sys.argv[1:]
               for line in Path(path).read_text(encoding="utf-8").splitlines()]
    calibration = [r for r in records if r.get("calibration") and r["mode"] == "calibrated"]
    judged = [r for r in records if not r.get("calibration") and r["mode"] == "calibrated"]
    for policy, key in POLICIES.items():
        medians: dict[str, list[float]] = defaultdict(list)
        for record in calibration:
            medians[record["test"]].append(statistics.median(_samples(record["latency"], key)))
        budgets = {name: 2 * statistics.median(v) for name, v in medians.items()}
        print(f"== {policy}: budgets (ms)", {k: round(v * 1e3, 2) for k, v in budgets.items()})
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
