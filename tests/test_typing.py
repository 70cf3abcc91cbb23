"""Type checkers see through the decorators: signatures kept, misuse reported."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is a dev dependency")

CASES = Path(__file__).parent / "typecheck"


@pytest.mark.parametrize("path", sorted(CASES.glob("*.py")), ids=lambda p: p.name)
def test_mypy_accepts_good_uses_and_flags_the_marked_lines(path):
    out, _err, _status = mypy_api.run(
        [str(path), "--strict", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(Path(__file__).parent.parent / ".mypy_cache")]
    )
    flagged = {
        int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line
    }
    expected = {
        n for n, text in enumerate(path.read_text().splitlines(), start=1) if "# E:" in text
    }
    assert expected, "a type-check case must mark at least one line it expects to fail"
    assert flagged == expected, out
