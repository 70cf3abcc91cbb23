"""Overhead of the runtime SQL monitor (``perfkit.sql.monitor``) per statement.

Each group runs the same statements on a bare engine (baseline) and on the same engine
under ``monitor(engine)``, interleaved in rounds by the harness:

* ``SELECT :x`` on in-memory SQLite (the worst case: the statement itself takes ~10 µs);
* the same inside a request scope (what ``SQLMonitorMiddleware`` adds per statement);
* a pool checkout plus the statement per operation (adds the pool wrapper);
* ``SELECT :x`` on PostgreSQL over loopback (a realistic statement cost).

The listeners perfkit.sql installs are class-wide while any monitor or tracker runs, so a
"bare" engine next to an open monitor would pay part of the cost too; the monitored cases
therefore open the monitor at the start of each timed run and close it at the end (the
first execution of each shape - normalising, the stack walk - is inside the timing,
amortised over the run). ``slow=None`` keeps EXPLAIN out of the figures; EXPLAIN runs once
per slow shape and is not a per-statement cost.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Case, Unavailable

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _group(group: str, engine: Any, ops: int, *, scoped: bool = False,
           connect_each: bool = False) -> list[Case]:
    import sqlalchemy as sa

    from perfkit.metrics import Registry
    from perfkit.sql import SQLScopes, monitor

    statement = sa.text("SELECT :x")
    registry = Registry(process_metrics=False)
    scopes = SQLScopes(registry=registry, n_plus_one=0, lazy_parents=0)
    counted: dict[str, float] = {}

    def body(n: int) -> None:
        if connect_each:
            for i in range(n):
                with engine.connect() as conn:
                    conn.execute(statement, {"x": i})
        else:
            with engine.connect() as conn:
                for i in range(n):
                    conn.execute(statement, {"x": i})

    def bare(n: int) -> None:
        body(n)

    def monitored(n: int) -> None:
        mon = monitor(engine, registry=registry, name="bench", slow=None)
        try:
            if scoped:
                with scopes.scope("GET /bench") as stats:
                    body(n)
                counted["scope"] = stats.count
            else:
                body(n)
        finally:
            mon.close()
        counted["shape"] = mon.shapes()[0].count

    def check() -> None:
        # every round adds `ops` statements to the one shape; a scope sees exactly one run
        assert counted.get("shape", 0) >= ops and counted["shape"] % ops == 0, counted
        if scoped:
            assert counted.get("scope") == ops, counted

    name = "monitor(engine)" + (" + request scope" if scoped else "")
    return [
        Case(group, "bare engine", run=bare, baseline=True, ops=ops),
        Case(group, name, run=monitored, ops=ops, check=check),
    ]


def _sqlite_cases() -> list[Case]:
    try:
        import sqlalchemy as sa
    except ImportError as exc:
        raise Unavailable(f"SQLAlchemy is not installed: {exc}") from exc
    engine = sa.create_engine("sqlite://")
    pooled = sa.create_engine("sqlite://", poolclass=sa.pool.QueuePool)  # a real checkout
    per_statement = "SQLite in-memory, per statement"
    return (
        _group(per_statement, engine, 2000)
        + _group(per_statement + " in a request scope", engine, 2000, scoped=True)
        + _group("SQLite in-memory, pool checkout + statement per op", pooled, 1000,
                 connect_each=True)
    )


def _postgres_cases() -> list[Case]:
    group = "PostgreSQL (loopback), per statement"
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        why = f"PostgreSQL unavailable: {exc!r}"[:200]
        return [Case.unavailable(group, "bare engine", why),
                Case.unavailable(group, "monitor(engine)", why)]
    return _group(group, engine, 300)


def cases() -> list[Case]:
    return _sqlite_cases() + _postgres_cases()


def paired_overhead(engine: Any, *, blocks: int = 40, ops: int = 500,
                    scoped: bool = False) -> dict[str, float]:
    """Per-statement overhead as the median of paired differences (monitored - bare).

    Alternates a bare block and a monitored block ``blocks`` times and compares each pair,
    in wall time and in this thread's CPU time (``time.thread_time``, which other
    processes on a loaded machine do not inflate). The monitor stays open for the whole
    run here (``bare`` blocks pay the class-wide listener's early exit), which is how a
    service runs.
    """
    import statistics
    import time

    import sqlalchemy as sa

    from perfkit.metrics import Registry
    from perfkit.sql import SQLScopes, monitor

    statement = sa.text("SELECT :x")
    registry = Registry(process_metrics=False)
    scopes = SQLScopes(registry=registry, n_plus_one=0, lazy_parents=0)
    bare_engine = sa.create_engine(engine.url)
    mon = monitor(engine, registry=registry, name="paired", slow=None)

    def block(target: Any) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.thread_time()
        with target.connect() as conn:
            for i in range(ops):
                conn.execute(statement, {"x": i})
        return (time.perf_counter() - wall) / ops, (time.thread_time() - cpu) / ops

    try:
        block(bare_engine)
        block(engine)
        walls, cpus, bases = [], [], []
        for _ in range(blocks):
            base_wall, base_cpu = block(bare_engine)
            if scoped:
                with scopes.scope("GET /bench"):
                    wall, cpu = block(engine)
            else:
                wall, cpu = block(engine)
            walls.append(wall - base_wall)
            cpus.append(cpu - base_cpu)
            bases.append(base_cpu)
    finally:
        mon.close()
        bare_engine.dispose()
    return {"bare_cpu": statistics.median(bases), "overhead_cpu": statistics.median(cpus),
            "overhead_wall": statistics.median(walls)}


if __name__ == "__main__":  # python -m benchmarks.bench_sqlmon
    import sqlalchemy as sa

    targets = [("SQLite in-memory", sa.create_engine("sqlite://"), {}),
               ("SQLite in-memory, request scope", sa.create_engine("sqlite://"),
                {"scoped": True}),
               ("PostgreSQL loopback", sa.create_engine(POSTGRES_URL), {"ops": 200})]
    print("| engine | bare CPU / statement | monitor overhead, CPU | monitor overhead, wall |")
    print("|---|---:|---:|---:|")
    for label, target, options in targets:
        try:
            r = paired_overhead(target, **options)
        except Exception as exc:
            print(f"| {label} | not run: {exc!r} | | |")
            continue
        print(f"| {label} | {r['bare_cpu'] * 1e6:.1f} µs | {r['overhead_cpu'] * 1e6:.2f} µs "
              f"| {r['overhead_wall'] * 1e6:.2f} µs |")
