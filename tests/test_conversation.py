"""Contract tests every conversation store passes (memory and real Redis), plus the
in-process specifics (LRU cap, idle TTL and max age on a fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_clock import FakeClock

from perfkit import ConversationMemory
from perfkit.conversation import MemoryStore, Message, RedisStore, WindowOverflow, approx_tokens

Factory = Callable[..., ConversationMemory]


def words(text: str) -> int:
    """A deterministic token counter for tests: one token per word."""
    return len(text.split())


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest, unique_ns: str) -> Iterator[Factory]:
    stores: list[RedisStore] = []

    def factory(**kw: Any) -> ConversationMemory:
        if request.param == "memory":
            return ConversationMemory(**kw)
        redis_url = request.getfixturevalue("redis_url")
        store = RedisStore(redis_url, prefix=f"perfkit-test:{unique_ns}")
        stores.append(store)
        return ConversationMemory(backend=store, **kw)

    yield factory
    for store in stores:
        store.close()


def roles(mem: ConversationMemory, cid: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in mem.get(cid)]


# -- contract -----------------------------------------------------------------------------
def test_window_by_count_keeps_newest_and_store_order(make: Factory) -> None:
    mem = make(max_messages=3)
    for i in range(7):
        mem.append("c1", "user", f"q{i}")
    snap = mem.snapshot("c1")
    assert [m.content for m in snap.messages] == ["q4", "q5", "q6"]
    assert [m.seq for m in snap.messages] == [5, 6, 7]  # store-issued, contiguous


def test_conversations_are_isolated_and_id_is_required(make: Factory) -> None:
    mem = make(max_messages=5)
    mem.append("alice", "user", "my secret")
    mem.append("bob", "user", "hello")
    assert roles(mem, "bob") == [("user", "hello")]
    assert roles(mem, "alice") == [("user", "my secret")]
    for bad in ("", "   ", None, 42):
        with pytest.raises(ValueError, match="conversation_id"):
            mem.append(bad, "user", "x")  # type: ignore[arg-type]


def test_namespaces_do_not_share_conversations(make: Factory) -> None:
    a = make(max_messages=5, namespace="tenant-a")
    b = make(max_messages=5, namespace="tenant-b")
    a.append("same-id", "user", "from a")
    assert b.get("same-id") == []


def test_system_and_pinned_messages_are_never_evicted(make: Factory) -> None:
    mem = make(max_messages=4)
    mem.append("c", "system", "be brief")
    mem.append("c", "user", "remember: I am vegetarian", pinned=True)
    for i in range(6):
        mem.append("c", "user", f"q{i}")
    assert roles(mem, "c") == [
        ("system", "be brief"), ("user", "remember: I am vegetarian"),
        ("user", "q4"), ("user", "q5"),
    ]


def test_trimming_evicts_whole_turns(make: Factory) -> None:
    mem = make(max_messages=5)
    mem.append("c", "system", "sys")
    mem.extend("c", [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}])
    mem.extend("c", [{"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}])
    mem.append("c", "user", "u3")  # 6 messages: the whole first turn goes, not just u1
    assert roles(mem, "c") == [("system", "sys"), ("user", "u2"), ("assistant", "a2"),
                               ("user", "u3")]
    assert mem.get("c")[1]["role"] == "user"  # the window never starts on an assistant


def test_tool_result_never_kept_without_its_call(make: Factory) -> None:
    mem = make(max_messages=5)
    call = [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    mem.append("c", "user", "what is the weather?")
    mem.append("c", "assistant", "", tool_calls=call)
    mem.append("c", "tool", "sunny", tool_call_id="t1")
    mem.append("c", "assistant", "It is sunny.", tool_calls=[{**call[0], "id": "t2"}])
    mem.append("c", "tool", "still sunny", tool_call_id="t2")
    mem.append("c", "assistant", "Still sunny.")  # 6 > 5: one whole unit of the turn goes
    got = mem.get("c")
    assert [m["role"] for m in got] == ["user", "assistant", "tool", "assistant"]
    assert got[1]["tool_calls"][0]["id"] == "t2" and got[2]["tool_call_id"] == "t2"
    assert got[0]["content"] == "what is the weather?"  # the question stays


def test_token_budget_trims_and_counts_once(make: Factory) -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return words(text)

    mem = make(max_messages=None, max_tokens=6, token_counter=counting)
    mem.append("c", "system", "one two")  # 2 tokens, pinned
    for i in range(5):
        mem.append("c", "user", f"a{i} b{i}")  # 2 tokens each
    snap = mem.snapshot("c")
    assert [m.content for m in snap.messages] == ["one two", "a3 b3", "a4 b4"]
    assert sum(m.tokens for m in snap.messages) == 6
    assert len(calls) == 6  # one count per message ever written, never a recount


def test_oversize_message_rejected_not_emptying_history(make: Factory) -> None:
    mem = make(max_messages=None, max_tokens=5, token_counter=words)
    mem.append("c", "system", "a b")
    mem.append("c", "user", "c d")
    with pytest.raises(WindowOverflow):
        mem.append("c", "user", "one two three four")  # 2 + 4 > 5 on its own
    assert roles(mem, "c") == [("system", "a b"), ("user", "c d")]  # nothing changed
    assert mem.stats.rejected == 1


def test_oversize_message_truncated_when_asked(make: Factory) -> None:
    mem = make(max_messages=None, max_tokens=5, token_counter=words, oversize="truncate")
    mem.append("c", "system", "a b")
    stored = mem.append("c", "user", "one two three four five")
    assert stored.content.split() == ["one", "two", "three"]
    assert sum(m.tokens for m in mem.snapshot("c").messages) == 5


def test_pinned_messages_alone_over_budget_are_rejected(make: Factory) -> None:
    mem = make(max_messages=2)
    mem.append("c", "system", "s1")
    mem.append("c", "system", "s2")
    with pytest.raises(WindowOverflow):
        mem.append("c", "system", "s3")
    with pytest.raises(WindowOverflow):
        mem.append("c", "user", "no room left")
    assert len(mem.get("c")) == 2


def test_on_evict_receives_exactly_what_was_trimmed(make: Factory) -> None:
    seen: list[tuple[str, list[str]]] = []
    mem = make(max_messages=2, on_evict=lambda cid, ms: seen.append((cid, [m.content for m in ms])))
    for i in range(4):
        mem.append("c", "user", f"q{i}")
    assert seen == [("c", ["q0"]), ("c", ["q1"])]
    assert mem.stats.evicted == 2


def test_summary_is_stored_beside_the_window(make: Factory) -> None:
    mem = make(max_messages=2)
    assert mem.summary("c") is None
    mem.append("c", "user", "hi")
    mem.set_summary("c", "user greeted")
    assert mem.summary("c") == "user greeted"
    assert roles(mem, "c") == [("user", "hi")]
    mem.set_summary("c", None)
    assert mem.summary("c") is None


def test_clear_removes_window_and_summary(make: Factory) -> None:
    mem = make(max_messages=2)
    mem.append("c", "user", "hi")
    mem.set_summary("c", "s")
    mem.clear("c")
    assert mem.snapshot("c").messages == [] and mem.summary("c") is None
    assert mem.append("c", "user", "again").seq >= 1


def test_batch_larger_than_window_keeps_newest(make: Factory) -> None:
    evicted: list[str] = []
    mem = make(max_messages=2, on_evict=lambda cid, ms: evicted.extend(m.content for m in ms))
    mem.extend("c", [{"role": "user", "content": f"q{i}"} for i in range(5)])
    assert roles(mem, "c") == [("user", "q3"), ("user", "q4")]
    assert evicted == ["q0", "q1", "q2"]


async def test_async_api_matches_sync(make: Factory) -> None:
    seen: list[str] = []

    async def hook(cid: str, ms: list[Message]) -> None:
        await asyncio.sleep(0)
        seen.extend(m.content for m in ms)

    mem = make(max_messages=2, on_evict=hook)
    for i in range(3):
        stored = await mem.aappend("c", "user", f"q{i}")
    assert stored.seq == 3
    await mem.aset_summary("c", "sum")
    assert [m["content"] for m in await mem.aget("c")] == ["q1", "q2"]
    assert await mem.asummary("c") == "sum"
    await mem.drain()
    assert seen == ["q0"]
    with pytest.raises(TypeError, match="aappend"):
        mem.append("c", "user", "sync call with an async hook")
    await mem.aclear("c")
    assert (await mem.asnapshot("c")).messages == []


def test_bad_input_names_the_field(make: Factory) -> None:
    mem = make(max_messages=2)
    with pytest.raises(ValueError, match="role"):
        mem.append("c", "wizard", "x")
    with pytest.raises(ValueError, match="content"):
        mem.append("c", "user", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tool_call_id"):
        mem.append("c", "tool", "result")
    with pytest.raises(ValueError, match="tool_calls"):
        mem.append("c", "user", "x", tool_calls=[{"id": "1"}])
    with pytest.raises(ValueError, match="unknown fields"):
        mem.extend("c", [{"role": "user", "content": "x", "colour": "red"}])
    assert mem.get("c") == []


# -- construction -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_messages": -1}, "max_messages"),
        ({"max_messages": 0}, "max_messages"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_messages": None, "max_tokens": None}, "max_messages or max_tokens"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"max_age": -1}, "max_age"),
        ({"oversize": "drop"}, "oversize"),
        ({"backend": "memcached://x"}, "backend"),
        ({"namespace": ""}, "namespace"),
        ({"max_conversations": 0}, "max_conversations"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ConversationMemory(**kwargs)


def test_defaults() -> None:
    mem = ConversationMemory()
    assert (mem.max_messages, mem.max_tokens, mem.limits.ttl) == (20, None, 86400)
    assert isinstance(mem.store, MemoryStore) and mem.store.max_conversations == 10_000
    assert approx_tokens("abcd" * 10) == 10 + 4


# -- in-process specifics -----------------------------------------------------------------


def test_memory_store_caps_conversations_lru() -> None:
    store = MemoryStore(max_conversations=3)
    mem = ConversationMemory(max_messages=2, backend=store)
    for i in range(3):
        mem.append(f"c{i}", "user", "x")
    mem.get("c0")  # c0 becomes most recently used
    mem.append("c3", "user", "x")
    assert len(store) == 3 and store.dropped_conversations == 1
    assert mem.get("c1") == []  # least recently used went
    assert mem.get("c0") != []
    for i in range(100):
        mem.append(f"many{i}", "user", "x")
    assert len(store) == 3


def test_memory_store_idle_ttl_refreshed_by_activity() -> None:
    clock = FakeClock()
    mem = ConversationMemory(max_messages=5, ttl=10, backend=MemoryStore(clock=clock))
    mem.append("c", "user", "hi")
    clock.now += 9
    assert mem.get("c") != []  # read refreshes the idle TTL
    clock.now += 9
    mem.append("c", "user", "again")
    clock.now += 9.9
    assert len(mem.get("c")) == 2
    clock.now += 10
    assert mem.get("c") == []


def test_memory_store_max_age_is_absolute() -> None:
    clock = FakeClock()
    mem = ConversationMemory(max_messages=5, ttl=10, max_age=25, backend=MemoryStore(clock=clock))
    mem.append("c", "user", "hi")
    for _ in range(4):
        clock.now += 6
        mem.append("c", "user", "still here")  # keeps the idle TTL fresh
    assert len(mem.get("c")) == 5  # 24 s old
    clock.now += 1
    assert mem.get("c") == []  # 25 s old: gone however active it was
    first = mem.append("c", "user", "new conversation")
    assert first.seq == 1


def test_memory_store_expired_conversations_are_swept_on_insert() -> None:
    clock = FakeClock()
    store = MemoryStore(max_conversations=1000, clock=clock)
    mem = ConversationMemory(max_messages=5, ttl=10, backend=store)
    for i in range(50):
        mem.append(f"c{i}", "user", "x")
    clock.now += 11
    mem.append("fresh", "user", "x")
    assert len(store) == 1


def test_expected_seq_allows_one_active_turn(make: Factory) -> None:
    from perfkit.conversation import ConversationConflict

    mem = make(max_messages=10)
    seen = mem.snapshot("c").last_seq
    assert seen == 0
    mem.append("c", "user", "first writer", expected_seq=seen)
    with pytest.raises(ConversationConflict) as info:
        mem.append("c", "user", "second writer, stale view", expected_seq=seen)
    assert (info.value.expected_seq, info.value.actual_seq) == (0, 1)
    assert [m["content"] for m in mem.get("c")] == ["first writer"]  # nothing written
    now = mem.snapshot("c").last_seq
    mem.extend("c", [{"role": "assistant", "content": "reply"}], expected_seq=now)
    assert mem.snapshot("c").last_seq == 2
    with pytest.raises(ValueError, match="expected_seq"):
        mem.append("c", "user", "x", expected_seq=-1)


def test_export_metrics_reads_live_counters() -> None:
    from perfkit.metrics import Registry

    registry = Registry()
    mem = ConversationMemory(max_messages=2)
    mem.export_metrics("chat", registry)
    for i in range(3):
        mem.append("c", "user", f"q{i}")
    text = registry.render_prometheus()
    assert 'perfkit_conversation_appended_total{memory="chat"} 3' in text
    assert 'perfkit_conversation_evicted_total{memory="chat"} 1' in text


def test_a_failing_evict_hook_does_not_fail_the_write(caplog: pytest.LogCaptureFixture) -> None:
    def broken(cid: str, messages: list[Message]) -> None:
        raise RuntimeError("summariser down")

    mem = ConversationMemory(max_messages=1, on_evict=broken)
    mem.append("c", "user", "q0")
    with caplog.at_level("ERROR", logger="perfkit.conversation"):
        stored = mem.append("c", "user", "q1")
    assert stored.seq == 2 and [m["content"] for m in mem.get("c")] == ["q1"]
    assert mem.stats.hook_errors == 1 and "summariser down" in caplog.text


async def test_async_truncation_and_overflow() -> None:
    mem = ConversationMemory(max_messages=None, max_tokens=4, token_counter=words,
                             oversize="truncate")
    stored = await mem.aappend("c", "user", "one two three four five six")
    assert stored.content == "one two three four"
    strict = ConversationMemory(max_messages=None, max_tokens=4, token_counter=words)
    with pytest.raises(WindowOverflow):
        await strict.aappend("c", "user", "one two three four five six")
    assert await strict.aget("c") == []
