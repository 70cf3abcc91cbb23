"""SQL query tracking for SQLAlchemy: statement time, call site, shape, N+1 and full scans.

``QueryTracker`` is for tests; ``monitor(engine)`` keeps the same facts in a running service.
"""

from __future__ import annotations

from perfkit.sql.explain import PlanCheck, ScanFinding, check_plan
from perfkit.sql.monitoring import MonitoredShape, SQLMonitor, monitor
from perfkit.sql.pool import PoolMonitor
from perfkit.sql.scope import ScopeStats, SQLScopes, current_scope
from perfkit.sql.shapes import normalize
from perfkit.sql.tracker import (
    Finding,
    LazyLoad,
    QueryTracker,
    ShapeSummary,
    Statement,
    listeners_installed,
    uninstall_listeners,
)

__all__ = [
    "Finding",
    "LazyLoad",
    "MonitoredShape",
    "PlanCheck",
    "PoolMonitor",
    "QueryTracker",
    "SQLMonitor",
    "SQLScopes",
    "ScanFinding",
    "ScopeStats",
    "ShapeSummary",
    "Statement",
    "check_plan",
    "current_scope",
    "listeners_installed",
    "monitor",
    "normalize",
    "uninstall_listeners",
]
