"""The ``calls=`` budget: function calls counted in a run of their own, through real inner
pytest sessions (``pytester``).

Counts are exact, so these tests compare them exactly: across sessions, between the counted
re-run and a count taken in the only run (``rerun=False``), and against a budget.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Imported here, once: pytester's in-process runs drop modules first imported inside an
# inner session, and a second copy of SQLAlchemy's enums breaks the next session.
import anyio  # noqa: F401
import pytest
import sqlalchemy.orm  # noqa: F401

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the package depends on tomli before 3.11
    import tomli as tomllib

pytest_plugins = ["pytester"]

#: Code under test whose call count depends on N (1 by default, 2 doubles the work), with
#: dicts and sets of strings (their order changes with the hash seed, the count must not).
WORKLOAD = """
import json, os, pytest

N = int(os.environ.get("N", "1"))

class Order:
    def __init__(self, number):
        self.number = number
        self.tags = {f"tag{i}" for i in range(3)}

    def total(self):
        return sum(len(tag) for tag in sorted(self.tags)) + self.number

def work_item(number):
    order = Order(number)
    return json.dumps({"n": number, "total": order.total(), "tags": sorted(order.tags)})

def price(number):  # the most called function
    return number * 3

def workload():
    return [price(i) for i in range(N * 500)] + [work_item(i) for i in range(N * 20)]
"""


def report(pytester: pytest.Pytester, name: str = "perf.json") -> dict[str, dict]:
    document = json.loads((pytester.path / name).read_text())
    return {t["nodeid"].split("::")[-1]: t for t in document["tests"]}


def results(test: dict) -> dict[str, dict]:
    return {r["budget"]: r for r in test["results"]}


def test_a_count_is_the_same_in_every_session_and_a_doubled_body_fails(
    inner_ini, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = WORKLOAD + """
@pytest.mark.perf_budget(calls=BUDGET)
def test_orders():
    assert len(workload()) == N * 520
"""
    counts = []
    # Separate processes, each with its own hash seed; the second under xdist.
    for index, extra in enumerate(((), ("-n", "2"))):
        pytester.makepyfile(test_inner=source.replace("BUDGET", "1_000_000"))
        monkeypatch.setenv("PYTHONHASHSEED", str(index + 1))
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "--perf-budget",
            f"--perf-report=perf{index}.json", *extra)
        result.assert_outcomes(passed=1)
        calls = report(pytester, f"perf{index}.json")["test_orders"]["calls"]
        counts.append((calls["total"], calls["python"], calls["c"]))
    assert counts[0] == counts[1]
    total, python, c = counts[0]
    assert python > 500 + 20 * 4 and c > 20  # price; work_item, Order.__init__, dumps, ...

    # A budget at exactly the count passes; the same test doing twice the work fails.
    pytester.makepyfile(test_inner=source.replace("BUDGET", str(total)))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                          "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=1)
    monkeypatch.setenv("N", "2")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                          "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    doubled = report(pytester)["test_orders"]["calls"]
    assert doubled["total"] > total
    assert f"calls: {doubled['total']} > budget {total} [over budget]" in out
    assert (f"{doubled['python']} Python + {doubled['c']} built-in calls in the test's thread "
            f"(separate run, Python {sys.version.split()[0]})") in out
    # the cause lines: the most called functions (name, where defined, count), first the
    # one whose calls doubled
    line = (pytester.path / "test_inner.py").read_text().splitlines().index(
        "def price(number):  # the most called function") + 1
    top = doubled["top"][0]
    assert (top["function"], top["count"], top["location"]) == (
        "price", 1000, f"test_inner.py:{line}")
    cause = out.split(f"> budget {total} [over budget]")[1].splitlines()[1:6]
    assert cause[0].strip() == f"1000x price  test_inner.py:{line}"
    assert all(re.fullmatch(r"\d+x \S+  (test_inner\.py:\d+|\(built-in\))", line.strip())
               for line in cause), cause


def test_counted_in_a_separate_run_or_in_the_only_run(run, pytester) -> None:
    result = run(WORKLOAD + """
import asyncio

RUNS = []

@pytest.mark.perf_budget(calls=1_000_000)
def test_rerun():
    RUNS.append("rerun")
    workload()

@pytest.mark.perf_budget(calls=1_000_000, rerun=False)
def test_only_run():
    RUNS.append("only")
    workload()

@pytest.mark.perf_budget(calls=1_000_000)
async def test_async():
    await asyncio.sleep(0)
    workload()

@pytest.mark.perf_budget(calls=1_000_000)
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_anyio():
    await asyncio.sleep(0)
    workload()

def test_runs():
    assert RUNS == ["rerun", "rerun", "only"]  # timed run + counted run; the only run
""", "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=5)
    tests = report(pytester)
    rerun, only = tests["test_rerun"], tests["test_only_run"]
    assert rerun["calls"]["total"] == only["calls"]["total"]
    assert rerun["calls"]["python"] == only["calls"]["python"]
    assert "separate run" in results(rerun)["calls"]["detail"]
    assert "counted in the only run" in results(only)["calls"]["detail"]
    # An async body is counted from the test coroutine down, not the event loop around it:
    # the same work as the sync test, plus a resumption and asyncio.sleep's few calls;
    # whichever plugin runs the loop.
    for name in ("test_async", "test_anyio[asyncio]"):
        calls = tests[name]["calls"]
        assert 0 < calls["total"] - rerun["calls"]["total"] <= 10, name
        files = {e["location"].split(":")[0] for e in calls["top"] if e["location"]}
        assert files <= {"test_inner.py", "asyncio/tasks.py", "json/__init__.py",
                         "json/encoder.py"}, files
    assert tests["test_async"]["calls"]["total"] == tests["test_anyio[asyncio]"]["calls"]["total"]
    assert tests["test_runs"]["calls"] is None  # no budget, not counted
    out = result.stdout.str()
    assert "budgets per kind: calls 4" in out and "calls 4/4" in out
    assert "calls = Python + built-in calls in the test's thread" in out  # the header


def test_the_plugins_sql_tracking_is_not_counted(run, pytester, tmp_path) -> None:
    # The query tracker listens only while the body runs measured: in the only run
    # (rerun=False) it records, finds call sites and EXPLAINs each new shape, in a separate
    # counted run it is idle. Its work is perfkit's, not the test's: the same body counts
    # the same either way, whatever the EXPLAIN setting.
    source = f"""
import pytest, sqlalchemy as sa

@pytest.fixture
def engine():
    engine = sa.create_engine({f"sqlite:///{tmp_path / 'calls.db'}"!r})
    with engine.begin() as conn:
        conn.execute(sa.text("drop table if exists t"))
        conn.execute(sa.text("create table t (id integer primary key, v integer)"))
        conn.execute(sa.text("insert into t (v) values (1), (2), (3)"))
    body(engine)  # compiled and cached: the only run is not the statement's first either
    yield engine
    engine.dispose()

def body(engine):
    with engine.connect() as conn:
        for i in range(3):
            conn.execute(sa.text("select * from t where v = :v"), {{"v": i}}).all()

@pytest.mark.perf_budget(calls=10**9, queries=3)
def test_rerun(engine):
    body(engine)

@pytest.mark.perf_budget(calls=10**9, queries=3, rerun=False)
def test_only_run(engine):
    body(engine)
"""
    totals = set()
    for explain in ("true", "false"):
        result = run(source, "--perf-budget", "--perf-report=perf.json",
                     f"--perf-budget-explain={explain}")
        result.assert_outcomes(passed=2)
        tests = report(pytester)
        for name in ("test_rerun", "test_only_run"):
            assert results(tests[name])["queries"]["measured"] == 3  # tracked all the same
            calls = tests[name]["calls"]
            totals.add(calls["total"])
            assert not [e for e in calls["top"] if "perfkit/" in e["location"]], calls["top"]
    assert len(totals) == 1, totals


def test_perf_fixture_rounds_are_not_counted(run, pytester) -> None:
    # The fixture's rounds run for a time, so how many there are varies: they are left out
    # of the count (and not judged in the counted run, whose profile hook slows them).
    result = run("""
        import pytest

        def leaf(x):
            return x + 1

        @pytest.mark.perf_budget(calls=1000)
        @pytest.mark.parametrize("max_time", [0.001, 0.05])
        def test_bench(perf, max_time):
            perf(leaf, 1, min_rounds=2, max_time=max_time)
            leaf(2)

        @pytest.mark.perf_budget(calls=1000, rerun=False)
        def test_bench_only_run(perf):
            perf(leaf, 1, budget="1ns", min_rounds=2, max_time=0.001)  # not judged here
            leaf(2)
    """, "--perf-budget", "--perf-report=perf.json", "--perf-budget-margin-abs=0")
    result.assert_outcomes(passed=3)
    tests = report(pytester)
    short, long = tests["test_bench[0.001]"], tests["test_bench[0.05]"]
    assert short["calls"]["total"] == long["calls"]["total"] == 2  # the test and leaf(2)
    assert len(short["benchmarks"]) == 1  # the counted run's rounds are not reported
    only = tests["test_bench_only_run"]
    assert only["calls"]["total"] == 2 and only["benchmarks"] == []


def test_rss_is_not_judged_in_an_only_run_counted_with_the_collector_paused(run, pytester) -> None:
    # Counting pauses the cyclic collector, so in a rerun=False test's only run the cycles
    # the body drops pile up: its RSS growth (70MB here against 0.3MB uncounted) is the
    # counter's doing, and an rss= budget beside calls= would fail for it.
    result = run("""
        import pytest

        class Node:
            def __init__(self):
                self.me = self
                self.pad = bytearray(200)

        def churn():
            for _ in range(200_000):
                Node()

        @pytest.mark.perf_budget(rss="20MB", calls=10**9, rerun=False)
        def test_counted_only_run():
            churn()

        @pytest.mark.perf_budget(rss="20MB", calls=10**9)
        def test_counted_apart():
            churn()
    """, "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=2)
    tests = report(pytester)
    only = results(tests["test_counted_only_run"])
    assert only["calls"]["verdict"] == "ok" and only["calls"]["measured"] > 200_000
    assert only["rss"]["verdict"] == "not applied"
    assert "cyclic collector paused" in only["rss"]["detail"]
    apart = results(tests["test_counted_apart"])  # the timed run is not the counted one
    assert apart["rss"]["verdict"] == "ok" and apart["calls"]["verdict"] == "ok"
    assert "test_inner.py::test_counted_only_run: rss: " in result.stdout.str()


def test_a_perf_budget_unjudged_in_a_counted_only_run_is_listed_as_not_applied(
    run, pytester
) -> None:
    # The counted only run slows the perf fixture's rounds, so their budget is not judged
    # there; the summary and the report say so rather than leave it out silently.
    result = run("""
        import pytest

        def leaf(x):
            return x + 1

        @pytest.mark.perf_budget(calls=1000, rerun=False)
        def test_bench_only_run(perf):
            perf(leaf, 1, budget="1ns", min_rounds=2, max_time=0.001)
            perf(leaf, 2, min_rounds=2, max_time=0.001)  # no budget: nothing to apply
    """, "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=1)
    test = report(pytester)["test_bench_only_run"]
    unjudged = [r for r in test["results"] if r["budget"] == "perf"]
    assert len(unjudged) == 1 and unjudged[0]["verdict"] == "not applied"
    assert unjudged[0]["limit"] == 1e-9
    assert "perf(leaf)" in unjudged[0]["detail"] and "counted for calls" in unjudged[0]["detail"]
    assert "test_inner.py::test_bench_only_run: perf: perf(leaf)" in result.stdout.str()


def test_timing_left_unjudged_in_a_traced_only_run_is_listed_as_not_applied(
    run, pytester
) -> None:
    # An only run counted for calls (or traced for memory) is slowed by its hook: the time
    # budgets that reach it anyway (a baseline entry; cpu= beside memory=) are not judged,
    # and are listed as not applied rather than dropped.
    (pytester.path / "base.json").write_text(json.dumps({"tests": [
        {"nodeid": "test_inner.py::test_counted", "latency": {"judged": 1.0}}]}))
    result = run("""
        import pytest

        @pytest.mark.perf_budget(calls=1000, rerun=False)
        def test_counted():
            pass

        @pytest.mark.perf_budget(memory="10MB", cpu="1s", rerun=False)
        def test_traced():
            pass
    """, "--perf-budget", "--perf-report=perf.json", "--perf-budget-baseline=base.json")
    result.assert_outcomes(passed=2)
    tests = report(pytester)
    counted, traced = results(tests["test_counted"]), results(tests["test_traced"])
    assert counted["calls"]["verdict"] == "ok"
    assert counted["baseline"]["verdict"] == "not applied"
    assert "counted for calls" in counted["baseline"]["detail"]
    assert traced["memory"]["verdict"] == "ok"
    assert traced["cpu"]["verdict"] == "not applied" and traced["cpu"]["limit"] == 1.0
    assert "traced for memory" in traced["cpu"]["detail"]
    not_applied = result.stdout.str().split("budgets not applied:")[1]
    assert "test_inner.py::test_counted: baseline: " in not_applied
    assert "test_inner.py::test_traced: cpu: " in not_applied
    assert "slowest against their budgets" not in result.stdout.str()  # nothing measured


def test_not_applied_beside_another_profiler_or_after_a_failed_rerun(run, pytester) -> None:
    pytester.makeconftest("""
        import sys, pytest

        def other(frame, event, arg):
            pass

        @pytest.fixture
        def profiled():
            sys.setprofile(other)
            yield
            sys.setprofile(None)
    """)
    result = run("""
        import pytest

        RUNS = []

        @pytest.mark.perf_budget(calls=10)
        def test_under_profiler(profiled):
            pass

        @pytest.mark.perf_budget(calls=10, rerun=False)
        def test_under_profiler_only_run(profiled):
            pass

        @pytest.mark.perf_budget(calls=10)
        def test_once_only():
            RUNS.append(1)
            assert len(RUNS) == 1

        # code whose file counting never starts in (like the standard library's): a count
        # of 0 would pass any budget, so it is no count
        namespace = {}
        exec(compile("def test_generated():\\n    pass\\n", "<generated>", "exec"), namespace)
        test_generated = pytest.mark.perf_budget(calls=0)(namespace["test_generated"])
    """, "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=4)  # a budget not applied does not fail the test
    tests = report(pytester)
    for name in ("test_under_profiler", "test_under_profiler_only_run"):
        calls = results(tests[name])["calls"]
        assert calls["verdict"] == "not applied", name
        assert "another profiler is active (sys.setprofile: other)" in calls["detail"]
    failed = results(tests["test_once_only"])["calls"]
    assert failed["verdict"] == "not applied"
    assert "the counted re-run failed (AssertionError" in failed["detail"]
    assert "rerun=False to count the first run" in failed["detail"]
    generated = results(tests["test_generated"])["calls"]
    assert generated["verdict"] == "not applied"
    assert "the test function's own call was not seen" in generated["detail"]
    not_applied = result.stdout.str().split("budgets not applied:")[1]
    assert "test_inner.py::test_under_profiler: calls: another profiler" in not_applied
    assert "test_inner.py::test_once_only: calls: the counted re-run failed" in not_applied


def test_with_pytest_memray_one_profile_hook_at_a_time(run, pytester) -> None:
    if sys.platform == "win32":  # pragma: no cover - memray has no Windows build
        pytest.skip("memray does not run on Windows")
    # memray sets its hook from C, where sys.getprofile() does not see it
    result = run("""
        import pytest

        @pytest.mark.perf_budget(calls=10)
        def test_traced():
            pass
    """, "--perf-budget", "--perf-report=perf.json", "--memray")
    result.assert_outcomes(passed=1)
    calls = results(report(pytester)["test_traced"])["calls"]
    assert calls["verdict"] == "not applied" and "pytest-memray is tracing" in calls["detail"]


def test_keyword_is_validated_and_rerun_false_conflicts_are_named(run, pytester) -> None:
    for marker, expected in (
        ('calls="lots"', "calls: expected a whole number >= 0, got 'lots'"),
        ("calls=-1", "calls: must be >= 0"),
        ("calls=1.5", "calls: expected a whole number >= 0"),
        ('calls=100, latency="1s", rerun=False', "calls= needs a separate counted run"),
        ('calls=100, cpu="1s", rerun=False', "calls= needs a separate counted run"),
    ):
        result = run(f"""
            import pytest

            @pytest.mark.perf_budget({marker})
            def test_bad():
                pass
        """)  # no --perf-budget: validated on every run
        assert result.ret == pytest.ExitCode.USAGE_ERROR, marker
        assert "test_inner.py::test_bad" in result.stderr.str()
        assert expected in result.stderr.str()
    result = run("def test_x(): pass", "--perf-budget", ini="perf_budget_calls = many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "ini perf_budget_calls: calls: expected a whole number" in result.stderr.str()

    # A session default is no error beside a test's own rerun=False and timing budget: the
    # timing budget keeps the only run, and calls is reported as not applied.
    result = run("""
        import pytest

        RUNS = []

        @pytest.mark.perf_budget(latency="1s", rerun=False)
        def test_side_effects():
            RUNS.append(1)

        def test_counted():
            assert RUNS == [1]
    """, "--perf-budget", "--perf-report=perf.json", "--perf-budget-calls=1000")
    result.assert_outcomes(passed=2)
    tests = report(pytester)
    calls = results(tests["test_side_effects"])["calls"]
    assert calls["verdict"] == "not applied"
    assert "rerun=False and a timing budget" in calls["detail"]
    assert results(tests["test_side_effects"])["latency"]["verdict"] == "ok"
    counted = results(tests["test_counted"])["calls"]
    assert counted["verdict"] == "ok" and counted["measured"] >= 1
    assert "calls=1000 (option --perf-budget-calls)" in result.stdout.str()


@pytest.mark.parametrize(("entry", "marker"), [
    ('calls = 100\nlatency = "1s"\n', "rerun=False"),
    ("calls = 100\nrerun = false\n", 'latency="1s"'),
    ("calls = 100\n", 'cpu="1s", rerun=False'),
])
def test_a_budgets_file_calls_is_the_tests_own_and_conflicts_like_a_markers(
    run, pytester, entry: str, marker: str
) -> None:
    # A budgets-file entry is per test, like the marker (only session defaults yield): its
    # calls= beside rerun=False and a timing budget cannot be counted, which is a usage
    # error whichever of the two layers holds which keyword.
    (pytester.path / "perf-budgets.toml").write_text('["test_inner.py::test_x"]\n' + entry)
    result = run(f"""
        import pytest

        @pytest.mark.perf_budget({marker})
        def test_x():
            pass
    """, "--perf-budget")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    err = result.stderr.str()
    assert "test_inner.py::test_x" in err
    assert "calls= needs a separate counted run" in err
    assert "calls= from budgets file perf-budgets.toml" in err


def test_recorded_with_headroom_then_enforced(run, pytester, monkeypatch) -> None:
    source = WORKLOAD + """
def test_orders():
    workload()

@pytest.mark.perf_budget(calls=1_000_000)
def test_marked():
    workload()
"""
    # Counted only where a calls budget is set: a generous session default records them.
    result = run(source, "--perf-budget", "--perf-report=perf.json", "--perf-budget-record",
                 "--perf-budget-calls=100000000", "--perf-budget-record-headroom=50")
    result.assert_outcomes(passed=2)
    counted = report(pytester)["test_orders"]["calls"]["total"]
    recorded = tomllib.loads((pytester.path / "perf-budgets.toml").read_text())
    entry = recorded["test_inner.py::test_orders"]
    assert entry["calls"] == -(-counted * 11 // 10)  # x1.1 (record_calls_headroom), rounded up
    assert "calls" not in recorded["test_inner.py::test_marked"]  # the marker's own
    assert "headroom x50, queries exact, calls x1.1" in result.stdout.str()
    assert f"test_inner.py::test_orders  calls: new {entry['calls']}" in result.stdout.str()

    monkeypatch.setenv("N", "2")
    result = run(source, "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=1, failed=1)
    doubled = report(pytester)["test_orders"]["calls"]["total"]
    assert f"calls: {doubled} > budget {entry['calls']} [over budget]" in result.stdout.str()

    # an exact budget when asked for (headroom 1)
    monkeypatch.setenv("N", "1")
    result = run(source, "--perf-budget", "--perf-budget-record",
                 ini="perf_budget_record_calls_headroom = 1")
    result.assert_outcomes(passed=2)
    recorded = tomllib.loads((pytester.path / "perf-budgets.toml").read_text())
    assert recorded["test_inner.py::test_orders"]["calls"] == counted


def test_recording_keeps_the_time_of_an_only_run_that_was_not_counted(run, pytester) -> None:
    # The README's way to record counts for every test: a generous session-default calls.
    # A rerun=False test with a timing budget keeps its only run uncounted (calls is not
    # applied there), so that run's time is a true one and is recorded.
    result = run("""
        import pytest

        @pytest.mark.perf_budget(rerun=False)
        def test_side_effects():
            pass
    """, "--perf-budget", "--perf-report=perf.json", "--perf-budget-record",
        "--perf-budget-calls=1000000000", ini="perf_budget_latency = 10s")
    result.assert_outcomes(passed=1)
    test = report(pytester)["test_side_effects"]
    assert results(test)["calls"]["verdict"] == "not applied"
    assert results(test)["latency"]["verdict"] == "ok"
    recorded = tomllib.loads((pytester.path / "perf-budgets.toml").read_text())
    assert "latency" in recorded["test_inner.py::test_side_effects"]
    assert "calls" not in recorded["test_inner.py::test_side_effects"]


def test_readme_documents_the_keyword_and_the_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "| `calls` | none |" in readme
    assert "| `record_calls_headroom` | `1.1` |" in readme
    assert "Call counts change between Python versions" in readme
