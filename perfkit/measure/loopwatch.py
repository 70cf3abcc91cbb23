"""How long an event loop was blocked: a watchdog thread and a heartbeat on the loop.

A coroutine that calls ``time.sleep``, a blocking driver or a long computation stops every
other task on its loop for that long. :class:`LoopWatch` measures the longest such stop
during a block of code that runs an event loop (asyncio, uvloop, or trio), and names the
code that held the loop.

**Finding the loop.** The loop that runs an async test is created or entered by whichever
plugin runs it (pytest-asyncio's runner, anyio's test runner, pytest-trio), from inside the
block, so it is not known when the block starts. On entry, :class:`LoopWatch` sets a profile
function on *its own thread only* (``sys.setprofile``), which on each Python function call
asks "is an event loop running on this thread?" (``asyncio._get_running_loop()``, a C
lookup; for trio ``trio.lowlevel.in_trio_run()``). The first call made inside the running
loop answers yes: the function removes itself at once (restoring any profile function that
was set before, which it calls in the meantime), schedules the first heartbeat from the loop
thread and wakes the watchdog. So the hook lives only for the few dozen calls
between entering the block and the loop's first step; nothing global is patched, no other
thread is touched, and a loop running in another thread is not seen (the result then says
no loop was seen; the hook stops looking after ``_FIND_FOR`` = 1 s, since every Python call
on the thread runs several times slower under it). If a profile function that cannot be
chained is already set (a C-level profiler such as cProfile or memray), the watch does not
start and says so.

**Heartbeats.** Once found, the loop runs a tiny heartbeat callback of its own every
``interval`` (threshold / 10, 1 ms to 10 ms): ``loop.call_later`` on asyncio, a system task
sleeping ``interval`` on trio. Each heartbeat notes how late it ran against when it was due.
An idle loop runs it on time (within its timer's resolution, ~1 ms); a loop stuck in one
callback or task step runs it only when that step returns, so how late it ran is how long
the loop was blocked, measured short by at most ``interval``. The first heartbeat is due
the moment the loop is found, so a block in the test's first step counts from its start.

**The watchdog thread** (started on entry, idle until a loop is found) looks every
``threshold / 4`` (2.5 ms at least) at when the next heartbeat was due; only while one is
overdue by more than that does it sample the loop thread's stack
(``sys._current_frames()``), every ``interval`` until the heartbeat runs. It never calls
into the loop. (A first version sent the heartbeats from the watchdog with
``call_soon_threadsafe`` every 5 ms; taking the GIL that often slowed CPU-bound async code by
6-22 % on a loaded 2-core VM, see ``benchmarks/bench_loopwatch.py``.)

**Naming the code.** The frames inside the loop's callback dispatch (asyncio's
``Handle._run``, trio's run loop) are the blocking code; the site is the innermost of them
outside the standard library, site-packages and perfkit (the test's own line when it calls
``time.sleep``). The stack kept is the first one sampled after the heartbeat passed the
threshold. A late heartbeat whose samples all show the loop idle (waiting in its selector)
was delayed by the machine, not by code: it is reported apart (``outside``), not as a
block. A heartbeat still overdue when the watch stops (the loop stopped first) counts up to
the last sample that showed code blocking the loop.

**Costs and limits.** Measured in ``docs/benchmarks.md``. The loop thread runs one heartbeat
(a few microseconds) per ``interval``; the watchdog takes the GIL every ``threshold / 4``;
the profile function costs a few microseconds before the loop's first step. Code that holds
the GIL throughout (a C call that does not release it) is timed correctly, since the
heartbeat cannot run either, but its stack can only be sampled after it returned, so the
site may name the code after it or be missing. The asyncio heartbeat is cancelled on exit;
trio's system task ends at its next wake-up (a trio run that outlives the block, like
anyio's test runner, runs it once more, as a no-op).
"""

from __future__ import annotations

import asyncio
import heapq
import linecache
import os
import selectors
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

from perfkit._paths import PERFKIT_DIR, PLUGIN_DIR, install_roots, loaded_dirs

__all__ = ["LoopBlock", "LoopReport", "LoopWatch"]

_running_asyncio_loop = asyncio.events._get_running_loop
_perf_counter = time.perf_counter
#: Frames kept for a blocking stack (innermost ones).
_MAX_FRAMES = 8
#: Late heartbeats remembered, the longest ones (each is one block; a test with more is
#: broken anyway, but the longest block must still be the one judged).
_MAX_LATE = 1000
#: Seconds the profile hook looks for a loop: a runner starts its loop at once, and while it
#: looks every Python call on the thread runs several times slower (x7 measured).
_FIND_FOR = 1.0


@dataclass(frozen=True)
class LoopBlock:
    """The code that held the loop: ``site`` is ``path:line in function``."""

    seconds: float
    site: str
    source: str
    stack: tuple[str, ...] = ()  # "path:line in function: source", outermost first


@dataclass
class LoopReport:
    """What a :class:`LoopWatch` saw.

    ``runner`` is ``"asyncio"`` or ``"trio"``, or ``None`` when no loop ran on the watched
    thread (``note`` says why). ``longest`` is the latest heartbeat in seconds (the longest
    block), ``block`` the code sampled during it (``None`` when it stayed under half the
    threshold, or when no sample caught it), ``outside`` the latest heartbeat that was
    delayed while the loop sat idle (the machine, not the code), ``beats`` how many
    heartbeats ran.
    """

    runner: str | None = None
    longest: float = 0.0
    block: LoopBlock | None = None
    outside: float = 0.0
    beats: int = 0
    interval: float = 0.0
    note: str = ""


@dataclass
class _Sample:
    at: float
    frames: list[tuple[str, int, str]] = field(default_factory=list)  # innermost first
    blocked: bool = False


def _trio_token() -> Any:
    """The running trio run's token on this thread, or ``None`` (also without trio)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return None
    # Attributes, not imports: this runs under the profile hook, also while trio itself is
    # being imported (in sys.modules, lowlevel not there yet): no run then.
    lowlevel = getattr(trio, "lowlevel", None)
    in_run = getattr(lowlevel, "in_trio_run", None)  # trio >= 0.26
    current = getattr(lowlevel, "current_trio_token", None)
    if current is None or (in_run is not None and not in_run()):
        return None
    try:
        return current()
    except RuntimeError:
        return None


def _runtime_dirs() -> tuple[str, ...]:
    """Files of the loops themselves: frames there are dispatching, not blocking."""
    return (os.path.dirname(asyncio.__file__) + os.sep, selectors.__file__,
            *loaded_dirs("trio", "uvloop"))


def _library_roots() -> tuple[str, ...]:
    return (*install_roots(), PERFKIT_DIR, PLUGIN_DIR, "<frozen")


def _short(path: str) -> str:
    for root in install_roots():  # the standard library and site-packages: by module path
        if path.startswith(root):
            return path[len(root):].lstrip(os.sep)
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if relative.startswith(os.pardir) else relative


def _describe(frame: tuple[str, int, str]) -> str:
    path, line, name = frame
    return f"{_short(path)}:{line} in {name}"


class LoopWatch:
    """Measure the longest event-loop block inside a ``with`` block; see the module doc.

    ``threshold`` (seconds, > 0) is the block that matters: stacks are sampled only while a
    heartbeat is later than a quarter of it. The result is in ``.result`` after the block.
    Enter and exit it on the thread that will run the loop, while the loop is not running.
    """

    def __init__(self, threshold: float, *, interval: float | None = None) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold: must be > 0 seconds, got {threshold!r}")
        if interval is None:
            interval = min(0.01, max(0.001, threshold / 10))
        if not interval > 0:
            raise ValueError(f"interval: must be > 0 seconds, got {interval!r}")
        self.threshold = threshold
        self.interval = interval
        #: The watchdog looks this often (not more than 400 times a second: each look takes
        #: the GIL); a heartbeat later than this is "late".
        self.check = max(threshold / 4, 0.0025)
        self.result = LoopReport(interval=interval)
        self._previous: Any = None
        self._give_up = 0.0
        self._finder: Callable[[FrameType, str, Any], None] | None = None
        self._found = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop_thread = 0
        self._runtime: tuple[str, ...] = ()
        # Written on the loop thread by the heartbeat, read by the watchdog (under the GIL).
        self._due = 0.0
        self._beats = 0
        self._on_time = 0.0  # the latest heartbeat no later than ``check``
        self._late: list[tuple[float, float, float]] = []  # heap of (lag, due, ran)
        self._handle: Any = None  # asyncio: the next heartbeat's TimerHandle
        self._later: Callable[..., Any] | None = None
        # Written by the watchdog: what it saw while a heartbeat was late, by its due time.
        self._episodes: dict[float, _Episode] = {}

    # --- on the watched thread ---

    def __enter__(self) -> LoopWatch:
        previous = sys.getprofile()
        if previous is not None and not isinstance(previous, (types.FunctionType,
                                                               types.MethodType)):
            self.result.note = (f"another profiler is installed ({type(previous).__name__}); "
                                "the loop watch needs the profile hook for a moment")
            return self
        self._previous = previous
        install_roots()  # cached: sysconfig costs ~0.1 ms, not to be paid inside the block
        self._loop_thread = threading.get_ident()
        self._thread = threading.Thread(target=self._watch, name="perfkit-loopwatch",
                                        daemon=True)
        self._thread.start()
        self._finder = self._find if previous is None else self._find_chained
        self._give_up = _perf_counter() + _FIND_FOR
        sys.setprofile(self._finder)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._unhook()
        self._stopping = True
        self._found.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._handle is not None:
            self._handle.cancel()  # asyncio: a loop run again later finds no heartbeat of ours
            self._handle = None
        self._later = None
        if self.result.runner is None:
            if not self.result.note:
                self.result.note = "no event loop ran on the test's thread"
            return
        self._report()

    def _unhook(self) -> None:
        if self._finder is not None and sys.getprofile() is self._finder:
            sys.setprofile(self._previous)
        self._finder = None

    def _find_chained(self, frame: FrameType, event: str, arg: Any) -> None:
        self._previous(frame, event, arg)
        self._find(frame, event, arg)

    def _find(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        try:
            loop = _running_asyncio_loop()
            if loop is not None:
                self._begin("asyncio")
                self._later = loop.call_later
                self._handle = loop.call_soon(self._beat)
                return
            token = _trio_token()
            if token is not None:
                self._begin("trio")
                token.run_sync_soon(self._start_trio)
            elif _perf_counter() > self._give_up:
                self._unhook()
                self.result.note = (f"no event loop started on the test's thread within "
                                    f"{_FIND_FOR:g} s of the call (one in another thread is "
                                    "not watched)")
        except Exception as exc:  # raised here, it would come out of whatever code was called
            self._unhook()
            self.result.runner = None
            self.result.note = f"the loop watch could not start: {exc!r}"[:200]

    def _begin(self, runner: str) -> None:
        self._unhook()
        self.result.runner = runner
        # The first heartbeat is due now: it runs after the first step, so a block there
        # counts from the start.
        self._due = _perf_counter()
        self._found.set()

    # --- heartbeats, on the loop thread ---

    def _beat(self) -> None:
        now = _perf_counter()
        self._record(now)
        if not self._stopping and self._later is not None:
            self._due = now + self.interval
            self._handle = self._later(self.interval, self._beat)

    def _record(self, now: float) -> None:
        self._beats += 1
        lag = now - self._due
        if lag <= self.check:
            if lag > self._on_time:
                self._on_time = lag
        elif len(self._late) < _MAX_LATE:
            heapq.heappush(self._late, (lag, self._due, now))
        elif lag > self._late[0][0]:  # full: the shortest goes
            heapq.heapreplace(self._late, (lag, self._due, now))

    def _start_trio(self) -> None:
        trio = sys.modules["trio"]
        if not self._stopping:
            trio.lowlevel.spawn_system_task(self._trio_beats, name="perfkit-loopwatch")

    async def _trio_beats(self) -> None:
        trio = sys.modules["trio"]
        while not self._stopping:  # the first heartbeat was due when the loop was found
            self._record(_perf_counter())
            self._due = _perf_counter() + self.interval
            await trio.sleep(self.interval)

    # --- on the watchdog thread ---

    def _watch(self) -> None:
        self._found.wait()
        if self._stopping:
            return
        self._runtime = _runtime_dirs()
        while not self._wake.wait(self.check):
            due = self._due
            if _perf_counter() - due <= self.check:
                continue
            if due not in self._episodes and len(self._episodes) >= 2 * _MAX_LATE:
                self._forget()
            episode = self._episodes.setdefault(due, _Episode())
            while self._due == due and not self._stopping:
                sample = self._sample()
                if self._due != due:  # it ran before we looked: the sample shows later code
                    break
                episode.add(sample, due + self.threshold)
                if self._wake.wait(self.interval):
                    break

    def _forget(self) -> None:
        """Drop what was seen of late heartbeats no longer remembered (see ``_record``)."""
        due = self._due  # before the heap: a heartbeat joins it before it moves ``_due``
        kept = {due, *(late_due for _, late_due, _ in list(self._late))}
        for old in [d for d in self._episodes if d not in kept]:
            del self._episodes[old]

    def _sample(self) -> _Sample:
        now = _perf_counter()
        frame = sys._current_frames().get(self._loop_thread)
        frames: list[tuple[str, int, str]] = []
        inside_loop = False
        while frame is not None:
            code = frame.f_code
            if code.co_filename.startswith(self._runtime):
                inside_loop = True
                break
            frames.append((code.co_filename, frame.f_lineno, code.co_name))
            frame = frame.f_back
        del frame
        # Frames inside the loop's dispatch are the callback's; none means the loop is idle
        # (or, with no loop frame at all, the loop is not running on that thread now).
        return _Sample(now, frames if inside_loop else [], inside_loop and bool(frames))

    # --- after the block ---

    def _report(self) -> None:
        result = self.result
        result.beats = self._beats
        result.longest = self._on_time
        roots = _library_roots()
        late = [(due, ran) for _, due, ran in self._late]
        ran = {due for due, _ in late}
        pending = self._episodes.get(self._due)
        if self._due not in ran and pending is not None and pending.last_blocked:
            # The loop stopped while this heartbeat was late: blocked at least this long.
            late.append((self._due, pending.last_blocked))
        for due, at in late:
            lag = at - due
            episode = self._episodes.get(due)
            if episode is not None and episode.samples and not episode.blocked:
                result.outside = max(result.outside, lag)  # idle every time we looked
            elif lag > result.longest:
                result.longest = lag
                chosen = episode.chosen if episode is not None else None
                result.block = _block(lag, chosen.frames, roots) if chosen else None


@dataclass
class _Episode:
    """What the watchdog saw while one heartbeat was late."""

    samples: int = 0
    blocked: int = 0
    last_blocked: float = 0.0
    chosen: _Sample | None = None  # the first blocked sample past the threshold, else the last

    def add(self, sample: _Sample, threshold_at: float) -> None:
        self.samples += 1
        if not sample.blocked:
            return
        self.blocked += 1
        self.last_blocked = sample.at
        if self.chosen is None or self.chosen.at < threshold_at:
            self.chosen = sample


def _block(lag: float, frames: list[tuple[str, int, str]], roots: tuple[str, ...]) -> LoopBlock:
    """``frames`` innermost first. The stack shown: the caller's own frames out to the
    outermost of them (library frames outside those, a test runner's task, are noise), then
    the library call the site made and the innermost frame, where it waited."""
    own = [index for index, f in enumerate(frames) if not f[0].startswith(roots)]
    at = own[0] if own else 0
    shown = [_line(f) for f in reversed(frames[at:(own[-1] if own else 0) + 1])][-_MAX_FRAMES:]
    if at >= 1:
        shown.append(_line(frames[at - 1]))
    if at >= 3:
        shown.append(f"... {at - 2} more")
    if at >= 2:
        shown.append(_line(frames[0]))
    site = frames[at]
    return LoopBlock(lag, _describe(site), linecache.getline(site[0], site[1]).strip(),
                     tuple(shown))


def _line(frame: tuple[str, int, str]) -> str:
    return f"{_describe(frame)}: {linecache.getline(frame[0], frame[1]).strip()}"
