"""Sliding-window conversation memory: bounded, per conversation id, atomic on write."""

from perfkit.conversation.memory import ConversationMemory, ConversationStats
from perfkit.conversation.messages import Message, approx_tokens
from perfkit.conversation.redis_store import RedisStore
from perfkit.conversation.stores import (
    AppendResult,
    ConversationStore,
    MemoryStore,
    Snapshot,
)
from perfkit.conversation.window import ConversationConflict, WindowLimits, WindowOverflow

__all__ = [
    "AppendResult",
    "ConversationConflict",
    "ConversationMemory",
    "ConversationStats",
    "ConversationStore",
    "MemoryStore",
    "Message",
    "RedisStore",
    "Snapshot",
    "WindowLimits",
    "WindowOverflow",
    "approx_tokens",
]
