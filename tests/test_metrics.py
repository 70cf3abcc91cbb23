"""The metrics registry: counters, gauges, histograms, quantile accuracy, Prometheus export."""

from __future__ import annotations

import logging
import math
import random
import threading

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from perfkit.metrics import (
    OVERFLOW_LABEL_VALUE,
    RELATIVE_ACCURACY,
    Registry,
    sketch_key,
    sketch_value,
)


def parse(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_counter_get_or_create_and_total_suffix() -> None:
    reg = Registry(process_metrics=False)
    c = reg.counter("requests", "Requests served")
    assert reg.counter("requests", "Requests served") is c
    assert c.name == "requests_total"
    c.inc()
    c.inc(2.5)
    assert c.value == 3.5
    with pytest.raises(ValueError, match="amount must be >= 0"):
        c.inc(-1)


def test_conflicting_registration_names_the_metric() -> None:
    reg = Registry(process_metrics=False)
    reg.counter("jobs", "Jobs", labels=("queue",))
    with pytest.raises(ValueError, match="'jobs_total' is already registered"):
        reg.counter("jobs", "Jobs", labels=("other",))
    reg.gauge("depth", "Depth")
    with pytest.raises(ValueError, match="'depth'"):
        reg.histogram("depth", "Depth")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bad name"}, "metric name must match"),
        ({"labels": ("ok", "__reserved")}, "label name must match"),
        ({"labels": ("le",)}, "reserved for histograms"),
        ({"labels": ("a", "a")}, "labels must be distinct"),
        ({"buckets": (1.0, 0.5)}, "buckets must be strictly increasing"),
        ({"buckets": ()}, "buckets must be a non-empty"),
        ({"max_series": 0}, "max_series must be an int >= 1"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, object], message: str) -> None:
    reg = Registry(process_metrics=False)
    args: dict[str, object] = {"name": "latency_seconds", "help": "Latency"} | kwargs
    with pytest.raises(ValueError, match=message):
        reg.histogram(**args)  # type: ignore[arg-type]


def test_labels_string_is_rejected() -> None:
    with pytest.raises(TypeError, match="labels must be a sequence"):
        Registry().counter("x", "x", labels="route")


def test_labelled_metric_requires_labels_and_accepts_both_forms() -> None:
    reg = Registry(process_metrics=False)
    c = reg.counter("hits", "Hits", labels=("function", "tier"))
    with pytest.raises(ValueError, match=r"call \.labels\(\.\.\.\) first"):
        c.inc()
    assert c.labels("f", "l1") is c.labels(function="f", tier="l1")
    with pytest.raises(ValueError, match="takes labels"):
        c.labels(function="f")
    with pytest.raises(ValueError, match="takes 2 label values"):
        c.labels("f")
    with pytest.raises(ValueError, match="has no labels"):
        reg.counter("plain", "p").labels("x")


def test_label_cardinality_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(process_metrics=False)
    c = reg.counter("by_user", "Per user (a bad idea)", labels=("user",), max_series=10)
    with caplog.at_level(logging.WARNING, logger="perfkit.metrics"):
        for i in range(1000):
            c.labels(user=str(i)).inc()
    assert len(c.series()) == 11  # 10 real + 1 overflow
    overflow = c.labels(user="new-one")
    assert overflow is c.labels(user="another")
    assert overflow.value == 990
    assert sum(1 for r in caplog.records if "max_series=10" in r.getMessage()) == 1
    text = reg.render_prometheus()
    assert f'by_user_total{{user="{OVERFLOW_LABEL_VALUE}"}} 990' in text


def test_gauge_set_inc_dec_and_function() -> None:
    reg = Registry(process_metrics=False)
    g = reg.gauge("inflight", "In flight")
    g.inc()
    g.inc(4)
    g.dec(2)
    assert g.value == 3
    g.set(7.5)
    assert g.value == 7.5
    items = [1, 2, 3]
    size = reg.gauge("queue_size", "Queue size", labels=("queue",))
    size.labels("jobs").set_function(lambda: len(items))
    items.append(4)
    assert 'queue_size{queue="jobs"} 4' in reg.render_prometheus()
    with pytest.raises(TypeError, match="function must be callable"):
        g.set_function(3)  # type: ignore[arg-type]


def test_histogram_counts_sum_and_exact_buckets() -> None:
    reg = Registry(process_metrics=False)
    h = reg.histogram("op_seconds", "Op", buckets=(0.01, 0.1, 1.0))
    for v in (0.005, 0.01, 0.05, 0.1, 0.5, 2.0, 0.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap.count == 7
    assert snap.sum == pytest.approx(2.665)
    # le is inclusive, as in Prometheus: 0.01 lands in le=0.01, 0.1 in le=0.1
    assert snap.bucket_counts == (3, 2, 1, 1)
    with pytest.raises(ValueError, match="must be >= 0"):
        h.observe(-1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        h.observe(math.nan)
    with pytest.raises(ValueError, match="quantile q must be between 0 and 1"):
        h.quantile(1.5)
    assert math.isnan(reg.histogram("empty_seconds", "e").quantile(0.5))


@pytest.mark.parametrize("distribution", ["lognormal", "uniform", "bimodal", "exponential"])
def test_quantiles_within_two_percent_of_exact(distribution: str) -> None:
    rng = np.random.default_rng(42)
    n = 50_000
    if distribution == "lognormal":
        values = rng.lognormal(mean=-4, sigma=1.5, size=n)
    elif distribution == "uniform":
        values = rng.uniform(0.001, 0.2, size=n)
    elif distribution == "bimodal":
        values = np.concatenate([rng.normal(0.002, 0.0002, n // 2), rng.normal(0.5, 0.05, n // 2)])
        values = np.abs(values)
    else:
        values = rng.exponential(0.05, size=n)
    h = Registry(process_metrics=False).histogram("x_seconds", "x")
    for v in values.tolist():
        h.observe(v)
    for q in (0.5, 0.9, 0.95, 0.99, 0.999):
        exact = float(np.quantile(values, q, method="lower"))
        got = h.quantile(q)
        assert abs(got - exact) <= 0.02 * exact, (q, got, exact)
        # The sketch's own guarantee is tighter: 1% relative.
        assert abs(got - exact) <= RELATIVE_ACCURACY * exact * 1.0001


def test_sketch_memory_is_bounded_however_many_observations() -> None:
    h = Registry(process_metrics=False).histogram("wide_seconds", "w")
    rnd = random.Random(1)
    for _ in range(200_000):
        h.observe(10 ** rnd.uniform(-9, 6))  # the whole clamp range and beyond
    keys = h.snapshot().sketch
    assert len(keys) < 1800
    assert h.count == 200_000
    assert h.quantile(1.0) <= 1.01e5  # clamped to MAX_TRACKED_SECONDS


def test_sketch_key_value_roundtrip_is_within_accuracy() -> None:
    for v in (1e-8, 3.3e-6, 0.001, 0.25, 1.0, 42.0, 9e4):
        est = sketch_value(sketch_key(v))
        assert abs(est - v) <= RELATIVE_ACCURACY * v * 1.0001
    assert sketch_value(sketch_key(0.0)) == 0.0


def test_threads_lose_no_updates() -> None:
    reg = Registry(process_metrics=False)
    c = reg.counter("n", "n", labels=("worker",))
    h = reg.histogram("lat_seconds", "lat")
    per_thread = 20_000
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        counter = c.labels(str(i % 2))
        for _ in range(per_thread):
            counter.inc()
            h.observe(0.001)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.labels("0").value + c.labels("1").value == 8 * per_thread
    assert h.count == 8 * per_thread
    assert sum(h.snapshot().sketch.values()) == 8 * per_thread


def test_snapshot_and_reset() -> None:
    reg = Registry(process_metrics=False)
    c = reg.counter("calls", "Calls", labels=("fn",))
    h = reg.histogram("call_seconds", "Call latency", labels=("fn",))
    c.labels("f").inc(3)
    for v in (0.1, 0.2, 0.3):
        h.labels("f").observe(v)
    snap = reg.snapshot()
    assert snap["calls_total"]["series"][("f",)] == 3
    hist = snap["call_seconds"]["series"][("f",)]
    assert hist["count"] == 3
    assert hist["p50"] == pytest.approx(0.2, rel=0.01)
    assert set(hist) == {"count", "sum", "p50", "p95", "p99"}
    series = h.labels("f")
    reg.reset()
    assert c.labels("f").value == 0
    assert series.count == 0 and series is h.labels("f")  # references stay valid
    series.observe(0.5)
    assert h.labels("f").count == 1


def test_prometheus_text_is_read_back_by_prometheus_client() -> None:
    reg = Registry(process_metrics=False)
    c = reg.counter("http_requests", 'Requests, with "quotes"\nand a newline', labels=("route",))
    c.labels(route='/a"b\\c\nd').inc(2)
    c.labels(route="/plain").inc()
    reg.gauge("temperature", "Temp").set(-3.5)
    h = reg.histogram("db_seconds", "DB latency", labels=("query",), buckets=(0.01, 0.1, 1))
    for v in (0.005, 0.05, 0.5, 5.0):
        h.labels("q1").observe(v)
    families = parse(reg.render_prometheus())

    requests = families["http_requests"]
    assert requests.type == "counter"  # type: ignore[attr-defined]
    assert requests.documentation == 'Requests, with "quotes"\nand a newline'  # type: ignore[attr-defined]
    values = {s.labels["route"]: s.value for s in requests.samples}  # type: ignore[attr-defined]
    assert values == {'/a"b\\c\nd': 2.0, "/plain": 1.0}

    assert families["temperature"].samples[0].value == -3.5  # type: ignore[attr-defined]

    db = families["db_seconds"]
    assert db.type == "histogram"  # type: ignore[attr-defined]
    by_sample = {(s.name, s.labels.get("le")): s.value for s in db.samples}  # type: ignore[attr-defined]
    assert by_sample[("db_seconds_bucket", "0.01")] == 1
    assert by_sample[("db_seconds_bucket", "0.1")] == 2
    assert by_sample[("db_seconds_bucket", "1.0")] == 3
    assert by_sample[("db_seconds_bucket", "+Inf")] == 4
    assert by_sample[("db_seconds_count", None)] == 4
    assert by_sample[("db_seconds_sum", None)] == pytest.approx(5.555)

    quantiles = families["db_seconds_quantile"]
    assert quantiles.type == "gauge"  # type: ignore[attr-defined]
    got = {s.labels["quantile"]: s.value for s in quantiles.samples}  # type: ignore[attr-defined]
    assert set(got) == {"0.5", "0.95", "0.99"}
    assert got["0.5"] == pytest.approx(0.05, rel=0.01)


def test_process_metrics_from_psutil_are_collected_at_scrape_time() -> None:
    reg = Registry()
    first = parse(reg.render_prometheus())
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_threads"):
        assert first[name].samples[0].value > 0, name  # type: ignore[attr-defined]
    cpu_before = first["process_cpu_seconds"].samples[0].value  # type: ignore[attr-defined]
    deadline = 0
    while deadline < 3_000_000:  # burn a little CPU so the counter moves
        deadline += 1
    cpu_after = parse(reg.render_prometheus())["process_cpu_seconds"].samples[0].value  # type: ignore[attr-defined]
    assert cpu_after > cpu_before


def test_empty_registry_renders_empty_text() -> None:
    assert Registry(process_metrics=False).render_prometheus() == ""


def test_lock_free_inc_one_counts_exactly_across_threads_reads_and_resets() -> None:
    c = Registry(process_metrics=False).counter("ticks", "t")
    series = c.labels() if c.label_names else c._only()
    tick = series.inc_one

    def work() -> None:
        for _ in range(50_000):
            tick()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value == 200_000
    assert c.value == 200_000  # reading does not count
    c.inc(0.5)
    assert c.value == 200_000.5
    c.reset()
    assert c.value == 0
    tick()
    assert c.value == 1


def test_numpy_and_python_folds_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    import perfkit.metrics as metrics

    rnd = random.Random(5)
    values = [0.0, 1e-12, 0.005, 0.01, 0.1, 1.0, 10.0, 1e6] * 40
    values += [10 ** rnd.uniform(-7, 2) for _ in range(2000)]
    with_numpy = Registry(process_metrics=False).histogram("a_seconds", "a")
    for v in values:
        with_numpy.observe(v)
    monkeypatch.setattr(metrics, "_NUMPY", [None])
    pure = Registry(process_metrics=False).histogram("b_seconds", "b")
    for v in values:
        pure.observe(v)
    a, b = with_numpy.snapshot(), pure.snapshot()
    assert a.count == b.count == len(values)
    assert a.bucket_counts == b.bucket_counts
    assert a.sum == pytest.approx(b.sum)
    # log() may differ in the last ulp between numpy and math: allow a neighbouring key
    assert sum(a.sketch.values()) == sum(b.sketch.values())
    for q in (0.01, 0.5, 0.9, 0.99):
        assert a.quantile(q) == pytest.approx(b.quantile(q), rel=0.021)


def test_observations_are_buffered_but_never_lost_or_unbounded() -> None:
    from perfkit.metrics import FOLD_EVERY

    h = Registry(process_metrics=False).histogram("buf_seconds", "b")
    series = h._only()
    for _ in range(FOLD_EVERY * 10 + 3):
        series.observe(0.002)
        assert len(series._pending) < FOLD_EVERY
    assert h.count == FOLD_EVERY * 10 + 3  # reading folds the rest
    assert len(series._pending) == 0
