"""Share one semantic cache between workers through Redis, degrading to local-only.

Every write (set, delete, tag invalidation, clear) is appended to one Redis stream per
namespace, with the prompt, response (JSON), expiry (wall clock), tags, embedder id and
vector. Each worker keeps its own local indexes and, at most every ``sync_interval``
seconds, reads the stream from where it stopped and applies what other workers wrote.
The stream is capped (``MAXLEN ~``) and expires when unused, so Redis stays bounded.

If Redis is unreachable the cache keeps serving and accepting writes locally, logs one
warning per outage, skips Redis for ``retry_after`` seconds between attempts (no socket
timeout per call) and picks up the stream again when Redis is back. Invalidations made
during the outage (delete, tags, clear) are kept (bounded) and sent first when Redis is
back, so the other workers still drop what this one dropped; new entries made during the
outage stay local.

A worker whose place in the stream is gone (trimmed by ``MAXLEN``, expired, or a Redis
restart) cannot know what it missed, invalidations included: it drops its local copy and
reloads from what the stream still holds.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger("perfkit.semantic")

_BATCH = 500
_MAX_BATCHES = 20  # per poll: bounded work on the request path
_MAX_PENDING = 1000  # invalidations kept during an outage; beyond that, one "clear all"
_INVALIDATIONS = frozenset({"del", "tags", "clear"})
RESET = {"op": "reset"}
"""Returned first by :meth:`RedisSync.poll` when the worker lost its place in the stream:
drop the local copy, the operations that follow rebuild it."""


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
        url: str | None = None,
        *,
        client: Any = None,
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
        if (url is None) == (client is None):
            raise ValueError("RedisSync needs exactly one of url= or client= (a redis.Redis)")
        self._redis = redis
        self._client: Any = client
        if url is not None:
            self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
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
        self._pending: list[dict[str, Any]] = []  # invalidations not yet sent
        self._replay_own = False  # after a reset, own operations are re-read too
        self._lock = threading.Lock()  # one poll at a time: ops arrive in stream order
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

    def _keep(self, op: dict[str, Any]) -> None:
        """Hold an invalidation for later; too many become one "clear everything"."""
        if op.get("op") not in _INVALIDATIONS:
            return  # a new entry made during an outage simply stays local
        if len(self._pending) >= _MAX_PENDING:
            self._pending = [{"op": "clear", "p": None}]
        else:
            self._pending.append(op)

    def publish(self, op: dict[str, Any]) -> None:
        """Append one operation for the other workers. While Redis is down, new entries
        are not shared and invalidations are kept to be sent when it is back."""
        op["o"] = self.origin
        if not self.available:
            self._keep(op)
            return
        try:
            self._send([*self._pending, op])
        except self._redis.RedisError as exc:
            self._keep(op)
            self._failed(exc)
        else:
            self._pending = []
            self._recovered()

    def _send(self, ops: list[dict[str, Any]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for item in ops:
            payload = json.dumps(item, separators=(",", ":"), ensure_ascii=False)
            pipe.xadd(self.key, {"op": payload}, maxlen=self.max_log, approximate=True)
        pipe.pexpire(self.key, self.idle_expiry_ms)
        pipe.execute()

    def due(self) -> bool:
        """Whether :meth:`poll` would contact Redis now (cheap; no I/O)."""
        return self.available and self._clock() >= self._next_poll

    def poll(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Operations other workers appended since the last poll (rate-limited), in
        stream order; :data:`RESET` first if this worker lost its place in the stream.

        Polls are serialised: callers that find a poll under way get ``[]`` at once
        (the running poll applies what is new), so operations are never applied out of
        order by two threads.
        """
        if not self._lock.acquire(blocking=False):
            return []
        try:
            return self._poll(force)
        finally:
            self._lock.release()

    def _poll(self, force: bool) -> list[dict[str, Any]]:
        now = self._clock()
        if not force and (now < self._next_poll or not self.available):
            return []
        self._next_poll = now + self.sync_interval
        ops: list[dict[str, Any]] = []
        try:
            if self._pending:  # the outage is over: the backlog goes first
                self._send(self._pending)
                self._pending = []
            if self._last_id != "0-0" and not self._client.xrange(
                    self.key, self._last_id, self._last_id, count=1):
                # Our last entry is gone: whatever followed it may be gone too.
                ops.append(dict(RESET))
                self._last_id = "0-0"
                self._replay_own = True
            for _ in range(_MAX_BATCHES):
                reply = self._client.xread({self.key: self._last_id}, count=_BATCH)
                messages = reply[0][1] if reply else []
                for message_id, fields in messages:
                    self._last_id = message_id.decode()
                    op = json.loads(fields[b"op"])
                    if self._replay_own or op.get("o") != self.origin:
                        ops.append(op)
                if len(messages) < _BATCH:
                    self._replay_own = False
                    break
        except self._redis.RedisError as exc:
            self._failed(exc)
        else:
            self._recovered()
        return ops

    def close(self) -> None:
        self._client.close()
