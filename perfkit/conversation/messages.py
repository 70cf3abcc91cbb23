"""Messages of a conversation, their validation and the default token counter.

A message is validated once, at the edge, so the stores only ever see well-formed data.
Each message carries its own token count (counted once, when written), so trimming a
window never recounts the history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "developer", "user", "assistant", "tool"})
PINNED_ROLES: frozenset[str] = frozenset({"system", "developer"})

TokenCounter = Callable[[str], int]

MAX_CONVERSATION_ID_LENGTH = 256
MESSAGE_OVERHEAD_TOKENS = 4


def approx_tokens(text: str) -> int:
    """Estimate tokens as one per four characters, plus 4 for the message's framing.

    The documented default: no tokenizer download, O(1), and within ~25 % of BPE
    tokenizers on English prose (it overestimates code and underestimates CJK text).
    Pass ``token_counter=`` (e.g. a tiktoken encoder's ``len(enc.encode(s))``) for exact
    budgets.
    """
    return math.ceil(len(text) / 4) + MESSAGE_OVERHEAD_TOKENS


# Kinds, as stored beside each message so a store can trim without decoding bodies:
#   p = pinned (system/developer or pinned=True): never evicted
#   u = user message: starts a turn
#   a = any other message: starts a unit inside the current turn
#   t = tool result: belongs to the unit before it (the call that produced it)
KIND_PINNED, KIND_USER, KIND_OTHER, KIND_TOOL = "p", "u", "a", "t"


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message. ``seq`` is issued by the store, in store order (never a clock)."""

    role: str
    content: str
    seq: int = 0
    tokens: int = 0
    pinned: bool = False
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    kind: str = field(init=False, compare=False, repr=False)
    """How trimming treats the message (``KIND_*`` above), derived once."""

    def __post_init__(self) -> None:
        if self.pinned:
            kind = KIND_PINNED
        elif self.role == "user":
            kind = KIND_USER
        elif self.role == "tool":
            kind = KIND_TOOL
        else:
            kind = KIND_OTHER
        object.__setattr__(self, "kind", kind)

    def to_dict(self) -> dict[str, Any]:
        """The message in the chat-completions shape most LLM SDKs accept."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_calls is not None:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        return out

    def encode(self) -> str:
        """JSON body for a store (``seq`` is kept by the store, not in the body)."""
        body: dict[str, Any] = self.to_dict()
        body["tokens"] = self.tokens
        if self.pinned:
            body["pinned"] = True
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, seq: int, body: str | bytes) -> Message:
        data = json.loads(body)
        calls = data.get("tool_calls")
        return cls(
            role=data["role"],
            content=data["content"],
            seq=seq,
            tokens=int(data["tokens"]),
            pinned=bool(data.get("pinned", False)),
            name=data.get("name"),
            tool_call_id=data.get("tool_call_id"),
            tool_calls=tuple(calls) if calls is not None else None,
        )


def validate_conversation_id(conversation_id: object) -> str:
    if not isinstance(conversation_id, str):
        raise ValueError(
            f"conversation_id must be a non-empty str, got {type(conversation_id).__name__}"
        )
    if not conversation_id.strip():
        raise ValueError("conversation_id must be a non-empty str (there is no shared default)")
    if len(conversation_id) > MAX_CONVERSATION_ID_LENGTH:
        raise ValueError(
            f"conversation_id is {len(conversation_id)} characters; "
            f"at most {MAX_CONVERSATION_ID_LENGTH} are accepted"
        )
    return conversation_id


def build_message(
    role: object,
    content: object,
    *,
    pinned: bool = False,
    name: str | None = None,
    tool_call_id: str | None = None,
    tool_calls: Sequence[Mapping[str, Any]] | None = None,
    token_counter: TokenCounter,
) -> Message:
    """Validate one message and count its tokens (once)."""
    if not isinstance(role, str) or role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise ValueError(f"content must be a str, got {type(content).__name__}")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a str or None, got {type(name).__name__}")
    if tool_call_id is not None and not isinstance(tool_call_id, str):
        raise ValueError(
            f"tool_call_id must be a str or None, got {type(tool_call_id).__name__}"
        )
    if role == "tool" and not tool_call_id:
        raise ValueError("tool_call_id is required for role='tool' (the call it answers)")
    calls: tuple[Mapping[str, Any], ...] | None = None
    if tool_calls is not None:
        if role != "assistant":
            raise ValueError("tool_calls is only accepted on role='assistant' messages")
        if isinstance(tool_calls, str | bytes | Mapping) or not all(
                isinstance(c, Mapping) for c in tool_calls):
            raise ValueError("tool_calls must be a list of mappings (the SDK's tool calls)")
        calls = tuple(dict(c) for c in tool_calls)
        try:  # stored as JSON in every backend: refuse what a store could not write
            calls_json = json.dumps(calls)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tool_calls must be JSON-serialisable: {exc}") from None
    counted = content if calls is None else content + calls_json
    tokens = token_counter(counted)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        raise ValueError(f"token_counter must return an int >= 0, got {tokens!r}")
    return Message(
        role=role,
        content=content,
        tokens=tokens,
        pinned=bool(pinned) or role in PINNED_ROLES,
        name=name,
        tool_call_id=tool_call_id,
        tool_calls=calls,
    )
