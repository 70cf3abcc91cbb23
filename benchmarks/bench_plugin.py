"""Overhead of the pytest plugin per test, and of SQL tracking per statement.

* ``pytest plugin, 500 trivial tests``: one in-process pytest session over 500 trivial
  tests, per test: plugin not loaded (baseline), loaded without ``--perf-budget`` (must be
  the same: nothing per test), and with ``--perf-budget`` (timer, GC collect, SQL window).
* ``SQL statement tracking``: ``SELECT ?`` on in-memory SQLite with no tracker (baseline)
  and with a running ``QueryTracker``.

The trustworthiness experiment (false failures, detection of a 3x slowdown over 50
sessions) is ``python -m benchmarks.plugin_trust``; figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import Case, Unavailable

TRIVIAL = 500


def _suite() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="perfkit-bench-"))
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_trivial.py").write_text(
        f"import pytest\n\n@pytest.mark.parametrize('n', range({TRIVIAL}))\n"
        "def test_trivial(n):\n    assert n >= 0\n"
    )
    return directory


def _session(directory: Path, *extra: str) -> None:
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly",
            str(directory / "test_trivial.py"), *extra]
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pytest.main(args)
    finally:
        os.chdir(cwd)
    if code != 0 or f"{TRIVIAL} passed" not in out.getvalue():
        raise AssertionError(f"session failed ({code}): {out.getvalue()[-500:]}")


def _plugin_cases() -> list[Case]:
    try:
        import pytest  # noqa: F401
    except ImportError as exc:
        raise Unavailable("pytest is not installed") from exc
    directory = _suite()
    group = f"pytest plugin, {TRIVIAL} trivial tests (per test)"

    def runner(*extra: str):
        def run(n: int) -> None:
            for _ in range(max(1, n // TRIVIAL)):
                _session(directory, *extra)
        return run

    return [
        Case(group, "plugin not loaded", run=runner("-p", "no:perfkit"), baseline=True,
             ops=TRIVIAL),
        Case(group, "loaded, no --perf-budget", run=runner(), ops=TRIVIAL),
        Case(group, "--perf-budget (measure every test)", run=runner("--perf-budget"),
             ops=TRIVIAL),
    ]


def _sql_cases() -> list[Case]:
    try:
        import sqlalchemy as sa

        from perfkit.sql import QueryTracker
    except ImportError as exc:
        raise Unavailable(f"SQLAlchemy is not installed: {exc}") from exc
    engine = sa.create_engine("sqlite://")
    statement = sa.text("SELECT :x")
    group = "SQL statement tracking (SQLite, per statement)"
    seen: dict[str, int] = {}

    def plain(n: int) -> None:
        with engine.connect() as conn:
            for i in range(n):
                conn.execute(statement, {"x": i})

    def tracked(n: int) -> None:
        with QueryTracker() as tracker, engine.connect() as conn:
            for i in range(n):
                conn.execute(statement, {"x": i})
        seen["count"] = tracker.count

    def check() -> None:
        assert seen.get("count") == 2000, seen

    return [
        Case(group, "no tracker", run=plain, baseline=True, ops=2000),
        Case(group, "QueryTracker running", run=tracked, ops=2000, check=check),
    ]


def cases() -> list[Case]:
    if "benchmarks" not in sys.modules:  # pragma: no cover - run through the harness
        raise Unavailable("run with python -m benchmarks")
    return _plugin_cases() + _sql_cases()
