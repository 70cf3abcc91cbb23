"""Review findings for ConversationMemory, each pinned by a test that runs against the
memory and the Redis store: the window never starts on an answer whose question was
trimmed, truncation honours what trimming must keep, and limits must be finite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from perfkit import ConversationMemory
from perfkit.conversation import RedisStore, WindowOverflow

Factory = Callable[..., ConversationMemory]


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest, unique_ns: str) -> Iterator[Factory]:
    stores: list[RedisStore] = []

    def factory(**kw: Any) -> ConversationMemory:
        if request.param == "memory":
            return ConversationMemory(**kw)
        store = RedisStore(request.getfixturevalue("redis_url"),
                           prefix=f"perfkit-test:{unique_ns}")
        stores.append(store)
        return ConversationMemory(backend=store, **kw)

    yield factory
    for store in stores:
        store.close()


def test_an_answer_is_never_kept_without_its_question(make: Factory) -> None:
    mem = make(max_messages=None, max_tokens=30, token_counter=words)
    mem.append("c", "system", "sys")
    mem.append("c", "user", "q " * 10)
    with pytest.raises(WindowOverflow):
        mem.append("c", "assistant", "a " * 25)  # 1 + 10 + 25 > 30 even alone
    assert [m["role"] for m in mem.get("c")] == ["system", "user"]  # nothing changed
    one = make(max_messages=1)
    one.append("c1", "user", "q")
    with pytest.raises(WindowOverflow):
        one.append("c1", "assistant", "a")
    assert [m["role"] for m in one.get("c1")] == ["user"]


def test_truncation_leaves_room_for_the_question_and_the_tool_call(make: Factory) -> None:
    mem = make(max_messages=None, max_tokens=30, token_counter=words, oversize="truncate")
    mem.append("c", "system", "sys")
    mem.append("c", "user", "q " * 10)
    stored = mem.append("c", "assistant", "a " * 25)
    window = mem.get("c")
    assert [m["role"] for m in window] == ["system", "user", "assistant"]
    assert stored.tokens == 19 and len(stored.content.split()) == 19
    assert sum(m.tokens for m in mem.snapshot("c").messages) == 30

    tools = make(max_messages=None, max_tokens=12, token_counter=words, oversize="truncate")
    tools.append("t", "user", "q")
    call = tools.append("t", "assistant", "calling", tool_calls=[{"id": "t"}])
    result = tools.append("t", "tool", "r " * 20, tool_call_id="t")
    assert [m["role"] for m in tools.get("t")] == ["user", "assistant", "tool"]
    assert result.tokens == 12 - 1 - call.tokens
    assert tools.stats.truncated == 1 and tools.stats.rejected == 0


def test_truncation_cannot_fix_a_count_overflow_and_says_so(make: Factory) -> None:
    mem = make(max_messages=2, max_tokens=100, token_counter=words, oversize="truncate")
    mem.append("c", "system", "s1")
    mem.append("c", "system", "s2")
    with pytest.raises(WindowOverflow):
        mem.append("c", "user", "hello there")
    assert (mem.stats.truncated, mem.stats.rejected) == (0, 1)


@pytest.mark.parametrize("field", ["ttl", "max_age"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_lifetimes_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ConversationMemory(**{field: value})


def test_tool_calls_and_pinned_flag_are_validated() -> None:
    mem = ConversationMemory()
    with pytest.raises(ValueError, match="tool_calls"):
        mem.append("c", "assistant", "", tool_calls="not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tool_calls"):
        mem.append("c", "assistant", "", tool_calls=[{"id": object()}])
    with pytest.raises(ValueError, match="pinned"):
        mem.extend("c", [{"role": "user", "content": "x", "pinned": "no"}])
    assert mem.get("c") == []
