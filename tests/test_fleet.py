"""RedisSink: two real worker processes, one merged view; retention; Redis going down."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from perfkit import Registry
from perfkit.fleet import DEFAULT_RETENTION, RedisSink

pytestmark = pytest.mark.redis

WORKER = textwrap.dedent(
    """
    import sys
    from perfkit import Registry
    from perfkit.fleet import RedisSink

    url, prefix, worker, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    registry = Registry(process_metrics=False)
    sink = RedisSink(registry, url, prefix=prefix, interval=60)
    requests = registry.counter("requests", "Requests", labels=("route",))
    latency = registry.histogram("latency_seconds", "Latency")
    inflight = registry.gauge("inflight", "In flight")
    for i in range(n):
        requests.labels("/a").inc()
        # worker 1 is fast (1 ms), worker 2 slow (100 ms)
        latency.observe(0.001 if worker == "1" else 0.1)
    inflight.set(int(worker) * 10)
    assert sink.flush()
    requests.labels("/b").inc(5)       # a second push only sends what changed
    assert sink.flush()
    print("ok")
    """
)


def run_worker(redis_url: str, prefix: str, worker: str, n: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, redis_url, prefix, worker, str(n)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.fixture
def prefix(redis_url: str, unique_ns: str) -> Any:
    import redis

    prefix = f"{unique_ns}:metrics"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=100):
        client.delete(key)
    client.close()


def test_two_processes_one_view(redis_url: str, prefix: str) -> None:
    run_worker(redis_url, prefix, "1", 900)
    run_worker(redis_url, prefix, "2", 100)
    viewer = Registry(process_metrics=False)
    sink = RedisSink(viewer, redis_url, prefix=prefix, interval=60)
    families = {f.name: f for f in text_string_to_metric_families(viewer.render_prometheus())}
    requests = {s.labels["route"]: s.value for s in families["requests"].samples}
    assert requests == {"/a": 1000.0, "/b": 10.0}
    latency = {s.name: s.value for s in families["latency_seconds"].samples
               if "le" not in s.labels}
    assert latency["latency_seconds_count"] == 1000
    assert latency["latency_seconds_sum"] == pytest.approx(900 * 0.001 + 100 * 0.1)
    quantiles = {s.labels["quantile"]: s.value
                 for s in families["latency_seconds_quantile"].samples}
    # merged sketches: 90% of the fleet's calls took 1 ms, the slowest 10% took 100 ms
    assert quantiles["0.5"] == pytest.approx(0.001, rel=0.01)
    assert quantiles["0.95"] == pytest.approx(0.1, rel=0.01)
    # gauges: summed over processes that pushed recently
    assert families["inflight"].samples[0].value == 30
    assert sink.flush()


def test_a_local_reset_between_pushes_loses_and_invents_nothing(
    redis_url: str, prefix: str,
) -> None:
    """After ``registry.reset()``, the next push sends everything recorded since the reset,
    even when more was recorded than before it (no negative or missing deltas)."""
    registry = Registry(process_metrics=False)
    sink = RedisSink(registry, redis_url, prefix=prefix, interval=60)
    requests = registry.counter("requests", "Requests")
    latency = registry.histogram("latency_seconds", "Latency", buckets=(0.01, 1.0))
    requests.inc(5)
    for _ in range(3):
        latency.observe(0.5)
    assert sink.flush()
    registry.reset()
    requests.inc(7)  # more than before the reset
    for _ in range(5):
        latency.observe(0.001)  # and into another bucket
    assert sink.flush()
    viewer = Registry(process_metrics=False)
    RedisSink(viewer, redis_url, prefix=prefix, interval=60)
    families = {f.name: f for f in text_string_to_metric_families(viewer.render_prometheus())}
    assert families["requests"].samples[0].value == 12
    buckets = {s.labels["le"]: s.value for s in families["latency_seconds"].samples
               if s.name == "latency_seconds_bucket"}
    assert buckets == {"0.01": 5, "1.0": 8, "+Inf": 8}
    count = [s.value for s in families["latency_seconds"].samples
             if s.name == "latency_seconds_count"]
    assert count == [8]


def test_retention_is_set_on_every_key(redis_url: str, prefix: str) -> None:
    import redis

    registry = Registry(process_metrics=False)
    sink = RedisSink(registry, redis_url, prefix=prefix, retention=3600)
    registry.counter("c", "c").inc()
    registry.histogram("h_seconds", "h").observe(0.2)
    registry.gauge("g", "g").set(1)
    assert sink.flush()
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=100))
    assert len(keys) == 5  # meta, procs, c, h, g
    assert all(0 < client.ttl(k) <= 3600 for k in keys)
    client.close()
    assert DEFAULT_RETENTION == 7 * 24 * 3600


def test_dead_workers_gauges_drop_out(redis_url: str, prefix: str) -> None:
    now = [1000.0]
    old = Registry(process_metrics=False)
    old_sink = RedisSink(old, redis_url, prefix=prefix, interval=10, process_id="old",
                         clock=lambda: now[0])
    old.gauge("inflight", "In flight").set(7)
    assert old_sink.flush()
    now[0] += 100  # "old" has not pushed for 10 intervals
    live = Registry(process_metrics=False)
    RedisSink(live, redis_url, prefix=prefix, interval=10, process_id="live",
              clock=lambda: now[0])
    live.gauge("inflight", "In flight").set(2)
    text = live.render_prometheus()
    assert "inflight 2" in text


def test_redis_down_degrades_to_local_view_and_loses_nothing(
    redis_server: Any, unique_ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(process_metrics=False)
    sink = RedisSink(registry, redis_server.url, prefix=unique_ns)
    hits = registry.counter("hits", "Hits")
    hits.inc(3)
    assert sink.flush()
    redis_server.stop()
    hits.inc(4)
    with caplog.at_level(logging.WARNING, logger="perfkit.fleet"):
        assert not sink.flush()
        assert not sink.flush()
        text = registry.render_prometheus()  # local view, no exception
    assert "hits_total 7" in text
    assert sum("push to Redis failed" in r.getMessage() for r in caplog.records) == 1
    redis_server.start()  # a fresh, empty server on the same port
    assert sink.flush()
    # the 4 increments made while Redis was down were kept and pushed now
    families = {f.name: f for f in text_string_to_metric_families(registry.render_prometheus())}
    assert families["hits"].samples[0].value == 4


def test_background_thread_pushes_and_stops(redis_url: str, prefix: str) -> None:
    registry = Registry(process_metrics=False)
    sink = RedisSink(registry, redis_url, prefix=prefix, interval=0.05)
    registry.counter("ticks", "Ticks").inc(2)
    sink.start()
    sink.stop()  # stop pushes once more, synchronously
    viewer = Registry(process_metrics=False)
    RedisSink(viewer, redis_url, prefix=prefix, process_id="viewer")
    assert "ticks_total 2" in viewer.render_prometheus()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        RedisSink(Registry(), interval=0, client=object())
    with pytest.raises(ValueError, match="retention must be > 0"):
        RedisSink(Registry(), retention=-1, client=object())
    with pytest.raises(TypeError, match=r"registry must be a perfkit\.Registry"):
        RedisSink(object(), client=object())  # type: ignore[arg-type]


def test_dead_workers_are_forgotten_so_keys_stay_bounded(redis_url: str, prefix: str) -> None:
    """Workers restart (new pid, new process id): the live ones keep refreshing the keys'
    expiry, so the entries of the dead ones must be removed, or the hashes grow forever."""
    import redis

    now = [1000.0]
    for worker in range(5):  # five generations of one worker, each dead after a push
        registry = Registry(process_metrics=False)
        sink = RedisSink(registry, redis_url, prefix=prefix, interval=10, retention=3600,
                         process_id=f"gen-{worker}", clock=lambda: now[0])
        registry.gauge("inflight", "In flight").set(1)
        assert sink.flush()
        now[0] += 4000  # past the retention
    live = Registry(process_metrics=False)
    live_sink = RedisSink(live, redis_url, prefix=prefix, interval=10, retention=3600,
                          process_id="live", clock=lambda: now[0])
    live.gauge("inflight", "In flight").set(2)
    assert "inflight 2" in live.render_prometheus()
    assert live_sink.flush()
    client = redis.Redis.from_url(redis_url)
    gauge_fields = [f.decode() for f in client.hkeys(f"{prefix}:g:inflight")]
    procs = [p.decode() for p in client.zrange(f"{prefix}:procs", 0, -1)]
    client.close()
    assert [f.split("\x1f")[0] for f in gauge_fields] == ["live"]
    assert procs == ["live"]
