"""perfkit.measure.loopwatch: the longest event-loop block, and the code that held the loop.

Blocks are 200 ms ``time.sleep`` calls against a 50 ms threshold, and "no block" is a
coroutine that awaits for 200 ms: wide margins, so machine noise cannot flip a result.
"""

from __future__ import annotations

import asyncio
import cProfile
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest
import trio

from perfkit.measure.loopwatch import LoopWatch

HERE = "test_loopwatch.py"


def blocking_call() -> None:
    time.sleep(0.2)  # the blocking line


BLOCKING_LINE = blocking_call.__code__.co_firstlineno + 1


async def blocks() -> None:
    await asyncio.sleep(0.01)
    blocking_call()
    await asyncio.sleep(0.01)


async def awaits() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


def watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "perfkit-loopwatch"]


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    assert sys.getprofile() is None
    assert not watchdogs()


def test_a_blocking_call_is_measured_and_named() -> None:
    watch = LoopWatch(0.05)
    with watch:
        asyncio.run(blocks())
    seen = watch.result
    assert seen.runner == "asyncio"
    assert 0.15 <= seen.longest < 1.0
    assert seen.block is not None
    assert seen.block.site.endswith(f"{HERE}:{BLOCKING_LINE} in blocking_call")
    assert seen.block.source == "time.sleep(0.2)  # the blocking line"
    # the stack runs from the coroutine that called it (outermost) to the blocking line
    assert [line.split(": ")[0].rsplit(" in ", 1)[1] for line in seen.block.stack] == [
        "blocks", "blocking_call"]


def test_a_blocking_library_call_is_named_by_the_line_that_made_it() -> None:
    def call_out() -> None:
        subprocess.run(["sleep", "0.2"], check=True)  # the caller's line

    async def main() -> None:
        await asyncio.sleep(0)
        call_out()

    watch = LoopWatch(0.05)
    with watch:
        asyncio.run(main())
    block = watch.result.block
    assert block is not None
    assert block.site.endswith(f"{HERE}:{call_out.__code__.co_firstlineno + 1} in call_out")
    # the caller's frames, then the library call it made and where it waited, in between cut
    assert [line.split(": ")[0].rsplit(" in ", 1)[1] for line in block.stack[:3]] == [
        "main", "call_out", "run"]
    assert block.stack[3].startswith("... ") and block.stack[3].endswith(" more")
    assert "subprocess.py" in block.stack[-1]


def test_a_coroutine_that_awaits_does_not_block() -> None:
    watch = LoopWatch(0.05)
    with watch:
        asyncio.run(awaits())
    seen = watch.result
    assert seen.runner == "asyncio"
    assert seen.longest < 0.05
    assert seen.block is None
    assert seen.beats >= 5  # the heartbeat kept running all along


def test_a_block_in_the_first_step_is_caught_from_the_first_heartbeat() -> None:
    async def only_blocks() -> None:
        time.sleep(0.2)

    watch = LoopWatch(0.05)
    with watch:
        asyncio.run(only_blocks())
    # the first heartbeat is queued from the loop thread before the first step runs
    assert watch.result.longest >= 0.18
    assert watch.result.block is not None
    assert watch.result.block.source == "time.sleep(0.2)"


def test_trio() -> None:
    async def trio_blocks() -> None:
        await trio.sleep(0.01)
        blocking_call()

    watch = LoopWatch(0.05)
    with watch:
        trio.run(trio_blocks)
    assert watch.result.runner == "trio"
    assert watch.result.longest >= 0.15
    assert watch.result.block is not None
    assert watch.result.block.site.endswith(f"{HERE}:{BLOCKING_LINE} in blocking_call")

    watch = LoopWatch(0.05)
    with watch:
        trio.run(trio.sleep, 0.2)
    assert watch.result.runner == "trio"
    assert watch.result.longest < 0.05


def test_no_loop_is_said_not_passed() -> None:
    watch = LoopWatch(0.05)
    with watch:
        time.sleep(0.01)
    assert watch.result.runner is None
    assert watch.result.note == "no event loop ran on the test's thread"


def test_a_loop_on_another_thread_stops_the_search_after_a_while(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The profile hook slows every Python call several times over while it looks: it must
    # not stay for a whole test whose loop runs elsewhere (its latency is judged too).
    from perfkit.measure import loopwatch

    monkeypatch.setattr(loopwatch, "_FIND_FOR", 0.05)
    elsewhere = threading.Thread(target=lambda: asyncio.run(asyncio.sleep(0.01)))
    watch = LoopWatch(0.05)
    with watch:
        elsewhere.start()
        elsewhere.join()
        time.sleep(0.1)
        blocking_call.__name__  # noqa: B018 (any Python call)
        awaits().close()
        hooked_after = sys.getprofile()
    assert hooked_after is None
    assert watch.result.runner is None
    assert watch.result.note == ("no event loop started on the test's thread within 0.05 s "
                                 "of the call (one in another thread is not watched)")


def test_a_trio_still_being_imported_does_not_break_the_import(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A runner that imports trio for its first test does so under the hook: trio is in
    # sys.modules before trio.lowlevel exists. The hook must not raise into that import.
    import types

    monkeypatch.setitem(sys.modules, "trio", types.ModuleType("trio"))  # partly initialised
    watch = LoopWatch(0.05)
    with watch:
        blocking_call.__name__  # noqa: B018
        awaits().close()  # Python calls while trio is half there
        asyncio.run(blocks())
    assert watch.result.runner == "asyncio"
    assert watch.result.longest >= 0.15


def test_a_stopped_loop_is_not_a_blocked_loop_and_its_heartbeat_is_withdrawn() -> None:
    loop = asyncio.new_event_loop()
    try:
        watch = LoopWatch(0.05)
        with watch:
            loop.run_until_complete(asyncio.sleep(0.03))
            time.sleep(0.15)  # the loop is not running: a heartbeat waits, nothing blocks it
        assert watch.result.runner == "asyncio"
        assert watch.result.longest < 0.05
        # a loop used again later (a module-scoped test loop) finds no live heartbeat of ours
        pending = [*loop._ready, *loop._scheduled]  # type: ignore[attr-defined]
        assert pending and all(handle.cancelled() for handle in pending)
    finally:
        loop.close()


def test_a_python_profile_function_keeps_its_events_and_is_restored() -> None:
    events: list[tuple[str, str]] = []

    def profiler(frame: FrameType, event: str, arg: object) -> None:
        events.append((event, frame.f_code.co_name))

    sys.setprofile(profiler)
    try:
        watch = LoopWatch(0.05)
        with watch:
            asyncio.run(blocks())
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    assert watch.result.longest >= 0.15
    # called through the watch's hook before the loop ran, and directly again after
    assert ("call", "_lazy_init") in events  # asyncio.Runner, before the loop runs
    assert ("call", "blocking_call") in events


def test_a_c_profiler_is_left_alone_and_the_watch_says_so() -> None:
    profile = cProfile.Profile()
    profile.enable()
    try:
        watch = LoopWatch(0.05)
        with watch:
            asyncio.run(awaits())
        assert sys.getprofile() is profile
    finally:
        profile.disable()
    assert watch.result.runner is None
    assert "another profiler is installed (Profile)" in watch.result.note


@pytest.mark.parametrize("bad", [0, -0.01, float("nan")])
def test_threshold_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold: must be > 0"):
        LoopWatch(bad)


def test_what_the_watchdog_remembers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from perfkit.measure import loopwatch

    monkeypatch.setattr(loopwatch, "_MAX_LATE", 4)

    async def many_blocks() -> None:
        for _ in range(12):
            time.sleep(0.03)
            await asyncio.sleep(0.005)
        blocking_call()  # the longest, past the bound: still measured and named

    watch = LoopWatch(0.02)
    with watch:
        asyncio.run(many_blocks())
    assert len(watch._episodes) <= 2 * 4
    assert len(watch._late) <= 4
    assert watch.result.longest >= 0.15
