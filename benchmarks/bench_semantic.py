"""Semantic cache lookup against a plain numpy brute-force search (the floor), with and
without compression, and conversation-memory append cost in memory and in Redis.

Vectors are synthetic but shaped like sentence embeddings: unit vectors with most of
their energy in a few dozen directions. Each query is a stored vector plus noise (cosine
~0.9 to it: a paraphrase), so every lookup is a hit and the case checks it returns the
entry a brute-force search says is nearest.

Both perfkit and the floor use numpy's BLAS gemv. On a busy machine OpenBLAS's threads
stall each other (a 10k x 384 product can take 10 ms instead of 0.7 ms); run with
``OPENBLAS_NUM_THREADS=1`` for stable figures, as latency-sensitive services should.
"""

from __future__ import annotations

import os
import tracemalloc
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.harness import Case, Unavailable

REDIS_URL = os.environ.get("PERFKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
QUERIES = 256
CTX = {"tenant": "bench"}


def _data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = 48
    scales = (1.0 / np.arange(1, latent + 1) ** 0.5).astype(np.float32)
    mix = rng.standard_normal((latent, dim)).astype(np.float32)
    x = (rng.standard_normal((n, latent)).astype(np.float32) * scales) @ mix
    x += 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = rng.choice(n, QUERIES, replace=False)
    q = x[picks] + 0.03 * rng.standard_normal((QUERIES, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x.astype(np.float32), q.astype(np.float32)


class _TableEmbedder:
    """Prompts ``e<i>`` / ``q<i>`` map to precomputed rows: lookups pay no embedding."""

    def __init__(self, x: np.ndarray, q: np.ndarray) -> None:
        self.x, self.q = x, q
        self.id = f"bench-table:{x.shape[1]}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([(self.x if t[0] == "e" else self.q)[int(t[1:])] for t in texts])


def _lookup_cases(n: int, dim: int, compress: int | None, ops: int) -> list[Case]:
    from perfkit import SemanticCache

    x, q = _data(n, dim)
    truth = np.argmax(q @ x.T, axis=1)
    group = f"semantic lookup {n // 1000}k x {dim}"
    pos = [0]

    def brute(k: int) -> None:
        for _ in range(k):
            i = pos[0] = (pos[0] + 1) % QUERIES
            best = int(np.argmax(x @ q[i]))
            assert best == truth[i]

    cases = [Case(group, "numpy brute force argmax(X @ q)", run=brute, baseline=True, ops=ops)]

    def cache_case(name: str, cache: Any, grp: str, baseline: bool = False) -> Case:
        state = {"i": 0, "right": 0, "done": 0}

        def run(k: int) -> None:
            for _ in range(k):
                i = state["i"] = (state["i"] + 1) % QUERIES
                hit = cache.get(f"q{i}", context=CTX)
                state["done"] += 1
                state["right"] += hit is not None and hit.response == int(truth[i])

        recall = sum(
            (h := cache.get(f"q{i}", context=CTX)) is not None and h.response == int(truth[i])
            for i in range(QUERIES)) / QUERIES
        per_entry = cache.stats()["vector_bytes"] / len(cache)

        def check() -> None:
            assert state["right"] / state["done"] >= 0.98, (
                f"{name}: nearest neighbour returned for {state['right']}/{state['done']}")

        return Case(grp, name, run=run, ops=ops, baseline=baseline, check=check,
                    note=f"recall@1 {recall:.3f}, {per_entry:.0f} B/entry vectors")

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    plain = SemanticCache(embedder=_TableEmbedder(x, q), guard=False, max_entries=n, ttl=None)
    plain.set_many(((f"e{i}", i) for i in range(n)), context=CTX)
    whole = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    case = cache_case("perfkit SemanticCache.get", plain, group)
    case.note += f", {whole:.0f} B/entry in all"
    cases.append(case)
    if compress is not None:
        small = SemanticCache(embedder=_TableEmbedder(x, q), guard=False, max_entries=n,
                              ttl=None, compress=compress)
        small.set_many(((f"e{i}", i) for i in range(n)), context=CTX)
        assert small.stats()["compressed"]
        cases.append(cache_case(f"perfkit SemanticCache.get, compress={compress}", small, group))
        floor_group = f"semantic lookup {n // 1000}k x {compress} (compressed floor)"
        xs = np.ascontiguousarray(x[:, :compress])
        xs /= np.linalg.norm(xs, axis=1, keepdims=True)
        qs = np.ascontiguousarray(q[:, :compress])

        def brute_small(k: int) -> None:
            for _ in range(k):
                i = pos[0] = (pos[0] + 1) % QUERIES
                int(np.argmax(xs @ qs[i]))

        cases.append(Case(floor_group, f"numpy brute force at {compress} dims", run=brute_small,
                          baseline=True, ops=ops))
        cases.append(cache_case(f"perfkit SemanticCache.get, compress={compress}", small,
                                floor_group))
    return cases


def _default_embedder_case() -> list[Case]:
    from perfkit import SemanticCache

    cache = SemanticCache(max_entries=10_000)
    rng = np.random.default_rng(3)
    words = ["invoice", "router", "password", "refund", "printer", "budget", "garden", "laptop", "passport", "ticket", "account", "kernel", "recipe", "battery", "playlist", "reset", "update", "configure", "cancel", "renew", "clean", "repair", "export", "import", "sync", "backup", "restore", "share"]
    prompts = [" ".join(rng.choice(words, 6)) + f" item{i}" for i in range(10_000)]
    cache.set_many(((p, i) for i, p in enumerate(prompts)), context=CTX)
    queries = [" ".join([p.split()[1], p.split()[0], *p.split()[2:]]) for p in prompts[:QUERIES]]
    state = {"i": 0}

    def run(k: int) -> None:
        for _ in range(k):
            state["i"] = (state["i"] + 1) % QUERIES
            cache.get(queries[state["i"]], context=CTX)

    def exact(k: int) -> None:
        for _ in range(k):
            state["i"] = (state["i"] + 1) % QUERIES
            cache.get(prompts[state["i"]], context=CTX)

    def check() -> None:
        assert cache.stats()["hits"] > 0

    group = "semantic get, default HashingEmbedder (512 dims), 10k entries"
    return [Case(group, "exact-match hit (no embedding)", run=exact, baseline=True, ops=2000),
            Case(group, "paraphrase lookup (embed + search)", run=run, ops=500, check=check)]


def _conversation_cases() -> list[Case]:
    from perfkit import ConversationMemory

    group = "conversation append (window 20)"
    mem = ConversationMemory(max_messages=20)

    def check() -> None:
        assert len(mem.get("c")) == 20, "the window is not 20 messages"

    cases = [Case(group, "perfkit memory store", baseline=True, ops=5000, check=check,
                  run=lambda k: [mem.append("c", "user", "hello there") for _ in range(k)])]
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
    except Exception as exc:
        cases.append(Case.unavailable(group, "perfkit Redis store", f"Redis: {exc!r}"))
        return cases
    from perfkit.conversation import RedisStore

    prefix = f"perfkit-bench:{uuid.uuid4().hex[:8]}"
    store = RedisStore(REDIS_URL, prefix=prefix)
    rmem = ConversationMemory(max_messages=20, backend=store)
    bare_key = f"{prefix}:bare"

    def bare(k: int) -> None:
        for _ in range(k):
            pipe = client.pipeline(transaction=True)
            pipe.rpush(bare_key, '{"role":"user","content":"hello there"}')
            pipe.ltrim(bare_key, -20, -1)
            pipe.expire(bare_key, 86400)
            pipe.execute()

    def rcheck() -> None:
        window = rmem.get("c")
        assert len(window) == 20, f"window has {len(window)} messages"
        rmem.clear("c")
        client.delete(bare_key)

    cases.append(Case(group, "bare redis-py MULTI rpush+ltrim+expire (count only)", run=bare,
                      ops=1000))
    cases.append(Case(group, "perfkit Redis store (Lua: seq, count+token trim, expiry)",
                      run=lambda k: [rmem.append("c", "user", "hello there") for _ in range(k)],
                      ops=1000, check=rcheck))
    return cases


def cases() -> list[Case]:
    try:
        import numpy  # noqa: F401
    except ImportError as exc:
        raise Unavailable("numpy is not installed (pip install 'perfkit[semantic]')") from exc
    out = _lookup_cases(10_000, 384, None, ops=200)
    out += _lookup_cases(100_000, 384, 64, ops=30)
    out += _default_embedder_case()
    out += _conversation_cases()
    return out
