"""``perfkit.retry``: retries that help a flaky upstream instead of hurting it.

What the caller may rely on:

- Intent is mandatory: ``on=`` names the exception types to retry (or a predicate on the
  exception). Only ``Exception`` subclasses are ever caught, so ``asyncio.CancelledError``,
  ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` always go straight through,
  including while we wait between attempts.
- Bounded by count *and* time: ``attempts`` (default 3) and an optional overall ``deadline``
  (seconds, including waits). A wait is only started if it, plus the duration of the attempt
  that just failed, still fits before the deadline; the error says when that was the reason.
  Async attempts are also cancelled when the deadline passes (``TimeoutError``); a sync
  attempt cannot be interrupted, so give its client a timeout from ``deadline_remaining()``.
  Inner code can read the remaining time with :func:`deadline_remaining` (a contextvar, so
  nested retries and clients inherit the outer deadline).
- Waits come from a :mod:`perfkit.backoff` strategy (exponential with full jitter by default).
  A server's ``Retry-After`` (delta-seconds or HTTP-date, from an httpx/requests/aiohttp error
  or a ``retry_after`` attribute, e.g. :class:`perfkit.CircuitOpenError`) replaces the computed
  wait, truncated to ``retry_after_cap`` (default: the strategy's cap).
- Errors that carry an HTTP request with a non-idempotent method (POST, PATCH) and no
  ``Idempotency-Key`` header are not retried unless ``idempotent=True``.
- A shared :class:`RetryBudget` caps retries to a fraction of calls, so an outage does not
  multiply the upstream's load.
- Nested retries do not multiply: while an outer retry is retrying (its second attempt on),
  an inner retry that fails with an error the outer one also retries gives up at once
  (reason ``"nested"``) and lets the outer one decide. N x M attempts become N + M - 1.
- The final failure re-raises the *last real exception*, with the attempt history added as a
  note (shown in the traceback) and available as :func:`retry_history`.
- Per-call state lives in the call's own frame: nothing is shared between concurrent calls
  except the budget and the metrics, which are thread-safe.
- A callable that looks sync but returns a coroutine (a plain function handing back a
  client's coroutine, an object with ``async def __call__``) is awaited and retried as async.
- Tests need not sleep: ``with no_waits():`` or ``PERFKIT_RETRY_NO_WAITS=1`` makes every wait
  zero (attempt counts and give-up reasons stay the same).

Metrics (labelled by ``function``) in the registry: ``perfkit_retry_calls_total``,
``perfkit_retry_attempts_total``, ``perfkit_retry_retries_total`` and
``perfkit_retry_giveups_total`` (also labelled by ``reason``: attempts, deadline, budget,
not_retryable, not_idempotent, nested, result).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import inspect
import logging
import math
import os
import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar, cast

from typing_extensions import ParamSpec

from perfkit._wrapping import decoratable, wrap
from perfkit.backoff import Backoff, Constant, Exponential
from perfkit.metrics import Registry, resolve_registry

__all__ = [
    "Attempt",
    "RetryBudget",
    "RetryHistory",
    "RetryState",
    "deadline_remaining",
    "no_waits",
    "retry",
    "retry_after_seconds",
    "retry_history",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("perfkit.retry")

NO_WAITS_ENV = "PERFKIT_RETRY_NO_WAITS"
_UNSAFE_METHODS = frozenset({"POST", "PATCH"})
_HISTORY_KEPT = 20

GiveUpReason = Literal[
    "attempts", "deadline", "budget", "not_retryable", "not_idempotent", "nested", "result"
]

# --------------------------------------------------------------------------- test switch

_no_waits_depth = 0
_no_waits_lock = threading.Lock()


@contextlib.contextmanager
def no_waits() -> Iterator[None]:
    """Within this block (process-wide, all threads), every retry wait is zero."""
    global _no_waits_depth
    with _no_waits_lock:
        _no_waits_depth += 1
    try:
        yield
    finally:
        with _no_waits_lock:
            _no_waits_depth -= 1


def _waits_disabled() -> bool:
    return _no_waits_depth > 0 or os.environ.get(NO_WAITS_ENV, "") not in ("", "0")


# --------------------------------------------------------------------------- deadline

#: (absolute deadline, the clock it is measured on) of the innermost retry with a deadline.
_DEADLINE: contextvars.ContextVar[tuple[float, Callable[[], float]] | None] = (
    contextvars.ContextVar("perfkit_retry_deadline", default=None)
)


def deadline_remaining() -> float | None:
    """Seconds left before the innermost enclosing retry deadline (``None`` if none is set).

    Pass it on as a client timeout so one attempt cannot outlive the whole call's budget.
    """
    current = _DEADLINE.get()
    if current is None:
        return None
    at, clock = current
    return max(0.0, at - clock())


#: The retry whose retry loop is running (set only once a call fails, so the success path
#: pays nothing). An inner retry that fails with an error this one would retry steps aside.
_RETRYING: contextvars.ContextVar[_Policy | None] = contextvars.ContextVar(
    "perfkit_retrying", default=None
)


# --------------------------------------------------------------------------- budget


class RetryBudget:
    """A token bucket shared by the calls to one dependency: retries <= ``ratio`` x calls.

    Every call deposits ``ratio`` tokens; every retry spends one. ``min_per_second`` tokens
    also trickle in with time (and the bucket starts with one second's worth), so a quiet or
    just-started service can still retry a rare failure; ``max_tokens`` caps what a long
    healthy period can save up. When the bucket is empty, retrying stops (give-up reason
    ``"budget"``): during an outage the upstream sees at most ``(1 + ratio)`` x the calls,
    plus ``min_per_second`` per second.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        *,
        min_per_second: float = 1.0,
        max_tokens: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be a number between 0 and 1, got {ratio!r}")
        if not isinstance(min_per_second, (int, float)) or not 0 <= min_per_second < math.inf:
            raise ValueError(f"min_per_second must be >= 0, got {min_per_second!r}")
        if not isinstance(max_tokens, (int, float)) or not 1 <= max_tokens < math.inf:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        self.ratio = float(ratio)
        self.min_per_second = float(min_per_second)
        self.max_tokens = float(max_tokens)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = min(self.max_tokens, self.min_per_second)
        self._last = clock()

    def deposit(self) -> None:
        """Credit one call (done by ``retry`` before every call's first attempt)."""
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one retry's token if there is one."""
        with self._lock:
            now = self._clock()
            if self.min_per_second:
                elapsed = max(0.0, now - self._last)
                self._tokens = min(self.max_tokens, self._tokens + elapsed * self.min_per_second)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    @property
    def tokens(self) -> float:
        with self._lock:
            return self._tokens

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, tokens={self.tokens:.2f})"


# --------------------------------------------------------------------------- Retry-After


def retry_after_seconds(error: BaseException, *, now: datetime | None = None) -> float | None:
    """The server-requested delay carried by ``error``, or ``None`` (absent, past or garbage).

    Looks at ``error.retry_after`` (a number of seconds), then at a ``Retry-After`` header on
    ``error.response.headers`` (httpx, requests) or ``error.headers`` (aiohttp). The header may
    be delta-seconds or an HTTP-date (RFC 9110, section 10.2.3).
    """
    direct = _attr(error, "retry_after")
    if isinstance(direct, (int, float)) and not isinstance(direct, bool):
        return float(direct) if 0 <= direct < math.inf else None
    headers = _attr(_attr(error, "response"), "headers")
    if headers is None:
        headers = _attr(error, "headers")
    if headers is None or not hasattr(headers, "get"):
        return None
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
    except Exception:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    return _parse_retry_after(value.strip(), now)


def _parse_retry_after(value: str, now: datetime | None) -> float | None:
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delay = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return delay if delay > 0 else None


def _attr(obj: object, name: str) -> Any:
    """``getattr(obj, name, None)``, also when the attribute is a property that raises
    (httpx's ``RequestError.request`` raises RuntimeError when no request was attached)."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _is_unsafe_request(error: BaseException) -> bool:
    """True for an error about a POST/PATCH sent without an Idempotency-Key header.

    The request is ``error.request`` (httpx, requests), ``error.request_info`` (aiohttp) or
    ``error.response.request``.
    """
    request = _attr(error, "request")
    if request is None:
        request = _attr(error, "request_info")
    if request is None:
        request = _attr(_attr(error, "response"), "request")
    method = _attr(request, "method")
    if not isinstance(method, str) or method.upper() not in _UNSAFE_METHODS:
        return False
    headers = _attr(request, "headers")
    try:
        return not (headers and headers.get("Idempotency-Key"))
    except Exception:
        return True


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Attempt:
    """One attempt: its number (1-based), what went wrong, how long it took and the wait after."""

    number: int
    error: Exception | None
    duration: float
    wait: float | None = None

    def describe(self) -> str:
        what = repr(self.error) if self.error is not None else "result rejected by retry_on_result"
        text = f"attempt {self.number}: {what} after {self.duration:.3f}s"
        return text if self.wait is None else f"{text}, then waited {self.wait:.3f}s"


@dataclass
class RetryHistory:
    """What a retried call went through; attached to the final error (see :func:`retry_history`)."""

    function: str
    reason: GiveUpReason
    detail: str
    attempts: int = 0
    elapsed: float = 0.0
    total_wait: float = 0.0
    #: The last attempts (at most 20; ``attempts`` has the full count).
    recent: deque[Attempt] = field(default_factory=lambda: deque(maxlen=_HISTORY_KEPT))
    #: The note added to the exception (set when it is attached).
    note: str = field(default="", repr=False)

    def summary(self) -> str:
        lines = [
            f"perfkit.retry gave up on {self.function} after {self.attempts} attempt"
            f"{'s' if self.attempts != 1 else ''} in {self.elapsed:.3f}s "
            f"(waited {self.total_wait:.3f}s): {self.detail}"
        ]
        if self.attempts > len(self.recent):
            lines.append(f"  (showing the last {len(self.recent)} attempts)")
        lines.extend(f"  {a.describe()}" for a in self.recent)
        return "\n".join(lines)


def retry_history(error: BaseException) -> RetryHistory | None:
    """The history ``retry`` attached to the exception it re-raised, if any."""
    history = getattr(error, "_perfkit_retry_history", None)
    return history if isinstance(history, RetryHistory) else None


def _attach(error: BaseException, history: RetryHistory) -> None:
    """Add the history as a traceback note, replacing ours from an earlier give-up.

    Replacing matters when one exception instance is raised again and again (a module-level
    constant): its notes would otherwise grow with every call.
    """
    previous = retry_history(error)
    try:
        error._perfkit_retry_history = history  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - exceptions with __slots__
        return
    notes = [n for n in getattr(error, "__notes__", None) or []
             if previous is None or n != previous.note]
    history.note = history.summary()
    error.__notes__ = [*notes, history.note]  # type: ignore[attr-defined]  # as add_note() does


@dataclass(frozen=True)
class RetryState:
    """What ``on_retry`` hooks receive, once per retry, before the wait."""

    function: str
    attempt: int  # the attempt that just failed (1-based)
    error: Exception | None  # None when the result was rejected
    result: Any
    wait: float
    elapsed: float


# --------------------------------------------------------------------------- policy


ExceptionTypes = type[Exception] | tuple[type[Exception], ...]


class _Policy:
    """Everything ``retry`` decided at decoration time, and the one decision made per failure."""

    def __init__(
        self,
        *,
        function: str,
        attempts: int,
        on: ExceptionTypes | Callable[[Exception], bool],
        backoff: Backoff,
        deadline: float | None,
        retry_on_result: Callable[[Any], bool] | None,
        retry_after_cap: float,
        idempotent: bool,
        budget: RetryBudget | None,
        on_retry: tuple[Callable[[RetryState], object], ...],
        registry: Registry,
        sleep: Callable[[float], Any] | None,
        clock: Callable[[], float],
    ) -> None:
        self.function = function
        self.attempts = attempts
        if isinstance(on, (tuple, type)):
            types = on
            self.matches: Callable[[Exception], bool] = lambda exc: isinstance(exc, types)
        else:
            self.matches = on
        self.backoff = backoff
        self.deadline = deadline
        self.retry_on_result = retry_on_result
        self.retry_after_cap = retry_after_cap
        self.idempotent = idempotent
        self.budget = budget
        self.on_retry = on_retry
        self.sleep = sleep
        self.clock = clock
        self._registry = registry
        calls = registry.counter(
            "perfkit_retry_calls", "Calls made through perfkit.retry", ("function",)
        ).labels(function)
        retries = registry.counter(
            "perfkit_retry_retries", "Retries (attempts after the first)", ("function",)
        ).labels(function)
        registry.counter(
            "perfkit_retry_attempts", "Attempts, first ones included", ("function",)
        ).labels(function).set_function(lambda: calls.value + retries.value)
        self.count_call = calls.inc_one
        self.count_retry = retries.inc_one
        self._giveups = registry.counter(
            "perfkit_retry_giveups",
            "Calls that ended in their last error or a rejected result, by reason",
            ("function", "reason"),
        )

    def give_up(self, history: RetryHistory, reason: GiveUpReason, detail: str) -> RetryHistory:
        history.reason, history.detail = reason, detail
        self._giveups.labels(self.function, reason).inc_one()
        return history

    def next_wait(
        self,
        history: RetryHistory,
        error: Exception | None,
        result: Any,
        started: float,
        attempt_started: float,
        previous_wait: float,
        enclosing: _Policy | None,
    ) -> float | None:
        """Record the failed attempt; return the wait before the next one, or None to stop."""
        now = self.clock()
        attempt = history.attempts = history.attempts + 1
        duration = now - attempt_started
        history.elapsed = now - started
        record = Attempt(attempt, error, duration)
        history.recent.append(record)
        if isinstance(error, (TimeoutError, asyncio.TimeoutError)) and self.deadline is not None \
                and deadline_remaining() == 0.0:
            self.give_up(history, "deadline", f"the {self.deadline:g}s deadline passed during "
                         f"attempt {attempt}, which was cancelled")
            return None
        if error is not None and not self.matches(error):
            self.give_up(history, "not_retryable", f"{type(error).__name__} is not retried")
            return None
        if error is not None and enclosing is not None and enclosing.matches(error):
            self.give_up(
                history, "nested",
                f"the enclosing retry of {enclosing.function} is retrying and retries this "
                "error itself (nested retries would multiply the attempts)",
            )
            return None
        if error is not None and not self.idempotent and _is_unsafe_request(error):
            self.give_up(
                history, "not_idempotent",
                "the request is a POST/PATCH without an Idempotency-Key header "
                "(pass idempotent=True if retrying it is safe)",
            )
            return None
        if attempt >= self.attempts:
            reason: GiveUpReason = "attempts" if error is not None else "result"
            self.give_up(history, reason, f"all {self.attempts} attempts failed")
            return None
        server_delay = retry_after_seconds(error) if error is not None else None
        if server_delay is not None:
            wait = min(server_delay, self.retry_after_cap)
        else:
            wait = self.backoff.delay(attempt, previous_wait)
        if _waits_disabled():
            wait = 0.0
        remaining = deadline_remaining()
        if remaining is not None and wait + duration > remaining:
            self.give_up(
                history, "deadline",
                f"the deadline left {max(0.0, remaining):.3f}s, not enough for a "
                f"{wait:.3f}s wait plus another attempt like the last ({duration:.3f}s)",
            )
            return None
        if self.budget is not None and not self.budget.try_spend():
            self.give_up(history, "budget", "the retry budget is exhausted")
            return None
        history.recent[-1] = Attempt(attempt, error, duration, wait)
        history.total_wait += wait
        self.count_retry()
        logger.debug("retrying %s in %.3fs after attempt %d", self.function, wait, attempt)
        return wait

    def run_hooks(
        self, history: RetryHistory, error: Exception | None, result: Any, wait: float
    ) -> list[Awaitable[Any]]:
        """Call the ``on_retry`` hooks; return what async hooks handed back, to be awaited."""
        state = RetryState(self.function, history.attempts, error, result, wait, history.elapsed)
        pending = [hook(state) for hook in self.on_retry]
        return [p for p in pending if inspect.isawaitable(p)]

    def final(self, history: RetryHistory, error: Exception | None, result: Any) -> Any:
        """The outcome once we stop: the last result, or the last error with its history."""
        if error is None:
            return result
        if history.attempts > 1 or history.reason != "not_retryable":
            _attach(error, history)  # nothing to tell when the first error was not retryable
        raise error

    def new_history(self) -> RetryHistory:
        return RetryHistory(self.function, "attempts", "")

    def enter_deadline(self) -> contextvars.Token[Any] | None:
        """Start this call's deadline; an enclosing one that ends sooner still wins."""
        if self.deadline is None:
            return None
        now = self.clock()
        outer = deadline_remaining()
        left = self.deadline if outer is None else min(self.deadline, outer)
        return _DEADLINE.set((now + left, self.clock))

    # -- the two engines ---------------------------------------------------------------

    def run_sync(
        self, wrapped: Callable[..., Any], args: Any, kwargs: Any, error: Exception | None,
        result: Any, started: float,
    ) -> Any:
        history = self.new_history()
        attempt_started, wait = started, 0.0
        enclosing = _RETRYING.get()
        token = _RETRYING.set(self)
        try:
            while True:
                next_wait = self.next_wait(
                    history, error, result, started, attempt_started, wait, enclosing
                )
                if next_wait is None:
                    return self.final(history, error, result)
                wait = next_wait
                if self.on_retry:
                    self.run_hooks(history, error, result, wait)
                if wait > 0:
                    (self.sleep or time.sleep)(wait)
                attempt_started = self.clock()
                try:
                    result = wrapped(*args, **kwargs)
                except Exception as exc:
                    error = exc
                    continue
                if self.retry_on_result is None or not self.retry_on_result(result):
                    return result
                error = None
        finally:
            _RETRYING.reset(token)

    async def attempt_async(self, attempt: Awaitable[Any]) -> Any:
        """Await one attempt; with a deadline, it is cancelled when the deadline passes."""
        if self.deadline is None:
            return await attempt
        remaining = deadline_remaining() or 0.0
        timeout = getattr(asyncio, "timeout", None)  # Python 3.11+; cheaper than wait_for
        if timeout is None:  # pragma: no cover - Python 3.10
            return await asyncio.wait_for(attempt, remaining)
        async with timeout(remaining):
            return await attempt

    async def adopt(
        self, wrapped: Callable[..., Any], args: Any, kwargs: Any, first: Awaitable[Any],
        started: float, deadline: tuple[float, Callable[[], float]] | None,
    ) -> Any:
        """A callable that looked sync (a plain function returning a coroutine, an object with
        an ``async def __call__``) handed back a coroutine: await it, and retry as async."""
        token = _DEADLINE.set(deadline) if deadline is not None else None
        try:
            try:
                result = await self.attempt_async(first)
            except Exception as exc:
                error: Exception | None = exc
                result = None
            else:
                if self.retry_on_result is None or not self.retry_on_result(result):
                    return result
                error = None
            return await self.run_async(wrapped, args, kwargs, error, result, started)
        finally:
            if token is not None:
                _DEADLINE.reset(token)

    async def run_async(
        self, wrapped: Callable[..., Awaitable[Any]], args: Any, kwargs: Any,
        error: Exception | None, result: Any, started: float,
    ) -> Any:
        history = self.new_history()
        attempt_started, wait = started, 0.0
        enclosing = _RETRYING.get()
        token = _RETRYING.set(self)
        try:
            while True:
                next_wait = self.next_wait(
                    history, error, result, started, attempt_started, wait, enclosing
                )
                if next_wait is None:
                    return self.final(history, error, result)
                wait = next_wait
                if self.on_retry:
                    for pending_hook in self.run_hooks(history, error, result, wait):
                        await pending_hook
                if wait > 0:
                    if self.sleep is None:
                        await asyncio.sleep(wait)
                    else:
                        pending = self.sleep(wait)
                        if inspect.isawaitable(pending):
                            await pending
                attempt_started = self.clock()
                try:
                    result = await self.attempt_async(wrapped(*args, **kwargs))
                except Exception as exc:
                    error = exc
                    continue
                if self.retry_on_result is None or not self.retry_on_result(result):
                    return result
                error = None
        finally:
            _RETRYING.reset(token)


# --------------------------------------------------------------------------- wrappers
# One small wrapper per shape, chosen at decoration time, so the success path is one
# call plus a lock-free counter tick (and a clock read for the history's elapsed time).


def _sync_wrapper(policy: _Policy) -> Callable[..., Any]:
    count_call, clock, budget = policy.count_call, policy.clock, policy.budget
    check_result = policy.retry_on_result
    has_deadline = policy.deadline is not None
    coroutine = types.CoroutineType  # a result of this type is awaited and retried as async

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        count_call()
        if budget is not None:
            budget.deposit()
        token = policy.enter_deadline() if has_deadline else None
        try:
            started = clock()
            try:
                result = wrapped(*args, **kwargs)
            except Exception as exc:
                error: Exception | None = exc
                result = None
            else:
                if type(result) is coroutine:
                    return policy.adopt(wrapped, args, kwargs, result, started,
                                        _DEADLINE.get() if has_deadline else None)
                if check_result is None or not check_result(result):
                    return result
                error = None
            return policy.run_sync(wrapped, args, kwargs, error, result, started)
        finally:
            if token is not None:
                _DEADLINE.reset(token)

    def lean(
        wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        count_call()
        started = clock()
        try:
            result = wrapped(*args, **kwargs)
            if type(result) is not coroutine:  # checked inside the try: cheapest there
                return result
        except Exception as exc:
            error = exc
        else:
            return policy.adopt(wrapped, args, kwargs, result, started, None)
        return policy.run_sync(wrapped, args, kwargs, error, None, started)

    return lean if budget is None and not has_deadline and check_result is None else wrapper


def _async_wrapper(policy: _Policy) -> Callable[..., Any]:
    count_call, clock, budget = policy.count_call, policy.clock, policy.budget
    check_result = policy.retry_on_result
    has_deadline = policy.deadline is not None

    async def wrapper(
        wrapped: Callable[..., Awaitable[Any]], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        count_call()
        if budget is not None:
            budget.deposit()
        token = policy.enter_deadline() if has_deadline else None
        try:
            started = clock()
            try:
                result = await policy.attempt_async(wrapped(*args, **kwargs))
            except Exception as exc:
                error: Exception | None = exc
                result = None
            else:
                if check_result is None or not check_result(result):
                    return result
                error = None
            return await policy.run_async(wrapped, args, kwargs, error, result, started)
        finally:
            if token is not None:
                _DEADLINE.reset(token)

    async def lean(
        wrapped: Callable[..., Awaitable[Any]], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        count_call()
        started = clock()
        try:
            return await wrapped(*args, **kwargs)
        except Exception as exc:
            error = exc
        return await policy.run_async(wrapped, args, kwargs, error, None, started)

    return lean if budget is None and not has_deadline and check_result is None else wrapper


# --------------------------------------------------------------------------- decorator


def retry(
    *,
    on: ExceptionTypes | Callable[[Exception], bool],
    attempts: int = 3,
    backoff: Backoff | float | None = None,
    deadline: float | None = None,
    retry_on_result: Callable[[Any], bool] | None = None,
    retry_after_cap: float | None = None,
    idempotent: bool = False,
    budget: RetryBudget | None = None,
    on_retry: Callable[[RetryState], object] | Sequence[Callable[[RetryState], object]] = (),
    name: str | None = None,
    registry: Registry | None = None,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry a sync or async function (or method) when it raises what ``on`` names.

    ``on``: exception type(s), or a predicate on the exception (required: say what is
    transient). ``attempts``: total tries including the first (>= 1; 1 means no retries).
    ``backoff``: a :mod:`perfkit.backoff` strategy or a constant number of seconds (default
    ``Exponential(base=0.1, cap=10, jitter="full")``). ``deadline``: overall seconds, waits
    included. ``retry_on_result``: also retry when it returns True for the result (after the
    last attempt the last result is returned). ``retry_after_cap``: longest server-requested
    wait honoured (default: the strategy's cap). ``idempotent``: allow retrying POST/PATCH
    errors. ``budget``: a shared :class:`RetryBudget`. ``on_retry``: hook(s) called with a
    :class:`RetryState` before each wait (awaited when async). ``name``: the metrics label (default
    ``module.qualname``). ``sleep``/``clock``: injectable for tests (``sleep`` may return an
    awaitable for async functions).
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"attempts must be an int, got {attempts!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1 (1 means no retries), got {attempts}")
    _check_on(on)
    strategy = _check_backoff(backoff)
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be a number of seconds or None, got {deadline!r}")
        if not 0 < deadline < math.inf:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
    if retry_on_result is not None and not callable(retry_on_result):
        raise TypeError(f"retry_on_result must be callable, got {retry_on_result!r}")
    cap = strategy.cap if retry_after_cap is None else retry_after_cap
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 <= cap < math.inf:
        raise ValueError(f"retry_after_cap must be >= 0 seconds, got {retry_after_cap!r}")
    if budget is not None and not isinstance(budget, RetryBudget):
        raise TypeError(f"budget must be a RetryBudget, got {budget!r}")
    hooks = (on_retry,) if callable(on_retry) else tuple(on_retry)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"on_retry must be callable or a sequence of callables, got {hook!r}")
    if sleep is not None and not callable(sleep):
        raise TypeError(f"sleep must be callable, got {sleep!r}")
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {clock!r}")
    metrics = resolve_registry(registry)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        target = decoratable(func, "retry", "retrying it would only recreate the generator "
                             "object; retry the function that consumes it")
        policy = _Policy(
            function=name or _qualname(target),
            attempts=attempts,
            on=on,
            backoff=strategy,
            deadline=deadline,
            retry_on_result=retry_on_result,
            retry_after_cap=float(cap),
            idempotent=idempotent,
            budget=budget,
            on_retry=hooks,
            registry=metrics,
            sleep=sleep,
            clock=clock,
        )
        if inspect.iscoroutinefunction(target):
            wrapper = _async_wrapper(policy)
        else:
            for hook in hooks:
                if inspect.iscoroutinefunction(hook):
                    raise TypeError(
                        f"on_retry hook {_qualname(hook)} is async but {policy.function} is "
                        "not: a sync retry cannot await it (use a plain function)"
                    )
            wrapper = _sync_wrapper(policy)
        return cast("Callable[P, R]", wrap(func, wrapper))

    return decorate


def _check_on(on: object) -> None:
    types: tuple[object, ...]
    if isinstance(on, type):
        types = (on,)
    elif isinstance(on, tuple):
        types = on
        if not types:
            raise ValueError("on= must name at least one exception type")
    elif callable(on):
        return
    else:
        raise TypeError(
            f"on= must be an exception type, a tuple of them, or a predicate, got {on!r}"
        )
    for t in types:
        if not isinstance(t, type) or not issubclass(t, BaseException):
            raise TypeError(f"on= must contain exception types, got {t!r}")
        if not issubclass(t, Exception):
            raise TypeError(
                f"on= got {t.__name__}, which is not an Exception subclass; "
                "cancellation, KeyboardInterrupt, SystemExit and GeneratorExit are never retried"
            )


def _check_backoff(backoff: object) -> Backoff:
    if backoff is None:
        return Exponential()
    if isinstance(backoff, Backoff):
        return backoff
    if isinstance(backoff, (int, float)) and not isinstance(backoff, bool):
        if not 0 <= backoff < math.inf:
            raise ValueError(f"backoff must be >= 0 seconds, got {backoff!r}")
        return Constant(float(backoff))
    raise TypeError(
        f"backoff must be a perfkit.backoff strategy or a number of seconds, got {backoff!r}"
    )


def _qualname(func: Any) -> str:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{qualname}"
