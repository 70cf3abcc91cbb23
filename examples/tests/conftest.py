"""Fixtures for the example service's own perf-budget suite."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from examples.shop.app import Settings, create_app


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "breaks_budget: a known performance bug; an expected failure under --perf-budget"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The N+1 test is meant to break its budget: with --perf-budget it is an expected
    # failure (strict, so fixing the bug is noticed); without the flag it is a plain test.
    if not config.getoption("--perf-budget"):
        return
    for item in items:
        marker = item.get_closest_marker("breaks_budget")
        if marker is not None:
            item.add_marker(
                pytest.mark.xfail(strict=True, reason="the N+1 this suite exists to show")
            )


@pytest.fixture
def app():
    return create_app(Settings(llm_latency=0.005))


@pytest.fixture
def client(app):
    with TestClient(app) as client:
        yield client
