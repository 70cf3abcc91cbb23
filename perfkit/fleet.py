"""Many processes, one view: merge every worker's metrics in Redis.

A web service usually runs several worker processes; each has its own
:class:`perfkit.Registry`, so one scrape of ``/metrics`` sees one worker. A
:class:`RedisSink` makes every process push what changed since its last push (counter
increments, histogram bucket and sketch counts, current gauge values) into Redis every
``interval`` seconds, in one MULTI/EXEC transaction; and it makes the registry render the
merged fleet view instead of the local one::

    sink = RedisSink(REGISTRY, "redis://127.0.0.1:6379/0", prefix="myapp:metrics")
    sink.start()      # background push every `interval` s (and one more at exit)
    REGISTRY.render_prometheus()   # now: counters and histograms of the whole fleet

Merging is exact: counters and histogram counts add up, and histogram quantiles come from the
summed sketches (so a fleet p99 is a true p99 within 1%, not an average of p99s). Gauges are
summed over the processes that pushed within the last ``3 x interval`` (in-flight requests,
cache sizes); a dead worker's gauges drop out (and are deleted when the view is read).
``process_*`` metrics stay per process.

Every key expires ``retention`` seconds (default 7 days) after the fleet last wrote it, and
workers silent for longer than that are forgotten, so restarts do not grow the keys.
Redis down: the push fails, one warning is logged, nothing is lost (the deltas are pushed when
Redis is back) and the registry renders the local view meanwhile.

With a sink attached, ``render_prometheus()`` talks to Redis (a blocking client, 2 s
timeouts): from async code, render in a worker thread (``asyncio.to_thread``), never on the
event loop.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from perfkit.metrics import (
    Counter,
    CounterSeries,
    Gauge,
    GaugeSeries,
    Histogram,
    HistogramSnapshot,
    Metric,
    Registry,
)

__all__ = ["DEFAULT_RETENTION", "RedisSink"]

logger = logging.getLogger("perfkit.fleet")

DEFAULT_RETENTION = 7 * 24 * 3600
_SEP = "\x1f"


class RedisSink:
    """Push a registry's changes to Redis and render the fleet-wide merge (see module doc)."""

    def __init__(
        self,
        registry: Registry,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "perfkit:metrics",
        interval: float = 10.0,
        retention: float = DEFAULT_RETENTION,
        process_id: str | None = None,
        client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a perfkit.Registry, got {registry!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        for label, value in (("interval", interval), ("retention", retention)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 < value < math.inf:
                raise ValueError(f"{label} must be > 0 seconds, got {value!r}")
        if client is None:
            try:
                import redis
            except ImportError:
                raise ImportError(
                    "RedisSink needs redis-py: pip install 'perfkit[redis]'"
                ) from None
            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self.registry = registry
        self.prefix = prefix
        self.interval = float(interval)
        self.retention = int(retention)
        self.process_id = process_id or f"{socket.gethostname()}:{os.getpid()}"
        self._redis = client
        self._clock = clock
        self._lock = threading.Lock()  # one push at a time
        # What the last successful push sent, per series, with the series' reset count then.
        self._pushed_counters: dict[tuple[str, tuple[str, ...]], tuple[int, float]] = {}
        self._pushed_histograms: dict[
            tuple[str, tuple[str, ...]], tuple[int, HistogramSnapshot | None]] = {}
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        registry.add_collector(self.collect)

    # -- pushing ------------------------------------------------------------------------

    def flush(self) -> bool:
        """Push everything that changed since the last successful push; False if Redis failed."""
        with self._lock:
            pending_counters: dict[tuple[str, tuple[str, ...]], tuple[int, float]] = {}
            pending_histograms: dict[
                tuple[str, tuple[str, ...]], tuple[int, HistogramSnapshot | None]] = {}
            pipe = self._redis.pipeline(transaction=True)
            touched: set[str] = set()
            for metric in self.registry.metrics():
                meta: dict[str, Any] = {"kind": metric.kind, "help": metric.help,
                        "labels": list(metric.label_names)}
                if isinstance(metric, Histogram):
                    meta["buckets"] = list(metric.buckets)
                pipe.hset(self._key("meta"), metric.name, json.dumps(meta))
                for labels, series in metric.series():
                    key = (metric.name, labels)
                    field = json.dumps(labels)
                    resets = series.resets if not isinstance(series, GaugeSeries) else 0
                    if isinstance(series, CounterSeries):
                        value = series.value
                        if series.resets != resets:
                            continue  # reset while read: the next push sends it
                        pushed_resets, pushed = self._pushed_counters.get(key, (resets, 0.0))
                        delta = value - pushed if pushed_resets == resets else value
                        if delta < 0:  # a set_function() counter that started over
                            delta = value
                        if delta:
                            pipe.hincrbyfloat(self._key("c", metric.name), field, delta)
                            touched.add(self._key("c", metric.name))
                        pending_counters[key] = (resets, value)
                    elif isinstance(series, GaugeSeries):
                        gauge_key = self._key("g", metric.name)
                        pipe.hset(gauge_key, f"{self.process_id}{_SEP}{field}", series.value)
                        touched.add(gauge_key)
                    else:
                        snap = series.snapshot()
                        if series.resets != resets:
                            continue  # reset while read: the next push sends it
                        pushed_resets, before = self._pushed_histograms.get(key, (resets, None))
                        self._push_histogram(pipe, metric.name, field, snap,
                                             before if pushed_resets == resets else None,
                                             touched)
                        pending_histograms[key] = (resets, snap)
            now = self._clock()
            pipe.zadd(self._key("procs"), {self.process_id: now})
            # Workers come and go: forget those silent for longer than the retention.
            pipe.zremrangebyscore(self._key("procs"), "-inf", now - self.retention)
            touched.update({self._key("meta"), self._key("procs")})
            for redis_key in touched:
                pipe.expire(redis_key, self.retention)
            try:
                pipe.execute()
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning("metrics push to Redis failed (%r); keeping the changes "
                                   "and serving the local view until it is back", exc)
                return False
            if self._failing:
                self._failing = False
                logger.warning("metrics push to Redis works again")
            self._pushed_counters.update(pending_counters)
            self._pushed_histograms.update(pending_histograms)
            return True

    def _push_histogram(
        self, pipe: Any, name: str, field: str, snap: HistogramSnapshot,
        before: HistogramSnapshot | None, touched: set[str],
    ) -> None:
        key = self._key("h", name)
        count = snap.count - (before.count if before else 0)
        if not count:
            return
        touched.add(key)
        pipe.hincrby(key, f"{field}{_SEP}count", count)
        pipe.hincrbyfloat(key, f"{field}{_SEP}sum", snap.sum - (before.sum if before else 0.0))
        for i, n in enumerate(snap.bucket_counts):
            d = n - (before.bucket_counts[i] if before else 0)
            if d:
                pipe.hincrby(key, f"{field}{_SEP}b{i}", d)
        for sketch_key, n in snap.sketch.items():
            d = n - (before.sketch.get(sketch_key, 0) if before else 0)
            if d:
                pipe.hincrby(key, f"{field}{_SEP}s{sketch_key}", d)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- reading ------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """The fleet view as metric objects (pushes this process's changes first).

        With Redis down, returns nothing: the registry then renders its local metrics.
        """
        if not self.flush():
            return []
        try:
            return self._read()
        except Exception as exc:
            logger.warning("reading the fleet metrics from Redis failed: %r", exc)
            return []

    def _read(self) -> list[Metric]:
        redis = self._redis
        meta = {_text(k): json.loads(v) for k, v in redis.hgetall(self._key("meta")).items()}
        alive_since = self._clock() - 3 * self.interval
        alive = {_text(p) for p in redis.zrangebyscore(self._key("procs"), alive_since, "+inf")}
        out: list[Metric] = []
        for name, info in sorted(meta.items()):
            labels = tuple(info["labels"])
            cap = max(self.registry.max_series, 1)
            kind = info["kind"]
            if kind == "counter":
                counter = Counter(name, info["help"], labels, cap)
                for field, value in self._redis.hgetall(self._key("c", name)).items():
                    counter_series = _series(counter, field)
                    counter_series.inc(float(value))
                out.append(counter)
            elif kind == "gauge":
                gauge = Gauge(name, info["help"], labels, cap)
                dead = []
                for field, value in self._redis.hgetall(self._key("g", name)).items():
                    process, _, label_json = _text(field).partition(_SEP)
                    if process in alive:
                        _series(gauge, label_json).inc(float(value))
                    else:
                        dead.append(field)
                if dead:  # a worker that pushes again sets its (absolute) value again
                    self._redis.hdel(self._key("g", name), *dead)
                out.append(gauge)
            elif kind == "histogram":
                histogram = Histogram(name, info["help"], labels, cap, tuple(info["buckets"]))
                for label_json, snap in _histogram_snapshots(
                    self._redis.hgetall(self._key("h", name)), histogram.buckets
                ):
                    hist_series = _series(histogram, label_json)
                    hist_series._merge(snap)
                out.append(histogram)
        return out

    # -- background ---------------------------------------------------------------------

    def start(self) -> RedisSink:
        """Push every ``interval`` seconds from a daemon thread, and once more at exit."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="perfkit-metrics-sink",
                                            daemon=True)
            self._thread.start()
            atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Stop the background pushes and push one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # pragma: no cover - flush already catches Redis errors
                logger.exception("metrics push failed")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _series(metric: Any, label_json: Any) -> Any:
    labels = tuple(json.loads(_text(label_json)))
    return metric.labels(*labels) if labels else metric._only()


def _histogram_snapshots(
    fields: dict[Any, Any], bounds: tuple[float, ...]
) -> Iterable[tuple[str, HistogramSnapshot]]:
    parts: dict[str, dict[str, Any]] = {}
    for raw_field, raw_value in fields.items():
        label_json, _, part = _text(raw_field).partition(_SEP)
        entry = parts.setdefault(
            label_json, {"count": 0, "sum": 0.0, "buckets": [0] * (len(bounds) + 1), "sketch": {}}
        )
        value = _text(raw_value)
        if part == "count":
            entry["count"] = int(value)
        elif part == "sum":
            entry["sum"] = float(value)
        elif part.startswith("b") and int(part[1:]) <= len(bounds):
            entry["buckets"][int(part[1:])] = int(value)
        elif part.startswith("s"):
            entry["sketch"][int(part[1:])] = int(value)
    for label_json, entry in parts.items():
        yield label_json, HistogramSnapshot(
            count=entry["count"], sum=entry["sum"], bounds=bounds,
            bucket_counts=tuple(entry["buckets"]), sketch=entry["sketch"],
        )
