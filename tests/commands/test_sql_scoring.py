"""Execution accuracy on SQLite: read-only by construction, bounded in time, ordered only when
the gold query orders."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from server.commands.sql_scoring import SqlScorer, connect_read_only, execute, is_ordered, strip_fences

pytestmark = pytest.mark.unit


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT, city TEXT);
        INSERT INTO customer VALUES (1, 'Ana', 'Porto'), (2, 'Bo', 'Lima'), (3, 'Cy', 'Porto');
        """
    )
    conn.commit()
    conn.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO customer VALUES (4, 'Di', 'Oslo')",
        "DELETE FROM customer",
        "DROP TABLE customer",
        "UPDATE customer SET name = 'x'",
        "CREATE TABLE t (x)",
        "PRAGMA query_only = OFF",
        "ATTACH DATABASE ':memory:' AS other",
        "SELECT 1; DELETE FROM customer",
    ],
)
def test_nothing_can_write(database: Path, sql: str):
    before = digest(database)
    conn = connect_read_only(database)
    result = execute(conn, sql)
    conn.close()
    assert not result.ok
    assert digest(database) == before
    assert sqlite3.connect(database).execute("SELECT count(*) FROM customer").fetchone() == (3,)


def test_a_query_that_runs_forever_is_stopped(database: Path):
    conn = connect_read_only(database)
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
    result = execute(conn, endless, time_limit_s=0.3)
    assert not result.ok and "interrupt" in (result.error or "").lower()
    assert execute(conn, "SELECT count(*) FROM customer").rows == ((3,),)  # still usable


def test_order_matters_only_under_order_by(database: Path):
    scorer = SqlScorer(database)
    unordered_gold = "SELECT name FROM customer WHERE city = 'Porto'"
    assert scorer.score("SELECT name FROM customer WHERE city = 'Porto' ORDER BY name DESC", unordered_gold) == (
        True,
        True,
    )
    ordered_gold = "SELECT name FROM customer ORDER BY name"
    assert scorer.score("SELECT name FROM customer ORDER BY name DESC", ordered_gold) == (True, False)
    assert scorer.score("SELECT name FROM customer ORDER BY id", ordered_gold) == (True, True)
    assert scorer.score("SELECT nme FROM customer", ordered_gold) == (False, False)
    assert scorer.score("SELECT name FROM customer WHERE city = 'Lima'", unordered_gold) == (True, False)
    scorer.close()


def test_duplicates_count(database: Path):
    scorer = SqlScorer(database)
    assert scorer.score("SELECT DISTINCT city FROM customer", "SELECT city FROM customer") == (True, False)
    scorer.close()


def test_ordering_is_read_at_the_top_level_only():
    assert is_ordered("SELECT a FROM t ORDER BY a")
    assert not is_ordered("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")
    assert is_ordered("select a from (select a from t) order   by a")


def test_fences_and_semicolons_are_stripped():
    assert strip_fences("```sql\nSELECT 1;\n```") == "SELECT 1"
    assert strip_fences("  SELECT 1 ;  ") == "SELECT 1"


def test_a_broken_gold_query_is_an_error(database: Path):
    scorer = SqlScorer(database)
    with pytest.raises(ValueError, match="gold query"):
        scorer.score("SELECT 1", "SELECT nothing FROM nowhere")
    scorer.close()
