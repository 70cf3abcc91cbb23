"""Normalise SQL text into a "shape": the statement with every value replaced by ``?``.

Two executions with the same shape are the same query with different values, which is
what N+1 detection and per-query reports need. The scanner is a single left-to-right pass
(no backtracking regular expressions: a nested-quantifier regex over long indented SQL
is exponential), it never rewrites inside quoted identifiers, and it:

* replaces placeholders (``?``, ``%s``, ``%(name)s``, ``:name``, ``$1``) and literals
  (numbers, ``'strings'``, ``E'...'``, ``$tag$...$tag$``) with ``?``;
* collapses ``IN (?, ?, ?)`` to ``IN (...)`` and multi-row ``VALUES (..), (..)`` to
  ``VALUES (...)``;
* strips ``--`` and ``/* */`` comments (sqlcommenter tags), collapses whitespace and
  upper-cases keywords.
"""

from __future__ import annotations

__all__ = ["normalize", "statement_kind"]

_KEYWORDS = frozenset(
    """
    select from where and or not in is null like ilike between join inner left right full
    outer cross on using group by order having limit offset insert into values update set
    delete returning as distinct union all exists case when then else end asc desc with
    create table index drop alter begin commit rollback savepoint release to for share
    nowait skip locked count sum min max avg cast true false default conflict do nothing
    lateral recursive explain analyze
    """.split()  # noqa: SIM905 - a word list reads better as text
)

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_DIGITS = frozenset("0123456789")


def _scan(sql: str) -> list[str]:
    """Tokens of ``sql`` with values replaced by ``?`` and comments dropped."""
    tokens: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch == "'" or (ch in "eEbBxXnN" and i + 1 < n and sql[i + 1] == "'" and
                           (i == 0 or sql[i - 1] not in _WORD_CHARS)):
            j = i + 1 if ch == "'" else i + 2
            while j < n:
                if sql[j] == "\\" and ch in "eE":
                    j += 2
                    continue
                if sql[j] == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            tokens.append("?")
            i = j + 1
        elif ch == '"' or ch == "`":
            end = sql.find(ch, i + 1)
            end = n - 1 if end < 0 else end
            tokens.append(sql[i : end + 1])
            i = end + 1
        elif ch == "$":
            j = i + 1
            while j < n and sql[j] in _DIGITS:
                j += 1
            if j > i + 1:  # $1 placeholder
                tokens.append("?")
                i = j
                continue
            end_tag = sql.find("$", i + 1)
            tag = sql[i : end_tag + 1] if end_tag > 0 else ""
            if tag and all(c in _WORD_CHARS for c in tag[1:-1]):
                close = sql.find(tag, end_tag + 1)
                i = n if close < 0 else close + len(tag)
                tokens.append("?")
            else:
                tokens.append("$")
                i += 1
        elif ch == "%" and i + 1 < n and sql[i + 1] in "s(":
            if sql[i + 1] == "s":
                i += 2
            else:
                close = sql.find(")", i)
                i = n if close < 0 else close + 2
            tokens.append("?")
        elif ch == "?":
            tokens.append("?")
            i += 1
        elif ch == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_") and (
            not tokens or tokens[-1] != ":"
        ) and (i == 0 or sql[i - 1] != ":"):
            j = i + 1
            while j < n and sql[j] in _WORD_CHARS:
                j += 1
            tokens.append("?")
            i = j
        elif ch in _DIGITS or (ch == "." and i + 1 < n and sql[i + 1] in _DIGITS):
            j = i
            while j < n and (sql[j] in _DIGITS or sql[j] in ".eE" or
                             (sql[j] in "+-" and sql[j - 1] in "eE")):
                j += 1
            tokens.append("?")
            i = j
        elif ch in _WORD_CHARS:
            j = i
            while j < n and (sql[j] in _WORD_CHARS or sql[j] == "."):
                j += 1
            word = sql[i:j]
            tokens.append(word.upper() if word.lower() in _KEYWORDS else word)
            i = j
        else:
            if ch == ":" and i + 1 < n and sql[i + 1] == ":":
                tokens.append("::")
                i += 2
                continue
            tokens.append(ch)
            i += 1
    return tokens


def _collapse_lists(tokens: list[str]) -> list[str]:
    """``IN ( ? , ? )`` -> ``IN (...)``; ``VALUES (..), (..)`` -> ``VALUES (...)``."""
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        token = tokens[i]
        if token in ("IN", "VALUES") and i + 1 < n and tokens[i + 1] == "(":
            j = i + 1
            depth = 0
            only_values = True
            groups_end = i + 1
            while j < n:
                t = tokens[j]
                if t == "(":
                    depth += 1
                elif t == ")":
                    depth -= 1
                    if depth == 0:
                        groups_end = j
                        if token == "VALUES" and j + 2 < n and tokens[j + 1] == "," and \
                                tokens[j + 2] == "(":
                            j += 2
                            depth = 1
                            j += 1
                            continue
                        break
                elif t not in ("?", ",", "NULL", "TRUE", "FALSE", "DEFAULT", "::") and not (
                    out and t.isidentifier() and tokens[j - 1] == "::"
                ):
                    only_values = False
                j += 1
            if only_values and groups_end > i + 1:
                out.extend((token, "(...)"))
                i = groups_end + 1
                continue
        out.append(token)
        i += 1
    return out


def normalize(sql: str) -> str:
    """The shape of ``sql``: values replaced by ``?``, lists collapsed, comments removed."""
    text = " ".join(_collapse_lists(_scan(sql)))
    for before, after in (("( ", "("), (" )", ")"), (" ,", ","), (" . ", "."), (" ::", "::"),
                          (":: ", "::"), (" ;", ""), ("< =", "<="), ("> =", ">="),
                          ("! =", "!="), ("< >", "<>")):
        text = text.replace(before, after)
    return text.rstrip(";").strip()


_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START",
                        "END", "SET TRANSACTION")


def statement_kind(sql: str) -> str:
    """First keyword, upper-cased (``SELECT``, ``INSERT``, ``BEGIN`` ...); ``WITH`` kept."""
    stripped = sql.lstrip(" \t\r\n(")
    while stripped.startswith(("--", "/*")):
        if stripped.startswith("--"):
            newline = stripped.find("\n")
            stripped = "" if newline < 0 else stripped[newline + 1 :].lstrip()
        else:
            end = stripped.find("*/")
            stripped = "" if end < 0 else stripped[end + 2 :].lstrip()
    word = stripped.split(None, 1)[0] if stripped else ""
    return word.upper().rstrip(";")


def is_transaction_control(sql: str) -> bool:
    """BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO, START TRANSACTION."""
    return statement_kind(sql) in _TRANSACTION_CONTROL
