"""The storage contract for conversation windows, and the in-process store.

A store does the whole write in one step: assign sequence numbers, append, trim to the
window (see :mod:`perfkit.conversation.window`) and refresh the expiry. Nothing ever reads
a history, edits a copy and writes it back, so concurrent writers cannot lose updates.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from perfkit.conversation.messages import Message
from perfkit.conversation.window import ConversationConflict, WindowLimits, plan_eviction


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one write did: the messages as stored (with ``seq``) and what it evicted."""

    stored: list[Message]
    evicted: list[Message]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A conversation's window and its running summary, read in one step."""

    messages: list[Message]
    summary: str | None

    @property
    def last_seq(self) -> int:
        """The store's sequence number after the newest message (0 for a new
        conversation): pass it as ``expected_seq`` to append only if nobody else has."""
        return self.messages[-1].seq if self.messages else 0


@runtime_checkable
class ConversationStore(Protocol):
    """Storage for conversation windows. ``key`` is already namespaced and validated."""

    def append(self, key: str, messages: Sequence[Message], limits: WindowLimits,
               expected_seq: int | None = None) -> AppendResult:
        ...

    def read(self, key: str, limits: WindowLimits) -> Snapshot: ...

    def set_summary(self, key: str, summary: str | None, limits: WindowLimits) -> None: ...

    def delete(self, key: str) -> None: ...

    async def aappend(
        self, key: str, messages: Sequence[Message], limits: WindowLimits,
        expected_seq: int | None = None,
    ) -> AppendResult: ...

    async def aread(self, key: str, limits: WindowLimits) -> Snapshot: ...

    async def aset_summary(self, key: str, summary: str | None, limits: WindowLimits) -> None:
        ...

    async def adelete(self, key: str) -> None: ...


@dataclass(slots=True)
class _Conversation:
    created: float
    touched: float
    seq: int = 0
    messages: list[Message] = field(default_factory=list)
    summary: str | None = None


class MemoryStore:
    """In-process store: bounded by the window per conversation and by an LRU cap on
    the number of conversations, with idle TTL and maximum age on a monotonic clock.

    Thread-safe; the async methods do no I/O and simply call the sync ones.
    """

    def __init__(
        self, *, max_conversations: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if isinstance(max_conversations, bool) or not isinstance(max_conversations, int) or (
            max_conversations < 1
        ):
            raise ValueError(f"max_conversations must be an int >= 1, got {max_conversations!r}")
        self.max_conversations = max_conversations
        self._clock = clock
        self._lock = threading.Lock()
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self.dropped_conversations = 0

    def __len__(self) -> int:
        return len(self._conversations)

    def _expired(self, conv: _Conversation, limits: WindowLimits, now: float) -> bool:
        if limits.ttl is not None and now - conv.touched >= limits.ttl:
            return True
        return limits.max_age is not None and now - conv.created >= limits.max_age

    def _live(self, key: str, limits: WindowLimits, now: float) -> _Conversation | None:
        conv = self._conversations.get(key)
        if conv is not None and self._expired(conv, limits, now):
            del self._conversations[key]
            conv = None
        return conv

    def _touch(self, key: str, conv: _Conversation, now: float) -> None:
        conv.touched = now
        self._conversations.move_to_end(key)

    def _make_room(self, limits: WindowLimits, now: float) -> None:
        # LRU order is touch order, so idle-expired conversations sit at the front.
        while self._conversations:
            oldest_key, oldest = next(iter(self._conversations.items()))
            if not self._expired(oldest, limits, now) and (
                len(self._conversations) < self.max_conversations
            ):
                break
            del self._conversations[oldest_key]
            self.dropped_conversations += 1

    def append(self, key: str, messages: Sequence[Message], limits: WindowLimits,
               expected_seq: int | None = None) -> AppendResult:
        with self._lock:
            now = self._clock()
            conv = self._live(key, limits, now)
            existing = conv.messages if conv is not None else []
            seq = conv.seq if conv is not None else 0
            if expected_seq is not None and seq != expected_seq:
                raise ConversationConflict(expected_seq, seq)
            stored = [replace(m, seq=seq + i + 1) for i, m in enumerate(messages)]
            window = existing + stored
            drop = plan_eviction(
                [m.kind for m in window], [m.tokens for m in window], limits
            )  # raises before anything changes
            if conv is None:
                self._make_room(limits, now)
                conv = _Conversation(created=now, touched=now)
                self._conversations[key] = conv
            evicted = [window[i] for i in drop]
            if drop:
                gone = set(drop)
                window = [m for i, m in enumerate(window) if i not in gone]
            conv.messages = window
            conv.seq = seq + len(stored)
            self._touch(key, conv, now)
            return AppendResult(stored=stored, evicted=evicted)

    def read(self, key: str, limits: WindowLimits) -> Snapshot:
        with self._lock:
            now = self._clock()
            conv = self._live(key, limits, now)
            if conv is None:
                return Snapshot(messages=[], summary=None)
            self._touch(key, conv, now)
            return Snapshot(messages=list(conv.messages), summary=conv.summary)

    def set_summary(self, key: str, summary: str | None, limits: WindowLimits) -> None:
        with self._lock:
            now = self._clock()
            conv = self._live(key, limits, now)
            if conv is None:
                if summary is None:
                    return
                self._make_room(limits, now)
                conv = _Conversation(created=now, touched=now)
                self._conversations[key] = conv
            conv.summary = summary
            self._touch(key, conv, now)

    def delete(self, key: str) -> None:
        with self._lock:
            self._conversations.pop(key, None)

    async def aappend(
        self, key: str, messages: Sequence[Message], limits: WindowLimits,
        expected_seq: int | None = None,
    ) -> AppendResult:
        return self.append(key, messages, limits, expected_seq)

    async def aread(self, key: str, limits: WindowLimits) -> Snapshot:
        return self.read(key, limits)

    async def aset_summary(self, key: str, summary: str | None, limits: WindowLimits) -> None:
        self.set_summary(key, summary, limits)

    async def adelete(self, key: str) -> None:
        self.delete(key)
