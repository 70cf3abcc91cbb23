"""A stand-in for an LLM API: slow, and failing a deterministic fraction of calls.

Failures look like an HTTP 503 with ``Retry-After``, so ``perfkit.retry`` and the
``CircuitBreaker`` have something real to do. Seeded, so every run fails the same calls.
"""

from __future__ import annotations

import asyncio
import random


class UpstreamUnavailable(Exception):
    """The model provider answered 503."""

    status_code = 503

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"503 from the model provider (retry after {retry_after}s)")
        self.retry_after = retry_after


class StandInLLM:
    def __init__(self, latency: float = 0.03, failure_rate: float = 0.25, seed: int = 7) -> None:
        self.latency = latency
        self.failure_rate = failure_rate
        self._rng = random.Random(seed)
        self.calls = 0
        self.failures = 0

    async def complete(self, messages: list[dict[str, str]], model: str) -> str:
        self.calls += 1
        await asyncio.sleep(self.latency)
        if self._rng.random() < self.failure_rate:
            self.failures += 1
            raise UpstreamUnavailable(retry_after=0.01)
        question = messages[-1]["content"]
        turns = sum(1 for m in messages if m["role"] == "user")
        return f"[{model}] answer to {question!r} (turn {turns})"
