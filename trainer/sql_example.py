"""Seeded database and data for the example expert `shop-sql`: an English question about a small
shop database -> one SQLite query.

    python -m trainer.sql_example EXPERT_DIR [--seed 0] [--train 2000] [--test 150]

writes EXPERT_DIR/shop.sqlite (customers, products, orders, order_items; seeded rows) and
EXPERT_DIR/datasets/{train,test}.jsonl. Each row is a chat:

    {"messages": [{"role": "user", "content": "Tables: customers(id, name, ...); ...\nQuestion: <question>"},
                  {"role": "assistant", "content": "SELECT ..."}]}

Questions are composed from parts (what is asked, filters, grouping, ordering, limits, joins);
each composition has a *shape* (the kinds of its parts, e.g. count + city filter + year filter over
a join). The test split holds shapes that never occur in training — every part was seen, never
that combination — and the script asserts it, and that every gold query runs on the database.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainer.example_data import write_jsonl

SCHEMA = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
                        country TEXT NOT NULL, signup_year INTEGER NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,
                       price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                     year INTEGER NOT NULL, status TEXT NOT NULL);
CREATE TABLE order_items (order_id INTEGER NOT NULL REFERENCES orders(id),
                          product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL);
"""

CITIES = {
    "Porto": "Portugal",
    "Lisbon": "Portugal",
    "Madrid": "Spain",
    "Seville": "Spain",
    "Lyon": "France",
    "Paris": "France",
    "Berlin": "Germany",
    "Munich": "Germany",
}
FIRST = ["Ana", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kara", "Liam"]
LAST = ["Silva", "Novak", "Okafor", "Larsen", "Moreau", "Tanaka", "Rossi", "Weber", "Costa", "Haddad"]
CATEGORIES = {
    "books": ["atlas", "novel", "cookbook", "dictionary", "comic"],
    "games": ["chess set", "puzzle", "card game", "board game", "dice set"],
    "garden": ["rake", "hose", "shovel", "planter", "seed kit"],
    "kitchen": ["kettle", "teapot", "knife set", "blender", "toaster"],
    "office": ["stapler", "notebook", "desk lamp", "pen set", "binder"],
}
STATUSES = ["shipped", "pending", "cancelled"]
YEARS = [2021, 2022, 2023, 2024]


def build_database(path: Path, seed: int = 0) -> None:
    """Write the shop database (replacing `path`)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.executescript(SCHEMA)
    names = [f"{first} {last}" for first in FIRST for last in LAST]
    rng.shuffle(names)
    cities = list(CITIES)
    for i, name in enumerate(names[:60], 1):
        city = rng.choice(cities)
        conn.execute("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", (i, name, city, CITIES[city], rng.choice(YEARS)))
    pid = 0
    for category, items in CATEGORIES.items():
        for item in items:
            pid += 1
            conn.execute(
                "INSERT INTO products VALUES (?, ?, ?, ?)",
                (pid, item, category, rng.randint(3, 120) + 0.5 * rng.randint(0, 1)),
            )
    for oid in range(1, 301):
        conn.execute(
            "INSERT INTO orders VALUES (?, ?, ?, ?)", (oid, rng.randint(1, 60), rng.choice(YEARS), rng.choice(STATUSES))
        )
        for product in rng.sample(range(1, pid + 1), rng.randint(1, 3)):
            conn.execute("INSERT INTO order_items VALUES (?, ?, ?)", (oid, product, rng.randint(1, 5)))
    conn.commit()
    conn.close()
    tmp.replace(path)


# ----------------------------------------------------------------------------- composition
# A query is composed of parts; each part has a kind (for the shape) and renders both an English
# phrase and its SQL.


@dataclass(frozen=True)
class Filter:
    kind: str
    phrase: str
    sql: str


@dataclass(frozen=True)
class Query:
    shape: tuple[str, ...]
    question: str
    sql: str


def _customer_filters(rng: random.Random, prefix: str = "") -> list[Filter]:
    city = rng.choice(list(CITIES))
    country = rng.choice(sorted(set(CITIES.values())))
    year = rng.choice(YEARS)
    c = prefix
    return [
        Filter("city", f"from {city}", f"{c}city = '{city}'"),
        Filter("country", f"in {country}", f"{c}country = '{country}'"),
        Filter("signup_after", f"who signed up after {year - 1}", f"{c}signup_year > {year - 1}"),
        Filter("signup_in", f"who signed up in {year}", f"{c}signup_year = {year}"),
    ]


def _product_filters(rng: random.Random, prefix: str = "") -> list[Filter]:
    category = rng.choice(list(CATEGORIES))
    low = rng.choice([10, 20, 30, 50])
    high = rng.choice([60, 80, 100])
    c = prefix
    return [
        Filter("category", f"in the {category} category", f"{c}category = '{category}'"),
        Filter("price_over", f"that cost more than {low}", f"{c}price > {low}"),
        Filter("price_under", f"that cost less than {high}", f"{c}price < {high}"),
    ]


def _order_filters(rng: random.Random, prefix: str = "") -> list[Filter]:
    year = rng.choice(YEARS)
    status = rng.choice(STATUSES)
    c = prefix
    return [
        Filter("order_year", f"placed in {year}", f"{c}year = {year}"),
        Filter("status", f"that are {status}", f"{c}status = '{status}'"),
    ]


def _pick(rng: random.Random, filters: list[Filter], most: int) -> list[Filter]:
    """Up to `most` filters, on different columns (no "after 2021 and in 2022")."""
    picked: list[Filter] = []
    for f in rng.sample(filters, len(filters)):
        column = f.sql.split()[0]
        if len(picked) < most and all(g.sql.split()[0] != column for g in picked):
            picked.append(f)
    return picked[: rng.randint(0, most)]


def _where(filters: list[Filter]) -> str:
    return " WHERE " + " AND ".join(f.sql for f in filters) if filters else ""


def _phrase(filters: list[Filter]) -> str:
    return "".join(" " + f.phrase for f in filters)


def _kinds(filters: list[Filter]) -> tuple[str, ...]:
    return tuple(sorted(f.kind for f in filters))


def customers_query(rng: random.Random) -> Query:
    fs = _pick(rng, _customer_filters(rng), 2)
    ask = rng.choice(["list", "count", "list_sorted", "group_city", "group_country"])
    w, p = _where(fs), _phrase(fs)
    if ask == "list":
        return Query(
            ("customers", ask, *_kinds(fs)), f"List the names of the customers{p}.", f"SELECT name FROM customers{w}"
        )
    if ask == "count":
        return Query(
            ("customers", ask, *_kinds(fs)), f"How many customers are there{p}?", f"SELECT COUNT(*) FROM customers{w}"
        )
    if ask == "list_sorted":
        n = rng.randint(2, 6)
        return Query(
            ("customers", ask, *_kinds(fs)),
            f"Give the names of the {n} customers{p} who signed up most recently.",
            f"SELECT name FROM customers{w} ORDER BY signup_year DESC, name LIMIT {n}",
        )
    column = "city" if ask == "group_city" else "country"
    return Query(
        ("customers", ask, *_kinds(fs)),
        f"How many customers{p} are there in each {column}?",
        f"SELECT {column}, COUNT(*) FROM customers{w} GROUP BY {column}",
    )


def products_query(rng: random.Random) -> Query:
    fs = _pick(rng, _product_filters(rng), 2)
    ask = rng.choice(["list", "count", "avg", "max", "cheapest", "group_category", "having"])
    w, p = _where(fs), _phrase(fs)
    if ask == "list":
        return Query(("products", ask, *_kinds(fs)), f"Which products{p} do we sell?", f"SELECT name FROM products{w}")
    if ask == "count":
        return Query(
            ("products", ask, *_kinds(fs)), f"How many products{p} are there?", f"SELECT COUNT(*) FROM products{w}"
        )
    if ask in ("avg", "max"):
        word = {"avg": "average", "max": "highest"}[ask]
        return Query(
            ("products", ask, *_kinds(fs)),
            f"What is the {word} price of the products{p}?",
            f"SELECT {ask.upper()}(price) FROM products{w}",
        )
    if ask == "cheapest":
        n = rng.randint(2, 5)
        return Query(
            ("products", ask, *_kinds(fs)),
            f"Name the {n} cheapest products{p}.",
            f"SELECT name FROM products{w} ORDER BY price, name LIMIT {n}",
        )
    if ask == "group_category":
        return Query(
            ("products", ask, *_kinds(fs)),
            f"What is the average price per category of the products{p}?",
            f"SELECT category, AVG(price) FROM products{w} GROUP BY category",
        )
    k = rng.randint(2, 4)
    return Query(
        ("products", ask, *_kinds(fs)),
        f"Which categories have more than {k} products{p}?",
        f"SELECT category FROM products{w} GROUP BY category HAVING COUNT(*) > {k}",
    )


def orders_query(rng: random.Random) -> Query:
    """Orders joined with their customers."""
    ofs = _pick(rng, _order_filters(rng, "orders."), 2)
    cfs = _pick(rng, _customer_filters(rng, "customers."), 1)
    fs = ofs + cfs
    ask = rng.choice(["count", "group_status", "top_customers"])
    join = " JOIN customers ON orders.customer_id = customers.id"
    w = _where(fs)
    who = f" by customers{_phrase(cfs)}" if cfs else ""
    p = _phrase(ofs) + who
    if ask == "count":
        return Query(
            ("orders", ask, *_kinds(fs)), f"How many orders{p} are there?", f"SELECT COUNT(*) FROM orders{join}{w}"
        )
    if ask == "group_status":
        return Query(
            ("orders", ask, *_kinds(fs)),
            f"How many orders{p} are there for each status?",
            f"SELECT orders.status, COUNT(*) FROM orders{join}{w} GROUP BY orders.status",
        )
    n = rng.randint(2, 5)
    return Query(
        ("orders", ask, *_kinds(fs)),
        f"Which {n} customers placed the most orders{_phrase(ofs)}{who}?",
        f"SELECT customers.name FROM orders{join}{w} GROUP BY customers.id ORDER BY COUNT(*) DESC, customers.name LIMIT {n}",
    )


def sales_query(rng: random.Random) -> Query:
    """Order items joined with products and orders."""
    pfs = _pick(rng, _product_filters(rng, "products."), 1)
    ofs = _pick(rng, _order_filters(rng, "orders."), 1)
    fs = pfs + ofs
    ask = rng.choice(["units", "revenue", "units_per_category"])
    join = " JOIN products ON order_items.product_id = products.id JOIN orders ON order_items.order_id = orders.id"
    w = _where(fs)
    p = _phrase(pfs) + (f" in orders{_phrase(ofs)}" if ofs else "")
    if ask == "units":
        return Query(
            ("sales", ask, *_kinds(fs)),
            f"How many units of products{p} were ordered?",
            f"SELECT SUM(order_items.quantity) FROM order_items{join}{w}",
        )
    if ask == "revenue":
        return Query(
            ("sales", ask, *_kinds(fs)),
            f"What is the total revenue from products{p}?",
            f"SELECT SUM(order_items.quantity * products.price) FROM order_items{join}{w}",
        )
    return Query(
        ("sales", ask, *_kinds(fs)),
        f"How many units of products{p} were ordered in each category?",
        f"SELECT products.category, SUM(order_items.quantity) FROM order_items{join}{w} GROUP BY products.category",
    )


FAMILIES: list[Callable[[random.Random], Query]] = [customers_query, products_query, orders_query, sales_query]


def make_sets(
    seed: int = 0, n_train: int = 2000, n_test: int = 150, test_share: float = 0.2
) -> tuple[list[dict], list[dict]]:
    """Train and test rows; the test rows' shapes never occur in training."""
    rng = random.Random(seed)
    pool: dict[tuple[str, ...], dict[str, Query]] = {}
    for _ in range(40 * (n_train + n_test)):
        q = rng.choice(FAMILIES)(rng)
        pool.setdefault(q.shape, {})[q.question] = q
    # the test shapes: a share of each family's shapes; the test rows spread evenly over families
    test_shapes: set[tuple[str, ...]] = set()
    per_family: dict[str, list[Query]] = {}
    for family in sorted({s[0] for s in pool}):
        shapes = sorted(s for s in pool if s[0] == family)
        rng.shuffle(shapes)
        held = shapes[: max(1, int(len(shapes) * test_share))]
        test_shapes.update(held)
        per_family[family] = [q for s in held for q in pool[s].values()]
        rng.shuffle(per_family[family])
    train_q = [q for s in sorted(pool) if s not in test_shapes for q in pool[s].values()]
    rng.shuffle(train_q)
    train_q = train_q[:n_train]
    test_q: list[Query] = []
    while len(test_q) < n_test and any(per_family.values()):
        for family in sorted(per_family):
            if per_family[family] and len(test_q) < n_test:
                test_q.append(per_family[family].pop())
    assert not ({q.shape for q in train_q} & {q.shape for q in test_q}), "a test shape occurs in training"
    assert not ({q.question for q in train_q} & {q.question for q in test_q}), "a test question occurs in training"
    return [row(q) for q in train_q], [row(q) for q in test_q]


TABLES = (
    "Tables: customers(id, name, city, country, signup_year); products(id, name, category, price); "
    "orders(id, customer_id, year, status); order_items(order_id, product_id, quantity)."
)


def row(q: Query) -> dict:
    """The question comes after the tables it may use, so that the base model has a fair chance."""
    user = f"{TABLES}\nQuestion: {q.question}"
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": q.sql}]}


def check_gold(database: Path, rows: list[dict]) -> None:
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    for r in rows:
        conn.execute(r["messages"][-1]["content"]).fetchall()  # raises on a broken gold query
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.sql_example", description=__doc__.split("\n\n")[0])
    parser.add_argument("expert_dir", type=Path, metavar="EXPERT_DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, metavar="N")
    parser.add_argument("--test", type=int, default=150, metavar="M")
    args = parser.parse_args(argv)
    database = args.expert_dir / "shop.sqlite"
    build_database(database, args.seed)
    train, test = make_sets(args.seed, args.train, args.test)
    check_gold(database, train + test)
    write_jsonl(args.expert_dir / "datasets" / "train.jsonl", train)
    write_jsonl(args.expert_dir / "datasets" / "test.jsonl", test)
    print(f"wrote {database}, {len(train)} training rows and {len(test)} test rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
