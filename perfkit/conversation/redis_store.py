"""Redis store for conversation windows: one Lua script per operation, so every write is
atomic on the server.

Per conversation there are three keys sharing one hash tag (Redis Cluster safe):

* ``...:log``  a list of ``seq|tokens|kind`` headers, in store order;
* ``...:body`` a hash ``seq -> message JSON``;
* ``...:meta`` a hash with the sequence counter, creation time (server clock) and summary.

The append script assigns sequence numbers from the store's counter (never a client
clock), appends, trims by count and token budget with the same rule as
:func:`perfkit.conversation.window.plan_eviction`, and refreshes the idle TTL (capped by
the remaining maximum age) on all three keys, in one step. A crash between commands
cannot leave keys without a TTL, and two workers appending at once cannot lose a message
that belongs in the window.

Backend errors are raised (fail fast): a conversation store that silently drops turns is
worse than an error the service can report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from perfkit.conversation.messages import Message
from perfkit.conversation.stores import AppendResult, Snapshot
from perfkit.conversation.window import ConversationConflict, WindowLimits, WindowOverflow

if TYPE_CHECKING:
    import redis
    import redis.asyncio

_OVERFLOW_TAG = "PERFKIT_WINDOW_OVERFLOW"
_CONFLICT_TAG = "PERFKIT_SEQ_CONFLICT"

# Shared prologue: server clock, max-age expiry, the TTL to set.
_PROLOGUE = """
local log_key, body_key, meta_key = KEYS[1], KEYS[2], KEYS[3]
local idle_ms = tonumber(ARGV[1])
local max_age_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local created = redis.call('HGET', meta_key, 'created')
if created then created = tonumber(created) else created = nil end
if created and max_age_ms >= 0 and now_ms - created >= max_age_ms then
  redis.call('DEL', log_key, body_key, meta_key)
  created = nil
end
local function ttl_ms(born)
  local ttl = idle_ms
  if max_age_ms >= 0 then
    local left = born + max_age_ms - now_ms
    if left < 1 then left = 1 end
    if ttl < 0 or left < ttl then ttl = left end
  end
  return ttl
end
local function refresh(born)
  local ttl = ttl_ms(born)
  if ttl >= 0 then
    redis.call('PEXPIRE', log_key, ttl)
    redis.call('PEXPIRE', body_key, ttl)
    redis.call('PEXPIRE', meta_key, ttl)
  else
    redis.call('PERSIST', log_key)
    redis.call('PERSIST', body_key)
    redis.call('PERSIST', meta_key)
  end
end
"""

# ARGV: idle_ms, max_age_ms, max_messages, max_tokens, expected_seq, n, then
# n x (tokens, kind, body).
# -1 means "no limit". Returns {first_seq, evicted_seq_1, evicted_body_1, ...}.
_APPEND = _PROLOGUE + """
local max_messages = tonumber(ARGV[3])
local max_tokens = tonumber(ARGV[4])
local expected = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local seq0 = tonumber(redis.call('HGET', meta_key, 'seq') or '0')
if expected >= 0 and seq0 ~= expected then
  return redis.error_reply('""" + _CONFLICT_TAG + """ ' .. seq0)
end
local headers = redis.call('LRANGE', log_key, 0, -1)
local seqs, toks, kinds = {}, {}, {}
local count, total = 0, 0
for i, h in ipairs(headers) do
  local s, tk, k = string.match(h, '^(%d+)|(%d+)|(%a)$')
  seqs[i] = s; toks[i] = tonumber(tk); kinds[i] = k
  count = count + 1; total = total + toks[i]
end
local existing = count
for j = 1, n do
  local base = 6 + (j - 1) * 3
  count = count + 1
  seqs[count] = tostring(seq0 + j); toks[count] = tonumber(ARGV[base + 1])
  kinds[count] = ARGV[base + 2]
  total = total + toks[count]
end
local all = count
local function over()
  return (max_messages >= 0 and count > max_messages) or (max_tokens >= 0 and total > max_tokens)
end
local gone = {}
if over() then
  -- turns -> units -> indices, unpinned messages only
  local turns = {}
  for i = 1, all do
    local k = kinds[i]
    if k ~= 'p' then
      if k == 't' and #turns > 0 then
        local turn = turns[#turns]
        table.insert(turn[#turn], i)
      elseif k == 'u' or #turns == 0 then
        table.insert(turns, {{i}})
      else
        table.insert(turns[#turns], {i})
      end
    end
  end
  local function evict(unit)
    for _, i in ipairs(unit) do
      gone[i] = true; count = count - 1; total = total - toks[i]
    end
  end
  for ti = 1, #turns - 1 do
    if not over() then break end
    for _, unit in ipairs(turns[ti]) do evict(unit) end
  end
  if #turns > 0 and over() then
    local last = turns[#turns]
    for ui = 2, #last - 1 do
      if not over() then break end
      evict(last[ui])
    end
  end
  if over() then
    return redis.error_reply('""" + _OVERFLOW_TAG + """ ' .. count .. ' ' .. total)
  end
end
-- Decided: now write.
if not created then
  created = now_ms
  redis.call('HSET', meta_key, 'created', created)
end
local result = {tostring(seq0 + 1)}
local evicted_seqs = {}
for i = 1, existing do
  if gone[i] then table.insert(evicted_seqs, seqs[i]) end
end
if #evicted_seqs > 0 then
  local bodies = redis.call('HMGET', body_key, unpack(evicted_seqs))
  for x, s in ipairs(evicted_seqs) do
    table.insert(result, s); table.insert(result, bodies[x])
  end
  redis.call('HDEL', body_key, unpack(evicted_seqs))
end
for j = 1, n do
  local i = existing + j
  if gone[i] then
    table.insert(result, seqs[i]); table.insert(result, ARGV[6 + (j - 1) * 3 + 3])
  else
    redis.call('HSET', body_key, seqs[i], ARGV[6 + (j - 1) * 3 + 3])
  end
end
local function header(i) return seqs[i] .. '|' .. toks[i] .. '|' .. kinds[i] end
if #evicted_seqs > 0 then
  redis.call('DEL', log_key)
  local batch = {}
  for i = 1, all do
    if not gone[i] then
      table.insert(batch, header(i))
      if #batch == 500 then redis.call('RPUSH', log_key, unpack(batch)); batch = {} end
    end
  end
  if #batch > 0 then redis.call('RPUSH', log_key, unpack(batch)) end
else
  for i = existing + 1, all do
    if not gone[i] then redis.call('RPUSH', log_key, header(i)) end
  end
end
redis.call('HSET', meta_key, 'seq', seq0 + n)
if redis.call('EXISTS', log_key) == 0 then
  redis.call('DEL', body_key)
end
refresh(created)
return result
"""

# ARGV: idle_ms, max_age_ms. Returns {summary or false, seq_1, body_1, ...}.
_READ = _PROLOGUE + """
if not created then return {false} end
local headers = redis.call('LRANGE', log_key, 0, -1)
local result = {redis.call('HGET', meta_key, 'summary')}
if #headers > 0 then
  local seqs = {}
  for i, h in ipairs(headers) do seqs[i] = string.match(h, '^(%d+)|') end
  local bodies = redis.call('HMGET', body_key, unpack(seqs))
  for i, s in ipairs(seqs) do
    table.insert(result, s); table.insert(result, bodies[i])
  end
end
refresh(created)
return result
"""

# ARGV: idle_ms, max_age_ms, has_summary ('1'/'0'), summary.
_SET_SUMMARY = _PROLOGUE + """
if ARGV[3] == '1' then
  if not created then
    created = now_ms
    redis.call('HSET', meta_key, 'created', created)
  end
  redis.call('HSET', meta_key, 'summary', ARGV[4])
  refresh(created)
elseif created then
  redis.call('HDEL', meta_key, 'summary')
  refresh(created)
end
return 1
"""


def _ms(seconds: float | None) -> int:
    return -1 if seconds is None else max(1, int(seconds * 1000))


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "RedisStore needs redis-py: pip install 'perfkit[redis]'"
        ) from exc
    return redis


class RedisStore:
    """Conversation windows in Redis (shared by every worker), atomic per operation.

    ``url`` (or ready ``client`` / ``async_client``) chooses the server; ``prefix``
    namespaces every key so apps sharing a Redis never collide.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "perfkit:conv",
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        socket_timeout: float = 5.0,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisStore needs url= or client=/async_client=")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
        self._redis = _import_redis()
        self.url = url
        self.prefix = prefix
        self._socket_timeout = socket_timeout
        self._client = client
        self._async_client = async_client
        self._scripts: dict[str, Any] = {}
        self._async_scripts: dict[str, Any] = {}

    # clients are created lazily so a store can be built at import time without I/O
    def _sync_client(self) -> Any:
        if self._client is None:
            assert self.url is not None
            self._client = self._redis.Redis.from_url(
                self.url, socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
            )
        return self._client

    def _aclient(self) -> Any:
        if self._async_client is None:
            if self.url is None:
                raise ValueError("this RedisStore has no url= or async_client= for async use")
            self._async_client = self._redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
            )
        return self._async_client

    def _sync(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._sync_client().register_script(_SOURCES[name])
        return script

    def _async(self, name: str) -> Any:
        script = self._async_scripts.get(name)
        if script is None:
            script = self._aclient().register_script(_SOURCES[name])
            self._async_scripts[name] = script
        return script

    def keys(self, key: str) -> list[str]:
        digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
        base = f"{self.prefix}:{{{digest}}}"
        return [f"{base}:log", f"{base}:body", f"{base}:meta"]

    # -- argument building and result parsing, shared by sync and async ----------------
    @staticmethod
    def _append_args(messages: Sequence[Message], limits: WindowLimits,
                     expected_seq: int | None) -> list[Any]:
        args: list[Any] = [
            _ms(limits.ttl), _ms(limits.max_age),
            -1 if limits.max_messages is None else limits.max_messages,
            -1 if limits.max_tokens is None else limits.max_tokens,
            -1 if expected_seq is None else expected_seq,
            len(messages),
        ]
        for m in messages:
            args.extend((m.tokens, m.kind, m.encode()))
        return args

    @staticmethod
    def _append_result(messages: Sequence[Message], raw: list[Any]) -> AppendResult:
        first = int(raw[0])
        stored = [replace(m, seq=first + i) for i, m in enumerate(messages)]
        evicted = [Message.decode(int(raw[i]), raw[i + 1]) for i in range(1, len(raw), 2)]
        return AppendResult(stored=stored, evicted=evicted)

    @staticmethod
    def _snapshot(raw: list[Any]) -> Snapshot:
        summary = raw[0].decode() if raw and raw[0] else None
        messages = [Message.decode(int(raw[i]), raw[i + 1]) for i in range(1, len(raw), 2)]
        return Snapshot(messages=messages, summary=summary)

    def _overflow(self, exc: Exception, expected_seq: int | None) -> Exception:
        if _CONFLICT_TAG in str(exc):
            return ConversationConflict(expected_seq, int(str(exc).rsplit(" ", 1)[-1]))
        if _OVERFLOW_TAG in str(exc):
            count, total = str(exc).rsplit(" ", 2)[-2:]
            return WindowOverflow(
                "the newest message(s) do not fit the window even after evicting every "
                "message trimming may drop (the pinned messages, the newest turn's question "
                f"and the newest message(s) need {count} messages / {total} tokens)"
            )
        return exc

    @staticmethod
    def _summary_args(summary: str | None, limits: WindowLimits) -> list[Any]:
        return [_ms(limits.ttl), _ms(limits.max_age), "0" if summary is None else "1",
                summary or ""]

    # -- sync ---------------------------------------------------------------------------
    def append(self, key: str, messages: Sequence[Message], limits: WindowLimits,
               expected_seq: int | None = None) -> AppendResult:
        script = self._sync("append")
        try:
            raw = script(keys=self.keys(key),
                         args=self._append_args(messages, limits, expected_seq))
        except self._redis.ResponseError as exc:
            raise self._overflow(exc, expected_seq) from None
        return self._append_result(messages, raw)

    def read(self, key: str, limits: WindowLimits) -> Snapshot:
        raw = self._sync("read")(keys=self.keys(key), args=[_ms(limits.ttl), _ms(limits.max_age)])
        return self._snapshot(raw)

    def set_summary(self, key: str, summary: str | None, limits: WindowLimits) -> None:
        self._sync("summary")(keys=self.keys(key), args=self._summary_args(summary, limits))

    def delete(self, key: str) -> None:
        self._sync_client().delete(*self.keys(key))

    # -- async --------------------------------------------------------------------------
    async def aappend(
        self, key: str, messages: Sequence[Message], limits: WindowLimits,
        expected_seq: int | None = None,
    ) -> AppendResult:
        script = self._async("append")
        try:
            raw = await script(keys=self.keys(key),
                               args=self._append_args(messages, limits, expected_seq))
        except self._redis.ResponseError as exc:
            raise self._overflow(exc, expected_seq) from None
        return self._append_result(messages, raw)

    async def aread(self, key: str, limits: WindowLimits) -> Snapshot:
        script = self._async("read")
        raw = await script(keys=self.keys(key), args=[_ms(limits.ttl), _ms(limits.max_age)])
        return self._snapshot(raw)

    async def aset_summary(self, key: str, summary: str | None, limits: WindowLimits) -> None:
        script = self._async("summary")
        await script(keys=self.keys(key), args=self._summary_args(summary, limits))

    async def adelete(self, key: str) -> None:
        await self._aclient().delete(*self.keys(key))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.aclose()


_SOURCES = {"append": _APPEND, "read": _READ, "summary": _SET_SUMMARY}
