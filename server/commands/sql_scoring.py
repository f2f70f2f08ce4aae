"""Execution accuracy for SQL experts: a predicted query is right when it returns what the gold
query returns on the expert's SQLite database.

The database is only ever opened read-only: a `file:` URI with `mode=ro`, `PRAGMA query_only`,
and an authorizer that denies every action but reading, so neither a predicted query nor a gold
one can change it. Each query runs under a time limit (a progress handler interrupts it) and its
rows are capped. Result sets compare as multisets, or as sequences when the gold query orders
its rows (`ORDER BY` at its top level).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIME_LIMIT_S = 2.0
MAX_ROWS = 10_000

_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}


@dataclass(frozen=True)
class Execution:
    ok: bool
    rows: tuple[tuple[Any, ...], ...] = ()
    error: str | None = None


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def connect_read_only(database: Path) -> sqlite3.Connection:
    """A connection that can read `database` and nothing else."""
    uri = f"{database.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(_authorize)
    return conn


def execute(conn: sqlite3.Connection, sql: str, *, time_limit_s: float = TIME_LIMIT_S) -> Execution:
    """Run one statement; any error, a second statement, a time-out or too many rows is a failure."""
    deadline = time.monotonic() + time_limit_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(sql)  # one statement only: sqlite3 refuses several
        rows = cursor.fetchmany(MAX_ROWS + 1)
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
        return Execution(False, error=f"{type(exc).__name__}: {exc}")
    finally:
        conn.set_progress_handler(None, 0)
    if len(rows) > MAX_ROWS:
        return Execution(False, error=f"more than {MAX_ROWS} rows")
    return Execution(True, rows=tuple(tuple(r) for r in rows))


_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def is_ordered(sql: str) -> bool:
    """Does the query order its result (an ORDER BY outside every parenthesis)?"""
    depth, top = 0, []
    for ch in sql:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        top.append(ch if depth == 0 else " ")
    return bool(_ORDER_BY.search("".join(top)))


def _normal(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def same_result(gold: Execution, predicted: Execution, *, ordered: bool) -> bool:
    if not (gold.ok and predicted.ok):
        return False
    g = [tuple(_normal(v) for v in row) for row in gold.rows]
    p = [tuple(_normal(v) for v in row) for row in predicted.rows]
    return g == p if ordered else Counter(g) == Counter(p)


def strip_fences(text: str) -> str:
    """The query in a model's answer: code fences and a trailing semicolon removed."""
    s = text.strip()
    fenced = re.match(r"^```(?:sql)?\s*(.*?)\s*```$", s, re.DOTALL | re.IGNORECASE)
    if fenced:
        s = fenced.group(1).strip()
    return s.rstrip().rstrip(";").strip()


class SqlScorer:
    """Scores answers to one database: (runs, correct) per case."""

    def __init__(self, database: Path):
        self.conn = connect_read_only(database)

    def close(self) -> None:
        self.conn.close()

    def score(self, output: str, target: str) -> tuple[bool, bool]:
        predicted = execute(self.conn, strip_fences(output))
        gold_sql = strip_fences(target)
        gold = execute(self.conn, gold_sql)
        if not gold.ok:
            raise ValueError(f"a gold query fails on the database: {gold.error}: {gold_sql}")
        return predicted.ok, same_result(gold, predicted, ordered=is_ordered(gold_sql))
