"""The example service against real PostgreSQL and Redis (the same code as in-process)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from examples.shop.app import Settings, create_app


@pytest.fixture
def pg_schema_url(postgres_url):
    schema = f"shop_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{postgres_url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_example_runs_on_postgresql_and_redis(pg_schema_url, redis_url):
    app = create_app(Settings(database_url=pg_schema_url, redis_url=redis_url,
                              llm_latency=0.001))
    with TestClient(app) as client:
        products = client.get("/v2/products", params={"brand": "globex"}).json()
        assert len(products) == 50 and {p["brand"] for p in products} == {"globex"}
        first = client.get("/products/3")
        assert first.status_code == 200 and first.json()["id"] == 3
        assert client.get("/products/3").headers.get("age") is not None  # a cache hit
        conversation = uuid.uuid4().hex
        reply = client.post("/chat", json={"conversation_id": conversation, "user_id": "u1",
                                           "message": "Do you ship to Norway?"})
        assert reply.status_code == 200, reply.text
        again = client.post("/chat", json={"conversation_id": conversation, "user_id": "u1",
                                           "message": "And to Sweden?"})
        assert again.json()["history"] == 4  # the conversation lives in Redis
    app.state.engine.dispose()


def test_two_workers_share_the_semantic_cache_through_redis(redis_url):
    """Two app instances (two workers) on one Redis: an answer worker A paid for is a
    cache hit on worker B, and never for another user."""
    import time

    user = uuid.uuid4().hex  # answers are cached per user: this run's own entries
    apps = [create_app(Settings(redis_url=redis_url, llm_latency=0.001, llm_failure_rate=0.0))
            for _ in range(2)]
    try:
        with TestClient(apps[0]) as worker_a, TestClient(apps[1]) as worker_b:
            def ask(client, who):
                return client.post("/chat", json={
                    "conversation_id": uuid.uuid4().hex, "user_id": who,
                    "message": "What is your return policy?"}).json()

            assert ask(worker_a, user)["cached"] is False
            # Wait (reading only: a miss through /chat would fill B's cache itself) until
            # B has synced; workers sync every 0.25 s.
            context = {"user": user, "model": "stand-in-small", "previous": ""}
            deadline = time.monotonic() + 5.0
            while (apps[1].state.answers.get("What is your return policy?", context=context)
                   is None and time.monotonic() < deadline):
                time.sleep(0.05)
            assert ask(worker_b, user)["cached"] is True
            assert ask(worker_b, uuid.uuid4().hex)["cached"] is False  # another user
    finally:
        for app in apps:
            app.state.engine.dispose()
