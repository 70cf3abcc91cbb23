"""Per-request (or per-job) SQL scopes: N+1 detection in a running service.

A scope is the SQL of one unit of work. :class:`SQLScopes` opens one per request (the
ASGI ``SQLMonitorMiddleware`` does it for you) or per job (``with scopes.scope("nightly"):``)
and puts it in a context variable; every :class:`~perfkit.sql.SQLMonitor` records the
statements of its engine into the scope that is current. Sync handlers that Starlette runs
in a worker thread see the same scope (the context is copied, the scope object is shared).

When the scope closes, the same two rules as the pytest plugin's N+1 check apply, with
production thresholds: one SELECT shape repeated ``n_plus_one`` times, or one relationship
lazily loaded for ``lazy_parents`` distinct parents. A finding is logged once per scope name
(the route template) and shape, with the call site and the fix, and counted in
``sql_n_plus_one_total{route}`` every time. Statements and database time per scope go to
two histograms. Memory per scope is bounded (``MAX_SCOPE_SHAPES`` shapes,
``MAX_SCOPE_RELATIONSHIPS`` relationships of ``MAX_LAZY_PARENTS`` parents each), and so is
the set of findings already logged.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from perfkit.metrics import REGISTRY, Registry
from perfkit.sql.tracker import Finding, LazyLoad

__all__ = [
    "MAX_LAZY_PARENTS",
    "MAX_SCOPE_RELATIONSHIPS",
    "MAX_SCOPE_SHAPES",
    "STATEMENT_COUNT_BUCKETS",
    "SQLScopes",
    "ScopeStats",
    "ShapeInfo",
    "current_scope",
]

logger = logging.getLogger("perfkit.sql")

MAX_SCOPE_SHAPES = 256
"""Distinct SELECT shapes counted per scope; further shapes are counted in totals only."""
MAX_SCOPE_RELATIONSHIPS = 64
MAX_LAZY_PARENTS = 1000
MAX_LOGGED = 4096
"""(scope name, shape) pairs remembered as already logged; the set restarts when full."""
STATEMENT_COUNT_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_DB_TIME_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(frozen=True, eq=False)
class ShapeInfo:
    """What a scope needs to know about a statement shape (one object per shape)."""

    shape: str
    caller: str
    select: bool  # SELECT or WITH: the only statements the repetition rule looks at


_CURRENT: ContextVar[ScopeStats | None] = ContextVar("perfkit_sql_scope", default=None)


def current_scope() -> ScopeStats | None:
    """The scope SQL is being recorded into in this context, if any."""
    return _CURRENT.get()


class ScopeStats:
    """The SQL of one scope so far: statement count, database time, shapes, lazy loads."""

    __slots__ = ("_name", "_token", "count", "db_time", "lazy", "shapes")

    def __init__(self, name: str | Callable[[], str]) -> None:
        self._name = name
        self._token: Token[ScopeStats | None] | None = None
        self.count = 0
        self.db_time = 0.0
        self.shapes: dict[ShapeInfo, int] = {}
        #: relationship -> (distinct parents, direction, shape of the lazy load)
        self.lazy: dict[str, tuple[set[str], str, ShapeInfo]] = {}

    @property
    def name(self) -> str:
        """The scope's name; for a request, the method and route template (resolved late)."""
        name = self._name
        return name if isinstance(name, str) else name()

    def _add(self, info: ShapeInfo, duration: float, lazy: LazyLoad | None) -> None:
        """Record one statement (hot path: a few dict operations)."""
        self.count += 1
        self.db_time += duration
        if info.select:
            shapes = self.shapes
            seen = shapes.get(info)
            if seen is not None:
                shapes[info] = seen + 1
            elif len(shapes) < MAX_SCOPE_SHAPES:
                shapes[info] = 1
        if lazy is not None:
            entry = self.lazy.get(lazy.relationship)
            if entry is None:
                if len(self.lazy) >= MAX_SCOPE_RELATIONSHIPS:
                    return
                entry = self.lazy[lazy.relationship] = (set(), lazy.direction, info)
            if len(entry[0]) < MAX_LAZY_PARENTS:
                entry[0].add(lazy.parent)


def lazy_load_hint(relationship: str, direction: str) -> str:
    """How to load ``relationship`` up front instead of once per parent."""
    if direction == "COLUMN":
        return ("load the columns up front (undefer / load_only) or keep objects fresh "
                "with Session(expire_on_commit=False)")
    if direction == "MANYTOONE":
        return f"options(joinedload({relationship}))"
    return f"options(selectinload({relationship}))"


class SQLScopes:
    """Opens SQL scopes and reports their N+1 patterns and figures when they close.

    Defaults: ``n_plus_one=10`` repetitions of one SELECT shape, ``lazy_parents=3``
    distinct parents of one lazily loaded relationship (0 turns a rule off), ``allow=()``
    shell-style patterns (or substrings) of shapes exempt from both rules,
    ``registry=perfkit.REGISTRY``, ``max_series=500`` route labels per metric,
    ``log_findings=True`` (one WARNING per scope name and shape).
    """

    def __init__(
        self,
        *,
        n_plus_one: int = 10,
        lazy_parents: int = 3,
        allow: Iterable[str] = (),
        registry: Registry | None = None,
        max_series: int = 500,
        log_findings: bool = True,
    ) -> None:
        if not isinstance(n_plus_one, int) or n_plus_one < 0:
            raise ValueError(f"n_plus_one: must be an int >= 0 (0: off), got {n_plus_one!r}")
        if not isinstance(lazy_parents, int) or lazy_parents < 0:
            raise ValueError(f"lazy_parents: must be an int >= 0 (0: off), got {lazy_parents!r}")
        if isinstance(allow, str):
            raise TypeError(f"allow: must be a sequence of patterns, not the string {allow!r}")
        if not isinstance(max_series, int) or max_series < 1:
            raise ValueError(f"max_series: must be an int >= 1, got {max_series!r}")
        registry = registry if registry is not None else REGISTRY
        self.n_plus_one = n_plus_one
        self.lazy_parents = lazy_parents
        self.allow = tuple(allow)
        self.log_findings = log_findings
        self.statements = registry.histogram(
            "sql_request_statements", "SQL statements per request (or scope)", ("route",),
            buckets=STATEMENT_COUNT_BUCKETS, max_series=max_series)
        self.db_time = registry.histogram(
            "sql_request_db_seconds", "Database time per request (or scope)", ("route",),
            buckets=_DB_TIME_BUCKETS, max_series=max_series)
        self.n_plus_one_total = registry.counter(
            "sql_n_plus_one", "Requests (or scopes) with an N+1 query pattern", ("route",),
            max_series=max_series)
        self._logged: set[tuple[str, str]] = set()

    def open(self, name: str | Callable[[], str]) -> ScopeStats:
        """Start recording into a new scope in the current context; pair with :meth:`close`.

        ``name`` may be a callable, resolved at close (a request's route is known only
        after routing).
        """
        stats = ScopeStats(name)
        stats._token = _CURRENT.set(stats)
        return stats

    def close(self, stats: ScopeStats) -> list[Finding]:
        """Stop recording, report the scope and return its N+1 findings. Never raises."""
        token, stats._token = stats._token, None
        try:
            if token is not None:
                _CURRENT.reset(token)
        except (ValueError, RuntimeError):  # closed from another context, or twice
            pass
        try:
            return self._report(stats)
        except Exception as exc:  # a report must never break the request
            logger.warning("perfkit.sql: could not report a SQL scope: %r", exc)
            return []

    @contextmanager
    def scope(self, name: str | Callable[[], str]) -> Iterator[ScopeStats]:
        """``with scopes.scope("nightly-export"):`` around a unit of work."""
        stats = self.open(name)
        try:
            yield stats
        finally:
            self.close(stats)

    def findings(self, stats: ScopeStats) -> list[Finding]:
        """The N+1 findings of ``stats`` under this object's rules."""
        findings: list[Finding] = []
        covered: set[ShapeInfo] = set()
        if self.lazy_parents:
            for relationship, (parents, direction, info) in sorted(stats.lazy.items()):
                if len(parents) < self.lazy_parents or self._allowed(info.shape):
                    continue
                covered.add(info)
                count = stats.shapes.get(info, len(parents))
                findings.append(Finding(
                    "n_plus_one", info.shape,
                    f"N+1: {relationship} lazily loaded for {len(parents)} parents "
                    f"({count} queries)", lazy_load_hint(relationship, direction),
                    info.caller, count))
        if self.n_plus_one:
            for info, count in stats.shapes.items():
                if count < self.n_plus_one or info in covered or self._allowed(info.shape):
                    continue
                findings.append(Finding(
                    "n_plus_one", info.shape, f"N+1: the same query ran {count} times",
                    "fetch the rows in one query (WHERE ... IN (...)) or eager-load the "
                    "relationship (selectinload / joinedload)", info.caller, count))
        return findings

    def _allowed(self, shape: str) -> bool:
        return any(fnmatch.fnmatchcase(shape, pattern) or pattern in shape
                   for pattern in self.allow)

    def _report(self, stats: ScopeStats) -> list[Finding]:
        if stats.count == 0:
            return []
        name = stats.name
        self.statements.labels(name).observe(stats.count)
        self.db_time.labels(name).observe(stats.db_time)
        findings = self.findings(stats)
        if not findings:
            return findings
        self.n_plus_one_total.labels(name).inc_one()
        if self.log_findings:
            for finding in findings:
                key = (name, finding.shape)
                if key in self._logged:
                    continue
                if len(self._logged) >= MAX_LOGGED:
                    self._logged.clear()
                self._logged.add(key)
                logger.warning(
                    "N+1 in %s: %s; query: %s", name,
                    finding.describe().removeprefix("N+1: "), finding.shape[:500],
                    extra={"sql_route": name, "sql_shape": finding.shape,
                           "sql_count": finding.count, "sql_hint": finding.hint},
                )
        return findings
