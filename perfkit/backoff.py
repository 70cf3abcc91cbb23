"""Backoff strategies for :func:`perfkit.retry`: small, composable, deterministic when seeded.

A strategy answers one question: after retry number ``n`` (1 for the first retry), having
waited ``previous`` seconds last time, how long should we wait now? Strategies hold no
per-call state, so one instance can serve every call of every function at once.

- :class:`Exponential` (the default, with full jitter): ``uniform(0, min(cap, base * 2**(n-1)))``.
  Full jitter spreads clients out even at the cap, so a fleet that failed together does not
  come back together (unlike schemes that saturate to the cap itself).
- :class:`DecorrelatedJitter`: ``min(cap, uniform(base, previous * 3))`` (AWS architecture
  blog), grows like exponential but each client follows its own random walk.
- :class:`Constant`: the same delay every time (``jitter=`` adds up to that many seconds).

Compose with ``+`` (waits add up: ``Constant(0.5) + Exponential()``) and cap anything with
``.capped(seconds)``. ``rng=`` takes a :class:`random.Random` for reproducible schedules.
"""

from __future__ import annotations

import math
import random
from typing import Literal

__all__ = ["Backoff", "Constant", "DecorrelatedJitter", "Exponential", "Jitter"]

Jitter = Literal["full", "equal", "none"]
_JITTERS = ("full", "equal", "none")


def _check_seconds(name: str, value: float, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0) or value == math.inf:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound} seconds, got {value!r}")
    return float(value)


class Backoff:
    """Base class: subclasses implement :meth:`delay`; ``cap`` bounds every delay."""

    cap: float

    def delay(self, retry: int, previous: float) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        raise NotImplementedError

    def __add__(self, other: Backoff) -> Backoff:
        if not isinstance(other, Backoff):
            return NotImplemented
        return _Sum(self, other)

    def capped(self, cap: float) -> Backoff:
        """The same schedule, never longer than ``cap`` seconds."""
        return _Capped(self, _check_seconds("cap", cap))


class Exponential(Backoff):
    """Exponential growth from ``base`` to ``cap`` with ``jitter`` full (default), equal or none."""

    def __init__(
        self,
        base: float = 0.1,
        cap: float = 10.0,
        *,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        self.base = _check_seconds("base", base, positive=True)
        self.cap = _check_seconds("cap", cap)
        if self.cap < self.base:
            raise ValueError(f"cap ({cap!r}) must be >= base ({base!r})")
        if jitter not in _JITTERS:
            raise ValueError(f"jitter must be one of {_JITTERS}, got {jitter!r}")
        self.jitter = jitter
        self._random = (rng or random.Random()).random

    def delay(self, retry: int, previous: float) -> float:
        # min() before the power keeps huge retry numbers from overflowing.
        ceiling = min(self.cap, self.base * 2.0 ** min(retry - 1, 1000))
        if self.jitter == "full":
            return self._random() * ceiling
        if self.jitter == "equal":
            return ceiling / 2 + self._random() * ceiling / 2
        return ceiling

    def __repr__(self) -> str:
        return f"Exponential(base={self.base}, cap={self.cap}, jitter={self.jitter!r})"


class DecorrelatedJitter(Backoff):
    """``min(cap, uniform(base, 3 * previous))``: each caller's waits follow their own path."""

    def __init__(
        self, base: float = 0.1, cap: float = 10.0, *, rng: random.Random | None = None
    ) -> None:
        self.base = _check_seconds("base", base, positive=True)
        self.cap = _check_seconds("cap", cap)
        if self.cap < self.base:
            raise ValueError(f"cap ({cap!r}) must be >= base ({base!r})")
        self._uniform = (rng or random.Random()).uniform

    def delay(self, retry: int, previous: float) -> float:
        high = max(self.base, previous * 3.0)
        return min(self.cap, self._uniform(self.base, high))

    def __repr__(self) -> str:
        return f"DecorrelatedJitter(base={self.base}, cap={self.cap})"


class Constant(Backoff):
    """``delay`` seconds every time, plus ``uniform(0, jitter)`` when ``jitter`` > 0."""

    def __init__(
        self, delay: float = 1.0, *, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.seconds = _check_seconds("delay", delay)
        self.spread = _check_seconds("jitter", jitter)
        self.cap = self.seconds + self.spread
        self._random = (rng or random.Random()).random

    def delay(self, retry: int, previous: float) -> float:
        if self.spread:
            return self.seconds + self._random() * self.spread
        return self.seconds

    def __repr__(self) -> str:
        return f"Constant({self.seconds}, jitter={self.spread})"


class _Sum(Backoff):
    def __init__(self, first: Backoff, second: Backoff) -> None:
        self.first, self.second = first, second
        self.cap = first.cap + second.cap

    def delay(self, retry: int, previous: float) -> float:
        return self.first.delay(retry, previous) + self.second.delay(retry, previous)

    def __repr__(self) -> str:
        return f"{self.first!r} + {self.second!r}"


class _Capped(Backoff):
    def __init__(self, inner: Backoff, cap: float) -> None:
        self.inner = inner
        self.cap = min(cap, inner.cap)

    def delay(self, retry: int, previous: float) -> float:
        return min(self.cap, self.inner.delay(retry, previous))

    def __repr__(self) -> str:
        return f"{self.inner!r}.capped({self.cap})"
