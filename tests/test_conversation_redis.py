"""What is special about the Redis conversation store: atomicity across real processes,
TTLs set in the same step as the write, and failing loudly when Redis is gone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import redis

from perfkit import ConversationMemory
from perfkit.conversation import RedisStore

WORKER = textwrap.dedent(
    """
    import json, sys
    import redis
    from perfkit import ConversationMemory
    from perfkit.conversation import RedisStore

    url, prefix, start_key, worker, n = sys.argv[1:6]
    evicted, seqs = [], []
    mem = ConversationMemory(
        max_messages=40, backend=RedisStore(url, prefix=prefix),
        on_evict=lambda cid, ms: evicted.extend(m.content for m in ms),
    )
    r = redis.Redis.from_url(url)
    r.rpush(start_key + ":ready", worker)  # a barrier: both are imported and connected
    r.blpop([start_key], timeout=30)  # ... and start together
    for i in range(int(n)):
        seqs.append(mem.append("shared", "user", f"w{worker}-{i}").seq)
    print(json.dumps({"evicted": evicted, "seqs": seqs}))
    """
)


def test_two_processes_appending_lose_nothing(redis_url: str, unique_ns: str) -> None:
    prefix = f"perfkit-test:{unique_ns}"
    start_key = f"{prefix}:start"
    n = 300
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, prefix, start_key, str(w), str(n)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in (0, 1)
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in procs:
            assert client.blpop([f"{start_key}:ready"], timeout=30) is not None
        client.rpush(start_key, "go", "go")
        outputs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            outputs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        client.delete(start_key, f"{start_key}:ready")
    mem = ConversationMemory(max_messages=40, backend=RedisStore(redis_url, prefix=prefix))
    window = mem.snapshot("shared").messages
    all_seqs = outputs[0]["seqs"] + outputs[1]["seqs"]
    # the store issued every sequence number exactly once
    assert sorted(all_seqs) == list(range(1, 2 * n + 1))
    # each writer's messages are in its own order, and the two really ran at once
    assert all(o["seqs"] == sorted(o["seqs"]) for o in outputs)
    a, b = outputs[0]["seqs"], outputs[1]["seqs"]
    assert max(a) > min(b) and max(b) > min(a), "the writers did not overlap"
    # the window is exactly the 40 newest messages, in store order
    assert [m.seq for m in window] == list(range(2 * n - 39, 2 * n + 1))
    # and every message is either in the window or was handed to on_evict, once
    seen = outputs[0]["evicted"] + outputs[1]["evicted"] + [m.content for m in window]
    expected = {f"w{w}-{i}" for w in (0, 1) for i in range(n)}
    assert len(seen) == len(expected) and set(seen) == expected
    # storage never grew past the window
    log_key, body_key, _ = RedisStore(redis_url, prefix=prefix).keys("7:default:shared")
    assert client.llen(log_key) == 40 and client.hlen(body_key) == 40
    mem.clear("shared")
    client.close()


def test_every_key_gets_the_ttl_in_the_same_write(redis_url: str, unique_ns: str) -> None:
    store = RedisStore(redis_url, prefix=f"perfkit-test:{unique_ns}")
    mem = ConversationMemory(max_messages=3, ttl=120, backend=store)
    mem.append("c", "user", "hi")
    mem.set_summary("c", "s")
    client = redis.Redis.from_url(redis_url)
    keys = store.keys("7:default:c")
    ttls = [client.pttl(k) for k in keys]
    assert all(110_000 < t <= 120_000 for t in ttls), ttls
    client.pexpire(keys[0], 5000)  # pretend time passed; any activity refreshes all keys
    mem.get("c")
    assert all(client.pttl(k) > 110_000 for k in keys)
    mem.clear("c")
    assert client.exists(*keys) == 0
    client.close()
    store.close()


def test_max_age_caps_the_ttl_and_expires_by_server_clock(
    redis_url: str, unique_ns: str
) -> None:
    store = RedisStore(redis_url, prefix=f"perfkit-test:{unique_ns}")
    mem = ConversationMemory(max_messages=3, ttl=3600, max_age=60, backend=store)
    mem.append("c", "user", "hi")
    client = redis.Redis.from_url(redis_url)
    keys = store.keys("7:default:c")
    assert all(50_000 < client.pttl(k) <= 60_000 for k in keys)
    # age the conversation on the server: creation time is the server's own clock
    client.hset(keys[2], "created", int(client.time()[0] * 1000) - 61_000)
    assert mem.get("c") == []
    assert mem.append("c", "user", "fresh").seq == 1
    mem.clear("c")
    client.close()
    store.close()


def test_redis_down_fails_fast_and_recovers(redis_server) -> None:  # type: ignore[no-untyped-def]
    store = RedisStore(redis_server.url, prefix="perfkit-test:down", socket_timeout=1)
    mem = ConversationMemory(max_messages=3, backend=store)
    mem.append("c", "user", "hi")
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        mem.append("c", "user", "lost?")
    redis_server.start()  # a fresh, empty server on the same port
    assert mem.append("c", "user", "back").seq == 1
    assert [m["content"] for m in mem.get("c")] == ["back"]
    store.close()


async def test_async_two_tasks_interleave_without_loss(redis_url: str, unique_ns: str) -> None:
    import asyncio

    store = RedisStore(redis_url, prefix=f"perfkit-test:{unique_ns}")
    mem = ConversationMemory(max_messages=500, backend=store)

    async def writer(w: int) -> list[int]:
        return [(await mem.aappend("c", "user", f"{w}-{i}")).seq for i in range(100)]

    a, b = await asyncio.gather(writer(0), writer(1))
    assert sorted(a + b) == list(range(1, 201))
    assert len(await mem.aget("c")) == 200
    await mem.aclear("c")
    await store.aclose()
