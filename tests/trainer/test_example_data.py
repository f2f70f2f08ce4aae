"""The example experts' seeded data: the test splits never meet training, the targets are what
the texts say, and (for SQL) every gold query runs and fits the expert's grammar."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from trainer import example_data, sql_example

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def fields(row: dict) -> dict:
    return json.loads(row["messages"][-1]["content"])


def text(row: dict) -> str:
    return row["messages"][0]["content"].removeprefix(example_data.INSTRUCTION)


@pytest.fixture(scope="module")
def contact_sets():
    return example_data.make_sets(seed=3, n_train=600, n_dev=80, n_wide=300, n_test=120)


def test_contact_dev_and_test_people_share_nothing_with_training(contact_sets):
    train, dev, test = contact_sets
    for held_out in (dev, test):
        for key in ("name", "city", "job"):
            seen = {str(fields(r)[key]).lower() for r in train}
            assert not any(str(fields(r)[key]).lower() in seen for r in held_out), key
        assert not ({text(r) for r in train} & {text(r) for r in held_out})


def test_contact_test_split_shares_nothing_with_the_dev_split(contact_sets):
    _, dev, test = contact_sets
    for key in ("name", "city", "job"):
        seen = {str(fields(r)[key]).lower() for r in dev}
        assert not any(str(fields(r)[key]).lower() in seen for r in test), key


def test_each_split_has_its_own_sentence_shapes_and_words():
    words = lambda v: set(v.city_roots) | set(v.jobs) | {m for m in v.job_modifiers if m} | set(v.titles)  # noqa: E731
    vocabularies = [example_data.WIDE_TRAIN_VOCAB, example_data.DEV_VOCAB, example_data.TEST_VOCAB]
    shapes = [example_data.TRAIN_TEMPLATES + example_data.WIDE_TEMPLATES, example_data.DEV_TEMPLATES]
    shapes.append(example_data.TEST_TEMPLATES)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not (words(vocabularies[i]) & words(vocabularies[j])), (i, j)
            assert not (set(shapes[i]) & set(shapes[j])), (i, j)


def test_contact_targets_are_copied_from_the_text(contact_sets):
    train, dev, test = contact_sets
    words = {w for w in example_data.ONES + example_data.TENS if w}
    for row in train + dev + test:
        f, t = fields(row), text(row)
        assert list(f) == list(example_data.KEYS)
        for key in ("name", "city", "job"):
            assert f[key] in t, (key, f, t)
        assert str(f["age"]) in t or any(w in t for w in words), t
        assert not f["name"].lower().startswith(("dr.", "ms.", "mr.", "prof.", "mrs.", "miss ", "mx.")), f


def test_contact_data_covers_the_hard_cases(contact_sets):
    train, _, test = contact_sets
    for rows, accents in ((train, "áéöñ"), (test, "èíåô")):
        texts = [text(r) for r in rows]
        assert any(t == t.lower() for t in texts)  # lowercase
        assert any(t.count(".") >= 2 and "." in t[:-1] for t in texts)  # two sentences
        assert any(any(ch in t for ch in accents) for t in texts)  # diacritics
        assert any("'" in fields(r)["name"] or "-" in fields(r)["name"] for r in rows)
        assert any(" " in fields(r)["city"] for r in rows) and any(" " in fields(r)["job"] for r in rows)
        assert any(example_data.age_in_words(fields(r)["age"]) in text(r) for r in rows)  # ages in words
        assert any("-" in fields(r)["job"] for r in rows)  # hyphenated job modifiers


def test_contact_dev_and_test_splits_do_not_depend_on_the_wide_pass(contact_sets):
    core_train, core_dev, core_test = example_data.make_sets(seed=3, n_train=600, n_dev=80, n_test=120)
    train, dev, test = contact_sets
    assert dev == core_dev and test == core_test
    assert train[:600] == core_train and len(train) == 900
    wide_texts = [text(r) for r in train[600:]]
    assert len(set(wide_texts)) == len(wide_texts)


@pytest.mark.parametrize(("expert", "wide"), [("contact-extract", "3000"), ("contact-extract-prompt", "0")])
def test_the_shipped_contact_data_is_what_the_script_makes(expert, wide, tmp_path):
    shipped = REPO / "experts" / expert / "datasets"
    args = ["--seed", "0", "--train", "3000", "--dev", "150", "--wide", wide, "--test", "300"]
    assert example_data.main([str(tmp_path), *args]) == 0
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name


def test_contact_data_is_seeded():
    assert example_data.make_sets(seed=1, n_train=50, n_dev=10, n_test=10) == example_data.make_sets(
        seed=1, n_train=50, n_dev=10, n_test=10
    )


def test_age_in_words():
    assert [example_data.age_in_words(a) for a in (19, 20, 34, 71)] == [
        "nineteen",
        "twenty",
        "thirty-four",
        "seventy-one",
    ]


@pytest.fixture(scope="module")
def sql_sets():
    return sql_example.make_sets(seed=0, n_train=2000, n_test=150)


def test_sql_test_shapes_never_occur_in_training(sql_sets):
    train, test = sql_sets
    assert not ({r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test})
    families = {r["messages"][1]["content"].split(" FROM ")[1].split()[0] for r in test}
    assert families == {"customers", "products", "orders", "order_items"}


def test_sql_gold_queries_run_and_fit_the_grammar(sql_sets, tmp_path):
    import xgrammar
    from xgrammar.testing import _is_grammar_accept_string

    database = tmp_path / "shop.sqlite"
    sql_example.build_database(database, seed=0)
    train, test = sql_sets
    sql_example.check_gold(database, train + test)
    grammar = xgrammar.Grammar.from_ebnf((REPO / "experts" / "shop-sql" / "grammar.gbnf").read_text())
    for row in test + train[:300]:
        assert _is_grammar_accept_string(grammar, row["messages"][1]["content"]), row
    assert not _is_grammar_accept_string(grammar, "DELETE FROM customers")


def test_the_shipped_database_and_data_are_what_the_script_makes(tmp_path):
    shipped = REPO / "experts" / "shop-sql"
    assert sql_example.main([str(tmp_path), "--seed", "0", "--train", "2000", "--test", "150"]) == 0
    for rel in ("datasets/train.jsonl", "datasets/test.jsonl"):
        assert (tmp_path / rel).read_bytes() == (shipped / rel).read_bytes(), rel
    dump = lambda p: list(sqlite3.connect(p).iterdump())  # noqa: E731
    assert dump(tmp_path / "shop.sqlite") == dump(shipped / "shop.sqlite")


def test_the_soft_prompt_only_expert_tests_on_the_same_split_and_trains_on_the_core_pass():
    """contact-extract-prompt is compared with contact-extract: the same test rows and grammar; its
    training rows are contact-extract's core pass (the first 3,000 rows, `--wide 0`)."""
    full, only = REPO / "experts" / "contact-extract", REPO / "experts" / "contact-extract-prompt"
    for rel in ("datasets/test.jsonl", "grammar.gbnf"):
        assert (full / rel).read_bytes() == (only / rel).read_bytes(), rel
    core = (only / "datasets" / "train.jsonl").read_bytes()
    assert core.count(b"\n") == 3000
    assert (full / "datasets" / "train.jsonl").read_bytes().startswith(core)


def test_the_soft_prompt_only_sql_expert_shares_shop_sqls_data_and_database():
    """shop-sql-prompt is compared with shop-sql: the same rows, grammar and database."""
    full, only = REPO / "experts" / "shop-sql", REPO / "experts" / "shop-sql-prompt"
    for rel in ("datasets/train.jsonl", "datasets/test.jsonl", "grammar.gbnf", "shop.sqlite"):
        assert (full / rel).read_bytes() == (only / rel).read_bytes(), rel
