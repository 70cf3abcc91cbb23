"""The catalogue's tables, on SQLite in-process by default or PostgreSQL by URL.

Two deliberate performance bugs for the perf-budget suite to find: ``Product.category`` is
loaded lazily (an N+1 on the list endpoint) and ``Product.brand`` has no index (a full
table scan when the list is filtered by brand).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.pool import StaticPool


class Base(DeclarativeBase):
    pass


class Category(Base):
    __tablename__ = "shop_category"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80))


class Product(Base):
    __tablename__ = "shop_product"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(120))
    brand: Mapped[str] = mapped_column(sa.String(80))  # filtered on, yet not indexed
    price_cents: Mapped[int] = mapped_column()
    category_id: Mapped[int] = mapped_column(sa.ForeignKey("shop_category.id"), index=True)
    category: Mapped[Category] = relationship(lazy="select")


BRANDS = ("acme", "globex", "initech", "umbrella")


def make_engine(url: str | None) -> sa.Engine:
    """SQLite in memory (one shared connection) unless a URL is given."""
    if url is None:
        return sa.create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    return sa.create_engine(url, pool_size=5, max_overflow=5)


def seed(engine: sa.Engine, categories: int = 16, products: int = 400) -> None:
    """(Re)create the tables with a deterministic catalogue."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Category), [
            {"id": i, "name": f"category {i}"} for i in range(1, categories + 1)
        ])
        conn.execute(sa.insert(Product), [
            {"id": i, "name": f"product {i}", "brand": BRANDS[(i // categories) % len(BRANDS)],
             "price_cents": 100 + (i * 37) % 900, "category_id": 1 + i % categories}
            for i in range(1, products + 1)
        ])
