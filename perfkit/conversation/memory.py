"""``ConversationMemory``: a bounded sliding window of messages per conversation id."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from perfkit.conversation.messages import (
    Message,
    TokenCounter,
    approx_tokens,
    build_message,
    validate_conversation_id,
)
from perfkit.conversation.stores import ConversationStore, MemoryStore, Snapshot
from perfkit.conversation.window import WindowLimits, WindowOverflow, unevictable
from perfkit.metrics import REGISTRY, Registry

logger = logging.getLogger("perfkit.conversation")

EvictHook = Callable[[str, list[Message]], "Awaitable[None] | None"]


def _limit(name: str, value: object, *, allow_none: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"{name} must be a finite number > 0 or None (no limit), "
                         f"got {value!r}")
    return value


def _count(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
    return value


def _expected(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected_seq must be an int >= 0 or None, got {value!r}")
    return value


@dataclass(slots=True)
class ConversationStats:
    appended: int = 0
    evicted: int = 0
    truncated: int = 0
    rejected: int = 0
    hook_errors: int = 0


class ConversationMemory:
    """Sliding-window memory, one window per conversation id, trimmed on write.

    * ``max_messages`` / ``max_tokens`` bound each window (at least one is required);
      tokens are counted once per message by ``token_counter`` (default: the documented
      :func:`~perfkit.conversation.messages.approx_tokens` heuristic, no download).
    * System/developer messages and ``pinned=True`` messages are never evicted; trimming
      keeps whole turns and never separates a tool result from its call.
    * ``ttl`` is an idle TTL refreshed by every read and write; ``max_age`` caps a
      conversation's total lifetime.
    * ``backend``: ``None`` (in-process, LRU-capped at ``max_conversations``), a Redis URL,
      or any :class:`~perfkit.conversation.stores.ConversationStore`.
    * ``on_evict(conversation_id, messages)`` receives what trimming removed (e.g. to
      summarise it); an async hook runs as a background task on the async path.
    * ``oversize``: a message that cannot fit the token budget on its own is rejected
      (``"error"``, the default, raises :class:`WindowOverflow`) or cut to fit
      (``"truncate"``).
    """

    def __init__(
        self,
        max_messages: int | None = 20,
        max_tokens: int | None = None,
        ttl: float | None = 86400,
        backend: ConversationStore | str | None = None,
        *,
        max_age: float | None = None,
        token_counter: TokenCounter = approx_tokens,
        on_evict: EvictHook | None = None,
        oversize: Literal["error", "truncate"] = "error",
        namespace: str = "default",
        max_conversations: int = 10_000,
    ) -> None:
        max_messages = _count("max_messages", max_messages)
        max_tokens = _count("max_tokens", max_tokens)
        if max_messages is None and max_tokens is None:
            raise ValueError("set max_messages or max_tokens: an unbounded window is not offered")
        self.limits = WindowLimits(
            max_messages=max_messages,
            max_tokens=max_tokens,
            ttl=_limit("ttl", ttl),
            max_age=_limit("max_age", max_age),
        )
        if not callable(token_counter):
            raise ValueError("token_counter must be a callable str -> int")
        if on_evict is not None and not callable(on_evict):
            raise ValueError("on_evict must be a callable (conversation_id, messages) or None")
        if oversize not in ("error", "truncate"):
            raise ValueError(f"oversize must be 'error' or 'truncate', got {oversize!r}")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        self.token_counter = token_counter
        self.on_evict = on_evict
        self._async_hook = on_evict is not None and inspect.iscoroutinefunction(on_evict)
        self.oversize = oversize
        self.namespace = namespace
        self.store: ConversationStore = self._resolve_backend(backend, max_conversations)
        self.stats = ConversationStats()
        self._hook_tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _resolve_backend(
        backend: ConversationStore | str | None, max_conversations: int
    ) -> ConversationStore:
        if backend is None:
            return MemoryStore(max_conversations=max_conversations)
        if isinstance(backend, str):
            if backend.startswith(("redis://", "rediss://", "unix://")):
                from perfkit.conversation.redis_store import RedisStore

                return RedisStore(backend)
            raise ValueError(f"backend must be a store or a redis:// URL, got {backend!r}")
        if isinstance(backend, ConversationStore):
            return backend
        raise ValueError(f"backend must be a ConversationStore, a redis:// URL or None, "
                         f"got {type(backend).__name__}")

    @property
    def max_messages(self) -> int | None:
        return self.limits.max_messages

    @property
    def max_tokens(self) -> int | None:
        return self.limits.max_tokens

    def _key(self, conversation_id: object) -> str:
        cid = validate_conversation_id(conversation_id)
        return f"{len(self.namespace)}:{self.namespace}:{cid}"

    def _build(self, messages: Iterable[Mapping[str, Any] | Message]) -> list[Message]:
        built: list[Message] = []
        for i, m in enumerate(messages):
            if isinstance(m, Message):
                m = {**m.to_dict(), "pinned": m.pinned}
            if not isinstance(m, Mapping):
                raise ValueError(f"messages[{i}] must be a mapping with role and content")
            unknown = set(m) - {"role", "content", "pinned", "name", "tool_call_id",
                                "tool_calls"}
            if unknown:
                raise ValueError(f"messages[{i}] has unknown fields {sorted(unknown)}")
            pinned = m.get("pinned", False)
            if not isinstance(pinned, bool):
                raise ValueError(f"messages[{i}].pinned must be a bool, got {pinned!r}")
            built.append(build_message(
                m.get("role"), m.get("content"), pinned=pinned,
                name=m.get("name"), tool_call_id=m.get("tool_call_id"),
                tool_calls=m.get("tool_calls"), token_counter=self.token_counter,
            ))
        if not built:
            raise ValueError("messages must not be empty")
        return built

    def _truncated(self, message: Message, window: Snapshot) -> Message | None:
        """``message`` cut so that it fits beside what trimming must keep (the pinned
        messages, the newest turn's question, the call a tool result answers), or None
        when truncation is off or cannot help (a count limit, no room at all)."""
        max_tokens = self.limits.max_tokens
        if self.oversize != "truncate" or message.pinned or max_tokens is None:
            return None
        kinds = [m.kind for m in window.messages] + [message.kind]
        kept = unevictable(kinds)
        max_messages = self.limits.max_messages
        if max_messages is not None and len(kept) > max_messages:
            return None
        budget = max_tokens - sum(window.messages[i].tokens for i in kept[:-1])

        def count(text: str) -> int:
            return build_message(message.role, text, name=message.name,
                                 tool_call_id=message.tool_call_id,
                                 tool_calls=message.tool_calls,
                                 token_counter=self.token_counter).tokens

        if count("") > budget:
            return None
        lo, hi = 0, len(message.content)
        while lo < hi:  # longest prefix whose count fits
            mid = (lo + hi + 1) // 2
            if count(message.content[:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        content = message.content[:lo].rstrip()
        return Message(role=message.role, content=content, tokens=count(content),
                       name=message.name, tool_call_id=message.tool_call_id,
                       tool_calls=message.tool_calls)

    def _check_sync_hook(self) -> None:
        if self._async_hook:
            raise TypeError("on_evict is a coroutine function: use aappend()/aextend(), "
                            "or pass a plain function for the sync API")

    def _run_hook(self, cid: str, evicted: list[Message]) -> None:
        if not evicted or self.on_evict is None:
            return
        try:
            self.on_evict(cid, evicted)
        except Exception:
            self.stats.hook_errors += 1
            logger.exception("on_evict failed for conversation %r", cid)

    def _start_hook(self, cid: str, evicted: list[Message]) -> None:
        if not evicted or self.on_evict is None:
            return
        if not self._async_hook:
            self._run_hook(cid, evicted)
            return

        async def run() -> None:
            try:
                await self.on_evict(cid, evicted)  # type: ignore[misc]
            except Exception:
                self.stats.hook_errors += 1
                logger.exception("on_evict failed for conversation %r", cid)

        task = asyncio.get_running_loop().create_task(run())
        self._hook_tasks.add(task)
        task.add_done_callback(self._hook_tasks.discard)

    async def drain(self) -> None:
        """Wait for background ``on_evict`` tasks (e.g. before shutdown, or in tests)."""
        while self._hook_tasks:
            await asyncio.gather(*list(self._hook_tasks))

    # -- sync API -----------------------------------------------------------------------
    def append(
        self,
        conversation_id: str,
        role: str,
        content: str,
        *,
        pinned: bool = False,
        name: str | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        expected_seq: int | None = None,
    ) -> Message:
        """Append one message (trimming the window in the same step); returns it with
        its store-issued ``seq`` and token count."""
        message = {"role": role, "content": content, "pinned": pinned, "name": name,
                   "tool_call_id": tool_call_id, "tool_calls": tool_calls}
        return self.extend(conversation_id, [message], expected_seq=expected_seq)[0]

    def extend(
        self, conversation_id: str, messages: Iterable[Mapping[str, Any] | Message], *,
        expected_seq: int | None = None,
    ) -> list[Message]:
        """Append several messages (e.g. a whole turn) in one atomic write.

        ``expected_seq`` (optimistic concurrency): write only if the conversation is still
        at that sequence number (``snapshot(...).last_seq``), else raise
        :class:`ConversationConflict` and write nothing — one active turn at a time.
        """
        key = self._key(conversation_id)
        built = self._build(messages)
        seq = _expected(expected_seq)
        self._check_sync_hook()
        try:
            result = self.store.append(key, built, self.limits, seq)
        except WindowOverflow:
            fixed = self._truncated(built[0], self.store.read(key, self.limits)) if len(
                built) == 1 else None
            if fixed is None:
                self.stats.rejected += 1
                raise
            try:  # another writer may have moved the window in between: then refuse
                result = self.store.append(key, [fixed], self.limits, seq)
            except WindowOverflow:
                self.stats.rejected += 1
                raise
            self.stats.truncated += 1
        self.stats.appended += len(result.stored)
        self.stats.evicted += len(result.evicted)
        self._run_hook(conversation_id, result.evicted)
        return result.stored

    def snapshot(self, conversation_id: str) -> Snapshot:
        """The window (``Message`` objects in store order) and the running summary."""
        return self.store.read(self._key(conversation_id), self.limits)

    def get(self, conversation_id: str) -> list[dict[str, Any]]:
        """The window as chat-completion dicts, ready to send to an LLM."""
        return [m.to_dict() for m in self.snapshot(conversation_id).messages]

    def summary(self, conversation_id: str) -> str | None:
        return self.snapshot(conversation_id).summary

    def set_summary(self, conversation_id: str, summary: str | None) -> None:
        """Store (or with ``None`` remove) the running summary beside the window."""
        if summary is not None and not isinstance(summary, str):
            raise ValueError(f"summary must be a str or None, got {type(summary).__name__}")
        self.store.set_summary(self._key(conversation_id), summary, self.limits)

    def clear(self, conversation_id: str) -> None:
        self.store.delete(self._key(conversation_id))

    # -- async API ----------------------------------------------------------------------
    async def aappend(
        self,
        conversation_id: str,
        role: str,
        content: str,
        *,
        pinned: bool = False,
        name: str | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        expected_seq: int | None = None,
    ) -> Message:
        message = {"role": role, "content": content, "pinned": pinned, "name": name,
                   "tool_call_id": tool_call_id, "tool_calls": tool_calls}
        return (await self.aextend(conversation_id, [message], expected_seq=expected_seq))[0]

    async def aextend(
        self, conversation_id: str, messages: Iterable[Mapping[str, Any] | Message], *,
        expected_seq: int | None = None,
    ) -> list[Message]:
        key = self._key(conversation_id)
        built = self._build(messages)
        seq = _expected(expected_seq)
        try:
            result = await self.store.aappend(key, built, self.limits, seq)
        except WindowOverflow:
            fixed = None
            if len(built) == 1:
                fixed = self._truncated(built[0], await self.store.aread(key, self.limits))
            if fixed is None:
                self.stats.rejected += 1
                raise
            try:
                result = await self.store.aappend(key, [fixed], self.limits, seq)
            except WindowOverflow:
                self.stats.rejected += 1
                raise
            self.stats.truncated += 1
        self.stats.appended += len(result.stored)
        self.stats.evicted += len(result.evicted)
        self._start_hook(conversation_id, result.evicted)
        return result.stored

    async def asnapshot(self, conversation_id: str) -> Snapshot:
        return await self.store.aread(self._key(conversation_id), self.limits)

    async def aget(self, conversation_id: str) -> list[dict[str, Any]]:
        return [m.to_dict() for m in (await self.asnapshot(conversation_id)).messages]

    async def asummary(self, conversation_id: str) -> str | None:
        return (await self.asnapshot(conversation_id)).summary

    async def aset_summary(self, conversation_id: str, summary: str | None) -> None:
        if summary is not None and not isinstance(summary, str):
            raise ValueError(f"summary must be a str or None, got {type(summary).__name__}")
        await self.store.aset_summary(self._key(conversation_id), summary, self.limits)

    async def aclear(self, conversation_id: str) -> None:
        await self.store.adelete(self._key(conversation_id))

    def export_metrics(self, name: str, registry: Registry | None = None) -> None:
        """Expose append/evict/reject counters in a metrics registry (default
        ``perfkit.REGISTRY``) under the label ``memory=name``, read at scrape time."""
        reg = registry if registry is not None else REGISTRY
        s = self.stats
        for metric, help_text, read in (
            ("perfkit_conversation_appended", "Messages appended", lambda: s.appended),
            ("perfkit_conversation_evicted", "Messages trimmed out of windows", lambda: s.evicted),
            ("perfkit_conversation_rejected", "Writes refused (window overflow)",
             lambda: s.rejected),
            ("perfkit_conversation_truncated", "Messages truncated to fit", lambda: s.truncated),
            ("perfkit_conversation_hook_errors", "on_evict failures", lambda: s.hook_errors),
        ):
            reg.counter(metric, help_text, labels=("memory",)).labels(name).set_function(read)
