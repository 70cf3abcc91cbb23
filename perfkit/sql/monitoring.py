"""``perfkit.sql.monitor(engine)``: a running service's SQL, per statement shape, in metrics.

The pytest plugin's :class:`~perfkit.sql.QueryTracker` answers "what did this test run";
a service needs the same facts continuously and cheaply. ``SQLMonitor`` receives the
tracker's own listener calls (the same public SQLAlchemy events, the same driver+server
time and lazy-load labels) for one engine and keeps, per normalised statement shape:

* ``sql_statements_total{db, shape}`` and ``sql_statement_duration_seconds{db, shape}``
  (histogram with p50/p95/p99), ``sql_statement_errors_total`` and
  ``sql_slow_statements_total``. At most ``max_shapes`` shapes get their own series; the
  rest share ``shape="__overflow__"`` (one warning), so inlined literals cannot grow memory
  or the ``/metrics`` page;
* one WARNING the first time a shape is slower than ``slow``, with the call site, the
  request's route (inside a scope opened by ``SQLMonitorMiddleware`` or
  :class:`~perfkit.sql.SQLScopes`), the plan finding and the ``CREATE INDEX`` suggestion.
  EXPLAIN runs once per shape, on the statement's own connection, inside a rolled-back
  savepoint on PostgreSQL (see :mod:`perfkit.sql.explain`);
* the pool figures of :class:`~perfkit.sql.pool.PoolMonitor`.

Per statement the cost is a dict lookup on the statement text, a lock-free counter tick, a
histogram append and a context-variable read; normalising, the stack walk to the call site
and EXPLAIN happen once per new shape. Nothing here raises into user code: an internal
error is logged once and the statement goes on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from perfkit.metrics import OVERFLOW_LABEL_VALUE, REGISTRY, CounterSeries, Registry
from perfkit.sql.explain import PlanCheck, check_plan, server_side_cursor
from perfkit.sql.pool import PoolMonitor
from perfkit.sql.scope import _CURRENT, ShapeInfo
from perfkit.sql.shapes import is_transaction_control, statement_kind
from perfkit.sql.tracker import LazyLoad, QueryTracker, _first_user_frame, _shape_of

__all__ = ["STATEMENT_BUCKETS", "MonitoredShape", "SQLMonitor", "monitor"]

logger = logging.getLogger("perfkit.sql")

STATEMENT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0,
)
"""Statement latency buckets (seconds): finer than HTTP's, most statements take < 5 ms."""

_EXPLAINABLE = frozenset({"SELECT", "UPDATE", "DELETE", "WITH"})
_TEXT_CACHE_SIZE = 4096
_MAX_NOTES = 20
_MISSING: Any = object()
ExplainMode = Literal["slow", "all", "off"]
_OPEN: weakref.WeakSet[SQLMonitor] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class MonitoredShape:
    """What the monitor knows about one statement shape."""

    shape: str
    label: str  # the ``shape`` label value in the metrics (truncated if long)
    caller: str  # first call site outside libraries
    count: int
    total_time: float
    slow: int
    errors: int
    plan: PlanCheck | None  # None until the shape was slow (explain="slow") or seen ("all")


class _Shape:
    """Per-shape state: the bound series, chosen once so the hot path has no lookups."""

    __slots__ = (
        "counter",
        "errors",
        "explained",
        "histogram",
        "inc",
        "info",
        "label",
        "observe",
        "plan",
        "slow",
        "slow_logged",
    )

    def __init__(self, info: ShapeInfo, label: str, monitor: SQLMonitor) -> None:
        self.info = info
        self.label = label
        self.counter = monitor._statements.labels(monitor.name, label)
        self.histogram = monitor._duration.labels(monitor.name, label)
        self.inc = self.counter.inc_one
        self.observe = self.histogram.observe
        # Created on first use: most shapes are never slow and never fail.
        self.slow: CounterSeries | None = None
        self.errors: CounterSeries | None = None
        self.plan: PlanCheck | None = None
        self.explained = False
        self.slow_logged = False


class _Sink(QueryTracker):
    """Receives the tracker dispatcher's calls for one engine and hands them to the monitor."""

    def __init__(self, monitor: SQLMonitor, engine: Any) -> None:
        super().__init__(engine=engine, explain=False, n_plus_one=0, lazy_parents=0,
                         max_statements=1)
        self.record_into = monitor._record
        self.note_into = monitor._note

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                executemany: bool, duration: float, lazy: LazyLoad | None) -> None:
        self.record_into(conn, cursor, statement, parameters, executemany, duration, lazy)

    def _note(self, message: str) -> None:
        self.note_into(message)


def _label_for(shape: str, max_chars: int) -> str:
    if len(shape) <= max_chars:
        return shape
    digest = hashlib.blake2b(shape.encode(), digest_size=4).hexdigest()
    return f"{shape[: max_chars - 13]}... #{digest}"


def _default_name(engine: Any) -> str:
    database = engine.url.database
    if database and database != ":memory:":
        return os.path.basename(str(database)) or str(database)
    return str(engine.dialect.name)


class SQLMonitor:
    """Monitor ``engine`` (an ``Engine`` or ``AsyncEngine``) until ``close()``.

    Metrics, slow-query lines and pool figures for one engine; ``close()`` (or leaving a
    ``with`` block) removes every listener, and the metrics keep their counts.

    ``registry``: where the metrics go (default ``perfkit.REGISTRY``, what ``metrics_app``
    serves). ``name``: the ``db`` label (default: the database name, else the dialect).
    ``slow``: seconds over which a statement is slow (``None``: never); the first slow
    execution of each shape is logged once. ``explain``: ``"slow"`` checks the plan of each
    slow shape once, ``"all"`` of every new SELECT/UPDATE/DELETE shape once (and logs full
    scans even when fast; staging), ``"off"`` never. ``max_shapes``: shapes with their own
    series. ``max_shape_chars``: longest ``shape`` label (longer shapes are cut and get a
    hash). ``include_transaction_control``: also count SAVEPOINT/RELEASE and the like.
    ``pool``: also export the pool figures.
    """

    def __init__(
        self,
        engine: Any,
        *,
        registry: Registry | None = None,
        name: str | None = None,
        slow: float | None = 0.5,
        explain: ExplainMode = "slow",
        max_shapes: int = 200,
        max_shape_chars: int = 200,
        include_transaction_control: bool = False,
        pool: bool = True,
    ) -> None:
        sync_engine = getattr(engine, "sync_engine", engine)
        if not (hasattr(sync_engine, "dialect") and hasattr(sync_engine, "pool")):
            raise TypeError(f"engine: expected a SQLAlchemy Engine or AsyncEngine, got {engine!r}")
        if slow is not None and (not isinstance(slow, (int, float)) or not slow >= 0):
            raise ValueError(f"slow: must be seconds >= 0 or None (off), got {slow!r}")
        if explain not in ("slow", "all", "off"):
            raise ValueError(f"explain: must be 'slow', 'all' or 'off', got {explain!r}")
        if not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f"max_shapes: must be an int >= 1, got {max_shapes!r}")
        if not isinstance(max_shape_chars, int) or max_shape_chars < 40:
            raise ValueError(f"max_shape_chars: must be an int >= 40, got {max_shape_chars!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        self.engine = sync_engine
        self.registry = registry if registry is not None else REGISTRY
        self.name = name if name is not None else _default_name(sync_engine)
        self.slow = slow
        self.explain: ExplainMode = explain
        self.max_shapes = max_shapes
        self.max_shape_chars = max_shape_chars
        self.include_transaction_control = include_transaction_control
        self.notes: list[str] = []
        #: Seconds spent in EXPLAIN (on the request path, once per explained shape).
        self.explain_seconds = 0.0
        self._slow_after = math.inf if slow is None else float(slow)
        self._lock = threading.Lock()
        self._shapes: dict[str, _Shape] = {}
        self._by_text: dict[str, _Shape | None] = {}
        self._overflow: _Shape | None = None
        labels = ("db", "shape")
        cap = max(self.registry.max_series, 4 * (max_shapes + 1))
        self._statements = self.registry.counter(
            "sql_statements", "SQL statements executed, by statement shape", labels,
            max_series=cap)
        self._duration = self.registry.histogram(
            "sql_statement_duration_seconds", "SQL statement time (driver and server)",
            labels, buckets=STATEMENT_BUCKETS, max_series=cap)
        self._errors = self.registry.counter(
            "sql_statement_errors", "SQL statements that raised, by statement shape", labels,
            max_series=cap)
        self._slow_total = self.registry.counter(
            "sql_slow_statements", "SQL statements slower than the monitor's slow threshold",
            labels, max_series=cap)
        self._register()
        self._sink = _Sink(self, sync_engine)
        self._roots = self._sink._roots
        self.pool: PoolMonitor | None = None
        try:
            from sqlalchemy import event

            event.listen(sync_engine, "handle_error", self._on_error)
            self._sink.start()
            if pool:
                self.pool = PoolMonitor(sync_engine, self.name, self.registry)
        except BaseException:
            self.close()
            raise

    def _register(self) -> None:
        with _OPEN_LOCK:
            for other in _OPEN:
                if other.engine is self.engine:
                    raise ValueError(
                        f"engine: {self.engine!r} is already monitored; close() that monitor "
                        "first")
                if other.registry is self.registry and other.name == self.name:
                    raise ValueError(
                        f"name: another open monitor in this registry is named {self.name!r}; "
                        "pass name= to tell the engines apart")
            _OPEN.add(self)

    # --- lifecycle ---

    @property
    def active(self) -> bool:
        return self in _OPEN

    def close(self) -> None:
        """Stop monitoring: remove every listener and unwrap the pool. Idempotent."""
        with _OPEN_LOCK:
            _OPEN.discard(self)
        sink = getattr(self, "_sink", None)
        if sink is not None:
            sink.stop()
        try:
            from sqlalchemy import event

            if event.contains(self.engine, "handle_error", self._on_error):
                event.remove(self.engine, "handle_error", self._on_error)
        except Exception:  # pragma: no cover - nothing to remove
            pass
        if getattr(self, "pool", None) is not None:
            assert self.pool is not None
            self.pool.close()

    def __enter__(self) -> SQLMonitor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.active else "closed"
        return f"<SQLMonitor db={self.name!r} {state}, {len(self._shapes)} shapes>"

    # --- recording (from the tracker's listeners, any thread; never raises) ---

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                executemany: bool, duration: float, lazy: LazyLoad | None) -> None:
        try:
            if conn.engine is not self.engine:
                return
            entry = self._by_text.get(statement, _MISSING)
            if entry is _MISSING:
                entry = self._entry_for(statement)
            if entry is None:
                return
            entry.inc()
            entry.observe(duration)
            if duration > self._slow_after:
                if entry.slow is None:
                    entry.slow = self._slow_total.labels(self.name, entry.label)
                entry.slow.inc_one()
                if not entry.slow_logged:
                    self._log_slow(conn, cursor, statement, parameters, executemany, duration,
                                   entry)
            elif not entry.explained and self.explain == "all":
                self._explain(conn, cursor, statement, parameters, executemany, entry,
                              log_scans=True)
            scope = _CURRENT.get()
            if scope is not None:
                scope._add(entry.info, duration, lazy)
        except Exception as exc:
            self._note(f"recording a statement: {exc!r}")

    def _entry_for(self, statement: str) -> _Shape | None:
        """The shape entry of a statement text seen for the first time (or None: skipped)."""
        shape = _shape_of(statement)
        with self._lock:
            entry = self._shapes.get(shape)
            if entry is None:
                if not self.include_transaction_control and is_transaction_control(shape):
                    entry = None
                elif len(self._shapes) >= self.max_shapes:
                    entry = self._overflow_entry()
                else:
                    kind = statement_kind(shape)
                    info = ShapeInfo(shape, _first_user_frame(self._roots),
                                     kind in ("SELECT", "WITH"))
                    entry = self._shapes[shape] = _Shape(
                        info, _label_for(shape, self.max_shape_chars), self)
                    if kind not in _EXPLAINABLE:
                        entry.explained = True
                        entry.plan = PlanCheck(note="not a SELECT/UPDATE/DELETE")
            if len(self._by_text) >= _TEXT_CACHE_SIZE:
                self._by_text.clear()
            self._by_text[statement] = entry
            return entry

    def _overflow_entry(self) -> _Shape:
        if self._overflow is None:
            logger.warning(
                "perfkit.sql: db %r reached max_shapes=%d statement shapes; further shapes "
                "are counted under shape=%r (raise max_shapes, or look for SQL built with "
                "inlined values)", self.name, self.max_shapes, OVERFLOW_LABEL_VALUE)
            info = ShapeInfo(OVERFLOW_LABEL_VALUE, "?", False)
            self._overflow = _Shape(info, OVERFLOW_LABEL_VALUE, self)
            self._overflow.explained = True
            self._overflow.slow_logged = True
        return self._overflow

    def _explain(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                 executemany: bool, entry: _Shape, *, log_scans: bool = False
                 ) -> PlanCheck | None:
        with self._lock:
            if entry.explained:
                return entry.plan
            entry.explained = True
        if server_side_cursor(cursor):
            # Another statement on a connection still streaming rows would break the stream
            # on some drivers (MySQL): the slow line says so; explain="all" retries later.
            entry.explained = False
            return None
        began = time.perf_counter()
        try:
            raw = conn.connection.dbapi_connection
            plan = check_plan(conn.dialect.name, raw, statement, parameters, entry.info.shape,
                              executemany=executemany)
        except Exception as exc:
            plan = PlanCheck(note=f"EXPLAIN failed: {exc!r}"[:300])
        self.explain_seconds += time.perf_counter() - began
        entry.plan = plan
        if log_scans:
            for scan in plan.findings:
                logger.warning(
                    "full table scan on %s: %s%s; at %s; fix: %s; query: %s", self.name,
                    scan.detail, _in_route(), entry.info.caller, scan.suggestion,
                    entry.info.shape[:500],
                    extra={"sql_db": self.name, "sql_shape": entry.info.shape,
                           "sql_suggestion": scan.suggestion})
        return plan

    def _log_slow(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                  executemany: bool, duration: float, entry: _Shape) -> None:
        with self._lock:
            if entry.slow_logged:
                return
            entry.slow_logged = True
        plan = entry.plan
        if self.explain != "off" and not entry.explained:
            plan = self._explain(conn, cursor, statement, parameters, executemany, entry)
        suggestion = ""
        if plan is None:
            verdict = ("plan: not checked (explain='off')" if self.explain == "off" else
                       "plan: not checked (rows were still streaming from a server-side cursor)")
        elif plan.findings:
            suggestion = "; ".join(scan.suggestion for scan in plan.findings)
            verdict = "plan: " + "; ".join(
                f"full table scan of {scan.table}: {scan.detail}" for scan in plan.findings)
            verdict += f"; fix: {suggestion}"
        elif plan.checked:
            verdict = "plan: no full table scan"
        else:
            verdict = f"plan: not checked ({plan.note})"
        logger.warning(
            "slow SQL on %s: %.1fms (slow=%.1fms)%s; at %s; %s; query: %s",
            self.name, duration * 1e3, self._slow_after * 1e3, _in_route(), entry.info.caller,
            verdict, entry.info.shape[:500],
            extra={"sql_db": self.name, "sql_shape": entry.info.shape,
                   "sql_duration": duration, "sql_route": _route(),
                   "sql_suggestion": suggestion})

    def _on_error(self, context: Any) -> None:
        try:
            statement = context.statement
            if statement is None:
                return
            entry = self._by_text.get(statement, _MISSING)
            if entry is None:
                return
            if entry is _MISSING:  # a failed statement gets no latency series of its own
                shape = _shape_of(statement)
                if not self.include_transaction_control and is_transaction_control(shape):
                    return
                entry = self._shapes.get(shape)
                if entry is None:
                    label = (OVERFLOW_LABEL_VALUE if len(self._shapes) >= self.max_shapes
                             else _label_for(shape, self.max_shape_chars))
                    self._errors.labels(self.name, label).inc_one()
                    return
            if entry.errors is None:
                entry.errors = self._errors.labels(self.name, entry.label)
            entry.errors.inc_one()
        except Exception as exc:  # a raising handle_error listener would replace the error
            self._note(f"handle_error listener: {exc!r}")

    def _note(self, message: str) -> None:
        if len(self.notes) < _MAX_NOTES and message not in self.notes:
            self.notes.append(message)
            logger.warning("perfkit.sql monitor for %s: %s (the statement was not affected)",
                           self.name, message)

    # --- reading ---

    def shapes(self) -> list[MonitoredShape]:
        """Every shape with its own series, most executed first."""
        with self._lock:
            entries = list(self._shapes.values())
        out = []
        for entry in entries:
            snap = entry.histogram.snapshot()
            out.append(MonitoredShape(
                entry.info.shape, entry.label, entry.info.caller, int(entry.counter.value),
                snap.sum, int(entry.slow.value) if entry.slow is not None else 0,
                int(entry.errors.value) if entry.errors is not None else 0, entry.plan))
        return sorted(out, key=lambda s: (-s.count, -s.total_time))


def _route() -> str | None:
    scope = _CURRENT.get()
    return scope.name if scope is not None else None


def _in_route() -> str:
    route = _route()
    return f" in {route}" if route else ""


monitor = SQLMonitor
"""``perfkit.sql.monitor(engine, ...)``: start monitoring ``engine`` (the class, by its verb)."""
