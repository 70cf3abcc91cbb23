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
