"""The plugin's budgets file and ``--perf-budget-record``: pure parts, then real sessions.

Wall-clock checks use deliberately wide gaps only (a 10 ms sleep recorded, a 100 ms sleep
judged against the recorded budget); the ratchet is proven on query counts, which are exact.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

# Imported once here, as in test_pytest_plugin.py: pytester's in-process runs drop modules
# first imported inside an inner session, and a second copy of SQLAlchemy breaks the next.
import anyio  # noqa: F401
import pytest
import sqlalchemy.orm  # noqa: F401

from perfkit.measure.units import parse_duration
from pytest_perfkit.budget_file import (
    BudgetFile,
    observed,
    propose,
    readable_duration,
    readable_size,
    render,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytest_plugins = ["pytester"]

def budgets_file(pytester: pytest.Pytester, name: str = "perf-budgets.toml") -> dict:
    return tomllib.loads((pytester.path / name).read_text())


def by_test(document: dict) -> dict[str, dict]:
    return {t["nodeid"].split("::")[-1]: t for t in document["tests"]}


# --- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0246, "25ms"), (0.02, "20ms"), (0.0201, "25ms"), (0.0121, "15ms"), (0.9991, "1s"),
    (1.234, "1.5s"), (0.000_000_3, "1us"), (0.000_456, "500us"), (0.0, "1us"), (75.0, "80s"),
])
def test_durations_round_up_to_a_readable_step(seconds: float, text: str) -> None:
    assert readable_duration(seconds) == text
    assert parse_duration(text) >= seconds  # never below what was observed


@pytest.mark.parametrize(("size", "text"), [
    (2_345_678, "2.5MB"), (999, "1KB"), (12, "12B"), (1_000_000, "1MB"), (130_001, "150KB"),
])
def test_sizes_round_up_to_a_readable_step(size: float, text: str) -> None:
    assert readable_size(size) == text


def test_observed_values_come_from_the_report_payload() -> None:
    payload = {
        "status": "measured", "scale": 2.0,
        "budgets": {"cpu": 1.0, "memory": 10, "db_time": 1.0},
        "latency": {"judged": 0.010},
        "results": [{"budget": "cpu", "measured": 0.004}],
        "memory": {"heap_peak": 5000, "rss_peak": 7000, "rss_method": "unavailable"},
        "sql": {"count": 3, "db_time": 0.002},
    }
    # times in the budgets' unit (divided by the calibration scale); RSS not measured here
    assert observed(payload) == {"latency": 0.005, "cpu": 0.002, "memory": 5000.0,
                                 "queries": 3.0, "db_time": 0.002}
    assert set(observed(payload, {"latency", "queries"})) == {"cpu", "memory", "db_time"}
    assert observed({**payload, "status": "failed"}) == {}  # failed functionally
    # no statements seen: no query budget (the engine may not have been seen); db_time is
    # written only where one was asked for (judged without a noise band)
    quiet = {**payload, "budgets": {}, "sql": {"count": 0, "db_time": 0.0}}
    assert "queries" not in observed(quiet) and "db_time" not in observed(quiet)
    # heap traced in the only run (rerun=False): its time is the tracer's too
    traced = {**payload, "budgets": {"memory": 10, "rerun": False}}
    assert "latency" not in observed(traced) and "cpu" not in observed(traced)
    # call counts when they were counted; a count in the only run slowed that run too
    counted = {**payload, "budgets": {"calls": 10}, "calls": {"total": 1234, "python": 1000}}
    assert observed(counted)["calls"] == 1234.0
    assert "calls" not in observed({**counted, "calls": {"note": "another profiler"}})
    assert "calls" not in observed({**counted, "calls": None})
    only_run = {**counted, "budgets": {"calls": 10, "rerun": False}}
    assert "latency" not in observed(only_run) and observed(only_run)["calls"] == 1234.0
    uncounted = {**only_run, "calls": {"note": "rerun=False and a timing budget"}}
    assert observed(uncounted)["latency"] == 0.005 and "calls" not in observed(uncounted)


def test_propose_records_ratchets_and_keeps_what_it_did_not_observe() -> None:
    old = {"t.py::a": {"latency": "20ms", "queries": 3, "n_plus_one": "fail"},
           "t.py::gone": {"queries": 1}}
    seen = {"t.py::a": {"latency": 0.004, "queries": 5.0}, "t.py::b": {"queries": 2.0}}
    entries, changes = propose(old, seen, headroom=2.0, count_headroom=None, ratchet=False)
    assert entries == {"t.py::a": {"latency": "8ms", "queries": 5, "n_plus_one": "fail"},
                       "t.py::b": {"queries": 2}, "t.py::gone": {"queries": 1}}
    assert {(c.nodeid, c.keyword, c.kind) for c in changes} == {
        ("t.py::a", "latency", "tightened"), ("t.py::a", "queries", "loosened"),
        ("t.py::b", "queries", "new")}
    entries, changes = propose(old, seen, headroom=2.0, count_headroom=None, ratchet=True)
    assert entries["t.py::a"] == {"latency": "8ms", "queries": 3, "n_plus_one": "fail"}
    assert ("t.py::a", "queries", "held") in {(c.nodeid, c.keyword, c.kind) for c in changes}
    entries, _ = propose({}, {"t.py::c": {"queries": 5.0}}, headroom=2.0, count_headroom=1.5,
                         ratchet=False)
    assert entries == {"t.py::c": {"queries": 8}}  # ceil(5 x 1.5)
    # call counts: x the calls headroom (1.1 unless given), rounded up; the ratchet holds
    entries, _ = propose({}, {"t.py::c": {"calls": 1000.0}}, headroom=2.0, count_headroom=None,
                         ratchet=False)
    assert entries == {"t.py::c": {"calls": 1100}}
    entries, changes = propose({"t.py::c": {"calls": 1050}}, {"t.py::c": {"calls": 1001.0}},
                               headroom=2.0, count_headroom=None, ratchet=True,
                               calls_headroom=1.05)
    assert entries == {"t.py::c": {"calls": 1050}}  # ceil(1001 x 1.05) = 1052 > 1050: held
    assert [(c.keyword, c.kind) for c in changes] == [("calls", "held")]


def test_rendered_file_reads_back_as_written(tmp_path: Path) -> None:
    entries = {'t.py::test_x[a"b-\\]': {"latency": "25ms", "queries": 3, "rerun": False,
                                         "allow": ["FROM audit", "x"], "n_plus_one": "fail:7"}}
    path = tmp_path / "b.toml"
    path.write_text(render(entries))
    assert tomllib.loads(path.read_text()) == entries
    assert BudgetFile.read(path, "b.toml").parsed['t.py::test_x[a"b-\\]']["queries"] == 3


# --- sessions -----------------------------------------------------------------------------

NAP = """
import os, time, pytest

def test_nap():
    time.sleep(float(os.environ.get("NAP", "0.01")))

def test_broken():
    assert False

def test_skips_in_body():
    pytest.skip("not here")

@pytest.fixture
def breaks_in_teardown():
    yield
    raise RuntimeError("teardown")

def test_teardown_error(breaks_in_teardown):
    pass

@pytest.mark.xfail(strict=True, reason="over its cpu budget")
@pytest.mark.perf_budget(cpu="1ns")
def test_expected_over_budget():
    sum(range(300_000))
"""


def test_record_then_a_slower_test_fails_against_its_recorded_budget(
    run, pytester, monkeypatch
) -> None:
    result = run(NAP, "--perf-budget", "--perf-budget-record")
    result.assert_outcomes(passed=2, failed=1, skipped=1, errors=1, xfailed=1)
    out = result.stdout.str()
    assert "perfkit: no budgets file (perf-budgets.toml not found)" in out
    assert ("perfkit: recording budgets to perf-budgets.toml (headroom x2, queries exact, "
            "calls x1.1)") in out
    assert "perf-budgets.toml: 1 test recorded" in out
    assert "budgets: 1 new, 0 tightened, 0 loosened, 0 unchanged" in out
    assert ("not recorded (failed functionally): test_inner.py::test_broken, "
            "test_inner.py::test_teardown_error\n") in out
    recorded = budgets_file(pytester)
    # not the failed, skipped or xfail test (which passed functionally: over its budget)
    assert list(recorded) == ["test_inner.py::test_nap"]
    limit = parse_duration(recorded["test_inner.py::test_nap"]["latency"])
    assert 0.02 <= limit <= 0.05  # a 10 ms sleep, x2, rounded up to a readable step
    text = (pytester.path / "perf-budgets.toml").read_text()

    result = run(NAP, "--perf-budget", "-k", "nap")  # enforced, not rewritten
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "perfkit: budgets file perf-budgets.toml: 1 entry (ini < env < CLI < file < marker)" \
        in out
    assert "entries for 1 of 1 collected tests" in out
    assert (pytester.path / "perf-budgets.toml").read_text() == text

    monkeypatch.setenv("NAP", "0.1")  # the code got 10x slower
    result = run(NAP, "--perf-budget", "-k", "nap")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "perf budget: test_inner.py::test_nap broke 1 budget" in out
    assert f"budget {recorded['test_inner.py::test_nap']['latency'][:-2]}" in out
    assert "[over budget]" in out


def test_record_writes_query_counts_exactly_and_they_are_enforced(
    run, pytester, tmp_path, monkeypatch
) -> None:
    source = f"""
import os, pytest, sqlalchemy as sa

@pytest.fixture
def engine():
    engine = sa.create_engine({f"sqlite:///{tmp_path / 'q.db'}"!r})
    yield engine
    engine.dispose()

def test_queries(engine):
    with engine.connect() as connection:
        for _ in range(int(os.environ.get("N", "3"))):
            connection.execute(sa.text("SELECT 1"))

def test_no_sql():
    pass
"""
    run(source, "--perf-budget", "--perf-budget-record", "--perf-budget-record-headroom=20"
        ).assert_outcomes(passed=2)  # wide latency budgets: this test is about counts
    recorded = budgets_file(pytester)
    assert recorded["test_inner.py::test_queries"]["queries"] == 3
    assert "queries" not in recorded["test_inner.py::test_no_sql"]
    monkeypatch.setenv("N", "4")
    result = run(source, "--perf-budget")
    result.assert_outcomes(passed=1, failed=1)
    assert "queries: 4 > budget 3 [over budget]" in result.stdout.str()

    # a headroom for counts, given like any setting (here in the ini)
    run(source, "--perf-budget", "--perf-budget-record", ini="perf_budget_record_count_headroom"
        " = 1.5").assert_outcomes(passed=1, failed=1)
    assert budgets_file(pytester)["test_inner.py::test_queries"]["queries"] == 6  # ceil(4x1.5)


def test_marker_beats_the_file_and_the_file_beats_ini_and_cli(run, pytester) -> None:
    (pytester.path / "perf-budgets.toml").write_text(textwrap.dedent("""
        ["test_inner.py::test_marked"]
        latency = "1ns"
        cpu = "5s"
        queries = 4
    """))
    source = """
        import pytest

        @pytest.mark.perf_budget(latency="2s")
        def test_marked():
            pass

        def test_unlisted():
            pass
    """
    result = run(source, "--perf-budget", "--perf-report=perf.json",
                 "--perf-budget-queries=9", ini="perf_budget_cpu = 1s")
    result.assert_outcomes(passed=2)
    tests = by_test(json.loads((pytester.path / "perf.json").read_text()))
    assert tests["test_marked"]["budgets"]["latency"] == 2.0  # marker over file
    assert tests["test_marked"]["budgets"]["cpu"] == 5.0  # file over ini
    assert tests["test_marked"]["budgets"]["queries"] == 4  # file over CLI
    assert tests["test_unlisted"]["budgets"]["cpu"] == 1.0
    assert tests["test_unlisted"]["budgets"]["queries"] == 9
    # the marker's coverage line counts marked tests, not file entries
    assert "perfkit: 1 tests with perf_budget markers" in result.stdout.str()

    # Recording never writes a keyword the marker sets (the marker would win anyway).
    run(source, "--perf-budget", "--perf-budget-record").assert_outcomes(passed=2)
    recorded = budgets_file(pytester)
    assert recorded["test_inner.py::test_marked"]["latency"] == "1ns"  # left as written
    assert parse_duration(recorded["test_inner.py::test_marked"]["cpu"]) < 1.0  # recorded
    assert recorded["test_inner.py::test_marked"]["queries"] == 4  # no SQL seen: kept
    assert "latency" in recorded["test_inner.py::test_unlisted"]


QUERIES = """
import os, pytest, sqlalchemy as sa

@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    yield engine
    engine.dispose()

def test_queries(engine):
    with engine.connect() as connection:
        for _ in range(int(os.environ.get("N", "3"))):
            connection.execute(sa.text("SELECT 1"))
"""


def test_ratchet_tightens_and_never_loosens(run, pytester, monkeypatch) -> None:
    key = "test_inner.py::test_queries"
    # wide latency budgets (headroom x20): this test is about the exact query counts
    monkeypatch.setenv("PERF_BUDGET_RECORD_HEADROOM", "20")
    result = run(QUERIES, "--perf-budget", "--perf-budget-ratchet")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # a mode of record, not alone
    assert "--perf-budget-ratchet is a mode of --perf-budget-record" in result.stderr.str()

    run(QUERIES, "--perf-budget", "--perf-budget-record").assert_outcomes(passed=1)
    assert budgets_file(pytester)[key]["queries"] == 3

    monkeypatch.setenv("N", "2")  # faster: the ratchet tightens
    result = run(QUERIES, "--perf-budget", "--perf-budget-record", "--perf-budget-ratchet")
    result.assert_outcomes(passed=1)
    assert f"{key}  queries: 3 -> 2 (tightened)" in result.stdout.str()
    assert budgets_file(pytester)[key]["queries"] == 2

    monkeypatch.setenv("N", "4")  # slower: fails, and the ratchet keeps the tight budget
    result = run(QUERIES, "--perf-budget", "--perf-budget-record", "--perf-budget-ratchet")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "queries: 4 > budget 2 [over budget]" in out
    assert f"{key}  queries: 2 kept (observed x headroom 4; the ratchet does not loosen)" in out
    assert "0 loosened" in out
    assert budgets_file(pytester)[key]["queries"] == 2

    # Recording without the ratchet is how a budget is loosened on purpose.
    result = run(QUERIES, "--perf-budget", "--perf-budget-record")
    assert f"{key}  queries: 2 -> 4 (loosened)" in result.stdout.str()
    assert budgets_file(pytester)[key]["queries"] == 4


def test_record_to_a_path_starts_from_the_budgets_in_effect(run, pytester) -> None:
    (pytester.path / "perf-budgets.toml").write_text(
        '["test_inner.py::test_other"]\nqueries = 1\n')
    source = "def test_x():\n    pass\n"
    result = run(source, "--perf-budget", "--perf-budget-record=proposed.toml")
    result.assert_outcomes(passed=1)
    proposed = budgets_file(pytester, "proposed.toml")
    assert proposed["test_inner.py::test_other"] == {"queries": 1}  # kept: not run
    assert "latency" in proposed["test_inner.py::test_x"]
    assert "1 entry kept for tests not run" in result.stdout.str()
    assert "test_inner.py::test_x" not in budgets_file(pytester)  # the original is untouched
    # Nothing changed (no test ran): the hand-written file keeps its layout and comments.
    (pytester.path / "proposed.toml").write_text("# mine\n" + (
        pytester.path / "proposed.toml").read_text())
    before = (pytester.path / "proposed.toml").read_text()
    result = run(source, "--perf-budget", "--perf-budget-record=proposed.toml", "-k", "nomatch")
    assert "budgets: 0 new, 0 tightened, 0 loosened, 0 unchanged" in result.stdout.str()
    assert (pytester.path / "proposed.toml").read_text() == before

    # A test path after the bare flag would be taken for PATH: an error, never a silent
    # recording into a file named like a test module.
    result = run(source, "--perf-budget", "--perf-budget-record", "test_inner.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--perf-budget-record: PATH must be a .toml file, got 'test_inner.py' (write "
            "--perf-budget-record=PATH, or put the flag after the test paths)"
            ) in result.stderr.str()


def test_a_record_that_cannot_be_written_says_why_and_fails_the_run(run, pytester) -> None:
    (pytester.path / "blocked").write_text("a file where the directory would be")
    result = run("def test_x():\n    pass\n", "--perf-budget",
                 "--perf-budget-record=blocked/budgets.toml")
    result.assert_outcomes(passed=1)  # the tests' own outcome and summary are kept
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*budgets not recorded: cannot write blocked*budgets.toml: *"])


def test_xdist_records_once_from_the_controller(inner_ini, pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import os, pytest

        @pytest.hookimpl(trylast=True)
        def pytest_sessionfinish(session):
            worker = getattr(session.config, "workerinput", {}).get("workerid")
            if worker:  # after every other sessionfinish of this worker, before the controller's
                with open(f"{worker}.saw", "w") as handle:
                    handle.write(str(os.path.exists("perf-budgets.toml")))
    """)
    pytester.makepyfile(test_inner="""
        import pytest

        @pytest.mark.parametrize("n", range(6))
        def test_many(n):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                           "-n", "2", "--perf-budget", "--perf-budget-record",
                                           "--perf-report=perf.json")
    result.assert_outcomes(passed=6)
    document = json.loads((pytester.path / "perf.json").read_text())
    assert {t["worker"] for t in document["tests"]} == {"gw0", "gw1"}  # both workers ran tests
    # No worker wrote the file; the controller wrote every test's entry, and said so once.
    assert (pytester.path / "gw0.saw").read_text() == "False"
    assert (pytester.path / "gw1.saw").read_text() == "False"
    assert len(budgets_file(pytester)) == 6
    out = result.stdout.str()
    assert out.count("perf-budgets.toml: 6 tests recorded") == 1
    assert "recorded under xdist -n 2" in out
    # The next run under xdist: each worker reads the file and enforces it.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                                           "-n", "2", "--perf-budget", "--perf-report=perf.json")
    result.assert_outcomes(passed=6)
    document = json.loads((pytester.path / "perf.json").read_text())
    assert all("latency" in t["budgets"] for t in document["tests"])


@pytest.mark.parametrize(("content", "expected"), [
    ('["test_inner.py::test_x"]\nlatncy = "5ms"\n',
     "perf-budgets.toml [\"test_inner.py::test_x\"]: unknown keyword 'latncy'"),
    ('["test_inner.py::test_x"]\nlatency = "5 parsecs"\n',
     "perf-budgets.toml [\"test_inner.py::test_x\"]: latency: unknown duration unit 'parsecs'"),
    ('["test_inner.py::test_x"]\nqueries = -1\n',
     "perf-budgets.toml [\"test_inner.py::test_x\"]: queries: must be >= 0"),
    ('[test_inner.test_x]\nqueries = 1\n',
     "perf-budgets.toml [\"test_inner\"]: expected a table per test node id"),
    ('latency = "5ms"\n', "perf-budgets.toml [\"latency\"]: expected a table per test node id"),
    ('["test_inner.py::test_x"\n', "perf-budgets.toml: cannot be read as TOML"),
    ('["test_inner.py::test_x"]\nmemory = "1MB"\nlatency = "1s"\nrerun = false\n',
     "memory= needs a separate traced run"),
])
def test_bad_file_entries_are_usage_errors_naming_file_test_and_keyword(
    run, pytester, content: str, expected: str
) -> None:
    (pytester.path / "perf-budgets.toml").write_text(content)
    result = run("def test_x():\n    pass\n", "--perf-budget")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in result.stderr.str()


def test_stale_entries_warn_and_a_subset_run_is_fine(run, pytester) -> None:
    (pytester.path / "perf-budgets.toml").write_text(textwrap.dedent("""
        ["test_inner.py::test_a"]
        queries = 1
        ["test_inner.py::test_renamed"]
        queries = 1
        ["test_deleted.py::test_z"]
        queries = 1
    """))
    source = "def test_a():\n    pass\n\ndef test_b():\n    pass\n"
    result = run(source, "--perf-budget")
    result.assert_outcomes(passed=2, warnings=2)
    out = result.stdout.str()
    assert "no test 'test_inner.py::test_renamed'" in out
    assert "no test 'test_deleted.py::test_z'" in out
    assert "'test_inner.py::test_a'" not in out
    assert "entries for 1 of 2 collected tests, 2 for tests not collected" in out
    # A run of one test: the others' entries are not stale (their module is not whole here).
    result = run(source, "--perf-budget", "test_inner.py::test_b")
    result.assert_outcomes(passed=1, warnings=1)  # only the deleted module's entry
    assert "test_renamed" not in result.stdout.str()
    # -k deselects after collection: the module was collected whole, nothing more is stale.
    run(source, "--perf-budget", "-k", "test_b").assert_outcomes(passed=1, warnings=2)


def test_a_named_budgets_file_must_exist_unless_it_is_recorded(run, pytester) -> None:
    result = run("def test_x():\n    pass\n", "--perf-budget", ini="perf_budget_file = b.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "budgets file b.toml does not exist (perf_budget_file from ini perf_budget_file)" \
        in result.stderr.str()
    result = run("def test_x():\n    pass\n", "--perf-budget", "--perf-budget-record",
                 ini="perf_budget_file = b.toml")
    result.assert_outcomes(passed=1)
    assert "test_inner.py::test_x" in budgets_file(pytester, "b.toml")
    assert not (pytester.path / "perf-budgets.toml").exists()


def test_budgets_in_a_pyproject_table_are_read_not_recorded(run, pytester) -> None:
    (pytester.path / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "inner"

        [tool.perfkit.budgets."test_inner.py::test_x"]
        queries = 4
        cpu = "3s"
    """))
    args = ("--perf-budget", "--perf-budget-file=pyproject.toml", "--perf-report=perf.json")
    result = run("def test_x():\n    pass\n", *args)
    result.assert_outcomes(passed=1)
    budgets = by_test(json.loads((pytester.path / "perf.json").read_text()))["test_x"]["budgets"]
    assert budgets["queries"] == 4 and budgets["cpu"] == 3.0
    assert "budgets file pyproject.toml [tool.perfkit.budgets]: 1 entry" in result.stdout.str()
    (pytester.path / "pyproject.toml").write_text(
        '[tool.perfkit.budgets."test_inner.py::test_x"]\nqueries = "four"\n')
    result = run("def test_x():\n    pass\n", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("pyproject.toml [tool.perfkit.budgets] [\"test_inner.py::test_x\"]: queries: "
            "expected a whole number") in result.stderr.str()
    result = run("def test_x():\n    pass\n", *args, "--perf-budget-record")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--perf-budget-record does not rewrite pyproject.toml" in result.stderr.str()


def test_without_the_flag_nothing_is_read_or_written(run, pytester) -> None:
    broken = '["test_inner.py::test_x"]\nlatncy = "oops"\n'
    (pytester.path / "perf-budgets.toml").write_text(broken)
    result = run("def test_x():\n    pass\n")
    result.assert_outcomes(passed=1)  # the broken file is not even read
    assert "budgets file" not in result.stdout.str()
    assert (pytester.path / "perf-budgets.toml").read_text() == broken
    result = run("def test_x():\n    pass\n", "--perf-budget-record=new.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "need --perf-budget (nothing is measured without it)" in result.stderr.str()
    assert not (pytester.path / "new.toml").exists()
    assert sorted(p.name for p in pytester.path.iterdir() if "toml" in p.name) == [
        "perf-budgets.toml"]  # no temporary file left either
