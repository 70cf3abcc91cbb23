"""``QueryTracker``: what SQL a block of code ran, how long it took and what was wrong with it.

Public SQLAlchemy events only (no patching of ORM internals, which breaks on patch
releases): ``before/after_cursor_execute`` on the ``Engine`` *class*, so engines created
later - and the sync engine behind every ``AsyncEngine`` - are seen, and ``do_orm_execute``
on the ``Session`` class to label lazy loads with their relationship and parent. Statements
from every thread count toward the tracker that is running (a TestClient serves the app
from another thread). Listeners never raise into user code: an internal error is kept as
a note.

Per statement the tracker records driver+server time (after-minus-before cursor execute),
the normalised shape and rows for ``executemany``, and its call site: the first frame
outside SQLAlchemy, perfkit and installed packages (whether a code object is library code is
remembered, so the walk is a dict look-up per frame). Per shape it keeps the first call site
and a count per site (the first ``MAX_SITES`` distinct sites). EXPLAIN runs
once per shape while tracking, and the time it takes is reported in ``overhead`` so a
latency measurement around the same code can take it out.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

from perfkit._paths import PERFKIT_DIR, PLUGIN_DIR, install_roots, loaded_dirs
from perfkit.sql.explain import PlanCheck, ScanFinding, check_plan, server_side_cursor
from perfkit.sql.shapes import is_transaction_control, normalize, statement_kind

__all__ = [
    "Finding",
    "LazyLoad",
    "QueryTracker",
    "ShapeSummary",
    "Statement",
    "describe_sites",
    "listeners_installed",
    "uninstall_listeners",
]

_MAX_TEXT = 2000
_SHAPE_CACHE_SIZE = 4096
_MAX_NOTES = 20


@dataclass(frozen=True)
class LazyLoad:
    """ORM context of a statement emitted by a lazy load (or an expired-column reload)."""

    relationship: str  # "User.posts", or "User.<columns>" for a column reload
    parent: str  # identity of the parent object, to count distinct parents
    direction: str  # "MANYTOONE", "ONETOMANY", "MANYTOMANY" or "COLUMN"


@dataclass(frozen=True)
class Statement:
    """One executed statement."""

    text: str
    shape: str
    duration: float
    rows: int  # parameter sets: > 1 for executemany
    caller: str
    thread: str
    dialect: str
    lazy: LazyLoad | None = None


def _new_statement(text: str, shape: str, duration: float, rows: int, caller: str,
                   thread: str, dialect: str, lazy: LazyLoad | None) -> Statement:
    """Build a :class:`Statement` on the per-statement path without the frozen-dataclass
    ``__init__`` (one ``object.__setattr__`` per field: 1.9 us against 0.6 us here); the
    result is equal to, hashes like and reprs like ``Statement(...)``."""
    statement = object.__new__(Statement)
    fields = statement.__dict__
    fields["text"] = text
    fields["shape"] = shape
    fields["duration"] = duration
    fields["rows"] = rows
    fields["caller"] = caller
    fields["thread"] = thread
    fields["dialect"] = dialect
    fields["lazy"] = lazy
    return statement


#: Distinct call sites counted per shape; executions from further sites are counted together
#: in ``ShapeSummary.other_sites`` (a loop over generated code must not grow it unbounded).
MAX_SITES = 20


@dataclass
class ShapeSummary:
    """All executions of one statement shape.

    ``caller`` is the first call site seen; ``sites`` counts executions per call site (the
    first :data:`MAX_SITES` distinct sites; the rest are counted in ``other_sites``).
    """

    shape: str
    count: int = 0
    total_time: float = 0.0
    max_time: float = 0.0
    caller: str = ""
    example: str = ""
    sites: dict[str, int] = field(default_factory=dict)
    other_sites: int = 0

    def top_sites(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` call sites that ran this shape most, most first (first seen on ties)."""
        return sorted(self.sites.items(), key=lambda item: -item[1])[:n]


@dataclass(frozen=True)
class Finding:
    """Something wrong with the SQL of a block: ``kind`` is ``"n_plus_one"``,
    ``"full_scan"``, ``"slow"`` or ``"explain_note"`` (could not check)."""

    kind: str
    shape: str
    message: str
    hint: str = ""
    caller: str = ""
    count: int = 0
    sites: tuple[tuple[str, int], ...] = ()  # (call site, executions), most first

    def describe(self) -> str:
        parts = [self.message]
        if len(self.sites) > 1:
            parts.append("at " + describe_sites(self.sites, self.count))
        elif self.caller:
            parts.append(f"at {self.caller}")
        if self.hint:
            parts.append(f"fix: {self.hint}")
        return "; ".join(parts)


def describe_sites(sites: Iterable[tuple[str, int]], total: int) -> str:
    """``"a.py:3 in f (4x), b.py:9 in g (2x) (+1 more: 1x)"``: top call sites and the rest."""
    sites = list(sites)
    text = ", ".join(f"{site} ({count}x)" for site, count in sites)
    rest = total - sum(count for _, count in sites)
    return text + (f" (+ {rest}x elsewhere)" if rest > 0 else "")


def _library_roots() -> tuple[str, ...]:
    roots = {*install_roots(), PERFKIT_DIR, PLUGIN_DIR}
    try:
        import sqlalchemy

        roots.add(os.path.dirname(os.path.abspath(sqlalchemy.__file__)) + os.sep)
    except ImportError:  # pragma: no cover - tracker is useless without it anyway
        pass
    roots.update(loaded_dirs("_pytest", "pluggy", "anyio", "pytest_asyncio", "starlette",
                             "fastapi", "httpx"))
    return tuple(sorted(roots))


def _first_user_frame(roots: tuple[str, ...]) -> str:
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(roots) and not filename.startswith("<frozen"):
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


_MAX_FILE_CACHE = 4096


def _call_site(roots: tuple[str, ...], library: dict[str, bool]) -> str:
    """:func:`_first_user_frame` for every statement: whether a file is library code is
    remembered in ``library`` (a file name's hash is cached by the string), so a walk costs
    a dict look-up per frame instead of a prefix test against every root."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        inside = library.get(filename)
        if inside is None:
            inside = filename.startswith(roots) or filename.startswith("<frozen")
            if len(library) >= _MAX_FILE_CACHE:
                library.clear()
            library[filename] = inside
        if not inside:
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


_shape_cache: dict[str, str] = {}
_control_cache: dict[str, bool] = {}


def _is_control(text: str) -> bool:
    """:func:`is_transaction_control`, cached per statement text like shapes are."""
    control = _control_cache.get(text)
    if control is None:
        control = is_transaction_control(text)
        if len(_control_cache) >= _SHAPE_CACHE_SIZE:
            _control_cache.clear()
        _control_cache[text] = control
    return control


def _shape_of(text: str) -> str:
    shape = _shape_cache.get(text)
    if shape is None:
        shape = normalize(text)
        if len(_shape_cache) >= _SHAPE_CACHE_SIZE:
            _shape_cache.clear()
        _shape_cache[text] = shape
    return shape


_PENDING_LAZY: ContextVar[LazyLoad | None] = ContextVar("perfkit_pending_lazy_load",
                                                       default=None)
"""The lazy load whose statement is about to run, in this context. A context variable, not
a thread-local: on an ``AsyncEngine`` many requests share the event loop's thread and
interleave between ``do_orm_execute`` and the cursor events (SQLAlchemy runs each in a
greenlet carrying its task's context), so a thread-local hands one request's label to
another's statement."""


class _Dispatcher:
    """The one set of SQLAlchemy listeners, shared by every tracker in the process."""

    def __init__(self) -> None:
        self.active: tuple[QueryTracker, ...] = ()
        self.installed = False
        self.lock = threading.Lock()

    def install(self) -> None:
        with self.lock:
            if self.installed:
                return
            try:
                from sqlalchemy import Engine, event
                from sqlalchemy.orm import Session
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "perfkit.sql needs SQLAlchemy 2: pip install 'perfkit[sql]'"
                ) from exc
            event.listen(Engine, "before_cursor_execute", self.before)
            event.listen(Engine, "after_cursor_execute", self.after)
            event.listen(Session, "do_orm_execute", self.orm_execute)
            self.installed = True

    def uninstall(self) -> None:
        with self.lock:
            if not self.installed:
                return
            from sqlalchemy import Engine, event
            from sqlalchemy.orm import Session

            event.remove(Engine, "before_cursor_execute", self.before)
            event.remove(Engine, "after_cursor_execute", self.after)
            event.remove(Session, "do_orm_execute", self.orm_execute)
            self.installed = False

    def add(self, tracker: QueryTracker) -> None:
        self.install()
        with self.lock:
            self.active = (*self.active, tracker)

    def remove(self, tracker: QueryTracker) -> None:
        with self.lock:
            self.active = tuple(t for t in self.active if t is not tracker)

    # --- listeners: every one guarded, none may raise into user code ---

    def orm_execute(self, state: Any) -> None:
        if not self.active:
            return
        try:
            parent = state.lazy_loaded_from
            if parent is None and not state.is_column_load:
                _PENDING_LAZY.set(None)
                return
            if state.is_column_load:
                mapper = state.bind_mapper if hasattr(state, "bind_mapper") else None
                name = getattr(getattr(mapper, "class_", None), "__name__", "?")
                # The refreshed object's identity; else its primary-key parameters (public).
                refreshed = getattr(state.load_options, "_refresh_state", None)
                identity = getattr(refreshed, "identity_key", None) or (
                    repr(state.parameters) if state.parameters else id(state))
                _PENDING_LAZY.set(LazyLoad(f"{name}.<columns>", repr(identity), "COLUMN"))
                return
            prop = state.loader_strategy_path.prop
            relationship = f"{prop.parent.class_.__name__}.{prop.key}"
            _PENDING_LAZY.set(LazyLoad(
                relationship, repr(parent.identity_key or id(parent)), prop.direction.name
            ))
        except Exception as exc:
            _PENDING_LAZY.set(None)
            self.note(f"do_orm_execute listener: {exc!r}")

    def before(self, conn: Any, cursor: Any, statement: str, parameters: Any,
               context: Any, executemany: bool) -> None:
        if not self.active:
            return
        try:
            context._perfkit_started = time.perf_counter()
        except Exception:  # pragma: no cover - context objects accept attributes
            pass

    def after(self, conn: Any, cursor: Any, statement: str, parameters: Any,
              context: Any, executemany: bool) -> None:
        finished = time.perf_counter()
        if not self.active:
            return
        try:
            started = getattr(context, "_perfkit_started", finished)
            lazy = _PENDING_LAZY.get()
            if lazy is not None:
                # A lazy load is a SELECT; the session's autoflush runs its INSERT/UPDATEs
                # between do_orm_execute and that SELECT, and must not take its label.
                if statement_kind(statement) in ("SELECT", "WITH"):
                    _PENDING_LAZY.set(None)
                else:
                    lazy = None
            for tracker in self.active:
                tracker._record(conn, cursor, statement, parameters, executemany,
                                finished - started, lazy)
        except Exception as exc:
            self.note(f"after_cursor_execute listener: {exc!r}")

    def note(self, message: str) -> None:
        for tracker in self.active:
            tracker._note(message)


_DISPATCHER = _Dispatcher()


def listeners_installed() -> bool:
    """Whether perfkit's SQLAlchemy listeners are currently installed."""
    return _DISPATCHER.installed


def uninstall_listeners() -> None:
    """Remove perfkit's SQLAlchemy listeners if no tracker is running (e.g. at session end)."""
    if not _DISPATCHER.active:
        _DISPATCHER.uninstall()


class QueryTracker:
    """Record the SQLAlchemy statements run while it is active (``with`` or start/stop).

    ``include_transaction_control``: also count BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE.
    ``explain``: check each new SELECT/UPDATE/DELETE shape for full table scans.
    ``slow``: seconds over which one statement is a finding (``None``: never).
    ``n_plus_one``: repetitions of one SELECT shape that make an N+1 finding (0: off).
    ``lazy_parents``: distinct parents lazily loading one relationship that make a finding.
    ``allow``: shell-style patterns of shapes exempt from N+1 findings.
    ``engine``: only statements of this engine (or ``AsyncEngine``); default all engines.
    ``max_statements``: statements kept in memory; counts and shapes stay exact past it.
    ``sites``: find every statement's call site and count executions per site and shape
    (a stack walk per statement, +2-4 us each); off by default: a new shape's first call
    site only (one walk per shape).
    """

    def __init__(
        self,
        *,
        include_transaction_control: bool = False,
        explain: bool = True,
        slow: float | None = None,
        n_plus_one: int = 5,
        lazy_parents: int = 2,
        allow: Iterable[str] = (),
        engine: Any = None,
        max_statements: int = 10_000,
        sites: bool = False,
    ) -> None:
        if slow is not None and slow < 0:
            raise ValueError(f"slow: must be >= 0 seconds or None, got {slow!r}")
        if n_plus_one < 0:
            raise ValueError(f"n_plus_one: must be >= 0 (0 turns it off), got {n_plus_one!r}")
        if lazy_parents < 0:
            raise ValueError(f"lazy_parents: must be >= 0 (0: off), got {lazy_parents!r}")
        if max_statements < 1:
            raise ValueError(f"max_statements: must be >= 1, got {max_statements!r}")
        self.include_transaction_control = include_transaction_control
        self.explain = explain
        self.slow = slow
        self.n_plus_one = n_plus_one
        self.lazy_parents = lazy_parents
        self.allow = tuple(allow)
        self.engine = getattr(engine, "sync_engine", engine)
        self.max_statements = max_statements
        self.sites = sites
        self._roots = _library_roots()
        self._library_files: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.reset()

    # --- lifecycle ---

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.statements: list[Statement] = []
        self.count = 0
        self.rows = 0
        self.db_time = 0.0
        self.overhead = 0.0
        self.dialects: set[str] = set()
        self.notes: list[str] = []
        self._shapes: dict[str, ShapeSummary] = {}
        self._plans: dict[str, PlanCheck] = {}
        self._unplanned: set[str] = set()  # shapes whose EXPLAIN waits for a free connection
        self._lazy: dict[str, set[str]] = {}
        self._lazy_direction: dict[str, str] = {}
        self._lazy_shape: dict[str, str] = {}
        self.active = False

    def start(self) -> QueryTracker:
        if not self.active:
            self.active = True
            _DISPATCHER.add(self)
        return self

    def stop(self) -> None:
        if self.active:
            _DISPATCHER.remove(self)
            self.active = False

    def __enter__(self) -> QueryTracker:
        self.reset()
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- recording (called from listeners, on any thread) ---

    def _note(self, message: str) -> None:
        if len(self.notes) < _MAX_NOTES and message not in self.notes:
            self.notes.append(message)

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                executemany: bool, duration: float, lazy: LazyLoad | None) -> None:
        if self.engine is not None and conn.engine is not self.engine:
            return
        if not self.include_transaction_control and _is_control(statement):
            return
        shape = _shape_of(statement)
        dialect = conn.dialect.name
        rows = len(parameters) if executemany and hasattr(parameters, "__len__") else 1
        site = _call_site(self._roots, self._library_files) if self.sites else ""
        with self._lock:
            summary = self._shapes.get(shape)
            new_shape = summary is None
            if summary is None:
                if not site:
                    site = _first_user_frame(self._roots)
                summary = ShapeSummary(shape, caller=site, example=statement[:_MAX_TEXT])
                self._shapes[shape] = summary
            elif not site:
                site = summary.caller
            if self.sites:
                sites = summary.sites
                if site in sites:
                    sites[site] += 1
                elif len(sites) < MAX_SITES:
                    sites[site] = 1
                else:
                    summary.other_sites += 1
            summary.count += 1
            summary.total_time += duration
            summary.max_time = max(summary.max_time, duration)
            self.count += 1
            self.rows += rows
            self.db_time += duration
            self.dialects.add(dialect)
            if lazy is not None:
                parents = self._lazy.setdefault(lazy.relationship, set())
                if len(parents) < 10_000:
                    parents.add(lazy.parent)
                self._lazy_direction[lazy.relationship] = lazy.direction
                self._lazy_shape.setdefault(lazy.relationship, shape)
            if len(self.statements) < self.max_statements:
                self.statements.append(_new_statement(
                    statement[:_MAX_TEXT], shape, duration, rows, site,
                    threading.current_thread().name, dialect, lazy,
                ))
        if (new_shape or (self._unplanned and shape in self._unplanned)) and self.explain \
                and statement_kind(shape) in ("SELECT", "UPDATE", "DELETE", "WITH"):
            if server_side_cursor(cursor):
                # Rows still streaming (yield_per, stream_results): an EXPLAIN on this
                # connection would discard them on MySQL drivers. Checked on a later run.
                with self._lock:
                    self._unplanned.add(shape)
                    self._plans.setdefault(shape, PlanCheck(
                        note="EXPLAIN skipped: its rows were streaming from a server-side "
                             "cursor (checked when the statement runs buffered)"))
                return
            began = time.perf_counter()
            try:
                raw = conn.connection.dbapi_connection
                plan = check_plan(dialect, raw, statement, parameters, shape,
                                  executemany=executemany)
            except Exception as exc:
                plan = PlanCheck(note=f"EXPLAIN failed: {exc!r}"[:300])
            with self._lock:
                self._plans[shape] = plan
                self._unplanned.discard(shape)
                self.overhead += time.perf_counter() - began

    # --- results ---

    @property
    def texts(self) -> list[str]:
        """Statement texts in execution order (up to ``max_statements``)."""
        return [s.text for s in self.statements]

    @property
    def shapes(self) -> list[ShapeSummary]:
        """Every shape seen, most frequent first."""
        with self._lock:
            return sorted(self._shapes.values(), key=lambda s: (-s.count, -s.total_time))

    def shape_counts(self) -> Counter[str]:
        with self._lock:
            return Counter({shape: s.count for shape, s in self._shapes.items()})

    @property
    def plans(self) -> dict[str, PlanCheck]:
        with self._lock:
            return dict(self._plans)

    def _allowed(self, shape: str) -> bool:
        return any(fnmatch.fnmatchcase(shape, pattern) or pattern in shape
                   for pattern in self.allow)

    def n_plus_one_findings(self) -> list[Finding]:
        findings: list[Finding] = []
        covered: set[str] = set()
        with self._lock:
            lazy = {name: len(parents) for name, parents in self._lazy.items()}
            shapes = list(self._shapes.values())
        if self.lazy_parents:
            for relationship, parents in sorted(lazy.items()):
                shape = self._lazy_shape[relationship]
                if parents < self.lazy_parents or self._allowed(shape):
                    continue
                covered.add(shape)
                direction = self._lazy_direction[relationship]
                if direction == "COLUMN":
                    hint = ("load the columns up front (undefer / load_only) or keep objects "
                            "fresh with Session(expire_on_commit=False)")
                elif direction == "MANYTOONE":
                    hint = f"options(joinedload({relationship}))"
                else:
                    hint = f"options(selectinload({relationship}))"
                summary = self._shapes[shape]
                findings.append(Finding(
                    "n_plus_one", shape,
                    f"N+1: {relationship} lazily loaded for {parents} parents "
                    f"({summary.count} queries)", hint, summary.caller, summary.count,
                    tuple(summary.top_sites()),
                ))
        if self.n_plus_one:
            for summary in shapes:
                if (summary.count < self.n_plus_one or summary.shape in covered
                        or not summary.shape.startswith(("SELECT", "WITH"))
                        or self._allowed(summary.shape)):
                    continue
                findings.append(Finding(
                    "n_plus_one", summary.shape,
                    f"N+1: the same query ran {summary.count} times",
                    "fetch the rows in one query (WHERE ... IN (...)) or eager-load the "
                    "relationship (selectinload / joinedload)", summary.caller, summary.count,
                    tuple(summary.top_sites()),
                ))
        return findings

    def scan_findings(self) -> list[Finding]:
        findings: list[Finding] = []
        for shape, plan in self.plans.items():
            caller = self._shapes[shape].caller
            scan: ScanFinding
            for scan in plan.findings:
                findings.append(Finding(
                    "full_scan", shape, f"full table scan of {scan.table}: {scan.detail}",
                    scan.fix, caller, self._shapes[shape].count,
                ))
        return findings

    def explain_notes(self) -> list[Finding]:
        return [Finding("explain_note", shape, f"could not check the plan: {plan.note}",
                        caller=self._shapes[shape].caller)
                for shape, plan in self.plans.items()
                if not plan.checked and plan.note.startswith(("EXPLAIN failed",
                                                              "EXPLAIN skipped"))]

    def slow_findings(self) -> list[Finding]:
        if self.slow is None:
            return []
        return [Finding("slow", s.shape,
                        f"slow statement: {s.max_time * 1e3:.1f}ms "
                        f"(threshold {self.slow * 1e3:.1f}ms, {s.count}x)",
                        "check its plan and indexes", s.caller, s.count)
                for s in self.shapes if s.max_time > self.slow]

    def findings(self) -> list[Finding]:
        """N+1, full-scan, slow-statement findings and could-not-check notes."""
        return (self.n_plus_one_findings() + self.scan_findings() + self.slow_findings()
                + self.explain_notes())
