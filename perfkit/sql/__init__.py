"""SQL query tracking for SQLAlchemy: statement time, call site, shape, N+1 and full scans."""

from __future__ import annotations

from perfkit.sql.explain import PlanCheck, ScanFinding, check_plan
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
    "PlanCheck",
    "QueryTracker",
    "ScanFinding",
    "ShapeSummary",
    "Statement",
    "check_plan",
    "listeners_installed",
    "normalize",
    "uninstall_listeners",
]
