"""In-process metrics: counters, gauges and latency histograms with Prometheus text export.

Why another registry: perfkit's decorators and middleware need metrics that cost well under a
microsecond per call, stay bounded in memory however many calls are recorded, and give
p50/p95/p99 accurate to within 1% (relative) of the exact value. ``prometheus_client`` gives
no quantiles on histograms and its summaries give none at all.

API (small on purpose; other modules code against it)::

    from perfkit import REGISTRY

    hits = REGISTRY.counter("cache_hits", "Cache hits", labels=("function",))
    hits.labels(function="load_user").inc()          # or hits.labels("load_user").inc()

    inflight = REGISTRY.gauge("inflight_requests", "Requests being served")
    inflight.inc(); inflight.dec(); inflight.set(3)
    inflight.set_function(lambda: len(queue))         # read at scrape time

    latency = REGISTRY.histogram("db_query_seconds", "Query latency", labels=("query",))
    series = latency.labels("get_user")
    series.observe(0.0123)                            # seconds
    series.quantile(0.95); series.count; series.sum

    REGISTRY.render_prometheus()   # text format 0.0.4, with process_* metrics from psutil
    REGISTRY.snapshot()            # plain dicts, for logs, tests and JSON
    REGISTRY.reset()               # zero every series, keep the registrations

Rules the caller may rely on:

- ``registry.counter/gauge/histogram`` are get-or-create: asking twice for the same name with
  the same kind and label names returns the same object; a conflicting re-registration raises
  ``ValueError`` naming the metric.
- A metric without labels is used directly (``counter.inc()``); a metric with labels must go
  through ``.labels(...)`` first (a clear ``ValueError`` otherwise).
- Label cardinality is capped per metric (``max_series``, default 1000). Past the cap, new label
  combinations are folded into one series whose label values are all ``"__overflow__"``, and a
  warning is logged once per metric: a runaway label (a user id, a raw URL) cannot eat memory.
- Counter names are exported with a ``_total`` suffix (added when missing), as Prometheus and
  ``prometheus_client`` expect.
- Histograms are exported as a Prometheus ``histogram`` (cumulative ``le`` buckets, exact counts,
  configurable ``buckets=``) plus a companion gauge family ``<name>_quantile`` with labels
  ``quantile="0.5"|"0.95"|"0.99"`` from the sketch.
- Quantiles come from a log-bucketed sketch (the DDSketch scheme): every quantile is within
  ``RELATIVE_ACCURACY`` (1%) of the exact sample at that rank. Memory per series is bounded by
  the value range, not by the number of observations: values are clamped into
  ``[MIN_TRACKED_SECONDS, MAX_TRACKED_SECONDS]`` (1 ns .. ~28 h), at most ~1,700 buckets, and in
  practice a few hundred for latencies spanning a few decades.
- Everything is thread-safe; each series has its own lock, held only for a few arithmetic
  operations (never across user code).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Generic, Literal, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "DEFAULT_QUANTILES",
    "MAX_TRACKED_SECONDS",
    "MIN_TRACKED_SECONDS",
    "OVERFLOW_LABEL_VALUE",
    "REGISTRY",
    "RELATIVE_ACCURACY",
    "Counter",
    "CounterSeries",
    "Gauge",
    "GaugeSeries",
    "Histogram",
    "HistogramSeries",
    "HistogramSnapshot",
    "Registry",
]

logger = logging.getLogger("perfkit.metrics")

#: Latency buckets (seconds) for the Prometheus ``le`` export; those of prometheus_client.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)
RELATIVE_ACCURACY = 0.01
MIN_TRACKED_SECONDS = 1e-9
MAX_TRACKED_SECONDS = 1e5
OVERFLOW_LABEL_VALUE = "__overflow__"
DEFAULT_MAX_SERIES = 1000

_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)
#: Sketch key for values at or below MIN_TRACKED_SECONDS (reported as 0).
_ZERO_KEY = math.ceil(math.log(MIN_TRACKED_SECONDS) * _INV_LOG_GAMMA) - 1
_MAX_KEY = math.ceil(math.log(MAX_TRACKED_SECONDS) * _INV_LOG_GAMMA)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Kind = Literal["counter", "gauge", "histogram"]


def sketch_key(seconds: float) -> int:
    """The sketch bucket holding ``seconds`` (public so sinks can merge sketches exactly)."""
    if seconds <= MIN_TRACKED_SECONDS:
        return _ZERO_KEY
    return min(math.ceil(math.log(seconds) * _INV_LOG_GAMMA), _MAX_KEY)


def sketch_value(key: int) -> float:
    """The representative value of a sketch bucket: within RELATIVE_ACCURACY of any member."""
    if key <= _ZERO_KEY:
        return 0.0
    return 2.0 * _GAMMA**key / (_GAMMA + 1.0)


# --------------------------------------------------------------------------- series


class CounterSeries:
    """One monotonically increasing value (one label combination of a :class:`Counter`).

    ``inc_one()`` is the hot-path form: a single C call on an ``itertools.count`` (atomic under
    the GIL, no lock), for decorators that count every call.
    """

    __slots__ = ("_function", "_lock", "_tick_offset", "_ticks", "_value", "inc_one", "resets")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0
        self.resets = 0  # how many times reset() zeroed it: a pusher of deltas starts over
        self._function: Callable[[], float] | None = None
        self._ticks = itertools.count()
        self._tick_offset = 0
        #: Add 1, lock-free.
        self.inc_one: Callable[[], int] = self._ticks.__next__

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if not amount >= 0:
            raise ValueError(f"counter increment amount must be >= 0, got {amount!r}")
        with self._lock:
            self._value += amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function()`` at scrape time (e.g. a cache's hit count)."""
        if not callable(function):
            raise TypeError(f"function must be callable, got {function!r}")
        self._function = function

    @property
    def value(self) -> float:
        if self._function is not None:
            return float(self._function())
        with self._lock:
            # Reading the count consumes one tick: remember it so it is never counted.
            ticks = next(self._ticks) - self._tick_offset
            self._tick_offset += 1
            return self._value + ticks

    def _reset(self) -> None:
        with self._lock:
            self._value = 0.0
            self._tick_offset = next(self._ticks) + 1
            self.resets += 1


class GaugeSeries:
    """One value that goes up and down (one label combination of a :class:`Gauge`).

    ``inc_one()``/``dec_one()`` are the hot-path forms (an in-flight gauge): one C call each
    on an ``itertools.count``, atomic under the GIL, no lock.
    """

    __slots__ = ("_downs", "_function", "_lock", "_ups", "_value", "dec_one", "inc_one")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0.0
        self._function: Callable[[], float] | None = None
        self._ups = itertools.count()
        self._downs = itertools.count()
        #: Add 1, lock-free.
        self.inc_one: Callable[[], int] = self._ups.__next__
        #: Subtract 1, lock-free.
        self.dec_one: Callable[[], int] = self._downs.__next__

    def _ticks(self) -> int:
        # Reading a count consumes one tick of each, so the difference stays exact. Downs
        # first: a request that ends between the two reads has already been counted up.
        downs = next(self._downs)
        return next(self._ups) - downs

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value) - self._ticks()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value -= amount

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function()`` at scrape time."""
        if not callable(function):
            raise TypeError(f"function must be callable, got {function!r}")
        self._function = function

    @property
    def value(self) -> float:
        if self._function is not None:
            return float(self._function())
        with self._lock:
            return self._value + self._ticks()

    def _reset(self) -> None:
        with self._lock:
            self._value = -float(self._ticks())


@dataclass(frozen=True)
class HistogramSnapshot:
    """A consistent copy of one histogram series (mergeable: counts add up exactly)."""

    count: int
    sum: float
    bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]  # non-cumulative, len(bounds) + 1 (the last is > max bound)
    sketch: Mapping[int, int] = field(repr=False)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (0 <= q <= 1) within 1% of the exact one; NaN when empty."""
        _check_quantile(q)
        if self.count == 0:
            return math.nan
        rank = q * (self.count - 1)
        seen = 0
        for key in sorted(self.sketch):
            seen += self.sketch[key]
            if seen > rank:
                return sketch_value(key)
        return sketch_value(max(self.sketch))  # pragma: no cover - rounding guard

    def as_dict(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "sum": self.sum}
        for q in quantiles:
            out[f"p{_quantile_label(q * 100)}"] = self.quantile(q)
        return out


def _check_quantile(q: float) -> None:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q must be between 0 and 1, got {q!r}")


class HistogramSeries:
    """Latency observations of one label combination: exact ``le`` counts plus a sketch.

    ``observe`` only appends to a small buffer (``deque.append`` is atomic, so no lock on the
    hot path); every ``FOLD_EVERY`` observations, and before any read, the buffer is folded
    into the sketch and bucket counts under the lock, vectorised with numpy when it is
    installed. Memory stays bounded: the buffer never holds much more than ``FOLD_EVERY``.
    """

    __slots__ = ("_append", "_bounds", "_bucket_counts", "_count", "_lock", "_pending",
                 "_sketch", "_sum", "resets")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._lock = threading.Lock()
        self.resets = 0  # how many times reset() zeroed it: a pusher of deltas starts over
        self._bounds = bounds
        self._bucket_counts = [0] * (len(bounds) + 1)
        self._sketch: dict[int, int] = {}
        self._count = 0
        self._sum = 0.0
        self._pending: deque[float] = deque()
        self._append = self._pending.append

    def observe(self, seconds: float) -> None:
        """Record one duration in seconds (>= 0)."""
        if not seconds >= 0:  # also rejects NaN
            raise ValueError(f"observed duration must be >= 0 seconds, got {seconds!r}")
        self._append(seconds)
        if len(self._pending) >= FOLD_EVERY:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Move buffered observations into the sketch (caller holds the lock)."""
        pending = self._pending
        n = len(pending)
        if not n:
            return
        popleft = pending.popleft
        values = [popleft() for _ in range(n)]  # items appended meanwhile wait for next time
        numpy = _numpy()
        if numpy is not None and n >= 64:
            _fold_numpy(numpy, values, self._bounds, self._sketch, self._bucket_counts)
        else:
            sketch, counts, bounds = self._sketch, self._bucket_counts, self._bounds
            for v in values:
                key = sketch_key(v)
                sketch[key] = sketch.get(key, 0) + 1
                counts[bisect_left(bounds, v)] += 1
        self._count += n
        self._sum += math.fsum(values)

    def quantile(self, q: float) -> float:
        """The ``q``-quantile of everything observed, within 1%; NaN when nothing was."""
        return self.snapshot().quantile(q)

    @property
    def count(self) -> int:
        with self._lock:
            self._fold()
            return self._count

    @property
    def sum(self) -> float:
        with self._lock:
            self._fold()
            return self._sum

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            self._fold()
            return HistogramSnapshot(
                count=self._count,
                sum=self._sum,
                bounds=self._bounds,
                bucket_counts=tuple(self._bucket_counts),
                sketch=dict(self._sketch),
            )

    def _merge(self, other: HistogramSnapshot) -> None:
        """Add another snapshot's observations (used by the Redis fleet view)."""
        if other.bounds != self._bounds:
            raise ValueError("cannot merge histograms with different buckets")
        with self._lock:
            for key, n in other.sketch.items():
                self._sketch[key] = self._sketch.get(key, 0) + n
            for i, n in enumerate(other.bucket_counts):
                self._bucket_counts[i] += n
            self._count += other.count
            self._sum += other.sum

    def _reset(self) -> None:
        with self._lock:
            self._fold()
            self._bucket_counts = [0] * (len(self._bounds) + 1)
            self._sketch = {}
            self._count = 0
            self._sum = 0.0
            self.resets += 1


FOLD_EVERY = 1024
_NUMPY: list[Any] = []


def _numpy() -> Any:
    """numpy if installed (``perfkit[semantic]`` brings it), else None; looked up once."""
    if not _NUMPY:
        try:
            import numpy

            _NUMPY.append(numpy)
        except ImportError:  # pragma: no cover - numpy is optional
            _NUMPY.append(None)
    return _NUMPY[0]


def _fold_numpy(
    np: Any, values: list[float], bounds: tuple[float, ...], sketch: dict[int, int],
    counts: list[int],
) -> None:
    arr = np.asarray(values, dtype=np.float64)
    # Same keys as sketch_key(), vectorised: offset from the zero bucket, counted with bincount.
    logs = np.log(np.maximum(arr, MIN_TRACKED_SECONDS)) * _INV_LOG_GAMMA
    keys = np.minimum(np.ceil(logs), _MAX_KEY).astype(np.int64)
    keys[arr <= MIN_TRACKED_SECONDS] = _ZERO_KEY
    per_key = np.bincount(keys - _ZERO_KEY)
    for offset in np.flatnonzero(per_key).tolist():
        key = offset + _ZERO_KEY
        sketch[key] = sketch.get(key, 0) + int(per_key[offset])
    slots = np.searchsorted(np.asarray(bounds), arr, side="left")
    for slot, n in enumerate(np.bincount(slots, minlength=len(bounds) + 1).tolist()):
        counts[slot] += n


# --------------------------------------------------------------------------- families

S = TypeVar("S", CounterSeries, GaugeSeries, HistogramSeries)


class _Family(Generic[S]):
    """A named metric with label names, holding one series per label combination."""

    kind: Kind

    def __init__(
        self, name: str, help: str, label_names: tuple[str, ...], max_series: int
    ) -> None:
        self.name = name
        self.help = help
        self.label_names = label_names
        self.max_series = max_series
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], S] = {}
        self._overflow_warned = False
        self._unlabelled: S | None = None
        if not label_names:
            self._unlabelled = self._series[()] = self._new_series()

    def _new_series(self) -> S:
        raise NotImplementedError

    def labels(self, *values: object, **by_name: object) -> S:
        """The series for one label combination (positional in declared order, or by name)."""
        key = self._label_key(values, by_name)
        series = self._series.get(key)
        if series is not None:
            return series
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= self.max_series:
                    key = (OVERFLOW_LABEL_VALUE,) * len(self.label_names)
                    if not self._overflow_warned:
                        self._overflow_warned = True
                        logger.warning(
                            "metric %r reached max_series=%d label combinations; further new "
                            "combinations are counted under %r (check for an unbounded label)",
                            self.name, self.max_series, OVERFLOW_LABEL_VALUE,
                        )
                    series = self._series.get(key)
                if series is None:
                    series = self._series[key] = self._new_series()
            return series

    def _label_key(
        self, values: tuple[object, ...], by_name: Mapping[str, object]
    ) -> tuple[str, ...]:
        if not self.label_names:
            raise ValueError(f"metric {self.name!r} has no labels; use it directly")
        if values and by_name:
            raise ValueError("pass label values positionally or by name, not both")
        if by_name:
            if set(by_name) != set(self.label_names):
                raise ValueError(
                    f"metric {self.name!r} takes labels {self.label_names}, "
                    f"got {tuple(sorted(by_name))}"
                )
            return tuple(str(by_name[n]) for n in self.label_names)
        if len(values) != len(self.label_names):
            raise ValueError(
                f"metric {self.name!r} takes {len(self.label_names)} label values "
                f"{self.label_names}, got {len(values)}"
            )
        return tuple(str(v) for v in values)

    def _only(self) -> S:
        if self._unlabelled is None:
            raise ValueError(
                f"metric {self.name!r} has labels {self.label_names}: call .labels(...) first"
            )
        return self._unlabelled

    def series(self) -> list[tuple[tuple[str, ...], S]]:
        """A copy of (label values, series) pairs, safe to iterate while others record."""
        with self._lock:
            return list(self._series.items())

    def reset(self) -> None:
        """Zero every series (keeps the label combinations already seen)."""
        for _, series in self.series():
            series._reset()


V = TypeVar("V", CounterSeries, GaugeSeries)


class _ScalarFamily(_Family[V]):
    """What counters and gauges share: ``inc``, ``set_function`` and ``value`` when unlabelled."""

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def set_function(self, function: Callable[[], float]) -> None:
        self._only().set_function(function)

    @property
    def value(self) -> float:
        return self._only().value


class Counter(_ScalarFamily[CounterSeries]):
    """A monotonically increasing count, exported as ``<name>_total``."""

    kind: Kind = "counter"

    def _new_series(self) -> CounterSeries:
        return CounterSeries()


class Gauge(_ScalarFamily[GaugeSeries]):
    """A value that goes up and down (in-flight requests, cache size)."""

    kind: Kind = "gauge"

    def _new_series(self) -> GaugeSeries:
        return GaugeSeries()

    def set(self, value: float) -> None:
        self._only().set(value)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    def unlabelled(self) -> GaugeSeries:
        """The one series of a gauge without labels, e.g. to keep its bound ``inc_one``."""
        return self._only()


class Histogram(_Family[HistogramSeries]):
    """Latency distribution in seconds: exact ``le`` buckets and sketch quantiles."""

    kind: Kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        label_names: tuple[str, ...],
        max_series: int,
        buckets: tuple[float, ...],
    ) -> None:
        self.buckets = buckets
        super().__init__(name, help, label_names, max_series)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self.buckets)

    def observe(self, seconds: float) -> None:
        self._only().observe(seconds)

    def quantile(self, q: float) -> float:
        return self._only().quantile(q)

    @property
    def count(self) -> int:
        return self._only().count

    @property
    def sum(self) -> float:
        return self._only().sum

    def snapshot(self) -> HistogramSnapshot:
        return self._only().snapshot()


Metric = Counter | Gauge | Histogram

# --------------------------------------------------------------------------- registry


class Registry:
    """A set of named metrics, rendered together (one per process is usual: ``REGISTRY``).

    ``process_metrics=True`` adds ``process_*`` gauges from psutil at scrape time (RSS, CPU
    seconds, open file descriptors, threads); without psutil installed they are left out and
    one warning names the extra to install (``perfkit[memory]``).
    """

    def __init__(
        self, *, process_metrics: bool = True, max_series: int = DEFAULT_MAX_SERIES
    ) -> None:
        _check_max_series(max_series)
        self.process_metrics = process_metrics
        self.max_series = max_series
        self._lock = threading.Lock()
        self._metrics: dict[str, Metric] = {}
        self._psutil_warned = False
        #: Extra text providers appended to the exposition (e.g. the Redis fleet view).
        self._collectors: list[Callable[[], Iterable[Metric]]] = []

    # -- registration --------------------------------------------------------------------

    def counter(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> Counter:
        """Get or create a counter (exported as ``<name>_total``)."""
        name = name if name.endswith("_total") else f"{name}_total"
        metric = self._get_or_create(Counter, name, help, labels, max_series, None)
        assert isinstance(metric, Counter)
        return metric

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int | None = None,
    ) -> Gauge:
        """Get or create a gauge."""
        metric = self._get_or_create(Gauge, name, help, labels, max_series, None)
        assert isinstance(metric, Gauge)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_series: int | None = None,
    ) -> Histogram:
        """Get or create a latency histogram (seconds); ``buckets`` are the exported ``le``."""
        bounds = _check_buckets(buckets)
        metric = self._get_or_create(Histogram, name, help, labels, max_series, bounds)
        assert isinstance(metric, Histogram)
        return metric

    def _get_or_create(
        self,
        cls: type[Any],
        name: str,
        help: str,
        labels: Sequence[str],
        max_series: int | None,
        buckets: tuple[float, ...] | None,
    ) -> Metric:
        label_names = _check_names(name, help, labels, cls)
        cap = self.max_series if max_series is None else max_series
        _check_max_series(cap)
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                same = type(existing) is cls and existing.label_names == label_names
                if same and isinstance(existing, Histogram):
                    same = existing.buckets == buckets
                if not same:
                    raise ValueError(
                        f"metric {name!r} is already registered as a {existing.kind} with labels "
                        f"{existing.label_names}; cannot re-register it differently"
                    )
                return existing
            if cls is Histogram:
                metric: Metric = Histogram(name, help, label_names, cap, buckets or ())
            else:
                metric = cls(name, help, label_names, cap)
            self._metrics[name] = metric
            return metric

    def get(self, name: str) -> Metric | None:
        """The metric registered under ``name`` (counters under their ``_total`` name)."""
        with self._lock:
            return self._metrics.get(name)

    def metrics(self) -> list[Metric]:
        with self._lock:
            return list(self._metrics.values())

    def unregister(self, name: str) -> None:
        with self._lock:
            self._metrics.pop(name, None)

    def add_collector(self, collector: Callable[[], Iterable[Metric]]) -> None:
        """Render extra metrics at scrape time (they replace local ones of the same name)."""
        self._collectors.append(collector)

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every metric as plain data: ``{name: {"kind", "help", "series": {labels: value}}}``.

        Label keys are tuples of label values in declared order (``()`` when unlabelled);
        histogram values are dicts with count, sum, p50, p95 and p99.
        """
        out: dict[str, dict[str, Any]] = {}
        for metric in self.metrics():
            series: dict[tuple[str, ...], Any] = {}
            for key, s in metric.series():
                if isinstance(s, HistogramSeries):
                    series[key] = s.snapshot().as_dict()
                else:
                    series[key] = s.value
            out[metric.name] = {
                "kind": metric.kind,
                "help": metric.help,
                "labels": metric.label_names,
                "series": series,
            }
        return out

    def reset(self) -> None:
        """Zero every series of every metric; registrations (and references to them) stay."""
        for metric in self.metrics():
            metric.reset()

    def render_prometheus(self) -> str:
        """Prometheus text exposition format 0.0.4 (``text/plain; version=0.0.4``)."""
        by_name: dict[str, Metric] = {m.name: m for m in self.metrics()}
        for collector in list(self._collectors):
            for metric in collector():
                by_name[metric.name] = metric
        lines: list[str] = []
        for metric in by_name.values():
            _render_metric(metric, lines)
        if self.process_metrics:
            _render_process_metrics(self, lines)
        return "\n".join(lines) + "\n" if lines else ""


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# --------------------------------------------------------------------------- validation


def _check_names(
    name: str, help: str, labels: Sequence[str], cls: type[Any]
) -> tuple[str, ...]:
    if not isinstance(name, str) or not _METRIC_NAME.match(name):
        raise ValueError(f"metric name must match {_METRIC_NAME.pattern}, got {name!r}")
    if not isinstance(help, str):
        raise TypeError(f"help must be a string, got {help!r}")
    if isinstance(labels, str):
        raise TypeError(f"labels must be a sequence of label names, not the string {labels!r}")
    label_names = tuple(labels)
    reserved = {"le", "quantile"} if cls is Histogram else set()
    for label in label_names:
        if not isinstance(label, str) or not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"label name must match {_LABEL_NAME.pattern}, got {label!r}")
        if label in reserved:
            raise ValueError(f"label name {label!r} is reserved for histograms")
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"labels must be distinct, got {label_names}")
    return label_names


def _check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(float(b) for b in buckets)
    if bounds and bounds[-1] == math.inf:
        bounds = bounds[:-1]  # +Inf is always exported
    if not bounds or any(math.isnan(b) for b in bounds):
        raise ValueError(f"buckets must be a non-empty sequence of numbers, got {buckets!r}")
    if any(b >= c for b, c in pairwise(bounds)):
        raise ValueError(f"buckets must be strictly increasing, got {buckets!r}")
    return bounds


def _check_max_series(max_series: int) -> None:
    if not isinstance(max_series, int) or max_series < 1:
        raise ValueError(f"max_series must be an int >= 1, got {max_series!r}")


# --------------------------------------------------------------------------- exposition


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``-Inf``, ``NaN``, shortest repr)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label_value(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _quantile_label(q: float) -> str:
    text = f"{q:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _render_metric(metric: Metric, lines: list[str]) -> None:
    name, names = metric.name, metric.label_names
    series: list[tuple[tuple[str, ...], CounterSeries | GaugeSeries | HistogramSeries]]
    series = sorted(metric.series(), key=lambda kv: kv[0])
    lines.append(f"# HELP {name} {_escape_help(metric.help)}")
    lines.append(f"# TYPE {name} {metric.kind}")
    snapshots: list[tuple[tuple[str, ...], HistogramSnapshot]] = []
    for key, s in series:
        if isinstance(s, HistogramSeries):
            snapshots.append((key, s.snapshot()))
        else:
            lines.append(f"{name}{_label_text(names, key)} {format_value(s.value)}")
    if not isinstance(metric, Histogram):
        return
    for key, snap in snapshots:
        cumulative = 0
        for bound, n in zip((*snap.bounds, math.inf), snap.bucket_counts):
            cumulative += n
            le = f'le="{format_value(bound) if bound == math.inf else repr(bound)}"'
            lines.append(f"{name}_bucket{_label_text(names, key, le)} {cumulative}")
        lines.append(f"{name}_sum{_label_text(names, key)} {format_value(snap.sum)}")
        lines.append(f"{name}_count{_label_text(names, key)} {snap.count}")
    qname = f"{name}_quantile"
    lines.append(f"# HELP {qname} {_escape_help(metric.help)} (quantiles, 1% relative accuracy)")
    lines.append(f"# TYPE {qname} gauge")
    for key, snap in snapshots:
        for q in DEFAULT_QUANTILES:
            extra = f'quantile="{_quantile_label(q)}"'
            value = snap.quantile(q)
            lines.append(f"{qname}{_label_text(names, key, extra)} {format_value(value)}")


def _process_samples() -> Iterator[tuple[str, str, str, float]]:
    """(name, kind, help, value) for this process, read now from psutil."""
    import psutil

    proc = psutil.Process(os.getpid())
    with proc.oneshot():
        mem = proc.memory_info()
        cpu = proc.cpu_times()
        threads = proc.num_threads()
        fds = proc.num_fds() if hasattr(proc, "num_fds") else proc.num_handles()
        started = proc.create_time()
    yield "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", mem.rss
    yield "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", mem.vms
    yield (
        "process_cpu_seconds_total", "counter", "Total user and system CPU time in seconds.",
        cpu.user + cpu.system,
    )
    yield "process_open_fds", "gauge", "Number of open file descriptors.", fds
    yield "process_threads", "gauge", "Number of OS threads in the process.", threads
    yield (
        "process_start_time_seconds", "gauge",
        "Start time of the process since unix epoch in seconds.", started,
    )


def _render_process_metrics(registry: Registry, lines: list[str]) -> None:
    try:
        samples = list(_process_samples())
    except ImportError:
        if not registry._psutil_warned:
            registry._psutil_warned = True
            logger.warning(
                "process_* metrics need psutil: pip install 'perfkit[memory]' "
                "(or Registry(process_metrics=False) to silence this)"
            )
        return
    for name, kind, help, value in samples:
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name} {format_value(float(value))}")


#: The process-wide default registry (what ``timed``, ``retry`` and the ASGI app use).
REGISTRY = Registry()


def resolve_registry(registry: Registry | None) -> Registry:
    """``registry``, or :data:`REGISTRY` for None; a TypeError naming the parameter otherwise."""
    if registry is None:
        return REGISTRY
    if not isinstance(registry, Registry):
        raise TypeError(f"registry must be a perfkit.Registry or None, got {registry!r}")
    return registry
