"""Turn one test's raw measurements into budget results, a payload and a failure message.

Pure functions over plain data, so they are tested without pytest sessions and the
payload (a JSON-able dict) can travel on the test report to an xdist controller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from perfkit.measure.stats import Margins, Stats, Verdict, judge
from perfkit.measure.units import format_duration, format_size

__all__ = ["MAX_NOISE_BAND", "BudgetResult", "failure_message", "show", "timed_result"]

NOT_APPLIED = "not applied"


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return format_duration(value)
    if unit == "bytes":
        return format_size(value)
    return str(int(value))


@dataclass
class BudgetResult:
    """One budget of one test: limit, measurement, verdict, and whether it can fail the test."""

    budget: str
    limit: float | None
    measured: float | None
    unit: str
    verdict: str
    enforced: bool = True
    detail: str = ""
    cause: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        return self.enforced and self.verdict == Verdict.OVER_BUDGET.value

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "limit": self.limit, "measured": self.measured,
                "unit": self.unit, "verdict": self.verdict, "enforced": self.enforced,
                "detail": self.detail, "cause": self.cause}

    def line(self) -> str:
        if self.verdict == NOT_APPLIED:
            return f"{self.budget}: not applied ({self.detail})"
        relation = ">" if self.verdict != Verdict.OK.value else "<="
        text = (f"{self.budget}: {show(self.measured, self.unit)} {relation} budget "
                f"{show(self.limit, self.unit)} [{self.verdict}]")
        return f"{text} - {self.detail}" if self.detail else text


#: The widest "within noise" band, as a fraction of the budget, however noisy the runs: a
#: 3x slowdown of a test whose budget is 2x its typical time lands 1.5x over the budget,
#: so it fails even when the machine's noise widens the band.
MAX_NOISE_BAND = 0.25


def timed_result(name: str, samples: list[float], limit: float, margins: Margins,
                 *, scale: float, raw: list[float] | None = None, factor: float = 1.0,
                 single_reason: str = "") -> BudgetResult:
    """Judge timing samples against ``limit`` (already scaled), on medians.

    ``samples`` are per-run times at the machine's typical speed, ``raw`` the same runs
    before the machine's momentary factor was divided out (``factor`` is its median, shown
    in the detail). Over budget needs both: still over the budget at typical speed, and
    over the noise band as measured. So the machine's slowness can excuse an overrun
    ("within noise"), but a real slowdown the reference did not share still fails even if
    the reference read a little slow. Without ``raw`` the samples are judged as they stand.

    The band is the configured margin, widened when the runs disagree to how uncertain
    their *median* is: half the samples' relative range divided by the square root of
    their number, never past :data:`MAX_NOISE_BAND`. (Half the range itself, the earlier
    rule, is the spread of single runs; with 8 runs it let a 3x slowdown whose runs were
    scattered by the machine pass as "within noise".)
    """
    stats = Stats.of(samples)
    measured = Stats.of(raw) if raw else stats
    noise = ((stats.max - stats.min) / (2 * stats.median) / math.sqrt(stats.n)
             if stats.median > 0 else 0.0)
    band = Margins(min(MAX_NOISE_BAND, max(margins.relative, noise)), margins.absolute)
    if measured.median <= limit:
        verdict = Verdict.OK
    elif stats.median > limit and judge(measured.median, limit, band) is Verdict.OVER_BUDGET:
        verdict = Verdict.OVER_BUDGET
    else:
        verdict = Verdict.WITHIN_NOISE
    detail = (f"median of {stats.n} run{'s' if stats.n != 1 else ''} (min "
              f"{format_duration(stats.min)}, max {format_duration(stats.max)}), noise band "
              f"{band.relative:.0%} + {format_duration(band.absolute)}")
    if raw and abs(factor - 1.0) >= 0.005:
        detail += (f", machine ran x{factor:.2f} its typical time (divided out of the CPU "
                   f"part; as measured: median {format_duration(measured.median)})")
    if scale != 1.0:
        detail += f", scale factor x{scale:.2f}"
    if stats.n == 1 and single_reason and verdict is not Verdict.OK:
        detail += f"; single run: {single_reason}"
    return BudgetResult(name, limit, stats.median, "s", verdict.value, detail=detail)


def count_result(name: str, measured: float, limit: float, unit: str,
                 cause: list[str] | None = None, detail: str = "") -> BudgetResult:
    """Deterministic budgets (queries, bytes, db time): over the limit is over budget."""
    verdict = Verdict.OK if measured <= limit else Verdict.OVER_BUDGET
    return BudgetResult(name, limit, measured, unit, verdict.value, detail=detail,
                        cause=cause or [])


def failure_message(nodeid: str, results: list[BudgetResult], findings: list[str],
                    scale: float, factor: float | None = None,
                    session_factor: float | None = None) -> str:
    """``scale``: the factor budgets were multiplied by; ``factor``: with budgets in
    reference-machine time (scale 1), the median machine factor the runs were divided by;
    ``session_factor``: in that mode, for a failure without timed runs, the factor measured
    at session start (every failure names one)."""
    broken = [r for r in results if r.broken]
    count = len(broken) + len(findings)
    lines = [f"perf budget: {nodeid} broke {count} budget{'s' if count != 1 else ''}"
             + (f" (machine scale factor x{scale:.2f})" if scale != 1.0 else "")
             + (f" (reference-machine time: runs divided by machine factor x{factor:.2f})"
                if factor is not None else "")
             + (f" (machine factor x{session_factor:.2f} at session start; time budgets are "
                "in reference-machine time)" if session_factor is not None else "")]
    for result in broken:
        lines.append("  " + result.line())
        lines.extend("      " + cause for cause in result.cause)
    lines.extend("  " + finding for finding in findings)
    return "\n".join(lines)
