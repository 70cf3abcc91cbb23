"""One place where perfkit's decorators build their ``wrapt`` wrappers.

Why not plain ``wrapt.FunctionWrapper(func, wrapper)``: when a wrapper around a plain function
is called, wrapt's C code asks the function for ``__self__`` (to find a bound instance). A
function has none, so CPython builds and discards an ``AttributeError`` on *every call*:
about 0.5 µs, more than everything else a retry or timing wrapper does on its success path.
Giving the function a ``__self__`` of ``None`` (what ``getattr(f, "__self__", None)`` answers
anyway) takes wrapt's fast path. Only plain Python functions are touched; their binding as
methods is unaffected (a bound method carries its own ``__self__``).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import wrapt

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def wrap(func: Any, wrapper: Wrapper) -> Any:
    """``wrapt.FunctionWrapper(func, wrapper)``, without wrapt's per-call AttributeError."""
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if isinstance(target, types.FunctionType) and "__self__" not in target.__dict__:
        try:
            target.__self__ = None  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # pragma: no cover - exotic function objects
            pass
    return wrapt.FunctionWrapper(func, wrapper)


def decoratable(func: Any, decorator: str, instead: str) -> Any:
    """The function behind ``func`` (unwrapping class/static methods), or a clear TypeError.

    Generators are refused: wrapping one would only wrap the creation of the generator
    object, never the work done while it is consumed. ``instead`` says what to do.
    """
    target = func.__func__ if isinstance(func, (classmethod, staticmethod)) else func
    if not callable(target):
        raise TypeError(f"{decorator} decorates functions, got {func!r}")
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        name = getattr(target, "__qualname__", repr(target))
        raise TypeError(f"{decorator} cannot wrap the generator function {name}: {instead}")
    return target
