"""The adaptive memory backend: its control law, driven by a fake clock and memory probe."""

from __future__ import annotations

import logging
import random

import pytest

from perfkit import cached
from perfkit.caching import AdaptiveMemoryBackend
from perfkit.caching.backends.base import MISSING


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Probe:
    def __init__(self, used: float = 0.5) -> None:
        self.used = used

    def __call__(self) -> float:
        return self.used


def make(**kw):
    clock, probe = Clock(), Probe()
    options = dict(
        min_entries=10, max_entries=200, max_bytes=1_000_000, interval=1.0,
        min_accesses=50, memory_probe=probe, clock=clock,
    )
    options.update(kw)
    return AdaptiveMemoryBackend(**options), clock, probe


def access(backend, key):
    """What the decorator does: read, and on a miss compute and write."""
    if backend.get(("ns", "i", key)) is MISSING:
        backend.set(("ns", "i", key), key, None)


def window(backend, clock, keys):
    for k in keys:
        access(backend, k)
    clock.now += 1.0
    return backend.maybe_adjust()


def test_grows_when_the_hit_rate_falls_and_there_is_headroom(caplog):
    backend, clock, _ = make()
    # A working set of 8 fits in 10 entries: hits, no growth.
    assert window(backend, clock, [i % 8 for i in range(200)]) is None
    assert backend.capacity == 10 and backend.last_hit_rate > 0.9
    # The working set grows to 30: the hit rate falls, evicted keys come back: grow.
    caplog.set_level(logging.INFO, "perfkit.cache.adaptive")
    step = window(backend, clock, [i % 30 for i in range(300)])
    assert step is not None and (step.old, step.new) == (10, 15)
    assert backend.capacity == 15 and backend.adjustments == 1
    assert "missed recently evicted keys" in step.reason and "was 0.9" in step.reason
    assert any("capacity 10 -> 15" in r.getMessage() for r in caplog.records)
    # It keeps growing (one step per window) until the working set fits, then holds.
    for _ in range(10):
        window(backend, clock, [i % 30 for i in range(300)])
    assert 30 <= backend.capacity <= 50
    held = backend.capacity
    window(backend, clock, [i % 30 for i in range(300)])
    assert backend.capacity == held and backend.last_hit_rate > 0.9


def test_a_scan_of_new_keys_does_not_grow_it():
    backend, clock, _ = make()
    for w in range(5):
        assert window(backend, clock, range(w * 1000, w * 1000 + 300)) is None
    assert backend.capacity == 10 and backend.adjustments == 0


def test_no_growth_without_memory_headroom():
    backend, clock, probe = make()
    probe.used = 0.85  # between memory_low (0.80) and memory_high (0.90): hold
    for _ in range(5):
        assert window(backend, clock, [i % 30 for i in range(300)]) is None
    assert backend.capacity == 10


def test_shrinks_under_memory_pressure_and_evicts_at_once():
    backend, clock, probe = make(initial_entries=100)
    window(backend, clock, [i % 100 for i in range(300)])
    assert len(backend) == 100
    probe.used = 0.95
    step = window(backend, clock, [i % 100 for i in range(300)])
    assert step is not None and (step.old, step.new) == (100, 70)
    assert "memory pressure: 95%" in step.reason
    assert len(backend) <= 70
    for _ in range(20):
        window(backend, clock, [1, 2, 3])  # pressure acts even on a quiet window
    assert backend.capacity == 10 and len(backend) <= 10


def test_rate_limited_to_one_step_per_interval():
    backend, clock, probe = make(initial_entries=100)
    probe.used = 0.95
    clock.now += 1.0
    for _ in range(1000):
        backend.set(("ns", "i", random.random()), 1, None)
    assert backend.adjustments == 1  # many writes, one window, one step
    clock.now += 0.5
    backend.set(("ns", "i", -1), 1, None)
    assert backend.adjustments == 1
    assert [a.new for a in backend.history] == [70]


def test_never_exceeds_its_byte_budget_whatever_the_workload():
    backend, clock, probe = make(max_entries=10_000, max_bytes=20_000, min_accesses=20)
    rng = random.Random(7)
    for step in range(5000):
        key = int(rng.paretovariate(1.0)) if rng.random() < 0.7 else rng.randrange(10**6)
        size = rng.choice([10, 100, 1000, 5000, 30_000])
        backend.set(("ns", "i", key), "x" * size, None)
        backend.get(("ns", "i", rng.randrange(50)))
        assert backend.currsize_bytes <= 20_000
        assert len(backend) <= backend.capacity
        if step % 100 == 0:
            clock.now += 1.0
            probe.used = rng.choice([0.3, 0.5, 0.95])
    assert backend.rejected > 0  # the 30 kB values never fit


class _Record:
    def __init__(self, payload):
        self.payload = payload


class _Slotted:
    __slots__ = ("payload",)

    def __init__(self, payload):
        self.payload = payload


@pytest.mark.parametrize(
    "shape",
    [
        lambda blob: [[blob]],  # nested lists: one level of items hid the payload
        lambda blob: {"rows": [blob]},
        lambda blob: ({"a": (blob,)},),
        lambda blob: _Record(blob),  # an object's attributes
        lambda blob: _Slotted([blob]),
    ],
)
def test_byte_budget_holds_for_nested_values(shape):
    """Real bytes, not only the estimate's: 40 values each holding 50 kB under a 100 kB
    budget must leave at most 2 of them cached."""
    backend, _, _ = make(max_entries=10_000, initial_entries=1000, max_bytes=100_000)
    for i in range(40):
        backend.set(("ns", "i", i), shape(bytes([i % 256]) * 50_000), None)
        assert backend.currsize_bytes <= 100_000
    assert len(backend) <= 2


def test_estimate_is_bounded_for_huge_containers():
    from perfkit.caching.backends.memory import estimate_size

    rows = [(f"{i:0100d}", i) for i in range(200_000)]  # distinct 100-char strings
    estimate = estimate_size(rows)
    assert estimate > 200_000 * 100  # extrapolated, not just the outer list
    assert estimate < 200_000 * 1000  # and not wildly over
    few = [[f"{i:0100d}"] for i in range(50)]
    assert estimate_size([few, few]) < 1.1 * estimate_size(few)  # a shared list counts once


def test_ghost_list_follows_the_entries_held_not_the_capacity():
    """Under a small byte budget the cache holds few entries while its capacity is large:
    the ghost list (memory outside the budget) must stay proportional to what is held."""
    backend, _, _ = make(min_entries=1, max_entries=65_536, initial_entries=65_536,
                         max_bytes=2_000)
    for i in range(100_000):
        backend.set(("ns", "i", i), i, None)
    assert len(backend) < 100
    assert len(backend._ghosts) <= 4 * max(len(backend), backend.min_entries) + 4


def test_capacity_stays_within_min_and_max():
    backend, clock, _ = make(max_entries=40)
    for _ in range(30):
        window(backend, clock, [i % 45 for i in range(900)])
    assert backend.capacity == 40


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_entries": 0}, "min_entries"),
        ({"min_entries": 300}, "min_entries"),
        ({"initial_entries": 5}, "initial_entries"),
        ({"max_bytes": -1}, "max_bytes"),
        ({"interval": 0}, "interval"),
        ({"memory_low": 0.95}, "memory_low"),
        ({"grow_factor": 1.0}, "grow_factor"),
        ({"shrink_factor": 1.5}, "shrink_factor"),
        ({"grow_threshold": 2}, "grow_threshold"),
    ],
)
def test_bad_settings_name_the_parameter(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make(**kwargs)


def test_default_probe_reads_real_memory():
    backend = AdaptiveMemoryBackend()
    assert 0.0 < backend.memory_probe() < 1.0
    limited = AdaptiveMemoryBackend(process_limit=10**12)
    assert 0.0 < limited.memory_probe() < 0.01


def test_works_under_the_decorator():
    backend, clock, _ = make()
    calls = []

    @cached(backend=backend)
    def square(x):
        calls.append(x)
        return x * x

    for _ in range(6):
        for i in range(30):
            square(i)
        clock.now += 1.0
    assert backend.capacity > 10
    before = len(calls)
    for i in range(30):
        square(i)
    assert len(calls) - before < 30  # it now holds more of the working set
