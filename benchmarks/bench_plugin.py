"""Overhead of the pytest plugin per test, side by side with pytest-benchmark, and of SQL
tracking per statement.

* ``pytest plugin, 500 trivial tests``: one in-process pytest session over 500 trivial
  tests, per test: no perfkit and no pytest-benchmark (baseline); perfkit loaded without
  ``--perf-budget`` (must be the same: nothing per test); perfkit with ``--perf-budget``
  (tests without a timing budget: SQL window, payload); with ``--perf-budget`` and a
  ``latency=`` default on every test (a ``gc.collect()`` before each timed call, by
  design); pytest-benchmark loaded (its per-test cost when no test uses ``benchmark``).
* ``micro-benchmark fixture``: 20 tests that each benchmark ``sum(range(100))`` with
  pytest-benchmark's ``benchmark`` or perfkit's ``perf``, at matched settings (5 rounds
  minimum, 0.1 s at most); the reported per-call minimums are checked to agree within 3x.
* ``SQL statement tracking``: ``SELECT ?`` on in-memory SQLite with no tracker (baseline)
  and with a running ``QueryTracker``.

The harness reports wall time, which a busy neighbour inflates. The per-statement SQL cost
is small against that noise, so ``python -m benchmarks.bench_plugin --sql`` settles it
separately: 60 interleaved rounds of 500 statements per case, in CPU time of the calling
thread, reporting the median of paired per-round differences.

The trustworthiness experiment (false failures, detection of a 3x slowdown over 50
sessions) is ``python -m benchmarks.plugin_trust``; figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Case, Unavailable

TRIVIAL = 500
FIXTURE_TESTS = 20

_TRIVIAL_SOURCE = (
    f"import pytest\n\n@pytest.mark.parametrize('n', range({TRIVIAL}))\n"
    "def test_trivial(n):\n    assert n >= 0\n"
)
_BENCHMARK_SOURCE = (
    f"import pytest\n\n@pytest.mark.parametrize('n', range({FIXTURE_TESTS}))\n"
    "def test_with_benchmark(benchmark, n):\n"
    "    assert benchmark(sum, range(100)) == 4950\n"
)
_PERF_SOURCE = (
    f"import pytest\n\n@pytest.mark.parametrize('n', range({FIXTURE_TESTS}))\n"
    "def test_with_perf(perf, n):\n"
    "    assert perf(sum, range(100), min_rounds=5, max_time=0.1).value == 4950\n"
)


def _suite(name: str, source: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="perfkit-bench-"))
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / name).write_text(source)
    return directory


def _session(directory: Path, expected: int, *extra: str) -> str:
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly",
            "-p", "no:memray", "-p", "no:xdist", "-p", "no:timeout", "-p", "no:rerunfailures",
            str(directory), *extra]
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pytest.main(args)
    finally:
        os.chdir(cwd)
    text = out.getvalue()
    if code != 0 or f"{expected} passed" not in text:
        raise AssertionError(f"session failed ({code}): {text[-800:]}")
    return text


def _plugin_cases() -> list[Case]:
    try:
        import pytest  # noqa: F401
    except ImportError as exc:
        raise Unavailable("pytest is not installed") from exc
    directory = _suite("test_trivial.py", _TRIVIAL_SOURCE)
    group = f"pytest plugin, {TRIVIAL} trivial tests (per test)"

    def runner(*extra: str) -> Callable[[int], None]:
        def run(n: int) -> None:
            for _ in range(max(1, n // TRIVIAL)):
                _session(directory, TRIVIAL, *extra)
        return run

    cases = [
        Case(group, "no perfkit, no pytest-benchmark", run=runner("-p", "no:perfkit", "-p",
                                                                  "no:benchmark"),
             baseline=True, ops=TRIVIAL),
        Case(group, "perfkit loaded, no --perf-budget", run=runner("-p", "no:benchmark"),
             ops=TRIVIAL),
        Case(group, "perfkit --perf-budget (no timing budget)",
             run=runner("-p", "no:benchmark", "--perf-budget"), ops=TRIVIAL),
        Case(group, "perfkit --perf-budget --perf-budget-latency=1s (every test timed)",
             run=runner("-p", "no:benchmark", "--perf-budget", "--perf-budget-latency=1s"),
             ops=TRIVIAL),
    ]
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        cases.append(Case.unavailable(group, "pytest-benchmark loaded (fixture unused)",
                                      "pytest-benchmark is not installed"))
    else:
        cases.append(Case(group, "pytest-benchmark loaded (fixture unused)",
                          run=runner("-p", "no:perfkit"), ops=TRIVIAL))
    return cases


def _fixture_cases() -> list[Case]:
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError as exc:
        raise Unavailable("pytest-benchmark is not installed") from exc
    group = f"micro-benchmark fixture, sum(range(100)), {FIXTURE_TESTS} tests (per test)"
    bench_dir = _suite("test_bench.py", _BENCHMARK_SOURCE)
    perf_dir = _suite("test_perf.py", _PERF_SOURCE)
    reported: dict[str, float] = {}

    def with_benchmark(n: int) -> None:
        text = _session(bench_dir, FIXTURE_TESTS, "-p", "no:perfkit",
                        "--benchmark-min-rounds=5", "--benchmark-max-time=0.1",
                        "--benchmark-columns=min", "--benchmark-time-unit=us")
        mins = [float(m) for m in re.findall(r"test_with_benchmark\[\d+\]\s+([\d.,]+)", text)]
        reported["benchmark"] = min(m for m in mins) * 1e-6 if mins else float("nan")

    def with_perf(n: int) -> None:
        report = perf_dir / "perf.json"
        _session(perf_dir, FIXTURE_TESTS, "-p", "no:benchmark", "--perf-budget",
                 f"--perf-report={report}")
        import json

        tests = json.loads(report.read_text())["tests"]
        reported["perf"] = min(b["min"] for t in tests for b in t["benchmarks"])

    anchor = Case(group, "pytest-benchmark `benchmark(fn)`", run=with_benchmark, baseline=True,
                  ops=FIXTURE_TESTS)
    ours = Case(group, "perfkit `perf(fn)` (with --perf-budget)", run=with_perf,
                ops=FIXTURE_TESTS)

    def check() -> None:
        ratio = reported["perf"] / reported["benchmark"]
        assert 1 / 3 < ratio < 3, f"per-call minimums disagree: {reported}"
        anchor.note = f"reported min {reported['benchmark'] * 1e6:.2f} µs/call"
        ours.note = f"reported min {reported['perf'] * 1e6:.2f} µs/call"

    ours.check = check
    return [anchor, ours]


def _sql_workload() -> tuple[Callable[[int], None], Callable[[int], int]]:
    try:
        import sqlalchemy as sa

        from perfkit.sql import QueryTracker
    except ImportError as exc:
        raise Unavailable(f"SQLAlchemy is not installed: {exc}") from exc
    engine = sa.create_engine("sqlite://")
    statement = sa.text("SELECT :x")

    def plain(n: int) -> None:
        with engine.connect() as conn:
            for i in range(n):
                conn.execute(statement, {"x": i})

    def tracked(n: int) -> int:
        with QueryTracker() as tracker, engine.connect() as conn:
            for i in range(n):
                conn.execute(statement, {"x": i})
        return tracker.count

    return plain, tracked


def _sql_cases() -> list[Case]:
    plain, tracked = _sql_workload()
    group = "SQL statement tracking (SQLite, per statement)"
    seen: dict[str, int] = {}

    def run_tracked(n: int) -> None:
        seen["count"] = tracked(n)

    def check() -> None:
        assert seen.get("count") == 2000, seen

    return [
        Case(group, "no tracker", run=plain, baseline=True, ops=2000),
        Case(group, "QueryTracker running", run=run_tracked, ops=2000, check=check),
    ]


def settle_sql(rounds: int = 60, per_round: int = 500, seed: int = 0) -> dict[str, float]:
    """Per-statement tracking cost in the calling thread's CPU time, interleaved rounds.

    One tracker for the whole run (reset per round, as the plugin does per test) and no
    EXPLAIN, so the figure is the cost of each statement, not of building a tracker
    (``_library_roots``) or of the one EXPLAIN per new shape.
    """
    import sqlalchemy as sa

    from perfkit.sql import QueryTracker

    engine = sa.create_engine("sqlite://")
    statement = sa.text("SELECT :x")
    tracker = QueryTracker(explain=False)

    def tracked(n: int) -> int:
        tracker.reset()
        with engine.connect() as conn:
            tracker.start()
            for i in range(n):
                conn.execute(statement, {"x": i})
            tracker.stop()
        return tracker.count

    def plain(n: int) -> None:
        with engine.connect() as conn:
            for i in range(n):
                conn.execute(statement, {"x": i})
    rng = random.Random(seed)
    plain(per_round)
    tracked(per_round)
    samples: dict[str, list[float]] = {"plain": [], "tracked": []}
    for _ in range(rounds):
        order = ["plain", "tracked"]
        rng.shuffle(order)
        for name in order:
            started = time.thread_time()
            if name == "plain":
                plain(per_round)
            elif tracked(per_round) != per_round:
                raise AssertionError("the tracker missed statements")
            samples[name].append((time.thread_time() - started) / per_round)
    diffs = [t - p for t, p in zip(samples["tracked"], samples["plain"])]
    return {
        "plain_median_us": statistics.median(samples["plain"]) * 1e6,
        "tracked_median_us": statistics.median(samples["tracked"]) * 1e6,
        "plain_min_us": min(samples["plain"]) * 1e6,
        "tracked_min_us": min(samples["tracked"]) * 1e6,
        "paired_diff_median_us": statistics.median(diffs) * 1e6,
        "paired_diff_q1_us": statistics.quantiles(diffs, n=4)[0] * 1e6,
        "paired_diff_q3_us": statistics.quantiles(diffs, n=4)[2] * 1e6,
    }


def cases() -> list[Case]:
    if "benchmarks" not in sys.modules:  # pragma: no cover - run through the harness
        raise Unavailable("run with python -m benchmarks")
    found: list[Case] = []
    for build in (_plugin_cases, _fixture_cases, _sql_cases):
        try:
            found.extend(build())
        except Unavailable as exc:
            found.append(Case.unavailable(build.__name__.strip("_"), "(all cases)", str(exc)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sql", action="store_true", help="settle the per-statement cost")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    if not args.sql:
        parser.error("use python -m benchmarks --only plugin for the table; --sql here")
    print(f"load average {os.getloadavg()}")
    for key, value in settle_sql(args.rounds).items():
        print(f"{key}: {value:.2f}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
