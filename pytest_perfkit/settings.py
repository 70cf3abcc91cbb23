"""Session settings of the plugin, read from ini, environment and command line.

Precedence, lowest first: ini (``[tool.pytest.ini_options]``) < environment
(``PERF_BUDGET_*``) < command line (``--perf-budget-*``) < the test's marker. Budget
keywords follow the same layering (see :mod:`pytest_perfkit.budgets`); the settings here
apply to the whole session.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from perfkit.measure.stats import Margins
from perfkit.measure.units import parse_duration
from pytest_perfkit.budgets import BUDGET_KEYWORDS, Budget, _count, _flag, layer

__all__ = ["SETTINGS", "Settings", "add_options", "cli_name", "load_settings", "option_dest"]


def _fraction(value: object, name: str) -> float:
    try:
        number = float(str(value).strip().rstrip("%")) / (100 if "%" in str(value) else 1)
    except ValueError:
        raise ValueError(f"{name}: expected a fraction like 0.1 or '10%', got {value!r}") from None
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return number


def _choice(*choices: str) -> Callable[[object, str], str]:
    def parse(value: object, name: str) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _confirm_runs(value: object, name: str) -> int:
    number = _count(value, name)
    if number > 50:
        raise ValueError(f"{name}: at most 50 confirm runs, got {value!r}")
    return number


#: The longest pause before a borderline run: a typo such as ``500`` (seconds, not ms) should
#: be an error, not a session that sleeps for half an hour per borderline test.
MAX_BORDERLINE_SPACING = 10.0


def _spacing(value: object, name: str) -> float:
    seconds = parse_duration(value, name)
    if seconds > MAX_BORDERLINE_SPACING:
        raise ValueError(f"{name}: at most {MAX_BORDERLINE_SPACING:g}s between borderline runs, "
                         f"got {value!r} (a bare number is seconds; write e.g. '500ms')")
    return seconds


def _path(value: object, name: str) -> str:
    return str(value).strip()


def _headroom(value: object, name: str) -> float:
    try:
        number = float(str(value).strip().lstrip("x"))
    except ValueError:
        raise ValueError(f"{name}: expected a factor like 2 or 1.5, got {value!r}") from None
    if not (number >= 1 and math.isfinite(number)):
        raise ValueError(f"{name}: must be a finite factor >= 1, got {value!r}")
    return number


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[object, str], Any]
    default: Any
    help: str


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("confirm_runs", _confirm_runs, 3,
            "re-runs when a latency/CPU budget is near or over its limit (0: judge one run)"),
    Setting("borderline_runs", _confirm_runs, 4,
            "more re-runs, after the confirm runs, while a latency/CPU verdict would be "
            "'within noise' (0: judge what the confirm runs gave)"),
    Setting("borderline_spacing", _spacing, 0.5,
            "pause before each borderline run (then a fresh reference sample), so those runs "
            "meet other moments of the machine than the first runs did (0: back to back)"),
    Setting("margin", _fraction, 0.10, "relative margin over a latency/CPU budget (0.1 = 10%)"),
    Setting("margin_abs", parse_duration, 0.001, "absolute margin over a latency/CPU budget"),
    Setting("exclude_cpu_wait", _flag, True,
            "judge latency on wall time less the time the test's thread waited for a CPU "
            "held by other processes (Linux run-queue delay; elsewhere plain wall time)"),
    Setting("speed_check", _flag, True,
            "interleave confirm runs with a short reference workload and divide out how much "
            "slower the machine itself ran at that moment (over budget only if still over)"),
    Setting("calibrate", _flag, False,
            "budgets in reference-machine time: with speed_check, every run is divided by a "
            "reference workload timed right before and after it; without, budgets are scaled "
            "once by the factor measured at start"),
    Setting("rss_sampling", _flag, False,
            "measure rss= by sampling the RSS from a thread (psutil, every 2 ms; misses "
            "shorter peaks) instead of the kernel's high-water mark (Linux VmHWM)"),
    Setting("include_transactions", _flag, False,
            "count BEGIN/COMMIT/ROLLBACK/SAVEPOINT toward query budgets"),
    Setting("sql_sites", _flag, False,
            "count every statement's call site (a stack walk per statement, +2-4 us each); "
            "off: each shape's first call site only"),
    Setting("explain", _flag, True, "EXPLAIN each new statement shape to find full table scans"),
    Setting("xdist", _choice("warn", "enforce"), "warn",
            "under pytest-xdist with >1 worker: 'warn' downgrades latency/CPU failures to "
            "warnings (parallel workers inflate timings), 'enforce' keeps them"),
    Setting("baseline", _path, "", "a JSON report of an earlier run to compare latency with"),
    Setting("baseline_margin", _fraction, 0.25,
            "relative slowdown against the baseline that fails"),
    Setting("baseline_margin_abs", parse_duration, 0.002,
            "absolute slowdown against the baseline that fails"),
    Setting("profile_on_fail", _flag, True,
            "when a latency/CPU/baseline budget fails a test that may be re-run, run its "
            "body once more under cProfile (not judged) and show the top functions"),
    Setting("report", _path, "", "write a JSON report (and an HTML page for .html) to this path"),
    Setting("file", _path, "",
            "a TOML file of per-test budgets (one table per node id), applied between the "
            "defaults and the marker; default: perf-budgets.toml in the rootdir if it exists"),
    Setting("record_headroom", _headroom, 2.0,
            "--perf-budget-record writes observed latency, CPU, memory and DB time x this"),
    Setting("record_count_headroom", _headroom, None,
            "--perf-budget-record writes observed query counts x this, rounded up (default: "
            "the count exactly)"),
    Setting("record_calls_headroom", _headroom, 1.1,
            "--perf-budget-record writes observed call counts (calls=) x this, rounded up"),
)}


@dataclass
class Settings:
    """Effective session settings and the default budget, with the source of each value."""

    defaults: Budget
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def margins(self) -> Margins:
        return Margins(self.values["margin"], self.values["margin_abs"])


def cli_name(name: str) -> str:
    return "--perf-budget-" + name.replace("_", "-")


def option_dest(name: str) -> str:
    return "perf_budget_" + name


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfkit", "perfkit performance budgets")
    group.addoption(
        "--perf-budget", action="store_true", default=False,
        help="measure and enforce perf_budget markers and defaults (off: the plugin does "
             "nothing per test)",
    )
    group.addoption(
        "--perf-report", action="store", default=None, metavar="PATH", dest="perf_report",
        help="write a JSON report to PATH; for PATH ending in .html also a self-contained "
             "HTML page (JSON next to it)",
    )
    for keyword in BUDGET_KEYWORDS.values():
        group.addoption(cli_name(keyword.name), action="store", default=None,
                        dest=option_dest(keyword.name),
                        help=f"default budget: {keyword.help}".replace("%", "%%"))
        parser.addini(option_dest(keyword.name), f"perfkit default budget: {keyword.help}",
                      default=None)
    for setting in SETTINGS.values():
        if setting.name != "report":
            group.addoption(cli_name(setting.name), action="store", default=None,
                            dest=option_dest(setting.name),  # argparse %-formats help texts
                            help=setting.help.replace("%", "%%"))
        parser.addini(option_dest(setting.name), f"perfkit: {setting.help}", default=None)


def _layers(config: pytest.Config, name: str) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    ini = config.getini(option_dest(name))
    if ini not in (None, "", []):
        found.append((f"ini perf_budget_{name}", ini))
    env_name = "PERF_BUDGET_" + name.upper()
    if os.environ.get(env_name, "") != "":
        found.append((f"env {env_name}", os.environ[env_name]))
    cli = getattr(config.option, option_dest(name), None)
    if name == "report" and config.option.perf_report:
        cli = config.option.perf_report
    if cli is not None:
        found.append((f"option {cli_name(name) if name != 'report' else '--perf-report'}", cli))
    return found


def _unknown_env() -> str:
    """A ``PERF_BUDGET_*`` variable that names no keyword or setting (a typo would otherwise
    leave a budget unset without a word), with the closest known name, or ``""``."""
    known = {"PERF_BUDGET_" + name.upper() for name in (*BUDGET_KEYWORDS, *SETTINGS)}
    for env_name in sorted(os.environ):
        if env_name.startswith("PERF_BUDGET_") and env_name not in known:
            close = difflib.get_close_matches(env_name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"env {env_name}: not a perfkit budget or setting{hint}"
    return ""


def load_settings(config: pytest.Config) -> Settings:
    """Read every option; a bad value raises ``pytest.UsageError`` naming its source."""
    unknown = _unknown_env()
    if unknown:
        raise pytest.UsageError(f"perfkit: {unknown}")
    try:
        budget_layers = []
        for name in BUDGET_KEYWORDS:
            for source, value in _layers(config, name):
                budget_layers.append((source, {name: value}))
        defaults = layer(Budget(), budget_layers)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for setting in SETTINGS.values():
            values[setting.name] = setting.default
            sources[setting.name] = "default"
            for source, raw in _layers(config, setting.name):
                try:
                    values[setting.name] = setting.parse(raw, setting.name)
                except ValueError as exc:
                    raise ValueError(f"{source}: {exc}") from None
                sources[setting.name] = source
    except ValueError as exc:
        raise pytest.UsageError(f"perfkit: {exc}") from None
    return Settings(defaults, values, sources)
