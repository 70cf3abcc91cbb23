"""perfkit.sql.monitor in a running service: real SQLite, real PostgreSQL, a real FastAPI app."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from perfkit import Registry
from perfkit.asgi import SQLMonitorMiddleware, metrics_app
from perfkit.metrics import OVERFLOW_LABEL_VALUE, HistogramSeries
from perfkit.sql import SQLMonitor, SQLScopes, current_scope, monitor
from perfkit.sql.scope import MAX_SCOPE_RELATIONSHIPS, MAX_SCOPE_SHAPES, ScopeStats, ShapeInfo
from perfkit.sql.tracker import LazyLoad


@pytest.fixture
def registry() -> Registry:
    return Registry(process_metrics=False)


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/app.db")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INT, note TEXT)"))
        conn.execute(sa.text("CREATE INDEX ix_orders_total ON orders (total)"))
    yield engine
    engine.dispose()


@pytest.fixture
def sql_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="perfkit.sql")
    return caplog


def _messages(caplog: pytest.LogCaptureFixture, starting: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "perfkit.sql" and r.getMessage().startswith(starting)]


def _samples(text: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{sorted label items: value}`` of one metric family's samples named ``family``."""
    out = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if sample.name == family:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _value(registry: Registry, name: str, *labels: str) -> float:
    metric = registry.get(name)
    assert metric is not None, name
    series = metric.labels(*labels)
    if isinstance(series, HistogramSeries):
        return float(series.count)
    return float(series.value)


# --------------------------------------------------------------------------- statements


def test_counts_and_latency_per_shape_reach_prometheus(sqlite_engine: sa.Engine,
                                                       registry: Registry) -> None:
    with monitor(sqlite_engine, registry=registry, name="main") as mon, \
            sqlite_engine.begin() as conn:
        for i in range(5):
            conn.execute(sa.text("INSERT INTO orders (total) VALUES (:t)"), {"t": i})
        conn.execute(sa.text("SELECT note FROM orders WHERE id = 3"))  # inlined literals
        conn.execute(sa.text("SELECT note FROM orders WHERE id = 4"))
        with conn.begin_nested():  # SAVEPOINT / RELEASE: transaction control, not counted
            conn.execute(sa.text("SELECT count(*) FROM orders"))
        conn.execute(sa.text("INSERT INTO orders (total) VALUES (:t)"), [{"t": 1}, {"t": 2}])
    shapes = {s.shape: s for s in mon.shapes()}
    assert shapes["INSERT INTO orders (total) VALUES (...)"].count == 6  # executemany is one
    assert shapes["SELECT note FROM orders WHERE id = ?"].count == 2
    assert not any("SAVEPOINT" in shape for shape in shapes)
    assert shapes["SELECT note FROM orders WHERE id = ?"].caller.startswith(__file__)
    text = registry.render_prometheus()
    counts = _samples(text, "sql_statements_total")
    assert counts[(("db", "main"), ("shape", "SELECT note FROM orders WHERE id = ?"))] == 2
    durations = _samples(text, "sql_statement_duration_seconds_count")
    assert durations[(("db", "main"), ("shape", "INSERT INTO orders (total) VALUES (...)"))] == 6
    assert "sql_statement_duration_seconds_quantile" in text
    assert _samples(text, "sql_statement_errors_total") == {}  # created only on a first error


def test_only_the_monitored_engine_counts(sqlite_engine: sa.Engine, registry: Registry,
                                          tmp_path: Any) -> None:
    other = sa.create_engine(f"sqlite:///{tmp_path}/other.db")
    with monitor(sqlite_engine, registry=registry) as mon, other.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert mon.shapes() == []
    other.dispose()


def test_shape_cap_folds_new_shapes_into_overflow(sqlite_engine: sa.Engine, registry: Registry,
                                                  sql_log: pytest.LogCaptureFixture) -> None:
    with monitor(sqlite_engine, registry=registry, name="capped", max_shapes=3) as mon, \
            sqlite_engine.connect() as conn:
        for column in ("id", "total", "note", "id, total", "id, note", "total, note"):
            conn.execute(sa.text(f"SELECT {column} FROM orders"))
    assert len(mon.shapes()) == 3
    assert _value(registry, "sql_statements_total", "capped", OVERFLOW_LABEL_VALUE) == 3
    assert len(_messages(sql_log, "perfkit.sql: db 'capped' reached max_shapes=3")) == 1


def test_long_shapes_get_a_short_label_with_a_hash(sqlite_engine: sa.Engine,
                                                   registry: Registry) -> None:
    columns = ", ".join(f"total AS c{i}" for i in range(60))
    with monitor(sqlite_engine, registry=registry, max_shape_chars=80) as mon, \
            sqlite_engine.connect() as conn:
        conn.execute(sa.text(f"SELECT {columns} FROM orders"))
    (shape,) = mon.shapes()
    assert len(shape.label) == 80 and "... #" in shape.label and len(shape.shape) > 80


# --------------------------------------------------------------------------- slow log


def test_slow_line_names_plan_and_index_once_per_shape(
        sqlite_engine: sa.Engine, registry: Registry, sql_log: pytest.LogCaptureFixture) -> None:
    with monitor(sqlite_engine, registry=registry, name="shop", slow=0.0) as mon, \
            sqlite_engine.connect() as conn:
        for i in range(3):
            conn.execute(sa.text("SELECT id FROM orders WHERE note = :n"), {"n": str(i)})
            conn.execute(sa.text("SELECT id FROM orders WHERE total > :t"), {"t": i})
        conn.execute(sa.text("INSERT INTO orders (total) VALUES (1)"))
    lines = _messages(sql_log, "slow SQL on shop")
    scan = [line for line in lines if "note = ?" in line]
    assert len(scan) == 1, lines  # once per shape, not per execution
    assert "full table scan of orders: SCAN orders" in scan[0]
    assert "fix: CREATE INDEX ix_orders_note ON orders (note)" in scan[0]
    assert f"at {__file__}" in scan[0]
    indexed = [line for line in lines if "total > ?" in line]
    assert len(indexed) == 1 and "plan: no full table scan" in indexed[0]
    insert = [line for line in lines if "INSERT" in line]
    assert "plan: not checked (not a SELECT/UPDATE/DELETE)" in insert[0]
    record = next(r for r in sql_log.records if "note = ?" in r.getMessage())
    assert record.sql_suggestion == "CREATE INDEX ix_orders_note ON orders (note)"  # type: ignore[attr-defined]
    assert _value(registry, "sql_slow_statements_total", "shop",
                  "SELECT id FROM orders WHERE note = ?") == 3
    assert mon.explain_seconds > 0


def test_fast_statements_are_not_logged_and_explain_all_reports_scans(
        sqlite_engine: sa.Engine, registry: Registry, sql_log: pytest.LogCaptureFixture) -> None:
    with monitor(sqlite_engine, registry=registry, slow=None, explain="all") as mon, \
            sqlite_engine.connect() as conn:
        for _ in range(2):
            conn.execute(sa.text("SELECT id FROM orders WHERE note = 'x'"))
    assert _messages(sql_log, "slow SQL") == []
    scans = _messages(sql_log, "full table scan on app.db")
    assert len(scans) == 1 and "CREATE INDEX ix_orders_note ON orders (note)" in scans[0]
    assert mon.shapes()[0].plan is not None


def test_explain_off_never_runs_explain(sqlite_engine: sa.Engine, registry: Registry,
                                        sql_log: pytest.LogCaptureFixture) -> None:
    with monitor(sqlite_engine, registry=registry, slow=0.0, explain="off") as mon, \
            sqlite_engine.connect() as conn:
        conn.execute(sa.text("SELECT id FROM orders WHERE note = 'x'"))
    assert mon.explain_seconds == 0
    assert "plan: not checked (explain='off')" in _messages(sql_log, "slow SQL")[0]


# --------------------------------------------------------------------------- failure modes


def test_errors_are_counted_and_reach_the_caller_unchanged(sqlite_engine: sa.Engine,
                                                           registry: Registry) -> None:
    with monitor(sqlite_engine, registry=registry, name="err") as mon, \
            sqlite_engine.connect() as conn:
        for _ in range(2):
            with pytest.raises(sa.exc.OperationalError, match="no such column"):
                conn.execute(sa.text("SELECT missing FROM orders"))
        conn.execute(sa.text("SELECT id FROM orders"))
        with pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("SELECT id FROM orders WHERE missing = 1"))
    assert _value(registry, "sql_statement_errors_total", "err", "SELECT missing FROM orders") == 2
    assert [s.shape for s in mon.shapes()] == ["SELECT id FROM orders"]


def test_internal_errors_never_reach_user_code(sqlite_engine: sa.Engine, registry: Registry,
                                               sql_log: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> str:
        raise RuntimeError("normaliser bug")

    monkeypatch.setattr("perfkit.sql.monitoring._shape_of", broken)
    with monitor(sqlite_engine, registry=registry) as mon, sqlite_engine.connect() as conn:
        for _ in range(3):
            assert conn.execute(sa.text("SELECT 41 + 1")).scalar() == 42
        with pytest.raises(sa.exc.OperationalError):  # the user's error, not ours
            conn.execute(sa.text("SELECT nope"))
    assert len(mon.notes) == 2  # one per listener, not one per statement
    assert len(_messages(sql_log, "perfkit.sql monitor for")) == 2


def test_close_removes_every_hook_and_validation(sqlite_engine: sa.Engine,
                                                 registry: Registry) -> None:
    mon = monitor(sqlite_engine, registry=registry, name="a")
    with pytest.raises(ValueError, match="already monitored"):
        monitor(sqlite_engine, registry=registry, name="b")
    with pytest.raises(ValueError, match="name: another open monitor"):
        monitor(sa.create_engine("sqlite://"), registry=registry, name="a")
    assert "connect" in vars(sqlite_engine.pool)
    mon.close()
    mon.close()  # idempotent
    assert "connect" not in vars(sqlite_engine.pool)
    assert not sa.event.contains(sqlite_engine, "handle_error", mon._on_error)
    with sqlite_engine.connect() as conn:
        conn.execute(sa.text("SELECT id FROM orders"))
    assert mon.shapes() == [] and not mon.active
    for bad, match in (({"slow": -1}, "slow"), ({"explain": "yes"}, "explain"),
                       ({"max_shapes": 0}, "max_shapes"), ({"name": ""}, "name"),
                       ({"max_shape_chars": 5}, "max_shape_chars")):
        with pytest.raises(ValueError, match=match):
            monitor(sqlite_engine, registry=registry, **bad)
    with pytest.raises(TypeError, match="engine"):
        monitor("sqlite://", registry=registry)
    with pytest.raises(ValueError, match="n_plus_one"):
        SQLScopes(n_plus_one=-1, registry=registry)
    with pytest.raises(TypeError, match="allow"):
        SQLScopes(allow="SELECT *", registry=registry)


# --------------------------------------------------------------------------- scopes


def test_scope_state_is_bounded() -> None:
    stats = ScopeStats("bounded")
    for i in range(MAX_SCOPE_SHAPES + 50):
        stats._add(ShapeInfo(f"SELECT {i}", "?", True), 0.001, None)
    for i in range(MAX_SCOPE_RELATIONSHIPS + 10):
        info = ShapeInfo(f"SELECT rel {i}", "?", True)
        for parent in range(3):
            stats._add(info, 0.001, LazyLoad(f"A.rel{i}", str(parent), "ONETOMANY"))
    assert len(stats.shapes) == MAX_SCOPE_SHAPES
    assert len(stats.lazy) == MAX_SCOPE_RELATIONSHIPS
    assert stats.count == MAX_SCOPE_SHAPES + 50 + 3 * (MAX_SCOPE_RELATIONSHIPS + 10)


def test_job_scope_reports_repetition_once_and_counts_every_time(
        sqlite_engine: sa.Engine, registry: Registry, sql_log: pytest.LogCaptureFixture) -> None:
    scopes = SQLScopes(registry=registry, n_plus_one=4, allow=("*FROM customers*",))
    with monitor(sqlite_engine, registry=registry):
        for _ in range(2):
            with scopes.scope("nightly-export") as stats, sqlite_engine.connect() as conn:
                assert current_scope() is stats
                for i in range(5):
                    conn.execute(sa.text("SELECT note FROM orders WHERE id = :i"), {"i": i})
        assert current_scope() is None
        with scopes.scope("quiet") as quiet, sqlite_engine.connect() as conn:
            for i in range(3):
                conn.execute(sa.text("SELECT note FROM orders WHERE id = :i"), {"i": i})
    assert quiet.count == 3 and scopes.findings(quiet) == []
    lines = _messages(sql_log, "N+1 in nightly-export")
    assert len(lines) == 1 and "the same query ran 5 times" in lines[0]
    assert _value(registry, "sql_n_plus_one_total", "nightly-export") == 2
    assert _value(registry, "sql_request_statements", "nightly-export") == 2
    assert registry.get("sql_n_plus_one_total").labels("quiet").value == 0  # type: ignore[union-attr]


# --------------------------------------------------------------------------- a real app


def _models(prefix: str) -> tuple[type[Any], type[Any], type[Any], type[Any]]:
    class Base(DeclarativeBase):
        pass

    class Publisher(Base):
        __tablename__ = f"{prefix}_publisher"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Author(Base):
        __tablename__ = f"{prefix}_author"
        id: Mapped[int] = mapped_column(primary_key=True)
        publisher_id: Mapped[int] = mapped_column(sa.ForeignKey(f"{prefix}_publisher.id"))
        name: Mapped[str]
        books: Mapped[list[Book]] = relationship(back_populates="author")

    class Book(Base):
        __tablename__ = f"{prefix}_book"
        id: Mapped[int] = mapped_column(primary_key=True)
        author_id: Mapped[int] = mapped_column(sa.ForeignKey(f"{prefix}_author.id"))
        title: Mapped[str]
        author: Mapped[Author] = relationship(back_populates="books")

    return Base, Publisher, Author, Book


def _app(engine: sa.Engine, registry: Registry, prefix: str) -> tuple[FastAPI, type[Any]]:
    base, publisher, author, book = _models(prefix)
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(publisher(id=1))
        session.flush()  # no relationship orders the publisher before its authors
        for a in range(4):
            session.add(author(id=a + 1, publisher_id=1, name=f"a{a}",
                               books=[book(title=f"b{a}-{b}") for b in range(2)]))
        session.commit()

    app = FastAPI()

    @app.get("/publishers/{publisher_id}/authors")
    def authors(publisher_id: int) -> list[dict[str, Any]]:  # lazy loads: N+1
        with Session(engine) as session:
            rows = session.scalars(sa.select(author).where(author.publisher_id == publisher_id))
            return [{"name": a.name, "books": [b.title for b in a.books]} for a in rows]

    @app.get("/publishers/{publisher_id}/authors-eager")
    def authors_eager(publisher_id: int) -> list[dict[str, Any]]:
        with Session(engine) as session:
            rows = session.scalars(sa.select(author).where(author.publisher_id == publisher_id)
                                   .options(selectinload(author.books)))
            return [{"name": a.name, "books": [b.title for b in a.books]} for a in rows]

    app.add_route("/metrics", metrics_app(registry))
    app.add_middleware(SQLMonitorMiddleware, registry=registry)
    return app, base


@pytest.fixture(params=["sqlite", "postgres"])
def app_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        engine = sa.create_engine(f"sqlite:///{tmp_path}/books.db")
    else:
        engine = sa.create_engine(request.getfixturevalue("postgres_url"))
    yield engine
    engine.dispose()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_fastapi_n_plus_one_is_logged_with_the_route_template(
        app_engine: sa.Engine, registry: Registry, unique_ns: str,
        sql_log: pytest.LogCaptureFixture) -> None:
    prefix = "pk_" + unique_ns.replace("-", "_")
    app, base = _app(app_engine, registry, prefix)
    route = "GET /publishers/{publisher_id}/authors"
    try:
        with monitor(app_engine, registry=registry, name="books", slow=0.0):
            async with _client(app) as client:
                for _ in range(2):
                    response = await client.get("/publishers/1/authors")
                    assert response.status_code == 200 and len(response.json()) == 4
                eager = await client.get("/publishers/1/authors-eager")
                assert eager.json() == response.json()
                assert (await client.get("/nowhere")).status_code == 404
                metrics = (await client.get("/metrics")).text
    finally:
        base.metadata.drop_all(app_engine)
    lines = _messages(sql_log, "N+1 in ")
    assert len(lines) == 1, lines  # two N+1 requests, one line; the eager route has none
    assert lines[0].startswith(f"N+1 in {route}: Author.books lazily loaded for 4 parents")
    assert "options(selectinload(Author.books))" in lines[0]
    assert f"at {__file__}" in lines[0]
    assert any(f" in {route};" in line for line in _messages(sql_log, "slow SQL on books"))
    n_plus_one = _samples(metrics, "sql_n_plus_one_total")
    assert n_plus_one == {(("route", route),): 2}
    per_request = _samples(metrics, "sql_request_statements_sum")
    assert per_request[(("route", route),)] == 2 * 5  # 1 author query + 4 lazy loads, twice
    assert per_request[(("route", route + "-eager"),)] == 2
    statements = _samples(metrics, "sql_statements_total")
    assert sum(v for k, v in statements.items() if ("db", "books") in k) >= 12
    assert _samples(metrics, "sql_pool_checkouts_total")[(("db", "books"),)] >= 3


async def test_middleware_warns_once_when_nothing_is_monitored(
        registry: Registry, sql_log: pytest.LogCaptureFixture) -> None:
    app = FastAPI()

    @app.get("/")
    def root() -> str:
        return "ok"

    app.add_middleware(SQLMonitorMiddleware, registry=registry)
    async with _client(app) as client:
        for _ in range(3):
            assert (await client.get("/")).status_code == 200
    assert len(_messages(sql_log, "SQLMonitorMiddleware: no engine is monitored")) == 1


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_postgres_slow_line_keeps_the_users_transaction(
        postgres_url: str, unique_ns: str, registry: Registry,
        sql_log: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(postgres_url)
    table = "pk_" + unique_ns.replace("-", "_")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id serial PRIMARY KEY, email text)"))
            conn.execute(sa.text(f"INSERT INTO {table} (email) SELECT 'u' || g FROM "
                                 "generate_series(1, 50) g"))
        with monitor(engine, registry=registry, name="pg", slow=0.0) as mon, \
                engine.connect() as conn:
            trans = conn.begin()
            conn.execute(sa.text(f"INSERT INTO {table} (email) VALUES ('new')"))
            for email in ("u3", "u4"):
                conn.execute(sa.text(f"SELECT id FROM {table} WHERE email = :e"), {"e": email})
            conn.execute(sa.text(f"SELECT email FROM {table} WHERE id = :i"), {"i": 3})
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 51
            streamed = conn.execution_options(stream_results=True, max_row_buffer=5).execute(
                sa.text(f"SELECT email FROM {table} WHERE email LIKE :p"), {"p": "u%"})
            assert len(streamed.all()) == 50  # no EXPLAIN in the middle of the stream
            trans.rollback()
        lines = _messages(sql_log, "slow SQL on pg")
        scan = [line for line in lines if "email = ?" in line]
        assert len(scan) == 1
        assert f"fix: CREATE INDEX ix_{table}_email ON {table} (email)" in scan[0]
        streaming = [line for line in lines if "LIKE ?" in line]
        assert "rows were still streaming from a server-side cursor" in streaming[0]
        by_id = [line for line in lines if "WHERE id = ?" in line]
        assert "plan: no full table scan" in by_id[0]
        text = registry.render_prometheus()
        shape = f"SELECT id FROM {table} WHERE email = ?"
        assert _samples(text, "sql_statements_total")[(("db", "pg"), ("shape", shape))] == 2
        assert _samples(text, "sql_statement_duration_seconds_count")[
            (("db", "pg"), ("shape", shape))] == 2
        assert {s.shape for s in mon.shapes()} >= {shape, f"SELECT COUNT (*) FROM {table}"}
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


@pytest.mark.postgres
def test_postgres_pool_figures_under_concurrency(postgres_url: str, registry: Registry) -> None:
    engine = sa.create_engine(postgres_url, pool_size=1, max_overflow=1, pool_timeout=0.3)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT pg_sleep(0.002)"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        with monitor(engine, registry=registry, name="pool") as mon:
            engine.dispose()  # the monitor follows the engine to its new pool
            threads = [threading.Thread(target=worker) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert not errors, errors
            first, second = engine.connect(), engine.connect()  # the second is overflow
            text = registry.render_prometheus()
            assert _samples(text, "sql_pool_checked_out") == {(("db", "pool"),): 2}
            assert _samples(text, "sql_pool_overflow") == {(("db", "pool"),): 1}
            assert _samples(text, "sql_pool_size") == {(("db", "pool"),): 1}
            assert _samples(text, "sql_pool_max_overflow") == {(("db", "pool"),): 1}
            with pytest.raises(sa.exc.TimeoutError):
                engine.connect()
            first.close()
            second.close()
            assert mon.pool is not None and mon.pool.overflow_peak == 1
            wait = mon.pool.wait.snapshot()
        text = registry.render_prometheus()
    finally:
        engine.dispose()
    assert _samples(text, "sql_pool_timeouts_total") == {(("db", "pool"),): 1}
    assert _samples(text, "sql_pool_checkouts_total") == {(("db", "pool"),): 4 * 5 + 2}
    assert _samples(text, "sql_pool_checked_out") == {(("db", "pool"),): 0}  # closed
    assert _samples(text, "sql_pool_connections_opened_total")[(("db", "pool"),)] >= 2
    assert wait.count == 4 * 5 + 2 + 1  # every checkout, and the one that timed out
    # the timed-out checkout waited at least its 0.3 s pool_timeout (> the 0.25 s bucket)
    assert sum(wait.bucket_counts[wait.bounds.index(0.25) + 1:]) >= 1


@pytest.mark.postgres
async def test_postgres_async_engine(postgres_url: str, registry: Registry) -> None:
    engine = create_async_engine(postgres_url, pool_size=2)
    mon = monitor(engine, registry=registry, name="pg-async")
    try:
        assert isinstance(mon, SQLMonitor) and mon.engine is engine.sync_engine
        scopes = SQLScopes(registry=registry, n_plus_one=3)
        with scopes.scope("async-job") as stats:
            async with engine.connect() as conn:
                for i in range(3):
                    await conn.execute(sa.text("SELECT CAST(:i AS int) + 1"), {"i": i})
        assert stats.count == 3 and len(scopes.findings(stats)) == 1
        assert [s.count for s in mon.shapes()] == [3]
        assert _value(registry, "sql_pool_checkouts_total", "pg-async") == 1
    finally:
        mon.close()
        await engine.dispose()


def test_pools_without_sizes_get_no_size_gauges(registry: Registry) -> None:
    engine = sa.create_engine("sqlite://")  # SingletonThreadPool: no size, no overflow
    with monitor(engine, registry=registry, name="mem"):
        for _ in range(3):
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        text = registry.render_prometheus()
    assert _samples(text, "sql_pool_checkouts_total") == {(("db", "mem"),): 3}
    assert "sql_pool_size" not in text and "sql_pool_overflow" not in text
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def async_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/async.db"
    return str(request.getfixturevalue("postgres_url"))


async def test_concurrent_async_requests_keep_their_own_lazy_loads(
        async_url: str, registry: Registry, unique_ns: str) -> None:
    """On an AsyncEngine many requests share the event loop's thread: a lazy load's label
    must follow its own request (a thread-local mixed them up: missed and false N+1)."""
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession

    prefix = "pk_" + unique_ns.replace("-", "_")

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Writer(Base):
        __tablename__ = f"{prefix}_writer"
        id: Mapped[int] = mapped_column(primary_key=True)
        notes: Mapped[list[Note]] = relationship()

    class Note(Base):
        __tablename__ = f"{prefix}_note"
        id: Mapped[int] = mapped_column(primary_key=True)
        writer_id: Mapped[int] = mapped_column(sa.ForeignKey(f"{prefix}_writer.id"))

    engine = create_async_engine(async_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(sa.insert(Writer), [{"id": i} for i in range(1, 6)])
        await conn.execute(sa.insert(Note), [{"id": i, "writer_id": 1 + i % 5}
                                             for i in range(15)])
    app = FastAPI()

    @app.get("/lazy")
    async def lazy() -> int:  # 1 query + a lazy load per writer: N+1 by the lazy rule
        async with AsyncSession(engine) as session:
            writers = (await session.scalars(sa.select(Writer))).all()
            return sum([len(await w.awaitable_attrs.notes) for w in writers])

    @app.get("/plain")
    async def plain() -> int:  # a few plain queries: never an N+1
        async with AsyncSession(engine) as session:
            for i in range(4):
                await session.execute(sa.select(Note).where(Note.id == i))
            return 0

    app.add_middleware(SQLMonitorMiddleware, registry=registry, n_plus_one=50)
    mon = monitor(engine, registry=registry, name="async-lazy", slow=None)
    try:
        async with _client(app) as client:
            responses = await asyncio.gather(
                *(client.get("/lazy" if i % 2 else "/plain") for i in range(30)))
        assert all(r.status_code == 200 for r in responses)
    finally:
        mon.close()
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()
    n_plus_one = registry.get("sql_n_plus_one_total")
    assert n_plus_one is not None
    assert n_plus_one.labels("GET /lazy").value == 15  # every lazy request, no other
    assert n_plus_one.labels("GET /plain").value == 0
