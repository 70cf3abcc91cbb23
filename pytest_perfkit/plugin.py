"""Entry point registered under ``pytest11``; turns pytest options into perfkit calls."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("perfkit", "perfkit performance budgets")
    group.addoption(
        "--perf-budget",
        action="store_true",
        default=False,
        help="measure and enforce perf_budget markers (off: the plugin does nothing per test)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "perf_budget(**limits): latency, memory and SQL budgets for this test"
    )
