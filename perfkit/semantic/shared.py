"""Share one semantic cache between workers through Redis, degrading to local-only.

Every write (set, delete, tag invalidation, clear) is appended to one Redis stream per
namespace, with the prompt, response (JSON), expiry (wall clock), tags, embedder id and
vector. Each worker keeps its own local indexes and, at most every ``sync_interval``
seconds, reads the stream from where it stopped and applies what other workers wrote.
The stream is capped (``MAXLEN ~``) and expires when unused, so Redis stays bounded.

If Redis is unreachable the cache keeps serving and accepting writes locally, logs one
warning per outage, skips Redis for ``retry_after`` seconds between attempts (no socket
timeout per call) and picks up the stream again when Redis is back.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger("perfkit.semantic")

_BATCH = 500
_MAX_BATCHES = 20  # per poll: bounded work on the request path


def encode_vector(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype=np.float32).tobytes()).decode()


def decode_vector(text: str) -> npt.NDArray[np.float32]:
    return np.array(np.frombuffer(base64.b64decode(text), dtype=np.float32), dtype=np.float32)


class RedisSync:
    """The Redis side of a shared :class:`~perfkit.semantic.SemanticCache`.

    ``namespace`` names the stream: caches that should share entries use the same one,
    unrelated apps on one Redis use different ones.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "perfkit:semantic",
        sync_interval: float = 0.25,
        max_log: int = 100_000,
        retry_after: float = 5.0,
        socket_timeout: float = 0.5,
        idle_expiry: float = 7 * 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("sharing a SemanticCache needs redis-py: "
                              "pip install 'perfkit[redis]'") from exc
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"namespace must be a non-empty str, got {namespace!r}")
        for name, value in (("sync_interval", sync_interval), ("retry_after", retry_after),
                            ("socket_timeout", socket_timeout), ("idle_expiry", idle_expiry)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(max_log, bool) or not isinstance(max_log, int) or max_log < 1:
            raise ValueError(f"max_log must be an int >= 1, got {max_log!r}")
        self._redis = redis
        self._client: Any = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                            socket_connect_timeout=socket_timeout)
        self.key = f"{namespace}:log"
        self.sync_interval = sync_interval
        self.max_log = max_log
        self.retry_after = retry_after
        self.idle_expiry_ms = int(idle_expiry * 1000)
        self.origin = uuid.uuid4().hex
        self._clock = clock
        self._last_id = "0-0"
        self._next_poll = 0.0
        self._down_until: float | None = None
        self.errors = 0

    @property
    def available(self) -> bool:
        """False while an outage is being waited out."""
        return self._down_until is None or self._clock() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self._down_until is None:
            logger.warning("semantic cache: Redis unavailable (%s); serving local entries "
                           "only, retrying every %.1fs", exc, self.retry_after)
        self._down_until = self._clock() + self.retry_after

    def _recovered(self) -> None:
        if self._down_until is not None:
            logger.warning("semantic cache: Redis is back; sharing entries again")
            self._down_until = None

    def publish(self, op: dict[str, Any]) -> None:
        """Append one operation for the other workers (dropped while Redis is down)."""
        if not self.available:
            return
        op["o"] = self.origin
        payload = json.dumps(op, separators=(",", ":"), ensure_ascii=False)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.xadd(self.key, {"op": payload}, maxlen=self.max_log, approximate=True)
            pipe.pexpire(self.key, self.idle_expiry_ms)
            pipe.execute()
        except self._redis.RedisError as exc:
            self._failed(exc)
        else:
            self._recovered()

    def poll(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Operations other workers appended since the last poll (rate-limited)."""
        now = self._clock()
        if not force and (now < self._next_poll or not self.available):
            return []
        self._next_poll = now + self.sync_interval
        ops: list[dict[str, Any]] = []
        try:
            for _ in range(_MAX_BATCHES):
                reply = self._client.xread({self.key: self._last_id}, count=_BATCH)
                if not reply:
                    break
                messages = reply[0][1]
                for message_id, fields in messages:
                    self._last_id = message_id.decode()
                    op = json.loads(fields[b"op"])
                    if op.get("o") != self.origin:
                        ops.append(op)
                if len(messages) < _BATCH:
                    break
        except self._redis.RedisError as exc:
            self._failed(exc)
        else:
            self._recovered()
        return ops

    def close(self) -> None:
        self._client.close()
