"""Degrade, don't fail: the breaker every networked backend puts around its calls.

The first failure opens it and logs one warning for the whole outage; while open, calls
fail fast with :class:`BackendError` (no socket timeout per call) and the caller carries
on without the cache; after ``retry_interval`` one call probes the server again, and the
first success closes it and logs that caching resumed.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from perfkit.caching.backends.base import BackendError

logger = logging.getLogger("perfkit.cache")


class OutageGuard:
    def __init__(
        self,
        name: str,
        retry_interval: float,
        outage_errors: tuple[type[BaseException], ...],
        other_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.name = name
        self.retry_interval = retry_interval
        self.outage_errors = outage_errors
        self.other_errors = other_errors
        self.errors = 0
        self.outage = False
        self._down_until = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        """``with guard:`` around one server call (works around ``await`` too)."""
        if self._down_until:
            now = time.monotonic()
            with self._lock:
                if now < self._down_until:
                    raise BackendError(f"{self.name} is down (retrying shortly)")
                # Half-open: this caller probes; the others keep failing fast meanwhile.
                self._down_until = now + self.retry_interval

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            if self.outage:
                self._recover()
            return
        if isinstance(exc, self.outage_errors):
            self._trip(exc)
            raise BackendError(f"{self.name}: {exc!r}") from exc
        if isinstance(exc, self.other_errors) and not isinstance(exc, BackendError):
            self.errors += 1
            raise BackendError(f"{self.name}: {exc!r}") from exc

    def _trip(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self._down_until = time.monotonic() + self.retry_interval
            if not self.outage:
                self.outage = True
                logger.warning(
                    "perfkit cache: %s is unreachable (%r); serving without it, retrying "
                    "every %.1fs", self.name, exc, self.retry_interval,
                )

    def _recover(self) -> None:
        with self._lock:
            if self.outage:
                self.outage = False
                self._down_until = 0.0
                logger.warning("perfkit cache: %s is reachable again; caching resumed", self.name)
