"""SemanticCache: partitions, lookup order, guard, embedder bookkeeping, bounds, TTL and
tags, cost accounting, async and the decorator, and the shipped quality evaluation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from fake_clock import FakeClock

from perfkit import SemanticCache
from perfkit.semantic import (
    DEFAULT_THRESHOLD,
    HashingEmbedder,
    evaluate,
    guard_conflict,
    load_pairs,
    normalize,
    partition_key,
)

CTX = {"tenant": "acme", "model": "gpt-x", "temperature": 0.0}




# -- lookup order -------------------------------------------------------------------------
def test_exact_match_after_normalisation_comes_first() -> None:
    calls: list[Sequence[str]] = []
    base = HashingEmbedder()

    def counting(texts: Sequence[str]) -> Any:
        calls.append(texts)
        return base(texts)

    cache = SemanticCache(embedder=counting)
    cache.set("How do I reset my password?", "Use the link.", context=CTX)
    embeds_after_set = len(calls)
    hit = cache.get("  how do i RESET my password  ", context=CTX)
    assert hit is not None and hit.exact and hit.similarity == 1.0
    assert hit.response == "Use the link."
    assert len(calls) == embeds_after_set  # the exact stage needs no embedding


def test_paraphrase_hits_with_its_similarity_and_unrelated_misses() -> None:
    cache = SemanticCache()
    cache.set("How do I reverse a list in Python?", "lst[::-1]", context=CTX)
    hit = cache.get("How can I reverse a Python list?", context=CTX)
    assert hit is not None and not hit.exact
    assert DEFAULT_THRESHOLD <= hit.similarity < 1.0
    assert hit.prompt == "How do I reverse a list in Python?"
    assert cache.get("What is the capital of France?", context=CTX) is None


def test_normalisation_keeps_what_changes_meaning() -> None:
    assert normalize("What's C++?") != normalize("What's C?")
    assert normalize("Is -5 < 5?") != normalize("Is 5 < 5?")
    assert normalize("3.5 kg") != normalize("35 kg")
    assert normalize("I can't go") == normalize("i cannot go!")
    assert normalize("$300,000 loan") == normalize("300000 loan")


# -- context isolation --------------------------------------------------------------------
def test_near_identical_prompt_in_another_context_is_a_miss() -> None:
    cache = SemanticCache()
    cache.set("What is my account balance?", "$1,000", context={"user": "alice"})
    assert cache.get("What is my account balance?", context={"user": "alice"}) is not None
    assert cache.get("What is my account balance?", context={"user": "bob"}) is None
    assert cache.get("what's my account balance", context={"user": "bob"}) is None
    assert cache.get("What is my account balance?",
                     context={"user": "alice", "model": "other"}) is None


def test_context_is_required_and_canonical() -> None:
    cache = SemanticCache()
    with pytest.raises(ValueError, match="context is required"):
        cache.get("hi", context=None)
    with pytest.raises(ValueError, match="context values"):
        cache.set("hi", "x", context={"user": object()})
    assert partition_key({"a": 1, "b": 2}) == partition_key({"b": 2, "a": 1})
    assert partition_key({"u": 1}) != partition_key({"u": "1"})  # types are kept
    assert partition_key(("a", "b:c")) != partition_key(("a:b", "c"))
    assert partition_key({"t": 0.7}) != partition_key({"t": 0.70001})


# -- guard --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cached", "asked", "reason"),
    [
        ("How do I enable notifications?", "How do I disable notifications?", "polarity"),
        ("What is 15% of 200?", "What is 20% of 200?", "numbers"),
        ("Which foods contain gluten?", "Which foods don't contain gluten?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "entity"),
        ("Is it legal to fly drones here?", "Is it illegal to fly drones here?", "polarity"),
        ("Show me flights on March 3.", "Show me flights on March 13.", "numbers"),
    ],
)
def test_guard_refuses_near_misses_the_threshold_cannot(cached: str, asked: str,
                                                        reason: str) -> None:
    assert guard_conflict(cached, asked) == reason
    loose = SemanticCache(threshold=0.2)
    loose.set(cached, "answer", context=CTX)
    assert loose.get(asked, context=CTX) is None
    assert loose.stats()["guard_rejections"] == 1
    unguarded = SemanticCache(threshold=0.2, guard=False)
    unguarded.set(cached, "answer", context=CTX)
    assert unguarded.get(asked, context=CTX) is not None  # what the guard prevents


def test_guard_lets_paraphrases_through() -> None:
    assert guard_conflict("What is the GDP of Germany?", "What's Germany's GDP?") is None
    assert guard_conflict("Translate 'good morning' into Spanish.",
                          "How do you say good morning in Spanish?") is None
    assert guard_conflict("Give me the top five tips", "Give me the top 5 tips") is None


def test_guard_falls_back_to_the_next_candidate() -> None:
    cache = SemanticCache(threshold=0.3)
    cache.set("How do I disable notifications on Android?", "wrong", context=CTX)
    cache.set("How can I enable notifications on Android?", "right", context=CTX)
    hit = cache.get("How do I enable notifications on Android?", context=CTX)
    assert hit is not None and hit.response == "right"


# -- embedder bookkeeping ----------------------------------------------------------------
def test_embedder_id_and_dimension_are_never_mixed() -> None:
    cache = SemanticCache(embedder=HashingEmbedder(dim=256))
    cache.set("hello world", "x", context=CTX)
    cache.embedder = HashingEmbedder(dim=128)
    with pytest.raises(ValueError, match="refusing to mix"):
        cache.set("another prompt", "y", context=CTX)
    with pytest.raises(ValueError, match="refusing to mix"):
        cache.get("hello there world", context=CTX)
    cache.set("another prompt", "y", context={"fresh": True})  # a new partition is fine


def test_custom_embedder_shape_is_checked() -> None:
    cache = SemanticCache(embedder=lambda texts: np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        cache.set("x", "y", context=CTX)


def test_hashing_embedder_is_stable_across_processes() -> None:
    code = ("from perfkit.semantic import HashingEmbedder;"
            "print(HashingEmbedder()(['Stable across runs?'])[0].round(6).tobytes().hex())")
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    vec = HashingEmbedder()(["Stable across runs?"])[0]
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


# -- bounds, TTL, tags --------------------------------------------------------------------
def test_bounded_by_max_entries_across_partitions_lru() -> None:
    cache = SemanticCache(max_entries=5)
    for i in range(20):
        cache.set(f"question number {i} about topic {i}", i, context={"p": i % 3})
    assert len(cache) == 5 and cache.stats()["evictions"] == 15
    assert cache.stats()["partitions"] <= 3
    small = SemanticCache(max_entries=2)
    small.set("alpha question about apples", "a", context=CTX)
    small.set("beta question about bananas", "b", context=CTX)
    assert small.get("alpha question about apples", context=CTX) is not None  # refresh alpha
    small.set("gamma question about grapes", "c", context=CTX)
    assert small.get("alpha question about apples", context=CTX) is not None
    assert small.get("beta question about bananas", context=CTX) is None


def test_ttl_expires_entries_on_an_injected_clock() -> None:
    clock = FakeClock()
    cache = SemanticCache(ttl=60, clock=clock)
    cache.set("How do I reset my password?", "link", context=CTX)
    cache.set("How do I track my order?", "page", context=CTX, ttl=600)
    clock.now += 59
    assert cache.get("How can I reset my password?", context=CTX) is not None
    clock.now += 2
    assert cache.get("How can I reset my password?", context=CTX) is None
    assert cache.get("How do I reset my password?", context=CTX) is None
    assert cache.get("How do I track my order?", context=CTX) is not None
    assert cache.stats()["expirations"] == 1 and len(cache) == 1


def test_tags_invalidate_answers_grounded_on_changed_data() -> None:
    cache = SemanticCache()
    cache.set("What is the refund window?", "30 days", context=CTX, tags=["doc:refunds@v1"])
    cache.set("What is the shipping time?", "5 days", context=CTX, tags=["doc:shipping@v1"])
    assert cache.invalidate_tags("doc:refunds@v1") == 1
    assert cache.get("What is the refund window?", context=CTX) is None
    assert cache.get("What is the shipping time?", context=CTX) is not None
    assert cache.delete("what is the shipping time", context=CTX)
    assert len(cache) == 0 and cache.stats()["partitions"] == 0


def test_overwrite_and_clear() -> None:
    cache = SemanticCache()
    cache.set("What is Docker?", "v1", context=CTX)
    cache.set("what is docker", "v2", context=CTX)
    assert len(cache) == 1
    hit = cache.get("What is Docker?", context=CTX)
    assert hit is not None and hit.response == "v2"
    cache.set("What is Docker?", "other", context={"t": 2})
    cache.clear(context=CTX)
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_index_slot_reuse_matches_brute_force() -> None:
    emb = HashingEmbedder()
    cache = SemanticCache(threshold=0.05, guard=False, embedder=emb)
    prompts = [f"topic {w} detail {v}" for w in ("apple", "river", "cloud", "stone")
               for v in ("red", "blue", "green", "gold", "gray")]
    for p in prompts:
        cache.set(p, p, context=CTX)
    for p in prompts[::3]:
        cache.delete(p, context=CTX)
    alive = [p for i, p in enumerate(prompts) if i % 3]
    for p in ("topic apple detail silver", "topic river detail red tint", "cloud gold"):
        hit = cache.get(p, context=CTX)
        sims = emb(alive) @ emb([p])[0]
        assert hit is not None and hit.response == alive[int(np.argmax(sims))]


# -- cost accounting and stats -----------------------------------------------------------
def test_savings_in_tokens_and_money() -> None:
    cache = SemanticCache(price=lambda r: 0.001 * len(r), tokens=lambda r: len(r.split()))
    cache.set("How do I reset my password?", "Open settings then security", context=CTX)
    cache.set("What is Docker?", "containers", context=CTX, tokens=100, cost=0.5)
    cache.get("How can I reset my password?", context=CTX)
    cache.get("What is Docker?", context=CTX)
    cache.get("What is Kubernetes?", context=CTX)
    s = cache.stats()
    assert (s["hits"], s["exact_hits"], s["semantic_hits"], s["misses"]) == (2, 1, 1, 1)
    assert s["hit_rate"] == pytest.approx(2 / 3)
    assert s["tokens_saved"] == 4 + 100
    assert s["cost_saved"] == pytest.approx(0.001 * len("Open settings then security") + 0.5)
    assert DEFAULT_THRESHOLD <= s["similarity"]["min"] <= s["similarity"]["p50"] <= 1.0


# -- async and decorator -----------------------------------------------------------------
async def test_async_embeds_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()
    base = HashingEmbedder()

    def embed(texts: Sequence[str]) -> Any:
        threads.add(threading.get_ident())
        return base(texts)

    cache = SemanticCache(embedder=embed)
    await cache.aset("How do I reset my password?", "link", context=CTX)
    hit = await cache.aget("How can I reset my password?", context=CTX)
    assert hit is not None and hit.response == "link"
    assert threads and loop_thread not in threads
    assert await cache.aget("How do I disable my password?", context={"x": 1}) is None


def test_decorator_sync_caches_per_context_and_never_exceptions() -> None:
    cache = SemanticCache()
    calls: list[str] = []

    @cache.cached(prompt="question", context=("user", "model"))
    def ask(question: str, user: str, model: str = "small") -> str:
        calls.append(question)
        if "fail" in question:
            raise RuntimeError("LLM down")
        return f"answer to {question}"

    assert ask("How do I reverse a list in Python?", "alice") == (
        "answer to How do I reverse a list in Python?")
    assert ask("How can I reverse a Python list?", user="alice") == (
        "answer to How do I reverse a list in Python?")
    assert ask("How can I reverse a Python list?", user="bob") == (
        "answer to How can I reverse a Python list?")
    assert len(calls) == 2
    for _ in range(2):
        with pytest.raises(RuntimeError):
            ask("please fail now", "alice")
    assert len(calls) == 4
    assert ask.__name__ == "ask"


async def test_decorator_async() -> None:
    cache = SemanticCache()
    calls = 0

    @cache.cached(prompt=lambda q, **kw: q, context=lambda q, tenant: {"tenant": tenant})
    async def ask(q: str, tenant: str) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return q.upper()

    assert await ask("What is Docker?", tenant="t1") == "WHAT IS DOCKER?"
    assert await ask("what is docker", tenant="t1") == "WHAT IS DOCKER?"
    assert await ask("what is docker", tenant="t2") == "WHAT IS DOCKER"
    assert calls == 2


def test_decorator_rejects_bad_configuration() -> None:
    cache = SemanticCache()
    with pytest.raises(ValueError, match="prompt='q'"):
        cache.cached(prompt="q", context=())(lambda question: question)
    with pytest.raises(ValueError, match="context"):
        cache.cached(prompt="q", context=("nope",))(lambda q: q)
    with pytest.raises(ValueError, match="context"):
        cache.cached(prompt="q", context="q")(lambda q: q)

    def gen(q: str) -> Any:
        yield q

    with pytest.raises(TypeError, match="generators"):
        cache.cached(prompt="q", context=())(gen)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"),
     ({"max_entries": 0}, "max_entries"), ({"ttl": -1}, "ttl"), ({"guard": "yes"}, "guard"),
     ({"price": -1}, "price"), ({"embedder": 3}, "embedder")],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SemanticCache(**kwargs)


def test_bad_prompt_and_ttl_name_the_parameter() -> None:
    cache = SemanticCache()
    with pytest.raises(ValueError, match="prompt"):
        cache.get(42, context=CTX)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        cache.set("x", "y", context=CTX, ttl=0)


# -- quality ------------------------------------------------------------------------------
def test_shipped_evaluation_meets_the_precision_target() -> None:
    pairs = load_pairs()
    kinds = {p.kind for p in pairs}
    assert len(pairs) >= 200 and {"paraphrase", "number", "negation", "entity"} <= kinds
    assert sum(p.label for p in pairs) >= 100 and sum(not p.label for p in pairs) >= 100
    report = evaluate()
    print("\n" + report.format())
    assert report.threshold == DEFAULT_THRESHOLD
    assert report.precision >= 0.95
    assert report.recall >= 0.85
    without_guard = evaluate(guard=None)
    assert without_guard.false_positives >= report.false_positives


# -- compression --------------------------------------------------------------------------
def _prompts(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    nouns = ("invoice", "router", "password", "refund", "printer", "budget", "garden", "laptop",
             "passport", "ticket", "account", "kernel", "recipe", "battery", "playlist")
    verbs = ("reset", "update", "configure", "cancel", "renew", "clean", "repair", "export")
    return [f"how to {rng.choice(verbs)} my {rng.choice(nouns)} {rng.choice(nouns)} "
            f"variant{i}" for i in range(n)]


def test_compression_serves_the_same_hits_with_less_memory() -> None:
    emb = HashingEmbedder(dim=128)
    plain = SemanticCache(embedder=emb, threshold=0.6, guard=False)
    small = SemanticCache(embedder=emb, threshold=0.6, guard=False, compress=32,
                          compress_after=64)
    prompts = _prompts(400)
    for p in prompts[:50]:
        plain.set(p, p, context=CTX)
        small.set(p, p, context=CTX)
    assert not small.stats()["compressed"]
    plain.set_many([(p, p) for p in prompts[50:]], context=CTX)
    small.set_many([(p, p) for p in prompts[50:]], context=CTX)  # crosses compress_after
    assert small.stats()["compressed"]
    for p in prompts[::7]:  # churn after compression: slot reuse must stay consistent
        plain.delete(p, context=CTX)
        small.delete(p, context=CTX)
    same = 0
    queries = [p.replace("how to", "how do i") + " please" for p in prompts[1::3]]
    for q in queries:
        a, b = plain.get(q, context=CTX), small.get(q, context=CTX)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            same += a.response == b.response
            assert abs(a.similarity - b.similarity) < 5e-3
    hits = plain.stats()["hits"]
    assert hits > len(queries) // 2 and same >= hits - 1  # float16 ties at most
    per_entry_plain = plain.stats()["vector_bytes"] / len(plain)
    per_entry_small = small.stats()["vector_bytes"] / len(small)
    assert per_entry_small < per_entry_plain


def test_compression_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="compress"):
        SemanticCache(compress=1)
    with pytest.raises(ValueError, match="compress_after"):
        SemanticCache(compress=8, compress_after=2)


def test_export_metrics_reads_live_counters() -> None:
    from perfkit.metrics import Registry

    registry = Registry()
    cache = SemanticCache(price=0.5, tokens=10)
    cache.export_metrics("faq", registry)
    cache.set("What is Docker?", "containers", context=CTX)
    cache.get("what is docker", context=CTX)
    cache.get("What is Kubernetes?", context=CTX)
    text = registry.render_prometheus()
    assert 'perfkit_semantic_hits_total{cache="faq"} 1' in text
    assert 'perfkit_semantic_misses_total{cache="faq"} 1' in text
    assert 'perfkit_semantic_cost_saved_total{cache="faq"} 0.5' in text
    assert 'perfkit_semantic_entries{cache="faq"} 1' in text
