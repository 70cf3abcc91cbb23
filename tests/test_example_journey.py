"""The user's first ten minutes: the README's first command, its summary and its report.

Runs the example service's perf-budget suite exactly as the quick start does, then renders
the HTML report in headless Chromium (Debian's ``chromium``) and checks what a person would
see: the charts, the tables and the findings.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("journey")
    report = out / "perf-report.html"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/tests", "--perf-budget",
         f"--perf-report={report}", "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    return result, report


def test_the_example_suite_passes_and_explains_itself(example_run):
    result, report = example_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "1 xfailed" in out  # the N+1 endpoint breaks its budget, as intended
    assert "N+1: Product.category lazily loaded" in out
    assert "fix: options(joinedload(Product.category))" in out
    assert "CREATE INDEX ix_shop_product_brand ON shop_product (brand)" in out
    assert f"perfkit report written to {report}" in out
    assert report.exists() and report.with_suffix(".json").exists()


def test_the_html_report_renders_with_charts_and_tables(example_run, tmp_path):
    _result, report = example_run
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        service_missing("Chromium", "not on PATH (apt-get install chromium)")
    profile = tmp_path / "profile"
    screenshot = tmp_path / "report.png"
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*common, "--window-size=1280,1600", f"--screenshot={screenshot}",
                    report.as_uri()], capture_output=True, timeout=120, check=True)
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 30_000  # a real page, not a blank one
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "<svg" in dom and "<rect" in dom  # the budget-against-measurement chart
    assert dom.count("<table") >= 2  # all results, SQL findings
    assert "over budget" in dom and "test_product_list_v1_has_an_n_plus_one" in dom
