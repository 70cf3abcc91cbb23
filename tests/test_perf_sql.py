"""perfkit.sql: shapes, EXPLAIN checks and QueryTracker on real SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from perfkit.sql import QueryTracker, check_plan, normalize
from perfkit.sql.explain import ScanFinding, filter_columns, table_aliases
from perfkit.sql.shapes import is_transaction_control
from perfkit.sql.tracker import MAX_SITES


@pytest.mark.parametrize(("sql", "shape"), [
    ("SELECT users.id FROM users \nWHERE users.id = ?",
     "SELECT users.id FROM users WHERE users.id = ?"),
    ("select * from t where a in (1, 2, 3) and b = 'x''y' -- trailing",
     "SELECT * FROM t WHERE a IN (...) AND b = ?"),
    ("insert into t (a, b) values (1, 2), (3, 4) returning id",
     "INSERT INTO t (a, b) VALUES (...) RETURNING id"),
    ("SELECT * FROM t WHERE a = %(a_1)s AND b = $1 AND c = :name /* app=web */",
     "SELECT * FROM t WHERE a = ? AND b = ? AND c = ?"),
    ("SELECT $tag$a'b$tag$, E'it\\'s', x::text FROM \"My Table\" WHERE n >= 1.5e3",
     'SELECT ?, ?, x::text FROM "My Table" WHERE n >= ?'),
    ("UPDATE t SET a=%s WHERE id IN (%s, %s)", "UPDATE t SET a = ? WHERE id IN (...)"),
    ("SELECT * FROM t WHERE id IN (SELECT x FROM u)",
     "SELECT * FROM t WHERE id IN (SELECT x FROM u)"),
])
def test_normalize(sql: str, shape: str) -> None:
    assert normalize(sql) == shape


def test_normalize_is_linear_on_pathological_text() -> None:
    sql = "SELECT " + " " * 200_000 + "'" + "a" * 100_000  # long indentation, open quote
    assert normalize(sql) == "SELECT ?"


def test_transaction_control() -> None:
    for sql in ("BEGIN", "commit", "ROLLBACK TO SAVEPOINT sa_1", "SAVEPOINT x",
                "RELEASE SAVEPOINT x", "/* c */ START TRANSACTION"):
        assert is_transaction_control(sql), sql
    assert not is_transaction_control("SELECT 1")


def test_aliases_and_filter_columns() -> None:
    shape = normalize("SELECT o.id FROM orders AS o JOIN customers c ON c.id = o.customer_id "
                      "WHERE o.total > 5 ORDER BY o.id")
    assert table_aliases(shape) == {"o": "orders", "orders": "orders", "c": "customers",
                                    "customers": "customers"}
    assert filter_columns(shape) == {"c": ["id"], "o": ["customer_id", "total"]}
    assert filter_columns("SELECT * FROM t WHERE a = ?") == {"t": ["a"]}


@pytest.fixture
def sqlite_conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, total INT, customer_id INT, note TEXT);
        CREATE INDEX ix_orders_total ON orders (total);
        CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT);
    """)
    yield conn
    conn.close()


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM orders WHERE note = ?", "CREATE INDEX ix_orders_note ON orders (note)"),
    ("SELECT * FROM orders WHERE total > ?", None),  # index serves it
    ("SELECT * FROM orders", None),  # unfiltered read must scan: not a finding
    ("SELECT * FROM orders WHERE id = ?", None),
])
def test_sqlite_scan_detection(sqlite_conn: sqlite3.Connection, sql: str,
                               expected: str | None) -> None:
    check = check_plan("sqlite", sqlite_conn, sql, (1,) if "?" in sql else (), normalize(sql))
    assert check.checked
    assert [f.suggestion for f in check.findings] == ([expected] if expected else [])


def test_sqlite_automatic_index_is_a_missing_join_index(sqlite_conn: sqlite3.Connection) -> None:
    sql = ("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id "
           "WHERE c.email = ?")
    check = check_plan("sqlite", sqlite_conn, sql, ("x",), normalize(sql))
    suggestions = {f.suggestion for f in check.findings}
    assert "CREATE INDEX ix_orders_customer_id ON orders (customer_id)" in suggestions


def test_each_index_suggestion_also_gives_the_alembic_op(
        sqlite_conn: sqlite3.Connection) -> None:
    sql = ("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id "
           "WHERE c.email = ? AND c.id > ?")
    check = check_plan("sqlite", sqlite_conn, sql, ("x", 1), normalize(sql))
    assert {f.alembic for f in check.findings} >= {
        'op.create_index("ix_orders_customer_id", "orders", ["customer_id"])'}
    quoted = ScanFinding('"Order"', "SCAN", ('"note"', "total"))
    assert quoted.suggestion == 'CREATE INDEX ix_Order_note_total ON "Order" ("note", total)'
    assert quoted.alembic == 'op.create_index("ix_Order_note_total", "Order", ["note", "total"])'
    assert quoted.fix == f"{quoted.suggestion}; Alembic: {quoted.alembic}"
    unknown = ScanFinding("orders", "SCAN")  # no columns known: no op to write
    assert unknown.alembic == "" and unknown.fix == unknown.suggestion


def test_explain_failure_is_a_note(sqlite_conn: sqlite3.Connection) -> None:
    check = check_plan("sqlite", sqlite_conn, "SELECT * FROM missing_table WHERE a = ?", (1,),
                       "SELECT * FROM missing_table WHERE a = ?")
    assert not check.checked and check.note.startswith("EXPLAIN failed")
    assert check_plan("oracle", None, "SELECT 1", (), "SELECT ?").note.startswith("no plan")


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "pk_sql_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(80))
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "pk_sql_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("pk_sql_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def _seed(engine: sa.Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Author(email=f"a{i}@x", books=[Book(), Book()]) for i in range(4)])
        session.commit()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _seed(engine)
    yield engine
    engine.dispose()


def test_tracker_counts_shapes_callers_and_excludes_transaction_control(
    sqlite_engine: sa.Engine,
) -> None:
    with QueryTracker() as tracker, sqlite_engine.begin() as conn:
        conn.execute(sa.text("SAVEPOINT s1"))
        conn.execute(sa.text("SELECT id FROM pk_sql_authors WHERE id = 1"))
        conn.execute(sa.text("SELECT id FROM pk_sql_authors WHERE id = 2"))
        conn.execute(sa.text("RELEASE SAVEPOINT s1"))
        conn.execute(sa.insert(Book), [{"author_id": 1}, {"author_id": 2}, {"author_id": 3}])
    assert tracker.count == 3
    assert tracker.shape_counts()["SELECT id FROM pk_sql_authors WHERE id = ?"] == 2
    assert tracker.rows >= 3
    assert all(s.caller.startswith(__file__) for s in tracker.statements)
    with QueryTracker(include_transaction_control=True) as tracker, \
            sqlite_engine.begin() as conn:
        conn.execute(sa.text("SAVEPOINT s1"))
        conn.execute(sa.text("RELEASE SAVEPOINT s1"))
    assert tracker.count == 2


def test_tracker_counts_each_call_site_of_a_shape_bounded(sqlite_engine: sa.Engine,
                                                          tmp_path) -> None:
    query = sa.text("SELECT id FROM pk_sql_authors WHERE id = :i")

    def from_helper(conn: sa.Connection) -> None:
        conn.execute(query, {"i": 1})  # line A

    with QueryTracker(explain=False, sites=True) as tracker, sqlite_engine.connect() as conn:
        conn.execute(query, {"i": 2})  # line B: first, once
        for _ in range(3):
            from_helper(conn)
    helper_site = f"{__file__}:{from_helper.__code__.co_firstlineno + 1} in from_helper"
    (summary,) = tracker.shapes
    first = summary.caller
    assert first.startswith(__file__) and first.endswith(
        "in test_tracker_counts_each_call_site_of_a_shape_bounded")
    assert summary.top_sites() == [(helper_site, 3), (first, 1)]  # most first
    assert [s.caller for s in tracker.statements] == [first] + [helper_site] * 3

    with QueryTracker(explain=False) as tracker, sqlite_engine.connect() as conn:
        conn.execute(query, {"i": 2})
        from_helper(conn)
    (summary,) = tracker.shapes  # by default no per-statement walk: the first site only
    assert summary.caller.startswith(__file__) and summary.sites == {}
    assert {s.caller for s in tracker.statements} == {summary.caller}

    # Past MAX_SITES distinct sites, executions are counted together, not per site.
    with QueryTracker(explain=False, sites=True) as tracker, sqlite_engine.connect() as conn:
        for index in range(MAX_SITES + 5):
            code = compile("conn.execute(query, {'i': 1})", str(tmp_path / f"gen{index}.py"),
                           "exec")
            exec(code, {"conn": conn, "query": query})
    (summary,) = tracker.shapes
    assert len(summary.sites) == MAX_SITES and summary.other_sites == 5
    assert summary.count == MAX_SITES + 5
    assert len(summary.top_sites()) == 5 and summary.top_sites(100)[0][1] == 1


def test_n_plus_one_findings_name_every_call_site_with_counts(
        sqlite_engine: sa.Engine) -> None:
    query = sa.text("SELECT id FROM pk_sql_authors WHERE email = :e")

    def from_a(conn: sa.Connection) -> None:
        conn.execute(query, {"e": "a1@x"})

    def from_b(conn: sa.Connection) -> None:
        conn.execute(query, {"e": "a2@x"})

    with QueryTracker(explain=False, sites=True) as tracker, sqlite_engine.connect() as conn:
        from_b(conn)
        for _ in range(3):
            from_a(conn)
        from_b(conn)
    (finding,) = tracker.n_plus_one_findings()  # the same SELECT 5 times
    a = f"{__file__}:{from_a.__code__.co_firstlineno + 1} in from_a"
    b = f"{__file__}:{from_b.__code__.co_firstlineno + 1} in from_b"
    assert finding.caller == b  # the first site, as before
    assert finding.sites == ((a, 3), (b, 2))
    assert f"at {a} (3x), {b} (2x); fix:" in finding.describe()


def test_tracker_sees_other_threads_and_engines_created_later(tmp_path) -> None:
    with QueryTracker() as tracker:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'late.sqlite'}")  # created after start

        def query() -> None:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        worker = threading.Thread(target=query, name="app-thread")
        worker.start()
        worker.join(timeout=10)
    assert tracker.count == 1 and tracker.statements[0].thread == "app-thread"
    engine.dispose()


def test_tracker_engine_filter_and_bounded_memory(sqlite_engine: sa.Engine, tmp_path) -> None:
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    with QueryTracker(engine=sqlite_engine, max_statements=2, explain=False) as tracker:
        with other.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        with sqlite_engine.connect() as conn:
            for i in range(5):
                conn.execute(sa.text(f"SELECT {i}"))
    assert tracker.count == 5 and len(tracker.statements) == 2  # exact counts, bounded list
    other.dispose()
    with pytest.raises(ValueError, match="max_statements"):
        QueryTracker(max_statements=0)
    with pytest.raises(ValueError, match="slow"):
        QueryTracker(slow=-1)


def test_n_plus_one_rules_and_hints(sqlite_engine: sa.Engine) -> None:
    with QueryTracker(n_plus_one=3) as tracker, Session(sqlite_engine) as session:
        for author in session.scalars(sa.select(Author)):
            _ = author.books  # one-to-many lazy load per author
        session.expunge_all()
        for book in session.scalars(sa.select(Book)):
            _ = book.author  # many-to-one lazy load
        with sqlite_engine.connect() as conn:
            for i in range(3):  # inlined literals: the repetition rule still sees one shape
                conn.execute(sa.text(f"SELECT email FROM pk_sql_authors WHERE id = {i}"))
    texts = [f.describe() for f in tracker.n_plus_one_findings()]
    assert any("Author.books lazily loaded for 4 parents" in t and "selectinload(Author.books)"
               in t for t in texts), texts
    assert any("Book.author lazily loaded" in t and "joinedload(Book.author)" in t
               for t in texts), texts
    assert any("the same query ran 3 times" in t for t in texts), texts
    allowed = QueryTracker(n_plus_one=3, allow=["*pk_sql_authors WHERE id*"])
    with allowed, sqlite_engine.connect() as conn:
        for i in range(3):
            conn.execute(sa.text(f"SELECT email FROM pk_sql_authors WHERE id = {i}"))
    assert allowed.n_plus_one_findings() == []


def test_an_autoflush_before_a_lazy_load_does_not_take_its_label(
    sqlite_engine: sa.Engine,
) -> None:
    with QueryTracker() as tracker, Session(sqlite_engine) as session:
        authors = session.scalars(sa.select(Author)).all()
        for i, author in enumerate(authors):
            session.add(Author(email=f"new{i}"))  # pending: flushed before the lazy load
            _ = author.books
    inserts = [s for s in tracker.statements if s.shape.startswith("INSERT")]
    assert len(inserts) == 4 and all(s.lazy is None for s in inserts)
    [finding] = tracker.n_plus_one_findings()
    assert finding.shape.startswith("SELECT pk_sql_books.id") and finding.count == 4
    assert "Author.books lazily loaded for 4 parents" in finding.message


def test_expired_column_reloads_are_an_n_plus_one_with_their_own_hint(
    sqlite_engine: sa.Engine,
) -> None:
    with QueryTracker(n_plus_one=0) as tracker, Session(sqlite_engine) as session:
        authors = session.scalars(sa.select(Author)).all()
        session.commit()  # expires every loaded attribute
        emails = [author.email for author in authors]  # one refresh per author
    assert len(emails) == 4
    findings = tracker.n_plus_one_findings()
    assert [f.message for f in findings] == [
        "N+1: Author.<columns> lazily loaded for 4 parents (4 queries)"]
    assert "expire_on_commit=False" in findings[0].hint and "undefer" in findings[0].hint


def test_async_engine_statements_are_seen(tmp_path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> int:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.sqlite'}")
        with QueryTracker(engine=engine) as tracker:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
                await conn.execute(sa.text("SELECT 2"))
        await engine.dispose()
        return tracker.count

    import asyncio

    assert asyncio.run(main()) == 2


def test_listener_errors_never_reach_user_code(sqlite_engine: sa.Engine, monkeypatch) -> None:
    import perfkit.sql.tracker as tracker_module

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(tracker_module, "_shape_of", broken)
    with QueryTracker() as tracker, sqlite_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 7")).scalar() == 7
    assert any("boom" in note for note in tracker.notes)


def test_slow_statement_findings(sqlite_engine: sa.Engine) -> None:
    with QueryTracker(slow=0.0) as tracker, sqlite_engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert [f.kind for f in tracker.slow_findings()] == ["slow"]


@pytest.mark.postgres
def test_postgres_scan_in_savepoint_leaves_the_transaction_alone(
    postgres_url: str, unique_ns: str
) -> None:
    engine = sa.create_engine(postgres_url)
    table = "pk_" + unique_ns.replace("-", "_")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id serial PRIMARY KEY, email text)"))
            conn.execute(sa.text(f"INSERT INTO {table} (email) SELECT 'u' || g FROM "
                                 f"generate_series(1, 20) g"))
        with QueryTracker() as tracker, engine.connect() as conn:
            trans = conn.begin()
            conn.execute(sa.text(f"INSERT INTO {table} (email) VALUES ('new')"))
            conn.execute(sa.text(f"SELECT * FROM {table} WHERE email = :e"), {"e": "u3"})
            conn.execute(sa.text(f"SELECT * FROM {table} WHERE id = :i"), {"i": 3})
            # the user's transaction is still alive and sees its own insert
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 21
            trans.rollback()
        scans = tracker.scan_findings()
        assert [f.hint for f in scans] == [
            f"CREATE INDEX ix_{table}_email ON {table} (email); "
            f'Alembic: op.create_index("ix_{table}_email", "{table}", ["email"])']
        with QueryTracker() as autocommit_tracker, engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"SELECT * FROM {table} WHERE email = :e"), {"e": "u4"})
        assert len(autocommit_tracker.scan_findings()) == 1
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def test_mariadb_full_scan(unique_ns: str) -> None:
    pytest.importorskip("pymysql")
    engine = sa.create_engine(MARIADB_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # MariaDB is optional: not one of the required CI services
        pytest.skip(f"MariaDB unavailable: {exc!r}")
    table = "pk_" + unique_ns.replace("-", "_")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id INT PRIMARY KEY, email VARCHAR(80))"))
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, 'c')"))
        with QueryTracker() as tracker, engine.connect() as conn:
            conn.execute(sa.text(f"SELECT * FROM {table} WHERE email = :e"), {"e": "b"})
            conn.execute(sa.text(f"SELECT * FROM {table} WHERE id = :i"), {"i": 2})
        assert [f.hint for f in tracker.scan_findings()] == [
            f"CREATE INDEX ix_{table}_email ON {table} (email); "
            f'Alembic: op.create_index("ix_{table}_email", "{table}", ["email"])']
        # Streamed rows (yield_per / stream_results: an unbuffered cursor) are the user's
        # until read: an EXPLAIN on the same connection used to discard them ([] and None).
        with QueryTracker() as tracker, engine.connect() as conn:
            streamed = conn.execute(sa.text(f"SELECT * FROM {table} WHERE email = :e")
                                    .execution_options(stream_results=True), {"e": "b"})
            assert streamed.fetchall() == [(2, "b")]
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 3
            assert [f.message for f in tracker.findings()] == [
                "could not check the plan: EXPLAIN skipped: its rows were streaming from a "
                "server-side cursor (checked when the statement runs buffered)"]
            conn.execute(sa.text(f"SELECT * FROM {table} WHERE email = :e"), {"e": "c"})
        assert [f.hint for f in tracker.findings()] == [
            f"CREATE INDEX ix_{table}_email ON {table} (email); "
            f'Alembic: op.create_index("ix_{table}_email", "{table}", ["email"])']
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


def test_fast_statement_constructor_builds_the_same_statement() -> None:
    from perfkit.sql.tracker import Statement, _new_statement

    args = ("SELECT 1", "SELECT ?", 0.001, 1, "t.py:1 in f", "MainThread", "sqlite", None)
    fast, slow = _new_statement(*args), Statement(*args)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    with pytest.raises(AttributeError):
        fast.text = "changed"  # type: ignore[misc]  # still frozen
