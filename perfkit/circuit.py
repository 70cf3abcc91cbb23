"""``perfkit.CircuitBreaker``: stop calling a dependency that is down, and find out when it is back.

States: **closed** (calls pass; failures are counted), **open** (calls fail fast with
:class:`CircuitOpenError`, which says when the breaker will try again), **half-open** (after
``reset_timeout``, up to ``trial_calls`` trial calls pass; when they all succeed the breaker
closes, when one fails it opens again for another ``reset_timeout``).

It opens on whichever threshold trips first: ``failure_threshold`` consecutive failures, or
(when ``failure_ratio`` is set) a failure ratio over a rolling ``window`` of seconds with at
least ``min_calls`` calls in it. ``failure_on`` says which exceptions count as failures; any
other exception passes through and counts as a success (the dependency answered). Cancellation
(``asyncio.CancelledError``, ``KeyboardInterrupt``, ...) counts as neither.

Use it as a decorator (sync and async functions and methods; a plain function that returns a
coroutine is admitted and counted when the coroutine is awaited), or as a context manager
(``with breaker:`` / ``async with breaker:``). One breaker per dependency, shared by every
function that calls it. Thread- and task-safe: the lock guards a few counters and is never
held while the protected call runs. Time comes from ``clock`` (monotonic by default).

Composing with :func:`perfkit.retry`:

- ``@retry(...)`` above ``@breaker``: every attempt goes through the breaker and counts. Once
  it opens, the attempt fails fast with :class:`CircuitOpenError`; unless ``on=`` names it,
  retrying stops there. If ``on=`` names it, retry waits the breaker's ``retry_after`` (like a
  server's Retry-After, within the cap and the deadline) before trying again.
- ``@breaker`` above ``@retry(...)``: the breaker sees one logical call, counted once after
  the retries are exhausted; while it is open, no attempt (and no retry) is made at all.
  Prefer this order when the upstream is shared by many callers.

Metrics (labelled ``breaker``): ``perfkit_circuit_state`` (0 closed, 1 open, 2 half-open),
``perfkit_circuit_transitions_total`` (also ``to``) and ``perfkit_circuit_calls_total`` (also
``outcome``: success, failure, rejected).
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
import logging
import math
import threading
import time
import types
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

from typing_extensions import ParamSpec

from perfkit._wrapping import decoratable, wrap
from perfkit.metrics import Registry, resolve_registry

__all__ = ["CircuitBreaker", "CircuitOpenError", "State"]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("perfkit.circuit")

State = Literal["closed", "open", "half_open"]
_STATE_VALUE = {"closed": 0, "open": 1, "half_open": 2}
_WINDOW_BUCKETS = 10
_names = itertools.count(1)

#: Admission tokens of ``with breaker:`` blocks, innermost last (per thread and per task).
_ENTERED: contextvars.ContextVar[tuple[tuple[int, bool], ...]] = contextvars.ContextVar(
    "perfkit_circuit_entered", default=()
)


class CircuitOpenError(Exception):
    """Raised instead of calling a dependency whose breaker is open.

    ``retry_after`` is the number of seconds until the breaker lets a trial call through
    (``perfkit.retry`` honours it like a server's ``Retry-After``).
    """

    def __init__(self, name: str, retry_after: float, state: State) -> None:
        self.name = name
        self.retry_after = retry_after
        self.state = state
        super().__init__(
            f"circuit {name!r} is {state.replace('_', '-')}: failing fast; "
            f"next trial call in {retry_after:.3f}s"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.name, self.retry_after, self.state))


ExceptionFilter = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]


class CircuitBreaker:
    """A circuit breaker for one dependency; see the module docstring for the semantics."""

    def __init__(
        self,
        name: str | None = None,
        *,
        failure_threshold: int | None = 5,
        failure_ratio: float | None = None,
        window: float = 60.0,
        min_calls: int = 20,
        reset_timeout: float = 30.0,
        trial_calls: int = 1,
        failure_on: ExceptionFilter = Exception,
        on_state_change: Callable[[CircuitBreaker, State, State], object] | None = None,
        registry: Registry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold is not None and (
            isinstance(failure_threshold, bool)
            or not isinstance(failure_threshold, int)
            or failure_threshold < 1
        ):
            raise ValueError(f"failure_threshold must be an int >= 1 or None, got "
                             f"{failure_threshold!r}")
        if failure_ratio is not None and (
            not isinstance(failure_ratio, (int, float)) or not 0 < failure_ratio <= 1
        ):
            raise ValueError(f"failure_ratio must be in (0, 1] or None, got {failure_ratio!r}")
        if failure_threshold is None and failure_ratio is None:
            raise ValueError("set failure_threshold, failure_ratio, or both")
        _check_positive("window", window)
        _check_positive("reset_timeout", reset_timeout)
        if isinstance(min_calls, bool) or not isinstance(min_calls, int) or min_calls < 1:
            raise ValueError(f"min_calls must be an int >= 1, got {min_calls!r}")
        if isinstance(trial_calls, bool) or not isinstance(trial_calls, int) or trial_calls < 1:
            raise ValueError(f"trial_calls must be an int >= 1, got {trial_calls!r}")
        self._is_failure = _failure_filter(failure_on)
        if on_state_change is not None and not callable(on_state_change):
            raise TypeError(f"on_state_change must be callable, got {on_state_change!r}")
        self.name = name if name is not None else f"circuit-{next(_names)}"
        self.failure_threshold = failure_threshold
        self.failure_ratio = failure_ratio
        self.window = float(window)
        self.min_calls = min_calls
        self.reset_timeout = float(reset_timeout)
        self.trial_calls = trial_calls
        self.on_state_change = on_state_change
        self._clock = clock
        self._lock = threading.Lock()
        # -- state, guarded by _lock (read without it on the closed-state fast path) --
        self._state: State = "closed"
        self._generation = 0  # bumps on every transition: late outcomes of old calls are ignored
        self._consecutive = 0
        self._opened_at = 0.0
        self._trials_admitted = 0
        self._trial_successes = 0
        self._bucket_width = self.window / _WINDOW_BUCKETS
        self._bucket_epoch = [-1] * _WINDOW_BUCKETS
        self._bucket_calls = [0] * _WINDOW_BUCKETS
        self._bucket_failures = [0] * _WINDOW_BUCKETS
        # -- metrics --
        registry = resolve_registry(registry)
        self._state_gauge = registry.gauge(
            "perfkit_circuit_state", "Circuit state: 0 closed, 1 open, 2 half-open", ("breaker",)
        ).labels(self.name)
        self._state_gauge.set(0)
        self._transitions = registry.counter(
            "perfkit_circuit_transitions", "Circuit state changes", ("breaker", "to")
        )
        calls = registry.counter(
            "perfkit_circuit_calls", "Calls through a circuit breaker", ("breaker", "outcome")
        )
        self._count_success = calls.labels(self.name, "success").inc_one
        self._count_failure = calls.labels(self.name, "failure").inc_one
        self._count_rejected = calls.labels(self.name, "rejected").inc_one

    # -- observation ------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (an open breaker whose timeout has passed reports half-open)."""
        with self._lock:
            if self._state == "open" and self._clock() >= self._opened_at + self.reset_timeout:
                return "half_open"
            return self._state

    def failure_stats(self) -> dict[str, float]:
        """Consecutive failures, and calls/failures in the rolling window."""
        with self._lock:
            calls, failures = self._window_totals(self._clock())
            return {"consecutive_failures": self._consecutive, "window_calls": calls,
                    "window_failures": failures}

    def reset(self) -> None:
        """Force the breaker closed and forget every failure (e.g. after a manual fix)."""
        with self._lock:
            change = self._transition("closed")
        self._announce(change)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"

    # -- the state machine (all under _lock) ------------------------------------------

    def _admit(self) -> tuple[int, bool]:
        """Let a call through or raise CircuitOpenError: (generation, is_trial)."""
        if self._state == "closed":  # fast path, no lock: a stale read only delays by a call
            return self._generation, False
        change = None
        try:
            with self._lock:
                state = self._current_state()  # re-read under the lock
                if state == "closed":
                    return self._generation, False
                now = self._clock()
                if state == "open":
                    wait = self._opened_at + self.reset_timeout - now
                    if wait > 0:
                        self._count_rejected()
                        raise CircuitOpenError(self.name, wait, "open")
                    change = self._transition("half_open")
                if self._trials_admitted >= self.trial_calls:
                    self._count_rejected()
                    raise CircuitOpenError(self.name, self.reset_timeout, "half_open")
                self._trials_admitted += 1
                return self._generation, True
        finally:
            self._announce(change)

    def _current_state(self) -> State:
        return self._state

    def _on_success(self, token: tuple[int, bool]) -> None:
        self._count_success()
        generation, trial = token
        if not trial and self._consecutive == 0 and self.failure_ratio is None:
            return  # closed and healthy: nothing to update
        change = None
        with self._lock:
            if self._is_stale(generation, trial):
                return
            if trial:
                self._trial_successes += 1
                if self._trial_successes >= self.trial_calls:
                    change = self._transition("closed")
            else:
                self._consecutive = 0
                if self.failure_ratio is not None:
                    self._record(self._clock(), failed=False)
        self._announce(change)

    def _on_failure(self, token: tuple[int, bool]) -> None:
        self._count_failure()
        generation, trial = token
        change = None
        with self._lock:
            if self._is_stale(generation, trial):
                return
            if trial:
                change = self._transition("open")
            else:
                self._consecutive += 1
                tripped = (
                    self.failure_threshold is not None
                    and self._consecutive >= self.failure_threshold
                )
                if self.failure_ratio is not None:
                    now = self._clock()
                    self._record(now, failed=True)
                    calls, failures = self._window_totals(now)
                    tripped = tripped or (
                        calls >= self.min_calls and failures >= self.failure_ratio * calls
                    )
                if tripped:
                    change = self._transition("open")
        self._announce(change)

    def _is_stale(self, generation: int, trial: bool) -> bool:
        """An outcome that must not count: from before the last transition, or a closed-state
        call whose lock-free admission raced a transition and read the new generation with
        the old state (it would otherwise re-open an open breaker, pushing its retry time)."""
        return generation != self._generation or (not trial and self._state != "closed")

    def _on_cancel(self, token: tuple[int, bool]) -> None:
        generation, trial = token
        if trial:
            with self._lock:
                if generation == self._generation:
                    self._trials_admitted -= 1  # give the trial slot back

    def _transition(self, new: State) -> tuple[State, State] | None:
        old = self._state
        self._generation += 1
        self._consecutive = 0
        self._trials_admitted = self._trial_successes = 0
        if new == "open":
            self._opened_at = self._clock()
        if new == "closed":
            self._bucket_epoch = [-1] * _WINDOW_BUCKETS
        self._state = new
        if old == new:
            return None
        self._state_gauge.set(_STATE_VALUE[new])
        self._transitions.labels(self.name, new).inc_one()
        return old, new

    def _announce(self, change: tuple[State, State] | None) -> None:
        """Log and call the callback outside the lock (it may look at the breaker)."""
        if change is None:
            return
        old, new = change
        log = logger.warning if new == "open" else logger.info
        log("circuit %r: %s -> %s", self.name, old, new)
        if self.on_state_change is not None:
            try:
                self.on_state_change(self, old, new)
            except Exception:
                logger.exception("circuit %r: on_state_change callback failed", self.name)

    def _record(self, now: float, *, failed: bool) -> None:
        epoch = int(now // self._bucket_width)
        slot = epoch % _WINDOW_BUCKETS
        if self._bucket_epoch[slot] != epoch:
            self._bucket_epoch[slot] = epoch
            self._bucket_calls[slot] = self._bucket_failures[slot] = 0
        self._bucket_calls[slot] += 1
        if failed:
            self._bucket_failures[slot] += 1

    def _window_totals(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._bucket_width) - _WINDOW_BUCKETS + 1
        calls = failures = 0
        for i in range(_WINDOW_BUCKETS):
            if self._bucket_epoch[i] >= oldest:
                calls += self._bucket_calls[i]
                failures += self._bucket_failures[i]
        return calls, failures

    def _settle(self, token: tuple[int, bool], error: BaseException | None) -> None:
        if error is None:
            self._on_success(token)
        elif not isinstance(error, Exception):
            self._on_cancel(token)
        elif self._is_failure(error):
            self._on_failure(token)
        else:
            self._on_success(token)

    # -- front ends -------------------------------------------------------------------

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function or method."""
        target = decoratable(func, "CircuitBreaker", "guard the function that consumes it")
        admit, settle, succeeded = self._admit, self._settle, self._on_success
        release, guard, coroutine = self._on_cancel, self._guard, types.CoroutineType

        if inspect.iscoroutinefunction(target):

            async def async_wrapper(
                wrapped: Callable[..., Awaitable[Any]], instance: Any, args: Any, kwargs: Any
            ) -> Any:
                token = admit()
                try:
                    result = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    settle(token, exc)
                    raise
                succeeded(token)
                return result

            return cast("Callable[P, R]", wrap(func, async_wrapper))

        def sync_wrapper(
            wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
        ) -> Any:
            token = admit()
            try:
                result = wrapped(*args, **kwargs)
                if type(result) is coroutine:  # a plain function handing back a coroutine:
                    release(token)  # the call happens when it is awaited; admit it then
                    return guard(result)
            except BaseException as exc:
                settle(token, exc)
                raise
            succeeded(token)
            return result

        return cast("Callable[P, R]", wrap(func, sync_wrapper))

    async def _guard(self, awaitable: Awaitable[Any]) -> Any:
        """Admit, await and count one call (the decorator's async path, for an awaitable)."""
        try:
            token = self._admit()
        except CircuitOpenError:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # never awaited, on purpose: no "never awaited" warning
            raise
        try:
            result = await awaitable
        except BaseException as exc:
            self._settle(token, exc)
            raise
        self._on_success(token)
        return result

    def __enter__(self) -> CircuitBreaker:
        _ENTERED.set((*_ENTERED.get(), self._admit()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        entered = _ENTERED.get()
        _ENTERED.set(entered[:-1])
        self._settle(entered[-1], exc)

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")


def _failure_filter(failure_on: object) -> Callable[[Exception], bool]:
    if isinstance(failure_on, (type, tuple)):
        types = failure_on if isinstance(failure_on, tuple) else (failure_on,)
        if not types or not all(isinstance(t, type) and issubclass(t, Exception) for t in types):
            raise TypeError(
                f"failure_on must be Exception subclasses or a predicate, got {failure_on!r}"
            )
        return lambda exc: isinstance(exc, types)
    if callable(failure_on):
        return cast("Callable[[Exception], bool]", failure_on)
    raise TypeError(f"failure_on must be Exception subclasses or a predicate, got {failure_on!r}")
