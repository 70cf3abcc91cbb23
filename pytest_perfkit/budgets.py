"""Budget keywords, their parsers and the layering of defaults: ini < env < CLI < marker.

Every keyword of ``@pytest.mark.perf_budget(...)`` is also a session default under the
same name: ini ``perf_budget_<name>``, environment ``PERF_BUDGET_<NAME>``, command line
``--perf-budget-<name>``. A value that cannot be read is a usage error naming where it
came from; it is never replaced by a default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from perfkit.measure.units import format_duration, format_size, parse_duration, parse_size

__all__ = ["BUDGET_KEYWORDS", "Budget", "Mode", "parse_keyword", "rerun_conflict"]


@dataclass(frozen=True)
class Mode:
    """A rule that can be off, reported as a warning, or enforced (``fail``)."""

    action: str  # "off", "warn", "fail"
    threshold: int = 0

    def __str__(self) -> str:
        if self.threshold and self.action != "off":
            return f"{self.action}:{self.threshold}"
        return self.action


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name}: must be >= 0, got {value!r}")
    return number


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def _mode(value: object, name: str, default_threshold: int = 0) -> Mode:
    """``"off"``, ``"warn"``, ``"fail"``, ``True`` (fail), ``False`` (off), an integer
    threshold (fail at that count) or ``"warn:10"`` / ``"fail:10"``."""
    if isinstance(value, bool):
        return Mode("fail" if value else "off", default_threshold)
    if isinstance(value, int) and default_threshold:
        if value < 2:
            raise ValueError(f"{name}: threshold must be >= 2, got {value!r}")
        return Mode("fail", value)
    if isinstance(value, str):
        action, _, threshold = value.strip().lower().partition(":")
        if action in ("off", "warn", "fail"):
            if not threshold:
                return Mode(action, default_threshold)
            if default_threshold:
                number = _count(threshold, name)
                if number >= 2:
                    return Mode(action, number)
        elif action.isdigit() and default_threshold and int(action) >= 2:
            return Mode("fail", int(action))
    accepted = "'off', 'warn', 'fail', True/False" + (
        ", a threshold >= 2 or 'warn:N'/'fail:N'" if default_threshold else ""
    )
    raise ValueError(f"{name}: expected {accepted}, got {value!r}")


def _positive_duration(value: object, name: str) -> float:
    seconds = parse_duration(value, name)
    if seconds <= 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    return seconds


def _patterns(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return tuple(value)
    raise ValueError(f"{name}: expected a shape pattern or a list of them, got {value!r}")


@dataclass(frozen=True)
class Keyword:
    """One budget keyword: parser, default, help text and how to print a value."""

    name: str
    parse: Callable[[object, str], Any]
    default: Any
    help: str
    show: Callable[[Any], str] = str


N_PLUS_ONE_THRESHOLD = 5

BUDGET_KEYWORDS: dict[str, Keyword] = {k.name: k for k in (
    Keyword("latency", parse_duration, None,
            "wall time of the test call (e.g. 50ms); judged on the median of the first run and "
            "the confirm runs taken when it is near the budget",
            format_duration),
    Keyword("cpu", parse_duration, None, "CPU time of the test call (process time)",
            format_duration),
    Keyword("memory", parse_size, None,
            "Python heap peak during the call (tracemalloc, separate run), e.g. 20MB",
            format_size),
    Keyword("rss", parse_size, None,
            "growth of the process RSS high-water mark during the call, e.g. 100MB",
            format_size),
    Keyword("calls", _count, None,
            "most function calls the call may make: Python functions plus built-ins called "
            "from Python, in the test's thread (profile hook, separate run)"),
    Keyword("queries", _count, None, "most SQL statements the call may execute"),
    Keyword("db_time", parse_duration, None, "total SQL time (driver + server)",
            format_duration),
    Keyword("slow_query", parse_duration, None,
            "one statement slower than this is a finding (fails the test)", format_duration),
    Keyword("loop_block", _positive_duration, None,
            "longest time the event loop may be blocked (one step running without yielding) "
            "during an async test's call; asyncio and trio", format_duration),
    Keyword("n_plus_one", lambda v, n: _mode(v, n, N_PLUS_ONE_THRESHOLD),
            Mode("warn", N_PLUS_ONE_THRESHOLD),
            "N+1 queries: off | warn | fail | threshold (same SELECT shape N times)"),
    Keyword("full_scans", _mode, Mode("warn"), "full table scans: off | warn | fail"),
    Keyword("rerun", _flag, True,
            "allow re-running the test body for confirm runs, the heap pass, warmups and "
            "the profile on failure (false for tests with side effects)"),
    Keyword("allow", _patterns, (), "SQL shape patterns exempt from N+1 findings"),
    Keyword("warmup", _count, 0,
            "unmeasured runs of the test body before the measured first run (needs rerun; "
            "the first run is then a warmup, and its failure fails the test)"),
)}

#: Keywords whose value is a numeric limit (what "a test with budgets" means).
LIMITS = ("latency", "cpu", "memory", "rss", "calls", "queries", "db_time", "slow_query",
          "loop_block")


def parse_keyword(name: str, value: object, where: str) -> Any:
    """Parse one keyword's value; the error names ``where`` it came from and the keyword."""
    keyword = BUDGET_KEYWORDS.get(name)
    if keyword is None:
        known = ", ".join(sorted(BUDGET_KEYWORDS))
        raise ValueError(f"{where}: unknown keyword {name!r} (known: {known})")
    try:
        return keyword.parse(value, name)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class Budget:
    """The effective budgets of one test (after layering), plus where each came from."""

    latency: float | None = None
    cpu: float | None = None
    memory: int | None = None
    rss: int | None = None
    calls: int | None = None
    queries: int | None = None
    db_time: float | None = None
    slow_query: float | None = None
    loop_block: float | None = None
    n_plus_one: Mode = Mode("warn", N_PLUS_ONE_THRESHOLD)
    full_scans: Mode = Mode("warn")
    rerun: bool = True
    allow: tuple[str, ...] = ()
    warmup: int = 0
    sources: Mapping[str, str] = field(default_factory=dict)

    def with_values(self, values: Mapping[str, Any], source: str) -> Budget:
        sources = dict(self.sources)
        sources.update({name: source for name in values})
        return replace(self, **values, sources=sources)

    @property
    def limits(self) -> dict[str, Any]:
        """The numeric limits that are set: ``{"latency": 0.05, "queries": 3}``."""
        return {name: getattr(self, name) for name in LIMITS if getattr(self, name) is not None}

    def describe(self) -> str:
        parts = [f"{name}={BUDGET_KEYWORDS[name].show(value)}"
                 for name, value in self.limits.items()]
        return ", ".join(parts) or "none"


def rerun_conflict(budget: Budget, where: str, session: Budget) -> str:
    """Why ``budget``, as set at ``where`` (a marker, a budgets file entry), cannot be
    measured: a budget that needs a run of its own (its tracing distorts time) beside a
    timing budget, with ``rerun=False`` forbidding that run; ``""`` when it can.

    A ``calls`` budget from the session defaults (``session``: ini, env, CLI) is not an
    error: in such a test it is reported as not applied (the timing budget keeps the only
    run). One set for the test (its marker or its budgets-file entry) is.
    """
    if budget.rerun:
        return ""
    if budget.memory is not None and budget.latency is not None:
        return ("memory= needs a separate traced run (tracing distorts latency), but "
                "rerun=False forbids it; use rss= for memory, or drop one of the budgets")
    source = budget.sources.get("calls")
    if budget.calls is not None and source != session.sources.get("calls") and (
            budget.latency is not None or budget.cpu is not None):
        return ("calls= needs a separate counted run (its profile hook distorts timing), but "
                "rerun=False forbids it; drop calls= or the timing budget"
                + ("" if source == where else f" (calls= from {source})"))
    return ""


def layer(base: Budget, values: Iterable[tuple[str, Mapping[str, object]]]) -> Budget:
    """Apply ``(source, {keyword: raw value})`` layers in order; later layers win."""
    budget = base
    for source, raw in values:
        parsed = {name: parse_keyword(name, value, source) for name, value in raw.items()}
        budget = budget.with_values(parsed, source)
    return budget
