"""The ``loop_block`` budget: which tests it applies to, the watch around one call, the verdict.

The mechanism is :class:`perfkit.measure.loopwatch.LoopWatch`; this module only decides
when to start it and turns what it saw into a :class:`BudgetResult` and a payload. A
``loop_block`` set as a session default (ini, env, CLI) applies to async tests only; set in
a test's marker it applies to that test, and a sync test reports it as not applied.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import pytest

from perfkit.measure.loopwatch import LoopWatch
from perfkit.measure.units import format_duration
from pytest_perfkit.budgets import Budget
from pytest_perfkit.verdicts import NOT_APPLIED, BudgetResult, count_result

__all__ = ["for_test", "loop_result", "start_watch"]

NOT_ASYNC = "not an async test"


def is_async_test(item: pytest.Item) -> bool:
    """A coroutine test function, also under pytest-asyncio's sync wrapper (``__wrapped__``)."""
    function = getattr(item, "obj", None)
    if function is None:
        return False
    try:
        function = inspect.unwrap(function)
    except ValueError:  # a cycle of __wrapped__
        return False
    return inspect.iscoroutinefunction(function)


def for_test(item: pytest.Item, budget: Budget, defaults: Budget) -> Budget:
    """``budget`` without a session-default ``loop_block`` when the test is not async."""
    if budget.loop_block is None or budget.sources.get("loop_block") != \
            defaults.sources.get("loop_block") or is_async_test(item):
        return budget
    sources = {name: source for name, source in budget.sources.items() if name != "loop_block"}
    return replace(budget, loop_block=None, sources=sources)


def start_watch(item: pytest.Item, budget: Budget, traced: str) -> LoopWatch | str | None:
    """A watch to enter around the call, the reason it does not apply, or ``None`` (no budget).

    ``traced``: why the only run is traced (heap or call count with ``rerun=False``), or ``""``.
    """
    if budget.loop_block is None:
        return None
    if not is_async_test(item):
        return NOT_ASYNC
    if traced:
        return f"{traced}, which slows every step"
    return LoopWatch(budget.loop_block)


def loop_result(limit: float, watch: LoopWatch | str) -> tuple[BudgetResult, dict[str, Any]]:
    """The verdict on the longest block, and the report's ``loop`` entry."""
    if isinstance(watch, str):
        return BudgetResult("loop_block", limit, None, "s", NOT_APPLIED, detail=watch), \
            {"note": watch}
    seen = watch.result
    block = seen.block
    payload: dict[str, Any] = {
        "runner": seen.runner, "longest": seen.longest, "beats": seen.beats,
        "interval": seen.interval, "outside": seen.outside, "note": seen.note,
        "site": block.site if block else None, "source": block.source if block else None,
        "stack": list(block.stack) if block else [],
    }
    if seen.runner is None:
        return BudgetResult("loop_block", limit, None, "s", NOT_APPLIED, detail=seen.note), \
            payload
    detail = (f"longest event-loop block ({seen.runner}; heartbeat every "
              f"{format_duration(seen.interval)}, {seen.beats} ran)")
    if seen.outside:
        detail += (f"; a {format_duration(seen.outside)} delay while the loop was idle "
                   "(the machine, not the code) is not counted")
    cause: list[str] = []
    if block is not None:
        cause.append(f"loop blocked {format_duration(block.seconds)} at {block.site}: "
                     f"{block.source}")
        if len(block.stack) > 1:
            cause.extend("  " + line for line in block.stack)
    elif seen.longest > limit:
        cause.append("the blocking code was not caught in a stack sample (C code holding "
                     "the GIL?)")
    return count_result("loop_block", seen.longest, limit, "s", cause, detail), payload
