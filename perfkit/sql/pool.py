"""Connection-pool figures for one SQLAlchemy engine: checkouts, wait, overflow, timeouts.

SQLAlchemy's pool events say when a connection was handed out (``checkout``) or opened
(``connect``), but nothing fires when a caller *starts* waiting or gives up, so the wait
and the timeouts are measured around the pool's public ``Pool.connect()`` (what
``Engine.connect()`` calls), wrapped on the pool instance and unwrapped on close. After
``engine.dispose()`` the engine gets a new pool; the ``engine_disposed`` event wraps that
one too. Figures, all labelled ``db``:

* ``sql_pool_checkouts_total`` - connections handed out;
* ``sql_pool_checkout_wait_seconds`` - time in ``Pool.connect()``: waiting for a free
  connection, plus opening a new one when the pool had room (also observed on timeouts);
* ``sql_pool_timeouts_total`` - ``Pool.connect()`` calls that gave up (``pool_timeout``);
* ``sql_pool_connections_opened_total`` - new DBAPI connections;
* ``sql_pool_checked_out``, ``sql_pool_overflow`` (connections beyond ``pool_size``) and
  ``sql_pool_overflow_peak`` - read at scrape time; ``sql_pool_size`` and
  ``sql_pool_max_overflow`` - the configured limits. These five exist only for pools that
  have sizes (``QueuePool`` and its async variant; not ``NullPool`` or ``StaticPool``).

Nothing here raises into user code: the wrapped ``connect`` re-raises only the pool's own
exception, unchanged.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from perfkit.metrics import Registry

__all__ = ["PoolMonitor"]

logger = logging.getLogger("perfkit.sql")

_WAIT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class PoolMonitor:
    """Pool figures of one engine in ``registry`` under label ``db=name``; :meth:`close` ends it."""

    def __init__(self, engine: Any, name: str, registry: Registry, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from sqlalchemy import event
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        self._event = event
        self._timeout_error = PoolTimeout
        self.engine = engine
        self.name = name
        self.clock = clock
        self.overflow_peak = 0
        self._lock = threading.Lock()
        self._pool: Any = None
        self.checkouts = registry.counter(
            "sql_pool_checkouts", "Connections handed out by the pool", ("db",)).labels(name)
        self.wait = registry.histogram(
            "sql_pool_checkout_wait_seconds",
            "Time to get a connection from the pool (waiting, or opening a new one)", ("db",),
            buckets=_WAIT_BUCKETS).labels(name)
        self.timeouts = registry.counter(
            "sql_pool_timeouts", "Pool checkouts that timed out (pool_timeout)",
            ("db",)).labels(name)
        self.opened = registry.counter(
            "sql_pool_connections_opened", "New DBAPI connections opened by the pool",
            ("db",)).labels(name)
        if hasattr(engine.pool, "overflow"):  # QueuePool and its async variant have sizes
            gauges = (
                ("sql_pool_checked_out", "Connections checked out of the pool now"),
                ("sql_pool_overflow", "Connections open beyond pool_size now"),
                ("sql_pool_overflow_peak", "Most connections open beyond pool_size so far"),
                ("sql_pool_size", "Configured pool_size"),
                ("sql_pool_max_overflow", "Configured max_overflow (-1: unlimited)"),
            )
            for (gauge, help), reader in zip(gauges, self._readers()):
                registry.gauge(gauge, help, ("db",)).labels(name).set_function(reader)
        event.listen(engine, "engine_disposed", self._on_disposed)
        self._wrap(engine.pool)

    # --- wrapping the pool ---

    def _wrap(self, pool: Any) -> None:
        with self._lock:
            if self._pool is not None:
                self._unwrap_locked()
            self._pool = pool
            original = pool.connect
            timed_connect = self._timed(original, pool)
            pool.connect = timed_connect
            self._event.listen(pool, "connect", self._on_connect)

    def _unwrap_locked(self) -> None:
        pool, self._pool = self._pool, None
        try:
            if "connect" in vars(pool):
                del pool.connect
            self._event.remove(pool, "connect", self._on_connect)
        except Exception:  # pragma: no cover - a pool that was never fully wrapped
            pass

    def _timed(self, connect: Callable[[], Any], pool: Any) -> Callable[[], Any]:
        clock = self.clock
        inc = self.checkouts.inc_one
        observe = self.wait.observe
        timeout_error = self._timeout_error
        overflow = getattr(pool, "overflow", None)

        def timed_connect() -> Any:
            began = clock()
            try:
                connection = connect()
            except timeout_error:
                self._record_timeout(clock() - began)
                raise
            waited = clock() - began
            try:
                inc()
                observe(waited if waited > 0 else 0.0)
                if overflow is not None:
                    current = overflow()
                    if current > self.overflow_peak:
                        self.overflow_peak = current
            except Exception as exc:  # pragma: no cover - metrics must never break a checkout
                logger.debug("perfkit.sql pool figures: %r", exc)
            return connection

        return timed_connect

    def _record_timeout(self, waited: float) -> None:
        try:
            self.timeouts.inc_one()
            self.wait.observe(waited if waited > 0 else 0.0)
        except Exception:  # pragma: no cover - metrics must never break a checkout
            pass

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        self.opened.inc_one()

    def _on_disposed(self, engine: Any) -> None:
        try:
            self._wrap(engine.pool)
        except Exception as exc:  # pragma: no cover - never raise from an event
            logger.warning("perfkit.sql: could not watch the new pool after dispose: %r", exc)

    # --- scrape-time readers (weak: a gauge must not keep a disposed pool alive) ---

    def _readers(self) -> list[Callable[[], float]]:
        ref = weakref.ref(self)

        def reader(read: Callable[[Any, PoolMonitor], float]) -> Callable[[], float]:
            def value() -> float:
                monitor = ref()
                pool = monitor._pool if monitor is not None else None
                if monitor is None or pool is None:
                    return 0.0
                try:
                    return float(read(pool, monitor))
                except Exception:  # pools without the figure (NullPool, StaticPool)
                    return 0.0
            return value

        return [
            reader(lambda pool, _: pool.checkedout()),
            reader(lambda pool, _: max(0, pool.overflow())),
            reader(lambda _, monitor: monitor.overflow_peak),
            reader(lambda pool, _: pool.size()),
            reader(lambda pool, _: getattr(pool, "_max_overflow", 0)),
        ]

    def close(self) -> None:
        """Unwrap the pool and stop listening; the figures keep their last counts."""
        with self._lock:
            if self._pool is not None:
                self._unwrap_locked()
        try:
            self._event.remove(self.engine, "engine_disposed", self._on_disposed)
        except Exception:  # pragma: no cover - already removed
            pass
