"""The trimming rule every store applies on write (the Redis Lua script mirrors it).

Messages are grouped so trimming never breaks the structure an LLM API expects:

* pinned messages (system/developer, or ``pinned=True``) are never evicted and are
  charged against the limits first;
* a *unit* is one message plus the tool results that follow it (a tool result is never
  kept without the call that produced it);
* a *turn* starts at a user message and holds every unit until the next user message.

Eviction, oldest first, until the window fits ``max_messages`` and ``max_tokens``:

1. whole turns, while more than one turn is left;
2. then, inside the newest turn, the units between its first unit (the user's question)
   and its newest unit;
3. if the pinned messages, the newest turn's question and its newest unit still do not
   fit, the write is refused with :class:`WindowOverflow`, and nothing is stored. The
   question is never evicted before its answer: a window that starts on an answer (or a
   tool result) is not a conversation an LLM API accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from perfkit.conversation.messages import KIND_PINNED, KIND_TOOL, KIND_USER


class WindowOverflow(ValueError):
    """The newest message(s) cannot fit the window even after evicting everything else."""


class ConversationConflict(RuntimeError):
    """Another writer appended first: the conversation is not at ``expected_seq`` (409)."""

    def __init__(self, expected_seq: int | None, actual_seq: int) -> None:
        super().__init__(f"conversation moved on: expected_seq={expected_seq}, "
                         f"the store is at seq {actual_seq}; re-read and retry the turn")
        self.expected_seq = expected_seq
        self.actual_seq = actual_seq


@dataclass(frozen=True, slots=True)
class WindowLimits:
    """Limits and lifetimes a store enforces on every write (``None`` = no limit)."""

    max_messages: int | None
    max_tokens: int | None
    ttl: float | None
    max_age: float | None


def plan_eviction(
    kinds: Sequence[str], tokens: Sequence[int], limits: WindowLimits
) -> list[int]:
    """Indices (ascending) of the messages to evict so the rest fits ``limits``.

    Raises :class:`WindowOverflow` when even the pinned messages plus the newest unit
    exceed a limit.
    """
    max_messages, max_tokens = limits.max_messages, limits.max_tokens
    count = len(kinds)
    total = sum(tokens)

    def over() -> bool:
        return (max_messages is not None and count > max_messages) or (
            max_tokens is not None and total > max_tokens
        )

    if not over():
        return []
    turns = _turns(kinds)
    evicted: list[int] = []

    def evict(unit: list[int]) -> None:
        nonlocal count, total
        evicted.extend(unit)
        count -= len(unit)
        total -= sum(tokens[i] for i in unit)

    for turn in turns[:-1]:
        if not over():
            break
        for unit in turn:
            evict(unit)
    if turns and over():
        last = turns[-1]
        for unit in last[1:-1]:
            if not over():
                break
            evict(unit)
    if over():
        raise WindowOverflow(
            "the newest message(s) do not fit the window even after evicting every "
            f"message trimming may drop (max_messages={max_messages}, "
            f"max_tokens={max_tokens}; the pinned messages, the newest turn's question and "
            f"the newest message(s) need {count} messages / {total} tokens)"
        )
    evicted.sort()
    return evicted


def _turns(kinds: Sequence[str]) -> list[list[list[int]]]:
    """Units (lists of indices) of the unpinned messages, grouped into turns."""
    turns: list[list[list[int]]] = []
    for i, kind in enumerate(kinds):
        if kind == KIND_PINNED:
            continue
        if kind == KIND_TOOL and turns:
            turns[-1][-1].append(i)
        elif kind == KIND_USER or not turns:
            turns.append([[i]])
        else:
            turns[-1].append([i])
    return turns


def unevictable(kinds: Sequence[str]) -> list[int]:
    """Indices trimming can never drop: the pinned messages, the newest turn's first unit
    (its question) and its newest unit (what is being written)."""
    kept = [i for i, kind in enumerate(kinds) if kind == KIND_PINNED]
    turns = _turns(kinds)
    if turns:
        last = turns[-1]
        kept.extend(last[0])
        if len(last) > 1:
            kept.extend(last[-1])
    return sorted(kept)
