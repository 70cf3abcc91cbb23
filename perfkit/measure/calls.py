"""How many function calls a block of code makes: a deterministic stand-in for its speed.

Wall and CPU time move with the machine; the number of calls a piece of code makes does
not. Run the same code twice on the same Python and it makes the same calls, so a budget on
that number never fails at random (SQLAlchemy's test suite gates on it the same way).

:class:`CallCounter` counts, in the thread that enters it and only there (a profile hook is
per thread), two kinds of calls separately:

* **Python calls**: every start of a Python function (the profile hook's ``call`` event),
  including each resumption of a generator or coroutine;
* **C calls**: every built-in or C-extension function called *from Python code*
  (``c_call``: ``len``, ``list.append``, ``time.sleep``); what C code calls internally is
  not seen.

The hook runs Python code at every call, which slows what it watches several times over:
count in a run of its own, never in a timed one. The cyclic collector is paused while
counting, because *when* it runs depends on what was allocated before the block, and the
finalizers and callbacks it runs would otherwise land in the count at random.

A call is counted when the code that made it is counted, or, for a call from code that is
not (the block's caller, or ``around`` code), when the called function is not ``around``
code itself. So ``around`` (pytest, pluggy, the event loop: the machinery that runs the
code being measured) costs nothing, while what the measured code calls in the same
libraries is counted. ``exclude`` code (by default perfkit's own measuring code and pytest
plugin, whose benchmark rounds depend on time, and perfkit's SQLAlchemy listeners, which do
more work while a query tracker records than while none does) is not counted, nor is
anything it calls.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass, field
from types import CodeType, FrameType, TracebackType
from typing import Any

from perfkit._paths import PERFKIT_DIR, PLUGIN_DIR, short_path

__all__ = ["CallCount", "CallCounter", "FunctionCalls"]

MEASURE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: perfkit.sql's listeners (one set for every query tracker and SQL monitor in the process).
SQL_LISTENERS = os.path.join(PERFKIT_DIR, "sql", "tracker.py")
_THIS_FILE = os.path.abspath(__file__)

# Where a frame stands; a frame's state follows from its caller's and its own file.
_OUTSIDE, _COUNTING, _EXCLUDED = 0, 1, 2
# Bits of a code object's kind: its file is ``around`` code, or ``exclude`` code.
_AROUND, _EXCLUDE = 1, 2


@dataclass(frozen=True)
class FunctionCalls:
    """One function and how many times it was called: a Python function has a
    ``location`` (``path:line`` of its ``def``), a C function an empty one."""

    function: str
    location: str
    count: int

    @property
    def builtin(self) -> bool:
        return not self.location

    def line(self) -> str:
        where = "(built-in)" if self.builtin else self.location
        return f"{self.count}x {self.function}  {where}"

    def as_dict(self) -> dict[str, Any]:
        return {"function": self.function, "location": self.location, "count": self.count,
                "builtin": self.builtin}


@dataclass
class CallCount:
    """What a counted block called: totals by kind and the most called functions."""

    python: int = 0
    c: int = 0
    top: list[FunctionCalls] = field(default_factory=list)
    error: str = ""

    @property
    def total(self) -> int:
        return self.python + self.c

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "python": self.python, "c": self.c,
                "top": [entry.as_dict() for entry in self.top], "error": self.error}


class CallCounter:
    """Count the calls made in this thread inside a ``with`` block; the result is ``.result``.

    ``around``: path prefixes of machinery that runs the measured code (calls into it from
    uncounted code are not counted; calls into it from counted code are). ``exclude``: path
    prefixes whose functions, and all they call, are never counted (default: perfkit's
    measuring code, its pytest plugin and its SQLAlchemy listeners). ``top``: how many of
    the most called functions to keep, Python and C together. ``root``: locations under it
    are shown relative to it.

    Entering while another profile function is set raises ``RuntimeError`` (replacing it
    would break the other profiler; cProfile before Python 3.12 is one). If code in the
    block replaces the hook, the count stops there and ``result.error`` says so.
    """

    def __init__(self, *, around: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = (MEASURE_DIR, PLUGIN_DIR, SQL_LISTENERS),
                 top: int = 10, root: str = "", pause_gc: bool = True) -> None:
        if top < 0:
            raise ValueError(f"top: must be >= 0, got {top!r}")
        self.around = tuple(around)
        self.exclude = (*exclude, _THIS_FILE)  # the counter's own exit, whatever is given
        self.top = top
        self.root = root
        self.pause_gc = pause_gc
        self.result = CallCount()
        self._python: dict[CodeType, int] = {}
        self._native: dict[tuple[str | None, str], int] = {}
        self._hook: Any = None
        self._gc_was_enabled = False

    def _make_hook(self) -> Any:
        python, native = self._python, self._native
        around, exclude = self.around, self.exclude
        kinds: dict[CodeType, int] = {}
        stack: list[int] = []  # the state of each frame entered since the block began

        def kind_of(code: CodeType) -> int:
            kind = kinds.get(code)
            if kind is None:
                filename = code.co_filename
                kind = _EXCLUDE if filename.startswith(exclude) else 0
                if kind or filename.startswith(around):
                    kind |= _AROUND
                kinds[code] = kind
            return kind

        def state_of(frame: FrameType | None) -> int:
            """A frame entered before the block: the block's caller or machinery above it."""
            if frame is None or kind_of(frame.f_code):
                return _OUTSIDE
            return _COUNTING

        def hook(frame: FrameType, event: str, arg: Any) -> None:
            if event == "call":
                code = frame.f_code
                kind = kind_of(code)
                parent = stack[-1] if stack else state_of(frame.f_back)
                if parent == _COUNTING:
                    state = _EXCLUDED if kind & _EXCLUDE else _COUNTING
                elif parent == _OUTSIDE:
                    state = _OUTSIDE if kind else _COUNTING
                else:
                    state = _EXCLUDED
                if state == _COUNTING:
                    python[code] = python.get(code, 0) + 1
                stack.append(state)
            elif event == "return":
                if stack:  # a return from a frame entered before the block has no entry
                    stack.pop()
            elif event == "c_call" and (stack[-1] if stack else state_of(frame)) == _COUNTING:
                key = (getattr(arg, "__module__", None),
                       getattr(arg, "__qualname__", None) or repr(arg))
                native[key] = native.get(key, 0) + 1

        return hook

    def __enter__(self) -> CallCounter:
        current = sys.getprofile()
        if current is not None:
            raise RuntimeError(f"another profile function is set ({current!r}); counting "
                               "calls would replace it")
        self.result = CallCount()
        self._python.clear()
        self._native.clear()
        self._gc_was_enabled = gc.isenabled()
        if self.pause_gc:
            gc.disable()
        self._hook = self._make_hook()
        sys.setprofile(self._hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        current = sys.getprofile()
        if current is self._hook:
            sys.setprofile(None)
        else:  # someone else's hook now: theirs to remove
            self.result.error = ("the profile hook was replaced inside the block (another "
                                 "profiler started?); calls after that were not counted")
        self._hook = None
        if self.pause_gc and self._gc_was_enabled:
            gc.enable()
        self.result.python = sum(self._python.values())
        self.result.c = sum(self._native.values())
        entries = [FunctionCalls(getattr(code, "co_qualname", code.co_name),
                                 f"{short_path(code.co_filename, self.root)}:"
                                 f"{code.co_firstlineno}", count)
                   for code, count in self._python.items()]
        entries.extend(FunctionCalls(name if module in (None, "builtins") else
                                     f"{module}.{name}", "", count)
                       for (module, name), count in self._native.items())
        entries.sort(key=lambda e: (-e.count, e.function, e.location))
        self.result.top = entries[:self.top]
        self._python.clear()
        self._native.clear()
