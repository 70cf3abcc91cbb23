"""Entry point registered under ``pytest11``; turns pytest options into perfkit calls.

Module-level hooks only register the marker, read and validate options, and validate
``perf_budget`` markers at collection (so a typo is an error even without the flag).
Everything that runs per test lives on :class:`PerfBudgetPlugin`, which is registered only
with ``--perf-budget``: without it no hook of ours runs around a test, no tracer starts
and no SQLAlchemy listener is installed.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Generator, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from perfkit._paths import install_roots, loaded_dirs
from perfkit.measure.bench import BenchResult, BenchSettings, abenchmark, benchmark
from perfkit.measure.calibrate import (
    ALU_REFERENCE_SECONDS,
    REFERENCE_SECONDS,
    Calibration,
    MachineSpeed,
    calibrate,
    sample_alu,
)
from perfkit.measure.calls import CallCounter
from perfkit.measure.memory import HeapPeak, HeapTracer, RssHighWater
from perfkit.measure.runs import TimedRuns
from perfkit.measure.stats import Margins, Verdict, judge
from perfkit.measure.timing import CallTimer, Timing, cpu_wait_clock
from perfkit.measure.units import format_duration, format_size, parse_duration
from pytest_perfkit import budget_file
from pytest_perfkit.budgets import BUDGET_KEYWORDS, Budget, layer, rerun_conflict
from pytest_perfkit.report import NO_STATEMENTS, summary_lines, write_reports
from pytest_perfkit.settings import (
    SETTINGS,
    Settings,
    add_options,
    cli_name,
    load_settings,
    option_dest,
)
from pytest_perfkit.verdicts import (
    MAX_NOISE_BAND,
    NOT_APPLIED,
    BudgetResult,
    count_result,
    failure_message,
    timed_result,
)

SETTINGS_KEY = pytest.StashKey[Settings]()
BUDGET_KEY = pytest.StashKey[Budget]()
RESULT_KEY = pytest.StashKey[dict[str, Any]]()
BENCH_KEY = pytest.StashKey[list[dict[str, Any]]]()
SETUP_KEY = pytest.StashKey[dict[str, Any]]()
LOOP_KEY = pytest.StashKey[Any]()
#: The perf fixture's budgets left unjudged in a counted only run: ``(name, limit)``.
UNJUDGED_KEY = pytest.StashKey[list[tuple[str, float]]]()

#: Re-measure when the first run is above this fraction of a timing limit.
NEAR_FRACTION = 0.8

MARKER_HELP = (
    "perf_budget(latency=None, cpu=None, memory=None, rss=None, calls=None, queries=None, "
    "db_time=None, "
    "slow_query=None, loop_block=None, n_plus_one='warn', full_scans='warn', rerun=True, "
    "allow=(), warmup=0): "
    "performance budgets for this test, enforced with --perf-budget"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    budget_file.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = load_settings(config)
    config.stash[SETTINGS_KEY] = settings
    budget_file.configure(config, settings)  # only with --perf-budget is the file read
    if config.option.perf_budget:
        config.pluginmanager.register(PerfBudgetPlugin(config, settings), "perfkit-budget")
    else:
        _warn_unused_options(config)


def _warn_unused_options(config: pytest.Config) -> None:
    """Say so when report or budget options are given without ``--perf-budget``: a CI job
    that forgot the flag would otherwise get no report and believe its budgets held. A
    warning, not an error, so ``addopts`` may carry them for the runs that add the flag."""
    given = ["--perf-report"] if config.option.perf_report else []
    given += [cli_name(name) for name in (*BUDGET_KEYWORDS, *SETTINGS)
              if getattr(config.option, option_dest(name), None) is not None]
    if given:
        config.issue_config_time_warning(pytest.PytestConfigWarning(
            f"perfkit: {', '.join(given)} given without --perf-budget: nothing is measured, "
            "enforced or reported"), stacklevel=2)


def _marker_budget(item: pytest.Item, defaults: Budget, session: Budget) -> Budget | None:
    """The test's marker on top of ``defaults`` (the session's, with the test's budgets-file
    entry if it has one); ``session``: the session's alone."""
    markers = list(item.iter_markers("perf_budget"))
    if not markers:
        return None
    where = f"perf_budget on {item.nodeid}"
    merged: dict[str, object] = {}
    for marker in reversed(markers):  # farthest first, so the closest marker wins
        if marker.args:
            raise ValueError(f"{where}: takes keywords only, got positional {marker.args!r}")
        merged.update(marker.kwargs)
    budget = layer(defaults, [(where, merged)])
    conflict = rerun_conflict(budget, where, session)
    if conflict:
        raise ValueError(f"{where}: {conflict}")
    # A session default (ini/env/CLI) warmup yields to a test's rerun=False, with a note.
    if budget.warmup and not budget.rerun and budget.sources.get("warmup") == where:
        raise ValueError(
            f"{where}: warmup={budget.warmup} re-runs the test body before the measured run, "
            "but rerun=False forbids it; drop warmup or rerun=False"
        )
    return budget


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Validate every ``perf_budget`` marker; all errors are reported together. A budgets
    file entry (read with --perf-budget) goes between the defaults and the marker."""
    settings = config.stash[SETTINGS_KEY]
    entries = config.stash.get(budget_file.BUDGET_FILE_KEY, None)
    errors: list[str] = []
    # A marker the project registered is its own, however close its name.
    typos: dict[str, bool] = {line.split(":")[0].split("(")[0].strip(): False
                              for line in config.getini("markers")}
    for item in items:
        for mark in item.iter_markers():
            if mark.name not in typos:  # pytest only warns about an unknown marker
                typos[mark.name] = mark.name != "perf_budget" and bool(
                    difflib.get_close_matches(mark.name, ["perf_budget"], 1, 0.8))
            if typos[mark.name]:
                errors.append(f"{item.nodeid}: unknown marker {mark.name!r}, did you mean "
                              "'perf_budget'?")
        try:
            base = entries.layer(item.nodeid, settings.defaults) if entries else settings.defaults
            budget = _marker_budget(item, base, settings.defaults)
            if budget is None and base is not settings.defaults:
                budget = base
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if budget is not None:
            item.stash[BUDGET_KEY] = budget
    if errors:
        raise pytest.UsageError("perfkit: invalid perf_budget marker\n  " + "\n  ".join(errors))


class PerfFixture:
    """The ``perf`` fixture: micro-benchmark a callable inside a test, with an optional budget.

    ``perf(fn, *args, budget="2ms", **kwargs)`` (sync) or ``await perf.arun(fn, ...)``
    (async). Judged on the per-call minimum with the session's margins; over budget fails
    the test with the statistics. ``budget``, ``warmup``, ``min_rounds`` and ``max_time``
    are reserved keywords (pass a ``functools.partial`` for a callable that needs them).
    """

    def __init__(self, item: pytest.Item, settings: Settings, scale: float,
                 tracker: Any = None, plugin: PerfBudgetPlugin | None = None) -> None:
        self._item = item
        self._settings = settings
        self._scale = scale
        self._tracker = tracker
        self._plugin = plugin
        self.results: list[BenchResult] = []

    @contextmanager
    def _untracked(self) -> Iterator[None]:
        """The rounds' statements are not the test's: hundreds of repeats of one callable
        would break its query budget and read as an N+1."""
        paused = self._tracker is not None and self._tracker.active
        if paused:
            self._tracker.stop()
        try:
            yield
        finally:
            if paused:
                self._tracker.start()

    def _settings_for(self, warmup: int, min_rounds: int, max_time: float) -> BenchSettings:
        return BenchSettings(warmup=warmup, min_rounds=min_rounds, max_time=max_time)

    def _check(self, fn: Any, result: BenchResult, budget: object) -> BenchResult:
        self.results.append(result)
        limit = None if budget is None else parse_duration(budget, "budget") * self._scale
        name = getattr(fn, "__qualname__", repr(fn))
        if self._plugin is not None and self._plugin.instrumented:
            # A run under a tracer (calls counted, heap traced) slows the rounds: they are
            # neither judged nor reported. A separate run's were judged in the first run;
            # the only run's (rerun=False) budget is listed as not applied.
            if limit is not None and not self._plugin._rerunning:
                self._item.stash.setdefault(UNJUDGED_KEY, []).append((name, limit))
            return result
        entry = {"name": name, "min": result.stats.min, "median": result.stats.median,
                 "p95": result.stats.p95, "rounds": result.rounds, "loops": result.loops,
                 "limit": limit, "verdict": None}
        if limit is not None:
            verdict = judge(result.stats.min, limit, self._settings.margins)
            entry["verdict"] = verdict.value
            if verdict is Verdict.OVER_BUDGET:
                self._item.stash.setdefault(BENCH_KEY, []).append(entry)
                pytest.fail(
                    f"perf: {name} took {format_duration(result.stats.min)} per call > budget "
                    f"{format_duration(limit)} ({result.describe()})", pytrace=False)
        self._item.stash.setdefault(BENCH_KEY, []).append(entry)
        return result

    def __call__(self, fn: Any, *args: Any, budget: object = None, warmup: int = 1,
                 min_rounds: int = 5, max_time: float = 0.2, **kwargs: Any) -> BenchResult:
        with self._untracked():
            result = benchmark(fn, *args,
                               settings=self._settings_for(warmup, min_rounds, max_time), **kwargs)
        return self._check(fn, result, budget)

    async def arun(self, fn: Any, *args: Any, budget: object = None, warmup: int = 1,
                   min_rounds: int = 5, max_time: float = 0.2, **kwargs: Any) -> BenchResult:
        with self._untracked():
            result = await abenchmark(
                fn, *args, settings=self._settings_for(warmup, min_rounds, max_time), **kwargs)
        return self._check(fn, result, budget)


@pytest.fixture
def perf(request: pytest.FixtureRequest) -> PerfFixture:
    """Micro-benchmark a callable: ``perf(fn, *args, budget="1ms")``, ``await perf.arun(...)``."""
    settings = request.config.stash[SETTINGS_KEY]
    plugin = request.config.pluginmanager.get_plugin("perfkit-budget")
    if isinstance(plugin, PerfBudgetPlugin):
        return PerfFixture(request.node, settings, plugin.scale, plugin._tracker, plugin)
    return PerfFixture(request.node, settings, 1.0)


@pytest.fixture
def sql_queries(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A :class:`perfkit.sql.QueryTracker` for a block: ``with sql_queries: ...`` then assert
    on ``sql_queries.count``, ``.statements``, ``.texts``, ``.shape_counts()``, ``.findings()``.
    """
    from perfkit.sql import QueryTracker

    settings = request.config.stash[SETTINGS_KEY]
    tracker = QueryTracker(include_transaction_control=settings.include_transactions,
                           explain=settings.explain, sites=settings.sql_sites)
    try:
        yield tracker
    finally:
        tracker.stop()


def _time_units(settings: dict[str, Any]) -> str:
    """What a report's judged times are in: reference-machine time or seconds here."""
    if settings.get("calibrate") and settings.get("speed_check", True):
        return "reference-machine time"
    return "seconds on the machine"


class PerfBudgetPlugin:
    """Per-test measurement and enforcement; registered only with ``--perf-budget``."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.results: dict[str, dict[str, Any]] = {}
        self.calibration: Calibration | None = None
        self.scale = 1.0
        self.speed = MachineSpeed()
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.worker_id = workerinput.get("workerid") if workerinput else None
        self.workers = int(workerinput.get("workercount", 1)) if workerinput else _xdist_n(config)
        self.baseline = self._load_baseline(settings.baseline)
        self._rerunning = False
        # In a run under a tracer (calls counted, heap traced): the perf fixture's rounds
        # are slowed by it, so they are neither judged nor reported.
        self.instrumented = False
        self._around: tuple[str, ...] | None = None
        self._tracker: Any = None
        self.report_paths: list[str] = []
        self._collected: dict[str, int] = {}
        self.load_at_start = _load_average()
        # Imported here, not with the module: a session without --perf-budget loads the
        # plugin module too, and should not pay for what only measuring uses.
        from pytest_perfkit import loopblock

        self._loop = loopblock

    # --- session ---

    def _load_baseline(self, path: str) -> dict[str, float]:
        if not path:
            return {}
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            saved = data.get("settings") or {}
            if saved and _time_units(saved) != _time_units(self.settings.values):
                raise pytest.UsageError(
                    f"perfkit: baseline {path!r} was measured in {_time_units(saved)}, this "
                    f"run judges in {_time_units(self.settings.values)} (calibrate/speed_check "
                    "differ): record a new baseline with the same settings")
            return {t["nodeid"]: t["latency"].get("judged", t["latency"].get("min"))
                    for t in data.get("tests", []) if t.get("latency")
                    and t["latency"].get("judged", t["latency"].get("min")) is not None}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise pytest.UsageError(f"perfkit: baseline {path!r} cannot be read: {exc}") from None

    def _memray_active(self) -> bool:
        return bool(self.config.pluginmanager.hasplugin("memray")
                    and getattr(self.config.option, "memray", False))

    @property
    def tracker(self) -> Any:
        if self._tracker is None:
            try:
                from perfkit.sql import QueryTracker
            except ImportError:
                return None
            try:
                self._tracker = QueryTracker(
                    include_transaction_control=self.settings.include_transactions,
                    sites=self.settings.sql_sites)
                self._tracker.start()  # install the listeners before any connection exists
                self._tracker.stop()
            except ImportError:
                self._tracker = None
        return self._tracker

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.settings.calibrate:
            self.calibration = calibrate()
            self.scale = self.calibration.factor
            self.speed = MachineSpeed.from_calibration(self.calibration)
        _ = self.tracker

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._tracker is not None:
            self._tracker.stop()
            from perfkit.sql import uninstall_listeners

            uninstall_listeners()

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        s = self.settings
        defaults = [f"{name}={BUDGET_KEYWORDS[name].show(getattr(s.defaults, name))}"
                    f" ({s.defaults.sources[name]})" for name in s.defaults.sources]
        calibration = (self.calibration.describe() if self.calibration
                       else "off (budgets are absolute)")
        wait = ("wall time less CPU waits (run-queue delay)" if s.exclude_cpu_wait
                and cpu_wait_clock else "wall time" + (" (no run-queue counter here)"
                                                       if s.exclude_cpu_wait else ""))
        speed = ("each run's CPU part scaled to the machine's typical speed, read from a "
                 "reference workload run beside it" if s.speed_check else "no speed check")
        blas = ", ".join(f"{var}={os.environ.get(var, 'unset')}" for var in
                         ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))
        return [
            "perfkit: --perf-budget on; defaults: " + (", ".join(defaults) or "none")
            + f"; n_plus_one={s.defaults.n_plus_one}, full_scans={s.defaults.full_scans}",
            f"perfkit: latency/CPU judged on the median of 1 + up to {s.confirm_runs} confirm "
            f"runs (+ up to {s.borderline_runs} while within noise"
            + (f", {format_duration(s.borderline_spacing)} apart" if s.borderline_spacing
               else "") + f"), margin {s.margin:.0%} + "
            f"{format_duration(s.margin_abs)} (wider when runs "
            f"disagree, at most {MAX_NOISE_BAND:.0%}); calibration {calibration}",
            f"perfkit: latency = {wait}, GC pauses removed; {speed}",
            f"perfkit: memory = heap peak (tracemalloc, separate run) / RSS high-water "
            f"(VmHWM or sampled); calls = Python + built-in calls in the test's thread "
            f"(profile hook, separate run, Python {sys.version.split()[0]}); xdist latency "
            f"policy: {s.xdist}; EXPLAIN "
            f"{'on' if s.explain else 'off'}; native threads: {blas}",
        ]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        counts: dict[str, int] = {}
        marked = 0
        for item in session.items:
            budget = item.stash.get(BUDGET_KEY, None) or self.settings.defaults
            marked += any(True for _ in item.iter_markers("perf_budget"))
            budget = self._loop.for_test(item, budget, self.settings.defaults)
            for name in budget.limits:
                counts[name] = counts.get(name, 0) + 1
        self._collected = counts
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and not self.is_worker and session.items:
            detail = ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"
            reporter.write_line(f"perfkit: {marked} tests with perf_budget markers; "
                                f"budgets per kind: {detail}")

    # --- per test ---

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        """Time the setup phase and count its SQL, reported apart from the call's budgets."""
        tracker = self.tracker
        if tracker is not None:
            tracker.reset()
            tracker.explain, tracker.slow, tracker.n_plus_one, tracker.lazy_parents = (
                False, None, 0, 0)
            tracker.start()
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            setup: dict[str, Any] = {"seconds": time.perf_counter() - started}
            if tracker is not None:
                tracker.stop()
                setup["statements"] = tracker.count
            item.stash[SETUP_KEY] = setup

    def _body(self, item: pytest.Function) -> None:
        """Run the test body again (same fixtures), outside this plugin's measuring."""
        self._rerunning = True
        try:
            item.ihook.pytest_pyfunc_call(pyfuncitem=item)
        finally:
            self._rerunning = False

    @contextlib.contextmanager
    def _instrumented(self) -> Iterator[None]:
        """A run under a tracer (heap, call counter, cProfile): the perf fixture's rounds,
        slowed by it, are neither judged nor reported meanwhile."""
        self.instrumented = True
        try:
            yield
        finally:
            self.instrumented = False

    def _rerun(self, item: pytest.Function) -> str:
        """Run the test body again; returns an error text or ``""``."""
        try:
            self._body(item)
        except (Exception, pytest.fail.Exception, pytest.skip.Exception) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        return ""

    def _warm_up(self, item: pytest.Function, runs: int) -> None:
        """Unmeasured runs before the measured one; an error fails the test as it is."""
        for _ in range(runs):
            self._body(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, object, object]:
        if self._rerunning:
            return (yield)
        budget = self._loop.for_test(pyfuncitem, pyfuncitem.stash.get(BUDGET_KEY, None)
                          or self.settings.defaults, self.settings.defaults)
        payload: dict[str, Any] = {"nodeid": pyfuncitem.nodeid, "status": "failed",
                                   "worker": self.worker_id, "workers": self.workers,
                                   "budgets": _budget_dict(budget), "scale": self.scale}
        pyfuncitem.stash[RESULT_KEY] = payload
        pyfuncitem.stash[UNJUDGED_KEY] = []
        tracker = self.tracker
        if tracker is not None:
            tracker.reset()
            tracker.slow = budget.slow_query
            n_plus_one_on = budget.n_plus_one.action != "off"
            tracker.n_plus_one = budget.n_plus_one.threshold if n_plus_one_on else 0
            tracker.lazy_parents = 2 if n_plus_one_on else 0
            tracker.allow = budget.allow
            tracker.explain = self.settings.explain and budget.full_scans.action != "off"
        heap_inline = budget.memory is not None and not budget.rerun and not self._memray_active()
        heap = HeapTracer() if heap_inline else None
        counter = self._inline_counter(budget, heap_inline)
        # Counting pauses the cyclic collector: the only run's RSS is then not the test's.
        rss = (RssHighWater(sampler=True if self.settings.rss_sampling else None)
               if budget.rss is not None and not isinstance(counter, CallCounter) else None)
        traced = _only_run_traced(heap_inline, counter)
        # The event-loop watch (async tests with loop_block only) finds the loop the test
        # runs on by itself; its watchdog thread starts here, outside the timed window.
        watch = pyfuncitem.stash[LOOP_KEY] = self._loop.start_watch(pyfuncitem, budget, traced)
        # A full collection first keeps a gen-2 pass out of a *judged* window; it costs
        # tens of ms in a big process, so tests without a timing limit skip it.
        timed = budget.latency is not None or budget.cpu is not None or \
            pyfuncitem.nodeid in self.baseline
        if budget.warmup and budget.rerun and (budget.limits or timed):
            payload["warmup"] = budget.warmup
            self._warm_up(pyfuncitem, budget.warmup)
            if BENCH_KEY in pyfuncitem.stash:  # a perf fixture's rounds in a warmup
                del pyfuncitem.stash[BENCH_KEY]
        timer = CallTimer(collect=timed)
        # Budgets in reference-machine time: a reference sample right before the first run,
        # so that run is bracketed by two like every confirm run (this VM's vCPUs changed
        # speed by 1.75x within half a second).
        # The arithmetic reference's sample goes first, so the mixed one stays right beside
        # the run as without it.
        leading = (self.settings.calibrate and self.settings.speed_check and not traced
                   and (budget.latency is not None or budget.cpu is not None))
        alu_lead = sample_alu() if leading else None
        lead = self.speed.sample() if leading else None
        with ExitStack() as stack:
            if rss is not None:
                stack.enter_context(rss)
            if heap is not None:
                stack.enter_context(heap)
            if watch is not None and not isinstance(watch, str):
                stack.enter_context(watch)
            if tracker is not None:
                tracker.start()
            stack.enter_context(timer)
            if isinstance(counter, CallCounter):  # around the body's hooks only
                counter.__enter__()
            self.instrumented = isinstance(counter, CallCounter)
            try:
                result = yield
            finally:
                self.instrumented = False
                if isinstance(counter, CallCounter):
                    counter.__exit__(None, None, None)
                if tracker is not None:
                    tracker.stop()
                    timer.exclude(tracker.overhead)
        payload["status"] = "measured"
        self._judge(pyfuncitem, budget, payload, timer, rss, heap.result if heap else None,
                    lead, alu_lead, counter)
        return result

    # --- call counts ---

    def _calls_blocked(self) -> str:
        """Why calls cannot be counted now (one profile hook per thread), or ``""``."""
        if self._memray_active():  # its hook is set from C: sys.getprofile() does not see it
            return "pytest-memray is tracing; one profile hook at a time"
        current = sys.getprofile()
        if current is not None:
            name = getattr(current, "__qualname__", None) or type(current).__qualname__
            return (f"another profiler is active (sys.setprofile: {name}); one profile hook "
                    "at a time")
        return ""

    def _counter(self) -> CallCounter:
        """A counter that starts at the test's own code: pytest, pluggy, async runners and
        the standard library around the body are not counted, what the body calls is."""
        if self._around is None:
            self._around = (*(root + os.sep for root in install_roots()),
                            *loaded_dirs("_pytest", "pluggy", "pytest_asyncio", "anyio", "trio"),
                            "<")
        return CallCounter(around=self._around, root=str(self.config.rootpath))

    def _inline_counter(self, budget: Budget, heap_inline: bool) -> CallCounter | str | None:
        """With ``calls=`` and ``rerun=False``: a counter around the only run (its timing is
        then not judged), or why it cannot count; ``None`` otherwise."""
        if budget.calls is None or budget.rerun:
            return None
        blocked = self._calls_blocked()
        if blocked:
            return blocked
        if heap_inline:
            return ("the only run (rerun=False) was traced for memory; one profile hook at "
                    "a time")
        if budget.latency is not None or budget.cpu is not None:
            return ("rerun=False and a timing budget: the only run is timed, and counting "
                    "calls in it would distort that")
        return self._counter()

    def _calls_result(self, item: pytest.Function, budget: Budget,
                      inline: CallCounter | str | None, payload: dict[str, Any]) -> BudgetResult:
        """``calls=``: counted in a separate run of the body, or in the only run (rerun=False)."""
        assert budget.calls is not None

        def not_applied(why: str) -> BudgetResult:
            payload["calls"] = {"note": why}
            return BudgetResult("calls", budget.calls, None, "count", NOT_APPLIED, detail=why)

        if isinstance(inline, str):
            return not_applied(inline)
        where = "counted in the only run"
        if inline is None:
            blocked = self._calls_blocked()
            if blocked:
                return not_applied(blocked)
            inline = self._counter()
            with self._instrumented(), inline:
                error = self._rerun(item)
            if error:
                return not_applied(f"the counted re-run failed ({error}); mark the test "
                                   "rerun=False to count the first run")
            where = "separate run"
        count = inline.result
        if count.error:
            return not_applied(count.error)
        if not count.python:  # the test function itself is one call, when it is seen
            return not_applied("the test function's own call was not seen: its code is in "
                               "the standard library, site-packages or a '<...>' file, where "
                               "counting does not start")
        payload["calls"] = {**count.as_dict(), "python_version": sys.version.split()[0]}
        detail = (f"{count.python} Python + {count.c} built-in calls in the test's thread "
                  f"({where}, Python {sys.version.split()[0]})")
        return count_result("calls", count.total, budget.calls, "count",
                            [entry.line() for entry in count.top[:5]], detail)

    def _explain_failure(self, item: pytest.Function, budget: Budget,
                         results: list[BudgetResult], payload: dict[str, Any]) -> None:
        """A timing budget that fails the test: one more run under cProfile, never judged,
        whose top functions become the cause lines (only when the body may be re-run; a
        verdict downgraded to a warning under xdist is not profiled)."""
        failed = [r for r in results if r.broken and r.budget in ("latency", "cpu", "baseline")]
        if not failed or not budget.rerun or not self.settings.profile_on_fail:
            return
        from perfkit.measure.profile import profile_call

        errors: list[str] = []
        with self._instrumented():  # a perf fixture's rounds under cProfile: not judged
            profile = profile_call(lambda: errors.append(self._rerun(item)),
                                   root=str(self.config.rootpath), exclude=self._plugin_files())
        if errors and errors[0] and not profile.error:
            profile.error = errors[0]
        payload["profile"] = profile.as_dict()
        for result in failed:
            result.cause.extend(profile.lines())

    def _plugin_files(self) -> list[str]:
        """Files of the registered pytest plugins (conftests aside): the machinery around a
        profiled test body, left out of its profile."""
        files = set()
        for plugin in self.config.pluginmanager.get_plugins():
            module = plugin if isinstance(plugin, types.ModuleType) else \
                sys.modules.get(type(plugin).__module__)
            path = getattr(module, "__file__", None)
            if path and os.path.basename(path) != "conftest.py":
                files.add(os.path.abspath(path))
        return sorted(files)

    def _latency(self, timing: Timing) -> float:
        return timing.own if self.settings.exclude_cpu_wait else timing.wall

    def _judge(self, item: pytest.Function, budget: Budget, payload: dict[str, Any],
               timer: CallTimer, rss: RssHighWater | None, heap: HeapPeak | None,
               lead: float | None = None, alu_lead: float | None = None,
               counter: CallCounter | str | None = None) -> None:
        margins: Margins = self.settings.margins
        notes: list[str] = []
        results: list[BudgetResult] = []
        findings_enforced: list[str] = []
        downgrade = self.workers > 1 and self.settings.xdist == "warn"
        scale = self.scale
        if budget.warmup and not budget.rerun:
            notes.append(f"warmup={budget.warmup} ({budget.sources.get('warmup')}) not run: "
                         "rerun=False")

        # SQL first: the tracker is stopped, re-runs below must not add to its numbers.
        tracker = self.tracker
        sql = _sql_payload(tracker) if tracker is not None else None
        payload["sql"] = sql
        setup = item.stash.get(SETUP_KEY, {})
        payload["setup"] = setup
        if sql is not None:
            from perfkit.sql.tracker import describe_sites

            cause = [f"{s['count']}x {s['shape'][:120]} at " + (
                describe_sites([(t["caller"], t["count"]) for t in s["sites"]], s["count"])
                if len(s["sites"]) > 1 else s["caller"]) for s in sql["top"][:5]]
            if setup.get("statements"):
                cause.append(f"(not counted: {setup['statements']} statements in fixture setup)")
            unseen = "" if sql["count"] else NO_STATEMENTS
            if budget.queries is not None:
                results.append(count_result("queries", sql["count"], budget.queries, "count",
                                            cause, unseen))
            if budget.db_time is not None:
                results.append(count_result("db_time", sql["db_time"], budget.db_time, "s",
                                            cause, unseen))
            if budget.slow_query is not None:
                # One budget, judged on the slowest statement; the slow shapes are its cause.
                slow = [f["text"] for f in sql["findings"] if f["kind"] == "slow"]
                results.append(count_result("slow_query", sql["slowest"], budget.slow_query,
                                            "s", slow, unseen or "slowest statement"))
            for finding in sql["findings"]:
                kind = finding["kind"]
                mode = {"n_plus_one": budget.n_plus_one, "full_scan": budget.full_scans}.get(kind)
                enforced = (kind == "slow") or (mode is not None and mode.action == "fail")
                finding["enforced"] = enforced
                if enforced and kind != "slow":  # slow statements fail through slow_query
                    findings_enforced.append(f"{kind}: {finding['text']}")
        else:
            for name in ("queries", "db_time", "slow_query"):
                if getattr(budget, name) is not None:
                    unit = "count" if name == "queries" else "s"
                    results.append(BudgetResult(name, getattr(budget, name), None, unit,
                                                NOT_APPLIED, detail="SQLAlchemy is not installed"))

        # Latency and CPU: first run, then confirm runs when near or over a limit, each
        # followed by a reference run that says how fast the machine was at that moment.
        # With calibrate and the speed check, budgets are in reference-machine time and so is
        # every run (its CPU part divided by the reference beside it against the reference
        # machine's time): the machine's speed at session start no longer matters.
        reference_units = self.settings.calibrate and self.settings.speed_check
        if reference_units:
            scale = 1.0
        targets: dict[str, float] = {}
        if budget.latency is not None:
            targets["latency"] = budget.latency * scale
        if budget.cpu is not None:
            targets["cpu"] = budget.cpu * scale
        base = self.baseline.get(item.nodeid)
        if base is not None:
            targets["baseline"] = base * (1 + self.settings.baseline_margin) \
                + self.settings.baseline_margin_abs
        heap_inline = heap is not None
        traced = _only_run_traced(heap_inline, counter)
        if traced and targets:
            notes.append(f"timing not judged: {traced}")
            for name, limit in targets.items():
                results.append(BudgetResult(name, limit, None, "s", NOT_APPLIED,
                                            detail=f"{traced}, which slows it"))
            targets.clear()
        # In reference-machine time a run's factor is the smaller of the mixed reference's
        # and an arithmetic-only one's: the mixed one alone once read 2.1x beside a loop
        # that ran 1.75x, and excused a 3x slowdown as "within noise".
        runs = TimedRuns(self._latency, self.speed if self.settings.speed_check else None,
                         reference=REFERENCE_SECONDS if reference_units else None,
                         alu_reference=ALU_REFERENCE_SECONDS if reference_units else None)
        if lead is not None and targets:
            runs.lead(lead, alu_lead)
        runs.add(timer.timing)
        single_reason = ""

        def near() -> bool:
            # Also at the session's typical speed: a moment the reference read as unusually
            # slow must not excuse a run from confirm runs (a 3x slowdown once passed "ok"
            # on one run whose raw time was over the budget, divided by a 1.36x factor).
            for name, limit in targets.items():
                kind = "cpu" if name == "cpu" else "latency"
                seen = max(runs.statistic(kind), runs.statistic_at_typical(kind))
                if seen > NEAR_FRACTION * limit:
                    return True
            return False

        def verdict(name: str, limit: float) -> BudgetResult:
            kind = "cpu" if name == "cpu" else "latency"
            if name == "baseline":
                result = timed_result("baseline", runs.samples(kind), limit, Margins(0.0, 0.0),
                                      scale=1.0, raw=runs.raw_samples(kind),
                                      factor=runs.factor, single_reason=single_reason)
                result.detail = (f"baseline {format_duration(base or 0.0)} + "
                                 f"{self.settings.baseline_margin:.0%} + "
                                 f"{format_duration(self.settings.baseline_margin_abs)}; "
                                 + result.detail)
            elif reference_units:
                # Every run is already at the reference machine's speed: judged as it stands.
                result = timed_result(name, runs.samples(kind), limit, margins, scale=1.0,
                                      single_reason=single_reason)
                result.detail += (
                    f"; times on the reference machine (this machine ran x{runs.factor:.2f} "
                    f"its speed; as measured: median "
                    f"{format_duration(statistics.median(runs.raw_samples(kind)))})")
            else:
                result = timed_result(name, runs.samples(kind), limit, margins, scale=scale,
                                      raw=runs.raw_samples(kind), factor=runs.factor,
                                      single_reason=single_reason)
            return result

        def confirm_run() -> bool:
            nonlocal single_reason
            confirm = CallTimer()
            with confirm:
                error = self._rerun(item)
            if error:
                notes.append(f"confirm run failed ({error}); judged on {runs.count} run(s)")
                single_reason = single_reason or "confirm run failed"
                return False
            runs.add(confirm.timing)
            runs.check_speed()
            return True

        if targets and reference_units and not runs.sampled_after_last():
            # Budgets in reference-machine time: the first run is judged beside a sample
            # too, or a slow moment at session start would excuse it from confirm runs.
            runs.check_speed()
        if targets and near():
            if not budget.rerun:
                single_reason = "rerun=False"
            elif self.settings.confirm_runs == 0:
                single_reason = "confirm_runs=0"
            if not runs.sampled_after_last():
                runs.check_speed()
            ok = True
            for _ in range(self.settings.confirm_runs if budget.rerun else 0):
                ok = confirm_run()
                if not ok or (runs.count >= 2 and not near()):
                    break
            runs.check_speed(at_least=3)
            # Borderline ("within noise"): more runs before judging, not a pass by default.
            extra = self.settings.borderline_runs \
                if ok and budget.rerun and self.settings.confirm_runs else 0
            # Spaced out: back-to-back runs all met the same moment of the machine (its
            # speed held for ~0.5 s here), so a reference that misread that moment misread
            # it for every run; each spaced run gets a fresh sample right before it.
            for _ in range(extra):
                if not any(verdict(name, limit).verdict == Verdict.WITHIN_NOISE.value
                           for name, limit in targets.items()):
                    break
                if self.settings.borderline_spacing:
                    runs.pause(self.settings.borderline_spacing)
                if not confirm_run():
                    break
        for name, limit in targets.items():
            result = verdict(name, limit)
            if downgrade:
                self._downgrade(result)
            results.append(result)
        self._explain_failure(item, budget, results, payload)
        if reference_units and targets:
            payload["scale"] = 1.0  # the limits were not multiplied: the runs were divided
        payload["latency"] = runs.summary(cpu_wait_excluded=self.settings.exclude_cpu_wait
                                          and timer.timing.cpu_wait_known)

        # Memory: heap peak in its own traced run (or inline when re-runs are off); RSS inline.
        memory: dict[str, Any] = {}
        if budget.memory is not None:
            if self._memray_active():
                results.append(BudgetResult("memory", budget.memory, None, "bytes", NOT_APPLIED,
                                            detail="pytest-memray is tracing; one tracer at a "
                                                   "time"))
            else:
                error = ""
                if heap is None:
                    tracer = HeapTracer()
                    with self._instrumented(), tracer:
                        error = self._rerun(item)
                    heap = tracer.result
                if error:
                    results.append(BudgetResult(
                        "memory", budget.memory, None, "bytes", NOT_APPLIED,
                        detail=f"the traced re-run failed ({error}); mark the test "
                               "rerun=False to trace the first run, or use rss="))
                else:
                    memory["heap_peak"] = heap.peak
                    memory["sites"] = [{"location": s.location, "size": s.size,
                                        "count": s.count, "source": s.source()}
                                       for s in heap.sites]
                    cause = [f"{site['location']}: {format_size(site['size'])} in "
                             f"{site['count']} blocks  {site['source'][:80]}"
                             for site in memory["sites"]]
                    results.append(count_result(
                        "memory", heap.peak, budget.memory, "bytes", cause,
                        "Python heap peak (tracemalloc)"
                        + (", traced in the only run" if heap_inline else ", separate run")))
        if budget.rss is not None and rss is None:
            results.append(BudgetResult(
                "rss", budget.rss, None, "bytes", NOT_APPLIED,
                detail="the only run (rerun=False) was counted for calls, with the cyclic "
                       "collector paused: the cycles it dropped were never freed"))
        if rss is not None and budget.rss is not None:
            memory["rss_peak"] = rss.peak
            memory["rss_method"] = rss.method
            if rss.method == "unavailable":
                results.append(BudgetResult("rss", budget.rss, None, "bytes", NOT_APPLIED,
                                            detail="no VmHWM and psutil is not installed"))
            else:
                results.append(count_result("rss", rss.peak, budget.rss, "bytes",
                                            detail=f"RSS high-water growth ({rss.method})"))
        payload["memory"] = memory or None
        payload["calls"] = None
        if budget.calls is not None:  # sets payload["calls"]
            results.append(self._calls_result(item, budget, counter, payload))
        for name, limit in item.stash.get(UNJUDGED_KEY, []):
            results.append(BudgetResult(
                "perf", limit, None, "s", NOT_APPLIED,
                detail=f"perf({name}): the only run (rerun=False) was counted for calls, "
                       "whose profile hook slows the rounds"))
        watch = item.stash.get(LOOP_KEY, None)
        if budget.loop_block is not None and watch is not None:
            loop, payload["loop"] = self._loop.loop_result(budget.loop_block, watch)
            if downgrade:  # a block is wall time too: the other workers stretch it
                self._downgrade(loop)
            results.append(loop)
        payload["results"] = [r.as_dict() for r in results]
        payload["notes"] = notes
        payload["benchmarks"] = item.stash.get(BENCH_KEY, [])
        broken = any(r.broken for r in results) or bool(findings_enforced)
        payload["failed"] = broken
        if broken:
            factor = payload["latency"]["factor"] if reference_units and targets else None
            session_factor = self.calibration.factor if reference_units and not targets \
                and self.calibration is not None else None
            pytest.fail(failure_message(item.nodeid, results, findings_enforced, scale, factor,
                                        session_factor), pytrace=False)

    def _downgrade(self, result: BudgetResult) -> None:
        """Under xdist with ``xdist = "warn"``: a broken time budget is reported, not enforced."""
        if result.verdict == Verdict.OVER_BUDGET.value:
            result.enforced = False
            result.detail += f"; downgraded to a warning under xdist -n {self.workers}"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "call":
            payload = item.stash.get(RESULT_KEY, None)
            if payload is not None:
                if payload["status"] != "measured":  # the body ended early: say how
                    payload["status"] = "xfailed" if hasattr(report, "wasxfail") \
                        else report.outcome
                report.perfkit = payload  # type: ignore[attr-defined]
        elif call.when == "setup" and not report.passed:
            # Skipped or errored before the call: its budgets were never applied; say so
            # (session defaults included, for tests without a marker of their own).
            budget = item.stash.get(BUDGET_KEY, None) or self.settings.defaults
            if budget.limits:
                status = "xfailed" if hasattr(report, "wasxfail") else \
                    "skipped" if report.skipped else "error in setup"
                report.perfkit = {  # type: ignore[attr-defined]
                    "nodeid": item.nodeid, "status": status, "worker": self.worker_id,
                    "workers": self.workers, "budgets": _budget_dict(budget),
                    "scale": self.scale}
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        payload = getattr(report, "perfkit", None)
        if payload is not None and not self.is_worker:
            self.results[report.nodeid] = payload

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        path = self.config.option.perf_report or self.settings.report
        if path:
            self.report_paths = write_reports(path, self._report_data())

    def _report_data(self) -> dict[str, Any]:
        workers = max([self.workers, *(r.get("workers") or 1 for r in self.results.values())])
        return {
            "calibration": None if self.calibration is None else {
                "seconds": self.calibration.seconds, "factor": self.calibration.factor},
            "workers": workers,
            # How busy the machine was (1/5/15-minute load averages): numbers from a loaded
            # runner read differently.
            "load": {"start": self.load_at_start, "end": _load_average()},
            "settings": {name: value for name, value in self.settings.values.items()},
            "defaults": _budget_dict(self.settings.defaults),
            "tests": list(self.results.values()),
        }

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        terminalreporter.section("perf budgets")
        for line in summary_lines(self._report_data()):
            terminalreporter.write_line(line)
        for path in self.report_paths:
            terminalreporter.write_line(f"perfkit report written to {path}")


def _only_run_traced(heap_inline: bool, counter: CallCounter | str | None) -> str:
    """Why the only run (rerun=False) cannot be timed, or ``""``."""
    if heap_inline:
        return "the only run was traced for memory (rerun=False)"
    if isinstance(counter, CallCounter):
        return "the only run was counted for calls (rerun=False)"
    return ""


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):  # not on Windows
        return None


def _xdist_n(config: pytest.Config) -> int:
    numprocesses = getattr(config.option, "numprocesses", None)
    if isinstance(numprocesses, int) and numprocesses > 0 and \
            getattr(config.option, "dist", "no") != "no":
        return numprocesses
    return 1


def _budget_dict(budget: Budget) -> dict[str, Any]:
    data: dict[str, Any] = dict(budget.limits)
    data["n_plus_one"] = str(budget.n_plus_one)
    data["full_scans"] = str(budget.full_scans)
    if not budget.rerun:
        data["rerun"] = False
    if budget.warmup:
        data["warmup"] = budget.warmup
    return data


def _sql_payload(tracker: Any) -> dict[str, Any]:
    findings = [{"kind": f.kind, "text": f.describe(), "shape": f.shape, "count": f.count,
                 "hint": f.hint, "caller": f.caller,
                 "sites": [{"caller": site, "count": n} for site, n in f.sites]}
                for f in tracker.findings()]
    return {
        "count": tracker.count,
        "rows": tracker.rows,
        "db_time": tracker.db_time,
        "slowest": max((s.max_time for s in tracker.shapes), default=0.0),
        "top": [{"shape": s.shape, "count": s.count, "total_time": s.total_time,
                 "caller": s.caller,
                 "sites": [{"caller": site, "count": n} for site, n in s.top_sites()]}
                for s in tracker.shapes[:10]],
        "findings": findings,
        "notes": list(tracker.notes),
    }


__all__ = ["PerfBudgetPlugin", "PerfFixture", "perf", "sql_queries"]
