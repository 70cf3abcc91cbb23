"""The example service: ``create_app()`` builds it; environment variables choose servers.

- ``PERFKIT_EXAMPLE_DATABASE_URL``: SQLAlchemy URL (default: SQLite in memory);
- ``PERFKIT_EXAMPLE_REDIS_URL``: Redis for the response cache, conversation memory and the
  semantic cache (default: everything in-process).

Stack (outermost first): timing → compression → response cache → ETag → FastAPI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, joinedload, selectinload

import perfkit
from perfkit.asgi import MiddlewareStack, metrics_app
from perfkit.metrics import Registry

from .db import Product, make_engine, seed
from .llm import StandInLLM, UpstreamUnavailable


@dataclass
class Settings:
    database_url: str | None = field(
        default_factory=lambda: os.environ.get("PERFKIT_EXAMPLE_DATABASE_URL"))
    redis_url: str | None = field(
        default_factory=lambda: os.environ.get("PERFKIT_EXAMPLE_REDIS_URL"))
    llm_latency: float = 0.03
    llm_failure_rate: float = 0.25
    seed: int = 7


class ChatRequest(BaseModel):
    conversation_id: str
    user_id: str
    message: str
    model: str = "stand-in-small"


class ChatReply(BaseModel):
    answer: str
    cached: bool
    history: int


def _product(p: Product) -> dict[str, object]:
    return {"id": p.id, "name": p.name, "brand": p.brand, "price_cents": p.price_cents,
            "category": p.category.name}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    seed(engine)
    registry = Registry()  # one per app: tests can build many apps side by side
    llm = StandInLLM(settings.llm_latency, settings.llm_failure_rate, settings.seed)

    memory = perfkit.ConversationMemory(max_messages=12, backend=settings.redis_url)
    # With Redis, every worker shares the answers (each keeps serving alone while Redis is
    # down); without it, they live in this process.
    answers = perfkit.SemanticCache(price=0.002, tokens=lambda text: len(text) // 4,
                                    shared=settings.redis_url)
    breaker = perfkit.CircuitBreaker("llm", failure_threshold=5, reset_timeout=5.0,
                                     failure_on=UpstreamUnavailable, registry=registry)

    @breaker  # outermost: one logical call per request; no attempt at all while open
    @perfkit.retry(on=UpstreamUnavailable, attempts=4, deadline=2.0, registry=registry)
    async def ask_llm(messages: list[dict[str, str]], model: str) -> str:
        return await llm.complete(messages, model)

    app = FastAPI(title="perfkit example shop")
    app.state.engine, app.state.llm, app.state.answers = engine, llm, answers
    app.state.memory, app.state.registry = memory, registry

    @app.get("/products")
    def list_products(brand: str | None = None) -> list[dict[str, object]]:
        """The slow version: brand is not indexed, and each category loads lazily (N+1)."""
        with Session(engine) as session:
            query = sa.select(Product).order_by(Product.id).limit(50)
            if brand is not None:
                query = query.where(Product.brand == brand)
            return [_product(p) for p in session.scalars(query)]

    @app.get("/v2/products")
    def list_products_v2(brand: str | None = None) -> list[dict[str, object]]:
        """The fixed version: categories in one extra query (selectinload)."""
        with Session(engine) as session:
            query = (sa.select(Product).options(selectinload(Product.category))
                     .order_by(Product.id).limit(50))
            if brand is not None:
                query = query.where(Product.brand == brand)
            return [_product(p) for p in session.scalars(query)]

    @app.get("/products/{product_id}")
    def get_product(product_id: int, response: Response) -> dict[str, object]:
        """Public and fresh for a minute: the response cache and ETags serve repeats."""
        with Session(engine) as session:
            product = session.get(Product, product_id, options=[joinedload(Product.category)])
            if product is None:
                raise HTTPException(404, "no such product")
            response.headers["Cache-Control"] = "public, max-age=60"
            return _product(product)

    @app.post("/chat")
    async def chat(request: ChatRequest) -> ChatReply:
        """Memory per conversation; answers cached per user and model, never across them."""
        conversation = f"{request.user_id}:{request.conversation_id}"
        await memory.aappend(conversation, "user", request.message)
        # The previous turn is part of the context: a follow-up question is never answered
        # from another conversation's cache entry.
        history = await memory.aget(conversation)
        previous = history[-3]["content"] if len(history) >= 3 else ""
        context = {"user": request.user_id, "model": request.model, "previous": previous}
        hit = await answers.aget(request.message, context=context)
        if hit is not None:
            answer, cached = str(hit.response), True
        else:
            try:
                answer = await ask_llm(history, request.model)
            except (UpstreamUnavailable, perfkit.CircuitOpenError) as exc:
                raise HTTPException(503, f"the model is unavailable: {exc}") from exc
            await answers.aset(request.message, answer, context=context)
            cached = False
        await memory.aappend(conversation, "assistant", answer)
        return ChatReply(answer=answer, cached=cached, history=len(history) + 1)

    app.add_route("/metrics", metrics_app(registry))

    cache_backend: perfkit.Backend = perfkit.MemoryBackend(1024)
    if settings.redis_url:
        cache_backend = perfkit.TieredBackend(
            perfkit.MemoryBackend(1024),
            perfkit.RedisBackend(settings.redis_url, serializer="json"))
    # Timing > compression > response cache > ETag, as one layer (the same four middleware
    # as four add_middleware calls, innermost first, behave the same and cost more).
    app.add_middleware(MiddlewareStack, timing={"registry": registry},
                       cache={"backend": cache_backend})
    return app
