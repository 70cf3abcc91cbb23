"""SemanticCache shared through real Redis: entries, deletions and tag invalidations reach
other workers; a worker with another embedder never mixes vectors; Redis going away
leaves every worker serving locally, without exceptions, and sharing resumes after."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import redis

from perfkit import SemanticCache
from perfkit.semantic import HashingEmbedder
from perfkit.semantic.shared import RedisSync

CTX = {"tenant": "acme"}


def _worker(url: str, ns: str, **kw: object) -> SemanticCache:
    return SemanticCache(shared=RedisSync(url, namespace=ns, sync_interval=0), **kw)


def test_entries_and_invalidations_reach_other_workers(redis_url: str, unique_ns: str) -> None:
    a = _worker(redis_url, unique_ns, price=0.01)
    b = _worker(redis_url, unique_ns)
    a.set("How do I reset my password?", {"text": "Use the link."}, context=CTX,
          tags=["doc:pw@v1"])
    a.set("What is the refund window?", "30 days", context=CTX)
    hit = b.get("How can I reset my password?", context=CTX)
    assert hit is not None and hit.response == {"text": "Use the link."}
    assert b.get("How can I reset my password?", context={"tenant": "other"}) is None
    assert b.get("What is the refund window?", context=CTX) is not None
    a.invalidate_tags("doc:pw@v1")
    a.delete("What is the refund window?", context=CTX)
    assert b.get("How can I reset my password?", context=CTX) is None
    assert b.get("What is the refund window?", context=CTX) is None
    b.set("What is Docker?", "containers", context=CTX)
    assert a.get("what is docker", context=CTX) is not None
    b.clear()
    assert a.get("what is docker", context=CTX) is None
    assert a.stats()["shared_errors"] == 0


def test_a_new_process_loads_what_others_wrote(redis_url: str, unique_ns: str) -> None:
    a = _worker(redis_url, unique_ns)
    a.set("How do I reverse a list in Python?", "lst[::-1]", context=CTX)
    code = textwrap.dedent(f"""
        from perfkit import SemanticCache
        from perfkit.semantic.shared import RedisSync
        c = SemanticCache(shared=RedisSync({redis_url!r}, namespace={unique_ns!r}))
        hit = c.get("How can I reverse a Python list?", context={CTX!r})
        print(hit.response if hit else "MISS")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "lst[::-1]"


def test_other_embedders_vectors_are_never_mixed(redis_url: str, unique_ns: str) -> None:
    a = _worker(redis_url, unique_ns)
    b = _worker(redis_url, unique_ns, embedder=HashingEmbedder(dim=128))
    a.set("How do I reset my password?", "link", context=CTX)
    assert b.get("How do I reset my password?", context=CTX) is None
    assert b.stats()["shared_skipped"] == 1


def test_responses_must_be_json_when_shared(redis_url: str, unique_ns: str) -> None:
    a = _worker(redis_url, unique_ns)
    with pytest.raises(ValueError, match="JSON"):
        a.set("x", object(), context=CTX)


def test_redis_down_serves_locally_and_resumes(redis_server,  # type: ignore[no-untyped-def]
                                               caplog: pytest.LogCaptureFixture) -> None:
    a = SemanticCache(shared=RedisSync(redis_server.url, namespace="t", sync_interval=0,
                                       retry_after=0, socket_timeout=0.3))
    b = SemanticCache(shared=RedisSync(redis_server.url, namespace="t", sync_interval=0,
                                       retry_after=0, socket_timeout=0.3))
    a.set("What is the refund window?", "30 days", context=CTX)
    assert b.get("What is the refund window?", context=CTX) is not None
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="perfkit.semantic"):
        a.set("How do I reset my password?", "link", context=CTX)  # no exception
        for _ in range(3):
            assert a.get("How can I reset my password?", context=CTX) is not None
        assert b.get("What is the refund window?", context=CTX) is not None  # local copy
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 2  # one per worker and outage, not one per call
    assert a.stats()["shared_errors"] >= 1
    redis_server.start()  # an empty server: sharing resumes with new writes
    a.set("What is Docker?", "containers", context=CTX)
    hit = b.get("What is docker?", context=CTX)
    assert hit is not None and hit.response == "containers"
    client = redis.Redis.from_url(redis_server.url)
    assert client.pttl("t:log") > 0  # the stream expires when unused
    client.close()
