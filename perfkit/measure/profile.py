"""Why a call was slow: run it once under ``cProfile`` and keep the top functions.

The profiled run is a separate pass that is never judged (a deterministic profiler slows
Python code several times over); it only says *where* the time went. Results are plain
data so they can travel on a test report and into a JSON file.

Frames of the machinery that runs the call (pytest, pluggy, perfkit's plugin, the
profiler itself) are dropped: they wrap everything and say nothing. Library frames are
kept, since the time often is in a library, but every function is marked ``user`` when
its file is neither in the interpreter's library directories nor in perfkit, so the
caller's own code can be found among them.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from perfkit._paths import PERFKIT_DIR, PLUGIN_DIR, install_roots, loaded_dirs, short_path
from perfkit.measure.units import format_duration

__all__ = ["ProfileEntry", "ProfileResult", "profile_call"]

def _plumbing() -> tuple[str, ...]:
    return (PLUGIN_DIR, *loaded_dirs("_pytest", "pluggy", "pytest_asyncio"))


def _library() -> tuple[str, ...]:
    return (*install_roots(), PERFKIT_DIR)


@dataclass(frozen=True)
class ProfileEntry:
    """One function: where it is, its own time, its cumulative time and its calls."""

    location: str  # "path/to/file.py:12", or "~" for a built-in
    function: str
    own: float
    cumulative: float
    calls: int
    user: bool  # not in the standard library, an installed package or perfkit

    def line(self) -> str:
        where = "" if self.location == "~" else f"{self.location} "
        mark = "  <- test code" if self.user else ""
        return (f"{format_duration(self.own):>8} own {format_duration(self.cumulative):>8} "
                f"cum {self.calls:>6}x  {where}{self.function}{mark}")

    def as_dict(self) -> dict[str, Any]:
        return {"location": self.location, "function": self.function, "own": self.own,
                "cumulative": self.cumulative, "calls": self.calls, "user": self.user}


@dataclass
class ProfileResult:
    """The top functions of one profiled run; ``error`` when the run raised or could not
    be profiled (then the lists may be empty)."""

    seconds: float = 0.0
    by_own: list[ProfileEntry] = field(default_factory=list)
    by_cumulative: list[ProfileEntry] = field(default_factory=list)
    user: list[ProfileEntry] = field(default_factory=list)
    error: str = ""

    def lines(self) -> list[str]:
        """Readable lines: top by own time, top by cumulative time, and the caller's own
        code when neither list shows any."""
        if not self.by_own and self.error:
            return [f"profile: not taken ({self.error})"]
        head = (f"profile of a separate run under cProfile (not judged; "
                f"{format_duration(self.seconds)} profiled)")
        if self.error:
            head += f"; that run raised {self.error}"
        lines = [head + ":", "  top by own time:"]
        lines.extend("    " + entry.line() for entry in self.by_own)
        lines.append("  top by cumulative time:")
        lines.extend("    " + entry.line() for entry in self.by_cumulative)
        shown = {(e.location, e.function) for e in (*self.by_own, *self.by_cumulative)}
        missing = [e for e in self.user if (e.location, e.function) not in shown]
        if missing and not any(e.user for e in (*self.by_own, *self.by_cumulative)):
            lines.append("  test code:")
            lines.extend("    " + entry.line() for entry in missing)
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "error": self.error,
                "by_own": [e.as_dict() for e in self.by_own],
                "by_cumulative": [e.as_dict() for e in self.by_cumulative],
                "user": [e.as_dict() for e in self.user]}


def _entries(stats: pstats.Stats, root: str, exclude: tuple[str, ...]) -> list[ProfileEntry]:
    plumbing = _plumbing() + exclude
    library = _library()
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]

    def user_code(filename: str) -> bool:
        return filename != "~" and not filename.startswith(("<", *library, *plumbing))

    # The machinery, and whatever (not user code) only the machinery called: pluggy's
    # next()/send(), a plugin's inspect or pathlib calls around the test.
    dropped = {key for key in raw if key[0].startswith(plumbing) or "_lsprof.Profiler" in key[2]}
    changed = True
    while changed:
        changed = False
        for key, (*_, callers) in raw.items():
            if key not in dropped and not user_code(key[0]) and callers \
                    and all(caller in dropped for caller in callers):
                dropped.add(key)
                changed = True
    entries = []
    for key, (_, calls, own, cumulative, _) in raw.items():
        if key in dropped:
            continue
        filename, line, name = key
        location = "~" if filename == "~" else f"{short_path(filename, root)}:{line}"
        entries.append(ProfileEntry(location, name, own, cumulative, calls,
                                    user_code(filename)))
    return entries


def _top(entries: Iterable[ProfileEntry], key: Callable[[ProfileEntry], float],
         n: int) -> list[ProfileEntry]:
    return sorted(entries, key=lambda e: (-key(e), e.location, e.function))[:n]


def profile_call(fn: Callable[[], object], *, top: int = 5, root: str = "",
                 exclude: Iterable[str] = ()) -> ProfileResult:
    """Run ``fn()`` once under ``cProfile``; keep the ``top`` functions by own and by
    cumulative time, and the ``top`` functions of the caller's own code by cumulative time.

    ``root``: paths under it are shown relative to it. ``exclude``: files (or directory
    prefixes) of machinery to leave out, besides pytest's and pluggy's. An exception from
    ``fn`` is not raised: it is the result's ``error`` (the profile up to it is kept).
    Another profiler already running makes ``cProfile`` refuse (Python 3.12+): an
    ``error`` too.
    """
    if sys.getprofile() is not None:  # before 3.12 cProfile would silently replace it
        return ProfileResult(error="another profiler is active (sys.setprofile)")
    profiler = cProfile.Profile()
    error = ""
    started = time.perf_counter()
    try:
        profiler.enable()
    except ValueError as exc:  # another profiler is active
        return ProfileResult(error=f"cProfile could not start: {exc}")
    try:
        fn()
    except BaseException as exc:  # a failed or skipped run still says where time went
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            profiler.disable()
            raise
        error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        profiler.disable()
    seconds = time.perf_counter() - started
    try:
        stats = pstats.Stats(profiler)
    except TypeError:  # no function ran under the profiler at all
        return ProfileResult(seconds=seconds, error=error or "nothing was profiled")
    entries = _entries(stats, root, tuple(exclude))
    return ProfileResult(
        seconds=seconds,
        by_own=_top(entries, lambda e: e.own, top),
        by_cumulative=_top(entries, lambda e: e.cumulative, top),
        user=_top([e for e in entries if e.user], lambda e: e.cumulative, top),
        error=error,
    )
