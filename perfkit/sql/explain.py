"""Full-table-scan detection from the database's own query plan, per dialect.

Each checker runs EXPLAIN for one statement on the *same* DBAPI connection the statement
used, with the same parameters, and returns findings with a suggested ``CREATE INDEX`` (and
the same index as an Alembic ``op.create_index``).
Nothing here may change the user's data or transaction:

* SQLite: ``EXPLAIN QUERY PLAN`` plans without executing. ``SCAN t`` is a full scan (a
  finding only when the statement filters or joins on ``t``: an unfiltered read must
  scan); ``USING AUTOMATIC ... INDEX`` means SQLite built a throwaway index for a join,
  i.e. a missing index.
* PostgreSQL: test tables are tiny, so the planner rightly prefers ``Seq Scan`` and a
  naive EXPLAIN flags everything. The plan is taken with ``enable_seqscan = off`` inside a
  savepoint (rolled back): a ``Seq Scan`` with a ``Filter`` that survives that has no index
  able to serve it.
* MariaDB/MySQL: ``EXPLAIN`` rows with ``type = ALL`` and no key, filtered or joined.

Any error becomes a note on the result ("could not check"), never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PlanCheck", "ScanFinding", "check_plan", "filter_columns", "server_side_cursor",
           "table_aliases"]

_EXPLAINABLE = ("SELECT", "UPDATE", "DELETE", "WITH")
_CLAUSE_END = frozenset(
    {"GROUP", "ORDER", "LIMIT", "OFFSET", "HAVING", "RETURNING", "UNION", "FOR", "WINDOW"}
)
_OPERATORS = frozenset({"=", "<", ">", "<=", ">=", "!=", "<>", "LIKE", "ILIKE", "IN", "IS",
                        "BETWEEN"})
_IDENT = re.compile(r'^"?[A-Za-z_][\w$]*"?(?:\."?[A-Za-z_][\w$]*"?)?$')
_RESERVED = frozenset({"NULL", "TRUE", "FALSE", "NOT", "AND", "OR", "SELECT", "EXISTS"})


@dataclass(frozen=True)
class ScanFinding:
    """A table read in full where an index could have served the filter or join."""

    table: str
    detail: str
    columns: tuple[str, ...] = ()

    @property
    def index_name(self) -> str:
        return "ix_" + "_".join([self.table, *self.columns]).replace('"', "").replace("`", "")

    @property
    def suggestion(self) -> str:
        if not self.columns:
            return f"add an index on {self.table} covering the columns this statement filters on"
        return f"CREATE INDEX {self.index_name} ON {self.table} ({', '.join(self.columns)})"

    @property
    def alembic(self) -> str:
        """The same index as an Alembic migration op (``""`` without known columns)."""
        if not self.columns:
            return ""
        columns = ", ".join(f'"{_unquote(column)}"' for column in self.columns)
        return f'op.create_index("{self.index_name}", "{_unquote(self.table)}", [{columns}])'

    @property
    def fix(self) -> str:
        """:attr:`suggestion`, and the Alembic op when there is one."""
        return f"{self.suggestion}; Alembic: {self.alembic}" if self.alembic else self.suggestion


@dataclass
class PlanCheck:
    """Findings of one EXPLAIN, or a note saying why the plan could not be checked."""

    findings: list[ScanFinding] = field(default_factory=list)
    note: str = ""
    checked: bool = False


def _unquote(name: str) -> str:
    return name.strip('"`')


def table_aliases(shape: str) -> dict[str, str]:
    """``{alias: table}`` for every ``FROM``/``JOIN``/``UPDATE`` target in a normalised shape."""
    tokens = shape.replace("(", " ( ").replace(")", " ) ").replace(",", " , ").split()
    aliases: dict[str, str] = {}
    expecting_table = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        upper = token.upper()
        if upper in ("FROM", "JOIN", "UPDATE", "INTO"):
            expecting_table = True
        elif expecting_table and _IDENT.match(token) and upper not in _RESERVED:
            table = _unquote(token.split(".")[-1])
            alias = table
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            if nxt.upper() == "AS" and i + 2 < len(tokens):
                alias = _unquote(tokens[i + 2])
                i += 2
            elif nxt and _IDENT.match(nxt) and nxt.upper() not in _KEYWORDISH:
                alias = _unquote(nxt)
                i += 1
            aliases[alias] = table
            aliases.setdefault(table, table)
            expecting_table = i + 1 < len(tokens) and tokens[i + 1] == ","
            if expecting_table:
                i += 1
        else:
            expecting_table = False
        i += 1
    return aliases


_KEYWORDISH = frozenset({"WHERE", "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "ON",
                         "GROUP", "ORDER", "LIMIT", "SET", "USING", "NATURAL", "OUTER",
                         "UNION", "OFFSET", "RETURNING", "FOR", "HAVING", "WINDOW", "VALUES"})


def filter_columns(shape: str) -> dict[str, list[str]]:
    """``{alias_or_table: [columns]}`` compared in ``WHERE``/``ON`` clauses of a shape."""
    aliases = table_aliases(shape)
    single = next(iter(set(aliases.values()))) if len(set(aliases.values())) == 1 else None
    tokens = shape.replace("(", " ( ").replace(")", " ) ").split()
    result: dict[str, list[str]] = {}
    in_filter = False
    for i, token in enumerate(tokens):
        upper = token.upper()
        if upper in ("WHERE", "ON"):
            in_filter = True
            continue
        if upper in _CLAUSE_END:
            in_filter = False
        if not in_filter or upper not in _OPERATORS:
            continue
        for j in (i - 1, i + 1):
            if not (0 <= j < len(tokens)):
                continue
            operand = tokens[j]
            if operand.upper() in _RESERVED or not _IDENT.match(operand):
                continue
            if "." in operand:
                owner, column = operand.split(".", 1)
                owner = _unquote(owner)
            elif single is not None:
                owner, column = single, operand
            else:
                continue
            column = _unquote(column)
            columns = result.setdefault(owner, [])
            if column not in columns:
                columns.append(column)
    return result


def _columns_for(alias: str, filters: dict[str, list[str]], aliases: dict[str, str]) -> list[str]:
    table = aliases.get(alias, alias)
    for owner, columns in filters.items():
        if owner == alias or aliases.get(owner) == table:
            return columns
    return []


def _first_parameters(parameters: Any, executemany: bool) -> Any:
    if executemany and isinstance(parameters, Sequence) and parameters:
        return parameters[0]
    return parameters


def _execute(dbapi_connection: Any, sql: str, parameters: Any = None) -> list[Any]:
    cursor = dbapi_connection.cursor()
    try:
        if parameters is None or parameters == () or parameters == {}:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        rows = list(cursor.fetchall()) if cursor.description is not None else []
        if rows and cursor.description is not None and not isinstance(rows[0], dict):
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row)) if isinstance(row, (tuple, list)) else row
                    for row in rows]
        return rows
    finally:
        cursor.close()


_SQLITE_SCAN = re.compile(r"^SCAN (?:TABLE )?([\w\"]+)(?: AS (\w+))?(.*)$")
_SQLITE_AUTO = re.compile(r"^SEARCH (?:TABLE )?([\w\"]+)(?: AS (\w+))? USING AUTOMATIC "
                          r"(?:PARTIAL )?(?:COVERING )?INDEX \((.*)\)")


def _sqlite(dbapi_connection: Any, statement: str, parameters: Any, shape: str) -> PlanCheck:
    rows = _execute(dbapi_connection, "EXPLAIN QUERY PLAN " + statement, parameters)
    aliases = table_aliases(shape)
    filters = filter_columns(shape)
    check = PlanCheck(checked=True)
    for row in rows:
        detail = str(row.get("detail", "")) if isinstance(row, dict) else str(row[-1])
        auto = _SQLITE_AUTO.match(detail)
        if auto:
            alias = auto.group(2) or auto.group(1)
            columns = tuple(c.split("=")[0].strip() for c in auto.group(3).split(" AND "))
            check.findings.append(ScanFinding(aliases.get(alias, alias), detail, columns))
            continue
        scan = _SQLITE_SCAN.match(detail)
        if scan is None or "USING" in scan.group(3):
            continue
        alias = _unquote(scan.group(2) or scan.group(1))
        filtered = _columns_for(alias, filters, aliases)
        if filtered:
            check.findings.append(ScanFinding(aliases.get(alias, alias), detail, tuple(filtered)))
    return check


def _plan_nodes(node: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


_PG_COLUMN = re.compile(
    r"\(*\"?([A-Za-z_]\w*)\"?\)*(?:::[\w ]+)?\)? (?:=|<|>|<=|>=|<>|~~|!~~|~~\*)"
)


def _postgres(
    dbapi_connection: Any, statement: str, parameters: Any, shape: str
) -> PlanCheck:
    autocommit = bool(getattr(dbapi_connection, "autocommit", False))
    enter, leave_ok, leave_error = (
        (["BEGIN"], ["ROLLBACK"], ["ROLLBACK"]) if autocommit else
        (["SAVEPOINT perfkit_explain"],
         ["ROLLBACK TO SAVEPOINT perfkit_explain", "RELEASE SAVEPOINT perfkit_explain"],
         ["ROLLBACK TO SAVEPOINT perfkit_explain", "RELEASE SAVEPOINT perfkit_explain"])
    )
    for sql in enter:
        _execute(dbapi_connection, sql)
    try:
        _execute(dbapi_connection, "SET LOCAL enable_seqscan = off")
        rows = _execute(dbapi_connection, "EXPLAIN (FORMAT JSON) " + statement, parameters)
    except Exception:
        for sql in leave_error:
            _execute(dbapi_connection, sql)
        raise
    for sql in leave_ok:
        _execute(dbapi_connection, sql)
    raw = next(iter(rows[0].values())) if rows and isinstance(rows[0], dict) else rows[0][0]
    plan = json.loads(raw) if isinstance(raw, str) else raw
    aliases = table_aliases(shape)
    filters = filter_columns(shape)
    check = PlanCheck(checked=True)
    for node in _plan_nodes(plan[0]["Plan"]):
        if node.get("Node Type") != "Seq Scan" or "Filter" not in node:
            continue
        table = str(node.get("Relation Name", "?"))
        alias = str(node.get("Alias", table))
        columns = _columns_for(alias, filters, aliases) or list(
            dict.fromkeys(_PG_COLUMN.findall(str(node["Filter"])))
        )
        detail = f"Seq Scan on {table} (Filter: {node['Filter']}) even with enable_seqscan=off"
        check.findings.append(ScanFinding(table, detail, tuple(columns)))
    return check


def _mysql(dbapi_connection: Any, statement: str, parameters: Any, shape: str) -> PlanCheck:
    rows = _execute(dbapi_connection, "EXPLAIN " + statement, parameters)
    aliases = table_aliases(shape)
    filters = filter_columns(shape)
    check = PlanCheck(checked=True)
    for row in rows:
        if not isinstance(row, dict):
            continue
        extra = str(row.get("Extra") or "")
        if str(row.get("type")) != "ALL" or row.get("key") is not None:
            continue
        if "Using where" not in extra and "join buffer" not in extra:
            continue
        alias = str(row.get("table"))
        columns = _columns_for(alias, filters, aliases)
        detail = f"type=ALL on {alias} ({extra})"
        check.findings.append(ScanFinding(aliases.get(alias, alias), detail, tuple(columns)))
    return check


def server_side_cursor(cursor: Any) -> bool:
    """Whether ``cursor`` streams rows from the server (psycopg named, MySQL SS cursors).

    Its connection is busy until the rows are read: another statement on it (an EXPLAIN)
    would, on MySQL/MariaDB drivers, throw away the unread rows of the user's result.
    """
    kind = type(cursor).__name__
    return (kind.startswith("SS") or "ServerCursor" in kind or "ServerSide" in kind
            or kind.lower().endswith("_ss_cursor"))


_CHECKERS = {"sqlite": _sqlite, "postgresql": _postgres, "mysql": _mysql, "mariadb": _mysql}


def check_plan(
    dialect: str,
    dbapi_connection: Any,
    statement: str,
    parameters: Any,
    shape: str,
    *,
    executemany: bool = False,
) -> PlanCheck:
    """EXPLAIN ``statement`` and report full scans; errors become ``PlanCheck.note``."""
    if not shape.upper().startswith(_EXPLAINABLE):
        return PlanCheck(note="not a SELECT/UPDATE/DELETE")
    checker = _CHECKERS.get(dialect)
    if checker is None:
        return PlanCheck(note=f"no plan checker for dialect {dialect!r}")
    try:
        return checker(
            dbapi_connection, statement, _first_parameters(parameters, executemany), shape
        )
    except Exception as exc:
        return PlanCheck(note=f"EXPLAIN failed: {type(exc).__name__}: {exc}".strip()[:300])
