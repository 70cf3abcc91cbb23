"""perfkit.measure.calls: which calls a block makes, counted the same way every time."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from perfkit.measure import BenchSettings, CallCounter, benchmark, format_duration

HERE = __file__


def leaf(x: int) -> int:
    return len([x])  # one C call per leaf


def branch(n: int) -> list[int]:
    out: list[int] = []
    for i in range(n):
        out.append(leaf(i))
    return out


def counts(counter: CallCounter) -> dict[str, int]:
    """Every function the counter kept (``top`` is large in these tests)."""
    return {entry.function: entry.count for entry in counter.result.top}


def from_file(filename: str, source: str) -> dict[str, Any]:
    """Functions whose code says they live in ``filename`` (machinery, perfkit, ...)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def test_counts_python_and_builtin_calls_apart() -> None:
    with CallCounter(top=100) as counter:
        branch(3)
    result = counter.result
    # branch once, leaf 3x; len and list.append 3x each
    assert (result.python, result.c, result.total) == (4, 6, 10)
    assert counts(counter) == {"leaf": 3, "len": 3, "list.append": 3, "branch": 1}
    by_name = {entry.function: entry for entry in result.top}
    assert by_name["leaf"].location == f"{HERE}:{leaf.__code__.co_firstlineno}"
    assert not by_name["leaf"].builtin and by_name["len"].builtin
    assert by_name["len"].location == ""
    assert result.top[0].line() == "3x leaf  " + by_name["leaf"].location
    assert "3x len  (built-in)" in [entry.line() for entry in result.top]
    assert result.as_dict()["total"] == 10 and not result.error
    assert sys.getprofile() is None


def test_the_same_code_counts_the_same_every_time() -> None:
    totals = []
    for _ in range(3):
        with CallCounter(top=100) as counter:
            branch(50)
            sorted(range(20), key=str)  # a C function calling back: no Python frame here
            format(3.5, ".1f")
        totals.append((counter.result.python, counter.result.c, counts(counter)))
    assert totals[0] == totals[1] == totals[2]
    with CallCounter() as once:
        branch(50)
    with CallCounter() as twice:
        branch(50)
        branch(50)
    assert (once.result.python, once.result.c) == (51, 100)
    assert (twice.result.python, twice.result.c) == (102, 200)


def test_top_keeps_the_most_called_first() -> None:
    with CallCounter(top=2) as counter:
        branch(5)
    assert [entry.function for entry in counter.result.top] == ["leaf", "len"]  # ties by name
    with pytest.raises(ValueError, match="top: must be >= 0"):
        CallCounter(top=-1)


def test_generators_and_coroutines_count_once_per_resumption() -> None:
    def numbers() -> Iterator[int]:
        yield 1
        yield 2

    async def pause() -> None:
        await asyncio.sleep(0)

    with CallCounter(top=100) as counter:
        total = sum(numbers())  # started, resumed twice (the last resumption ends it)
    assert counts(counter)["test_generators_and_coroutines_count_once_per_resumption."
                           "<locals>.numbers"] == 3
    loop = asyncio.new_event_loop()
    try:
        with CallCounter(top=100) as counter:
            loop.run_until_complete(pause())
    finally:
        loop.close()
    pauses = [e for e in counter.result.top if e.function.endswith("<locals>.pause")]
    assert total == 3 and pauses[0].count == 2  # started, then resumed after the sleep


def test_excluded_code_and_all_it_calls_are_not_counted() -> None:
    tool = from_file("/opt/tool/measure.py", "def run(fn):\n    fn(); fn()\n    return len('x')\n")
    with CallCounter(exclude=("/opt/tool/",), top=100) as counter:
        tool["run"](lambda: branch(3))  # neither run, nor what it calls
        leaf(1)
    assert counts(counter) == {"leaf": 1, "len": 1}
    # perfkit's own measuring code is excluded by default: a time-bound benchmark inside the
    # block would make the count depend on the clock
    settings = BenchSettings(warmup=0, min_rounds=2, max_time=0.001)
    with CallCounter(top=100) as counter:
        benchmark(leaf, 1, settings=settings)
        format_duration(0.5)
    assert counter.result.total == 0


def test_a_call_that_raises_leaves_the_count_consistent() -> None:
    tool = from_file("/opt/tool/raise.py", "def fail():\n    raise KeyError('x')\n")

    def boom() -> None:
        raise ValueError("boom")

    with CallCounter(exclude=("/opt/tool/",), top=100) as counter:
        for call in (boom, tool["fail"]):
            try:
                call()
            except (ValueError, KeyError):
                pass
        leaf(1)  # after an excluded call that raised: counted again
    assert counts(counter) == {"leaf": 1, "len": 1,
                               "test_a_call_that_raises_leaves_the_count_consistent."
                               "<locals>.boom": 1}


def test_around_code_runs_the_measured_code_uncounted() -> None:
    # The shape of a test run: machinery (``around``) enters the counter and calls the test
    # through helpers of its own; the test calls back into the same library.
    machinery = from_file("/opt/runner/run.py", """
def helper(value):
    return str(value)

def call(fn):
    helper(1)
    return fn()

def run(counter, fn):
    with counter:
        helper(0)
        call(fn)
    return counter
""")

    def test_body() -> None:
        machinery["helper"](2)  # the library, called by the measured code: counted
        leaf(1)

    counter = machinery["run"](CallCounter(around=("/opt/runner/",), top=100), test_body)
    names = counts(counter)
    assert names.pop("helper") == 1 and names.pop("leaf") == 1 and names.pop("len") == 1
    assert names == {"test_around_code_runs_the_measured_code_uncounted.<locals>.test_body": 1}


def test_other_threads_are_not_counted() -> None:
    started = threading.Event()

    def busy() -> None:
        started.set()
        branch(100)

    with CallCounter(top=100) as counter:
        worker = threading.Thread(target=busy)
        worker.start()
        worker.join()
        leaf(1)
    assert started.is_set()
    names = counts(counter)
    assert "branch" not in names and names["leaf"] == 1


def test_the_collector_pauses_while_counting() -> None:
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        with CallCounter():
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()
        with CallCounter():
            pass
        assert not gc.isenabled()  # left as it was found
        gc.enable()
        with CallCounter(pause_gc=False):
            assert gc.isenabled()
    finally:
        (gc.enable if was_enabled else gc.disable)()


def test_another_profiler_is_never_replaced() -> None:
    def other(frame: Any, event: str, arg: Any) -> None:
        pass

    sys.setprofile(other)
    try:
        with pytest.raises(RuntimeError, match="another profile function is set"), \
                CallCounter():
            pass  # pragma: no cover - not entered
        assert sys.getprofile() is other
    finally:
        sys.setprofile(None)


def test_a_hook_replaced_inside_the_block_is_reported_and_kept() -> None:
    def other(frame: Any, event: str, arg: Any) -> None:
        pass

    try:
        with CallCounter(top=100) as counter:
            leaf(1)
            sys.setprofile(other)
            leaf(2)
        assert sys.getprofile() is other  # theirs now: not ours to remove
    finally:
        sys.setprofile(None)
    assert "replaced inside the block" in counter.result.error
    assert counts(counter)["leaf"] == 1
