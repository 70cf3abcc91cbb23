"""SemanticCache.cached keeps signatures; ConversationMemory's API is typed (test_typing)."""

from __future__ import annotations

from perfkit import ConversationMemory, SemanticCache
from perfkit.conversation import Message

cache = SemanticCache()
memory = ConversationMemory(max_messages=10)


@cache.cached(prompt="question", context=("user",))
def ask(question: str, user: str, temperature: float = 0.0) -> str:
    return question


@cache.cached(prompt="question", context=("user",))
async def aask(question: str, user: str) -> str:
    return question


answer: str = ask("hi", "alice")
coroutine_answer = aask("hi", user="bob")
stored: Message = memory.append("c1", "user", "hello")
window: list[dict[str, object]] = memory.get("c1")
last: int = memory.snapshot("c1").last_seq

ask("hi")  # E: missing argument
ask(1, "alice")  # E: wrong type
bad: int = ask("hi", "alice")  # E: str is not int
memory.append("c1", "user", 42)  # E: content must be a str
