"""The example service's perf-budget suite: what a team would run in CI.

Run with ``python -m pytest examples/tests --perf-budget --perf-report=perf-report.html``.
"""

from __future__ import annotations

import uuid

import pytest


@pytest.mark.perf_budget(latency="150ms", queries=1)
def test_product_detail_is_served_fast(client):
    first = client.get("/products/7")
    assert first.status_code == 200
    assert first.json()["id"] == 7
    etag = first.headers["etag"]
    again = client.get("/products/7", headers={"If-None-Match": etag})
    assert again.status_code == 304  # the response cache answers; no handler, no SQL


@pytest.mark.breaks_budget
@pytest.mark.perf_budget(queries=3, n_plus_one="fail", full_scans="warn")
def test_product_list_v1_has_an_n_plus_one(client):
    response = client.get("/products", params={"brand": "acme"})
    assert response.status_code == 200
    assert len(response.json()) == 50


@pytest.mark.perf_budget(latency="300ms", queries=2, n_plus_one="fail", full_scans="warn")
def test_product_list_v2_meets_its_query_budget(client):
    response = client.get("/v2/products", params={"brand": "acme"})
    assert response.status_code == 200
    assert [p["brand"] for p in response.json()] == ["acme"] * 50


def test_v2_runs_two_statements(client, sql_queries):
    with sql_queries:
        client.get("/v2/products")
    assert sql_queries.count == 2  # the products, then every category in one IN (...)


@pytest.mark.perf_budget(latency="2s", rerun=False)  # a conversation has side effects
def test_chat_remembers_and_never_crosses_users(client):
    conversation = uuid.uuid4().hex
    ask = {"conversation_id": conversation, "user_id": "alice", "message":
           "What is the return policy for shoes?"}
    first = client.post("/chat", json=ask)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False
    # A new conversation of Alice asking it in other words: served from the semantic cache.
    reworded = {**ask, "conversation_id": uuid.uuid4().hex,
                "message": "what's the return policy for shoes"}
    assert client.post("/chat", json=reworded).json()["cached"] is True
    # Bob asks the very same question: never Alice's cached answer.
    bob = {**ask, "user_id": "bob", "conversation_id": uuid.uuid4().hex}
    assert client.post("/chat", json=bob).json()["cached"] is False
    # Alice's conversation remembers its turns.
    follow_up = client.post("/chat", json={**ask, "message": "And for boots?"})
    assert follow_up.json()["history"] == 4  # two questions and two answers


def test_semantic_lookup_meets_its_micro_budget(app, perf):
    context = {"user": "alice", "model": "m", "previous": ""}
    app.state.answers.set("How do I reset my password?", "Use the link.", context=context)
    lookup = app.state.answers.get
    assert lookup("how can I reset my password", context=context) is not None
    result = perf(lookup, "how can I reset my password", context=context, budget="5ms")
    assert result.rounds >= 5


def test_metrics_endpoint_exposes_timing_and_breaker(client):
    client.get("/v2/products")
    text = client.get("/metrics").text
    assert "http_request_duration_seconds" in text
    assert "perfkit_circuit_state" in text
