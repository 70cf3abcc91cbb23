"""Per-test budgets kept in a TOML file, and written there by the tool.

The file (``perf-budgets.toml`` in the rootdir, or the ``perf_budget_file`` setting) holds
one table per test node id with the marker's keywords and units::

    ["tests/test_api.py::test_list_authors"]
    latency = "25ms"
    queries = 3

Its entries sit between the session defaults and the test's own marker: ini < env < CLI <
budgets file < marker, per keyword. The file is read only with ``--perf-budget``; every
entry is validated when it is read, and a bad one is a usage error naming the file, the
test and the keyword. An entry for a test that is not collected is not applied (running a
subset of the suite is normal); one whose test module is gone, or whose module was
collected whole without it, gets a :class:`PerfBudgetFileWarning`.

``--perf-budget-record[=PATH]`` writes, after the session (on the xdist controller only),
what each test that passed functionally was observed to need, times a headroom;
``--perf-budget-ratchet`` lets a budget only tighten. The observed values come from the
same per-test payload the JSON report and baselines are made of, so a recorded budget is
in the unit it is judged in (reference-machine time with ``calibrate``).
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_perfkit.budgets import BUDGET_KEYWORDS, Budget, parse_keyword, rerun_conflict
from pytest_perfkit.settings import Settings

__all__ = ["FILE_NAME", "BudgetFile", "PerfBudgetFileWarning", "add_options", "configure",
           "observed", "propose", "readable_duration", "readable_size", "render"]

FILE_NAME = "perf-budgets.toml"
#: Budgets may also be read from this file's ``[tool.perfkit.budgets]`` table (not recorded
#: there: rewriting it would lose the rest of the file's layout and comments).
PYPROJECT = "pyproject.toml"
BUDGET_FILE_KEY = pytest.StashKey["BudgetFile | None"]()

#: Keywords that recording writes; the rest of an entry (n_plus_one, allow, rerun, ...) is
#: the user's and kept as written.
RECORDED = ("latency", "cpu", "memory", "rss", "calls", "queries", "db_time")

#: ``record_calls_headroom``'s default: call counts do not vary between runs of one Python,
#: but a small change in the code or a library adds a few calls.
CALLS_HEADROOM = 1.1

#: Readable steps a recorded limit is rounded up to (at most 25% up): 12ms, 25ms, 400ms.
_STEPS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)

_HEADER = """\
# perfkit performance budgets: one table per test node id, the perf_budget marker's keywords.
# Precedence per keyword: ini < env < CLI < this file < the test's own marker.
# Written by `pytest --perf-budget --perf-budget-record`; comments are not kept.
"""


class PerfBudgetFileWarning(pytest.PytestWarning):
    """An entry of the budgets file names a test that no longer exists."""


# --- reading ------------------------------------------------------------------------------


@dataclass
class BudgetFile:
    """The entries of one budgets file: raw TOML values and their parsed form."""

    path: Path
    display: str
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    parsed: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, display: str) -> BudgetFile:
        """Read and validate every entry; all problems are raised together as ``ValueError``."""
        budget_file = cls(path, display)
        if not path.exists():
            return budget_file
        if sys.version_info >= (3, 11):  # imported only when there is a file to read
            import tomllib
        else:  # the package depends on tomli before 3.11
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"{display}: cannot be read as TOML: {exc}") from None
        if path.name == PYPROJECT:
            data = data.get("tool", {}).get("perfkit", {}).get("budgets", {})
            if not isinstance(data, dict):
                raise ValueError(f"{display}: [tool.perfkit.budgets] must be a table")
            display = budget_file.display = f"{display} [tool.perfkit.budgets]"
        errors: list[str] = []
        for nodeid, entry in data.items():
            where = f"{display} [{json.dumps(nodeid)}]"
            if not isinstance(entry, dict) or "::" not in nodeid:
                errors.append(
                    f"{where}: expected a table per test node id, like "
                    '["tests/test_x.py::test_y"] (quoted: TOML splits bare keys at dots)')
                continue
            parsed: dict[str, Any] = {}
            for name, value in entry.items():
                try:
                    parsed[name] = parse_keyword(name, value, where)
                except ValueError as exc:
                    errors.append(str(exc))
            budget_file.raw[nodeid] = dict(entry)
            budget_file.parsed[nodeid] = parsed
        if errors:
            raise ValueError("\n  ".join(errors))
        return budget_file

    def layer(self, nodeid: str, defaults: Budget) -> Budget:
        """``defaults`` with this file's entry for ``nodeid`` on top (the marker goes above)."""
        values = self.parsed.get(nodeid)
        if not values:
            return defaults
        source = f"budgets file {self.display}"
        budget = defaults.with_values(values, source)
        conflict = rerun_conflict(budget, source, defaults)
        if conflict:
            raise ValueError(f"{self.display} [{json.dumps(nodeid)}]: {conflict}")
        return budget

    def stale(self, collected: list[str], rootpath: Path, narrowed: bool) -> list[str]:
        """Entries whose test is surely gone: its module file is missing, or the module was
        collected whole (no ``path::name`` argument) and the test was not in it."""
        seen = set(collected)
        modules = {nodeid.split("::", 1)[0] for nodeid in collected}
        gone = []
        for nodeid in self.raw:
            if nodeid in seen:
                continue
            module = nodeid.split("::", 1)[0]
            if not (rootpath / module).exists() or (module in modules and not narrowed):
                gone.append(nodeid)
        return gone


# --- what a test needed -------------------------------------------------------------------


def observed(payload: Mapping[str, Any], owned: frozenset[str] | set[str] = frozenset()
             ) -> dict[str, float]:
    """What one test was measured to need, from its report payload (the JSON report's test).

    Nothing for a test that did not pass functionally (``status`` other than ``measured``).
    Times are divided by the payload's ``scale``, so they are in the unit budgets are
    written in (reference-machine time under ``calibrate``). Keywords in ``owned`` (set by
    the test's marker, which would win anyway) are left out. Latency is always there; CPU,
    heap and RSS peaks and call counts only when they were measured (their budget was set,
    and could be applied); queries when
    statements were seen (a test that ran none may be one whose engine was not seen); DB
    time only under a db_time budget (judged with no noise band, so not set unasked).
    """
    if payload.get("status") != "measured":
        return {}
    scale = float(payload.get("scale") or 1.0)
    budgets = payload.get("budgets") or {}
    # A heap or call-count budget with rerun=False traces the only run: its time is the
    # tracer's too; a calls budget not applied (a session default beside a timing budget)
    # left the only run uncounted, and its time is recorded.
    calls = payload.get("calls") or {}
    traced_only = budgets.get("rerun") is False and (
        "memory" in budgets or calls.get("total") is not None)
    values: dict[str, float] = {}
    latency = payload.get("latency") or {}
    if not traced_only and latency.get("judged") is not None:
        values["latency"] = float(latency["judged"]) / scale
    for result in payload.get("results") or []:
        if result.get("budget") == "cpu" and result.get("measured") is not None \
                and not traced_only:
            values["cpu"] = float(result["measured"]) / scale
    memory = payload.get("memory") or {}
    if memory.get("heap_peak") is not None:
        values["memory"] = float(memory["heap_peak"])
    if memory.get("rss_peak") is not None and memory.get("rss_method") != "unavailable":
        values["rss"] = float(memory["rss_peak"])
    if calls.get("total") is not None:
        values["calls"] = float(calls["total"])
    sql = payload.get("sql") or {}
    if sql.get("count"):
        values["queries"] = float(sql["count"])
        if "db_time" in budgets:
            values["db_time"] = float(sql["db_time"])
    return {name: value for name, value in values.items() if name not in owned}


def _ladder(number: float) -> float:
    exponent = math.floor(math.log10(number))
    mantissa = number / 10 ** exponent
    step = next(s for s in _STEPS if mantissa <= s * (1 + 1e-9))
    return float(step * 10 ** exponent)


def _readable(value: float, units: tuple[tuple[str, float], ...], smallest: float) -> str:
    value = max(value, smallest)
    index = next((i for i, (_, factor) in enumerate(units) if value >= factor * (1 - 1e-9)),
                 len(units) - 1)
    number = _ladder(value / units[index][1])
    if number >= 1000 * (1 - 1e-9) and index > 0:
        index -= 1
        number = _ladder(value / units[index][1])
    text = f"{number:.1f}".rstrip("0").rstrip(".")
    return f"{text}{units[index][0]}"


def readable_duration(seconds: float) -> str:
    """Rounded *up* to a readable step: ``0.0246`` -> ``"25ms"``, never below ``"1us"``."""
    return _readable(seconds, (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)), 1e-6)


def readable_size(size: float) -> str:
    """Rounded *up* to a readable step in decimal units: ``2_345_678`` -> ``"2.5MB"``."""
    return _readable(size, (("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1.0)), 1.0)


def _limit(name: str, value: float, headroom: float, count_headroom: float | None,
           calls_headroom: float) -> Any:
    if name == "queries":
        count = value if count_headroom is None else value * count_headroom
        return math.ceil(count - 1e-9)
    if name == "calls":
        return math.ceil(value * calls_headroom - 1e-9)
    if name in ("memory", "rss"):
        return readable_size(value * headroom)
    return readable_duration(value * headroom)


@dataclass(frozen=True)
class Change:
    """One keyword of one test: ``kind`` is new, tightened, loosened, unchanged or held
    (the ratchet kept a tighter budget than this session's observation would give)."""

    nodeid: str
    keyword: str
    old: Any
    new: Any
    kind: str


def propose(old: Mapping[str, Mapping[str, Any]], observations: Mapping[str, Mapping[str, float]],
            *, headroom: float, count_headroom: float | None, ratchet: bool,
            calls_headroom: float = CALLS_HEADROOM,
            ) -> tuple[dict[str, dict[str, Any]], list[Change]]:
    """The new file's entries and what changed. Entries of tests not observed are kept as
    they are; so are keywords an observation does not cover. With ``ratchet`` a keyword
    takes ``min(old, observed x headroom)``: it never loosens."""
    entries = {nodeid: dict(entry) for nodeid, entry in old.items()}
    changes: list[Change] = []
    for nodeid, values in sorted(observations.items()):
        entry = entries.setdefault(nodeid, {})
        for name in RECORDED:
            if name not in values:
                continue
            new = _limit(name, values[name], headroom, count_headroom, calls_headroom)
            if name not in entry:
                entry[name] = new
                changes.append(Change(nodeid, name, None, new, "new"))
                continue
            before = entry[name]
            parse = BUDGET_KEYWORDS[name].parse
            old_value, new_value = parse(before, name), parse(new, name)
            if new_value == old_value:
                kind = "unchanged"
            elif new_value < old_value:
                kind = "tightened"
            else:
                kind = "held" if ratchet else "loosened"
            if kind in ("tightened", "loosened"):
                entry[name] = new
            changes.append(Change(nodeid, name, before, new, kind))
        if not entry:
            del entries[nodeid]
    return entries, changes


# --- writing ------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} to a budgets file")


def render(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The budgets file: a header, then entries sorted by node id, keywords in marker order."""
    order = {name: index for index, name in enumerate(BUDGET_KEYWORDS)}
    parts = [_HEADER]
    for nodeid in sorted(entries):
        parts.append(f"\n[{json.dumps(nodeid, ensure_ascii=False)}]\n")
        for name in sorted(entries[nodeid], key=lambda n: order.get(n, len(order))):
            parts.append(f"{name} = {_toml_value(entries[nodeid][name])}\n")
    return "".join(parts)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step (a temporary file in its directory, then rename), so a
    reader or a crash never sees half a file; an existing file's permissions are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                         dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


# --- pytest -------------------------------------------------------------------------------


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfkit")
    group.addoption(
        "--perf-budget-record", action="store", nargs="?", const="", default=None,
        metavar="PATH", dest="perf_budget_record",
        help="after the session, write each test's observed latency/memory x headroom and "
             "its query and call counts into the budgets file (or PATH, a .toml file; write "
             "it with '='), keeping entries of tests not run",
    )
    group.addoption(
        "--perf-budget-ratchet", action="store_true", default=False,
        dest="perf_budget_ratchet",
        help="with --perf-budget-record: budgets only tighten (new = min(old, observed x "
             "headroom)), never loosen",
    )


def _display(path: Path, config: pytest.Config) -> str:
    try:
        return str(path.relative_to(config.invocation_params.dir))
    except ValueError:
        return str(path)


def _settings_path(config: pytest.Config, settings: Settings) -> tuple[Path, bool]:
    """The budgets file to read and whether it was named (else the rootdir default)."""
    if settings.file:
        source = settings.sources["file"]
        base = (config.inipath.parent if source.startswith("ini") and config.inipath
                else config.invocation_params.dir)
        return (base / settings.file).resolve(), True
    return (config.rootpath / FILE_NAME).resolve(), False


def configure(config: pytest.Config, settings: Settings) -> None:
    """Read the budgets file (only with ``--perf-budget``) and set up recording."""
    record = config.option.perf_budget_record
    ratchet = config.option.perf_budget_ratchet
    if not config.option.perf_budget:
        if record is not None or ratchet:
            raise pytest.UsageError("perfkit: --perf-budget-record and --perf-budget-ratchet "
                                    "need --perf-budget (nothing is measured without it)")
        return
    if ratchet and record is None:
        raise pytest.UsageError("perfkit: --perf-budget-ratchet is a mode of "
                                "--perf-budget-record; give both")
    if record and not record.endswith(".toml"):
        raise pytest.UsageError(
            f"perfkit: --perf-budget-record: PATH must be a .toml file, got {record!r} (write "
            "--perf-budget-record=PATH, or put the flag after the test paths)")
    path, named = _settings_path(config, settings)
    target = (config.invocation_params.dir / record).resolve() if record else path
    if record is not None and target.name == PYPROJECT:
        raise pytest.UsageError(
            f"perfkit: --perf-budget-record does not rewrite {PYPROJECT} (its comments and "
            "layout would be lost); record into a budgets file: "
            f"--perf-budget-record={FILE_NAME}")
    if named and not path.exists() and (record is None or target != path):
        raise pytest.UsageError(
            f"perfkit: budgets file {_display(path, config)} does not exist "
            f"(perf_budget_file from {settings.sources['file']})")
    try:
        budget_file = BudgetFile.read(path, _display(path, config))
        base = budget_file
        if record is not None and target != path and target.exists():
            base = BudgetFile.read(target, _display(target, config))
    except ValueError as exc:
        raise pytest.UsageError(f"perfkit: invalid budgets file\n  {exc}") from None
    config.stash[BUDGET_FILE_KEY] = budget_file if path.exists() else None
    recorder = None
    if record is not None:
        recorder = Recording(target, _display(target, config), base, ratchet,
                             settings.record_headroom, settings.record_count_headroom,
                             settings.record_calls_headroom)
    config.pluginmanager.register(BudgetFilePlugin(config, budget_file, path.exists(), recorder),
                                  "perfkit-budget-file")


@dataclass
class Recording:
    """One ``--perf-budget-record``: where to, from which entries, and what was observed."""

    path: Path
    display: str
    base: BudgetFile
    ratchet: bool
    headroom: float
    count_headroom: float | None
    calls_headroom: float = CALLS_HEADROOM
    observations: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    kept: int = 0
    written: bool = False
    error: str = ""

    def describe(self) -> str:
        counts = ("queries exact" if self.count_headroom is None
                  else f"queries x{self.count_headroom:g}") + f", calls x{self.calls_headroom:g}"
        return (f"headroom x{self.headroom:g}, {counts}"
                + ("; ratchet: budgets only tighten" if self.ratchet else ""))


class BudgetFilePlugin:
    """Header and collection lines for the budgets file; recording when asked."""

    def __init__(self, config: pytest.Config, budget_file: BudgetFile, exists: bool,
                 recording: Recording | None) -> None:
        self.config = config
        self.budget_file = budget_file
        self.exists = exists
        self.recording = recording
        workerinput = getattr(config, "workerinput", None)
        self.is_worker = workerinput is not None
        self.warns = workerinput is None or workerinput.get("workerid") == "gw0"
        self.workers = 1

    @pytest.hookimpl(tryfirst=True)  # printed after the plugin's own header lines
    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        if self.exists:
            line = (f"perfkit: budgets file {self.budget_file.display}: "
                    f"{_plural(len(self.budget_file.raw), 'entry', 'entries')} "
                    "(ini < env < CLI < file < marker)")
        else:
            line = f"perfkit: no budgets file ({self.budget_file.display} not found)"
        lines = [line]
        if self.recording is not None:
            lines.append(f"perfkit: recording budgets to {self.recording.display} "
                         f"({self.recording.describe()})")
        return lines

    @pytest.hookimpl(tryfirst=True)  # before -k/-m deselection: what was collected
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        if not (self.exists and self.warns):
            return
        narrowed = any("::" in str(arg) for arg in config.args)
        for nodeid in self.budget_file.stale([item.nodeid for item in items],
                                             config.rootpath, narrowed):
            warnings.warn(PerfBudgetFileWarning(
                f"perfkit: budgets file {self.budget_file.display}: no test {nodeid!r} "
                "(its module is gone or does not define it); the entry is not applied, "
                "delete it"), stacklevel=1)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not self.exists or self.is_worker or not session.items:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        collected = {item.nodeid for item in session.items}
        applied = sum(1 for nodeid in self.budget_file.parsed if nodeid in collected)
        reporter.write_line(f"perfkit: budgets file {self.budget_file.display}: entries for "
                            f"{applied} of {len(collected)} collected tests, "
                            f"{len(self.budget_file.raw) - applied} for tests not collected")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "call" and self.recording is not None:
            # Which keywords the marker sets travels with the report to the xdist controller.
            owned = sorted({name for mark in item.iter_markers("perf_budget")
                            for name in mark.kwargs})
            report.perfkit_owned = owned  # type: ignore[attr-defined]
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        recording = self.recording
        if recording is None or self.is_worker:
            return
        payload = getattr(report, "perfkit", None)
        if report.when == "call" and payload is not None:
            self.workers = max(self.workers, int(payload.get("workers") or 1))
            values = observed(payload, set(getattr(report, "perfkit_owned", ())))
            # An xfail test is known broken: what it needed is no budget to hold others to.
            if payload.get("status") == "measured" and not hasattr(report, "wasxfail"):
                recording.observations[report.nodeid] = values
                if report.nodeid in recording.failed:
                    recording.failed.remove(report.nodeid)
            else:  # failed, skipped or xfailed in its body: nothing to record
                recording.observations.pop(report.nodeid, None)
                if report.failed:
                    recording.failed.append(report.nodeid)
        elif report.when == "teardown" and report.failed \
                and report.nodeid in recording.observations:
            del recording.observations[report.nodeid]
            recording.failed.append(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        recording = self.recording
        if recording is None or self.is_worker:
            return
        entries, recording.changes = propose(
            recording.base.raw, recording.observations, headroom=recording.headroom,
            count_headroom=recording.count_headroom, ratchet=recording.ratchet,
            calls_headroom=recording.calls_headroom)
        recording.kept = sum(1 for nodeid in entries if nodeid not in recording.observations)
        changed = any(c.kind in ("new", "tightened", "loosened") for c in recording.changes)
        # Rewritten only when a budget changed: a hand-written file keeps its comments else.
        if changed or not recording.path.exists():
            try:
                write_atomically(recording.path, render(entries))
            except OSError as exc:  # said in the summary; the run's outcome stays readable
                recording.error = f"cannot write {recording.display}: {exc}"
                if session.exitstatus == pytest.ExitCode.OK:
                    session.exitstatus = pytest.ExitCode.USAGE_ERROR
                return
        recording.written = True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        recording = self.recording
        if recording is not None and recording.error:
            terminalreporter.section("perf budgets recorded")
            terminalreporter.write_line(f"perfkit: budgets not recorded: {recording.error}",
                                        red=True)
            return
        if recording is None or self.is_worker or not recording.written:
            return
        terminalreporter.section("perf budgets recorded")
        for line in diff_lines(recording, self.workers):
            terminalreporter.write_line(line)


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def diff_lines(recording: Recording, workers: int = 1, limit: int = 50) -> list[str]:
    """The terminal's account of a recording: counts, then every keyword that changed."""
    counts: dict[str, int] = {}
    for change in recording.changes:
        counts[change.kind] = counts.get(change.kind, 0) + 1
    kinds = ("new", "tightened", "loosened", "unchanged", "held")
    summary = ", ".join(f"{counts.get(kind, 0)} {kind}" for kind in kinds
                        if kind != "held" or counts.get(kind))
    recorded = sum(1 for values in recording.observations.values() if values)
    lines = [f"{recording.display}: {recorded} test{'s' if recorded != 1 else ''} recorded "
             f"({recording.describe()}); {_plural(recording.kept, 'entry', 'entries')} kept "
             "for tests not run",
             f"budgets: {summary}"]
    if workers > 1:
        lines.append(f"recorded under xdist -n {workers}: times measured beside other workers "
                     "run long; record serially for tighter latency budgets")
    shown = [c for c in recording.changes if c.kind != "unchanged"]
    for change in shown[:limit]:
        if change.kind == "new":
            lines.append(f"  {change.nodeid}  {change.keyword}: new {change.new}")
        elif change.kind == "held":
            lines.append(f"  {change.nodeid}  {change.keyword}: {change.old} kept (observed "
                         f"x headroom {change.new}; the ratchet does not loosen)")
        else:
            lines.append(f"  {change.nodeid}  {change.keyword}: {change.old} -> {change.new} "
                         f"({change.kind})")
    if len(shown) > limit:
        lines.append(f"  ... {len(shown) - limit} more")
    if recording.failed:
        lines.append("not recorded (failed functionally): " + ", ".join(recording.failed))
    return lines
