"""Keys: one entry per call meaning, never two meanings per entry (caching checklist §4, §7)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from perfkit import MemoryBackend, cached
from perfkit.caching.keys import KeyBuilder, canonical, shared_key


def key_of(func, *args, **kwargs):
    return KeyBuilder(func, "ns")(args, kwargs)


def f(a, b=2):
    return a + b


def test_positional_keyword_and_default_calls_share_one_key():
    keys = {key_of(f, 1, 2), key_of(f, 1, b=2), key_of(f, a=1, b=2), key_of(f, 1)}
    assert len(keys) == 1


def test_equal_values_of_different_types_do_not_collide():
    def h(x):
        return x

    keys = [key_of(h, 1), key_of(h, 1.0), key_of(h, True), key_of(h, "1"), key_of(h, b"1")]
    assert len(set(keys)) == len(keys)
    # lru_cache(typed=False) returns the value cached for 1.0 when called with True
    calls = []

    @cached
    def g(x):
        calls.append(x)
        return repr(x)

    assert [g(1.0), g(True), g(1)] == ["1.0", "True", "1"]
    assert len(calls) == 3


def test_no_separator_injection_between_arguments():
    def g(*parts):
        return parts

    # dogpile: f("a b") == f("a", "b");  cashews: g("x", "y:b:z") == g("x:b:y", "z")
    assert key_of(g, "a b") != key_of(g, "a", "b")
    assert key_of(g, "x", "y:b:z") != key_of(g, "x:b:y", "z")

    def two(a, b):
        return a

    assert key_of(two, "x", "y:b:z") != key_of(two, "x:b:y", "z")
    assert key_of(two, 1, 2) != key_of(two, "1", "2")


def test_containers_hash_by_value_and_keep_their_type():
    def h(x):
        return x

    assert key_of(h, [1, 2]) == key_of(h, [1, 2])
    assert key_of(h, [1, 2]) != key_of(h, (1, 2))
    assert key_of(h, {"a": 1, "b": 2}) == key_of(h, {"b": 2, "a": 1})
    assert key_of(h, {3, 1, 2}) == key_of(h, {1, 2, 3})
    assert key_of(h, [1]) != key_of(h, [1.0])
    assert key_of(h, {"a": [1, {2}]}) == key_of(h, {"a": [1, {2}]})


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Shade(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("a", "b", "other"),
    [
        (Color.RED, Color.RED, Shade.RED),
        (Point(1, 2), Point(1, 2), Point(2, 1)),
        (dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 13)),
        (dt.date(2024, 1, 1), dt.date(2024, 1, 1), dt.date(2024, 1, 2)),
        (dt.timedelta(seconds=5), dt.timedelta(seconds=5), dt.timedelta(seconds=6)),
        (decimal.Decimal("1.10"), decimal.Decimal("1.10"), decimal.Decimal("1.1")),
        (uuid.UUID(int=7), uuid.UUID(int=7), uuid.UUID(int=8)),
        (np.arange(6).reshape(2, 3), np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)),
        (np.array([1, 2], dtype=np.int32), np.array([1, 2], dtype=np.int32),
         np.array([1, 2], dtype=np.int64)),
        (np.float32(1.5), np.float32(1.5), np.float64(1.5)),
    ],
    ids=["enum", "dataclass", "datetime", "date", "timedelta", "decimal", "uuid",
         "ndarray-shape", "ndarray-dtype", "numpy-scalar"],
)
def test_value_types_hash_by_value(a, b, other):
    def h(x):
        return x

    assert a is not b or isinstance(a, enum.Enum)
    assert key_of(h, a) == key_of(h, b)
    assert key_of(h, a) != key_of(h, other)


def test_argument_without_stable_value_is_refused_naming_the_parameter():
    class Opaque:
        pass

    def h(x, client):
        return x

    with pytest.raises(TypeError, match=r"parameter 'client'.*key="):
        key_of(h, 1, Opaque())

    @cached
    def g(conn):
        return 1

    with pytest.raises(TypeError, match="'conn'"):
        g(object())


def test_custom_key_and_namespace():
    calls = []

    @cached(key=lambda user, request_id: user, namespace="profiles")
    def profile(user, request_id):
        calls.append(request_id)
        return f"profile of {user}"

    assert profile("ann", 1) == profile("ann", 2) == "profile of ann"
    assert calls == [1]
    assert profile.cache_key("ann", 3)[0] == "profiles"


def test_two_functions_on_one_backend_never_share_entries():
    shared = MemoryBackend(100)

    @cached(backend=shared)
    def square(x):
        return x * x

    @cached(backend=shared)
    def negate(x):
        return -x

    assert square(3) == 9
    assert negate(3) == -3  # cachetools with one mapping returns 9 here


def test_staticmethods_of_two_classes_do_not_collide():
    shared = MemoryBackend(100)

    class A:
        @staticmethod
        @cached(backend=shared)
        def name():
            return "A"

    class B:
        @staticmethod
        @cached(backend=shared)
        def name():
            return "B"

    assert (A.name(), B.name()) == ("A", "B")


def test_shared_key_is_stable_across_processes_and_hash_seeds():
    key = KeyBuilder(f, "mod:f")((["x", {"k": 1.5}], None), {})
    here = shared_key(key)
    code = (
        "from perfkit.caching.keys import KeyBuilder, shared_key\n"
        "def f(a, b=2): return a\n"
        "print(shared_key(KeyBuilder(f, 'mod:f')((['x', {'k': 1.5}], None), {})))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        outputs.add(out.stdout.strip())
    assert outputs == {here}
    assert here.startswith("perfkit:mod:f:")


def test_canonical_form_contains_only_scalars_and_tuples():
    def walk(value):
        if isinstance(value, tuple):
            for item in value:
                walk(item)
        else:
            assert type(value) in (int, float, bool, str, bytes, type(None)), value

    walk(canonical({"a": [Point(1, 2), {Color.BLUE}], "t": dt.datetime(2020, 1, 1)}))
