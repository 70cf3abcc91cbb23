"""Review findings for the Redis-shared semantic cache: an invalidation made while one
worker cannot reach Redis must still reach the others, and a worker whose place in the
shared log was trimmed away must not keep serving what it can no longer verify."""

from __future__ import annotations

from typing import Any

import redis

from perfkit import SemanticCache
from perfkit.semantic.shared import RedisSync

CTX = {"tenant": "acme"}


class _Cuttable:
    """A real redis client whose connection this test can cut (one worker partitioned
    away from Redis while the others still reach it)."""

    def __init__(self, url: str) -> None:
        self.real = redis.Redis.from_url(url)
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        if self.cut:
            raise redis.ConnectionError("partitioned (test)")
        return getattr(self.real, name)


def test_invalidation_during_a_workers_outage_reaches_the_others(
    redis_url: str, unique_ns: str
) -> None:
    link = _Cuttable(redis_url)
    a = SemanticCache(shared=RedisSync(client=link, namespace=unique_ns, sync_interval=0,
                                       retry_after=0))
    b = SemanticCache(shared=RedisSync(redis_url, namespace=unique_ns, sync_interval=0))
    a.set("What is the refund window?", "30 days", context=CTX, tags=["doc:refunds@v1"])
    a.set("What is Docker?", "containers", context=CTX)
    assert b.get("What is the refund window?", context=CTX) is not None
    link.cut = True
    assert a.invalidate_tags("doc:refunds@v1") == 1  # no exception; queued for later
    a.delete("What is Docker?", context=CTX)
    assert a.get("What is the refund window?", context=CTX) is None
    link.cut = False
    a.get("anything", context=CTX)  # first contact after the outage sends the backlog
    assert b.get("What is the refund window?", context=CTX) is None
    assert b.get("What is Docker?", context=CTX) is None
    link.real.close()


def test_a_worker_whose_log_position_was_trimmed_drops_its_copy(
    redis_url: str, unique_ns: str
) -> None:
    a = SemanticCache(shared=RedisSync(redis_url, namespace=unique_ns, sync_interval=0))
    b = SemanticCache(shared=RedisSync(redis_url, namespace=unique_ns, sync_interval=0))
    a.set("What is the refund window?", "30 days", context=CTX)
    assert b.get("What is the refund window?", context=CTX) is not None
    a.delete("What is the refund window?", context=CTX)
    a.set("What is Docker?", "containers", context=CTX)
    client = redis.Redis.from_url(redis_url)
    client.xtrim(f"{unique_ns}:log", maxlen=1)  # what MAXLEN ~ does to a slow reader
    assert b.get("What is the refund window?", context=CTX) is None  # not served stale
    hit = b.get("what is docker", context=CTX)  # and it reloads what the log still has
    assert hit is not None and hit.response == "containers"
    client.delete(f"{unique_ns}:log")
    client.close()


async def test_async_invalidation_api_reaches_other_workers(
    redis_url: str, unique_ns: str
) -> None:
    a = SemanticCache(shared=RedisSync(redis_url, namespace=unique_ns, sync_interval=0))
    b = SemanticCache(shared=RedisSync(redis_url, namespace=unique_ns, sync_interval=0))
    await a.aset("What is the refund window?", "30 days", context=CTX, tags=["doc:r@v1"])
    await a.aset("What is Docker?", "containers", context=CTX)
    await a.aset("What is Kubernetes?", "orchestration", context={"tenant": "other"})
    assert await b.aget("What is the refund window?", context=CTX) is not None
    assert await a.ainvalidate_tags("doc:r@v1") == 1
    assert await a.adelete("What is Docker?", context=CTX)
    await a.aclear(context={"tenant": "other"})
    assert await b.aget("What is the refund window?", context=CTX) is None
    assert await b.aget("What is Docker?", context=CTX) is None
    assert await b.aget("What is Kubernetes?", context={"tenant": "other"}) is None
    redis.Redis.from_url(redis_url).delete(f"{unique_ns}:log")
