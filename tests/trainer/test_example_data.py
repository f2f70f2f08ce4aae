"""The example experts' seeded data: the test splits never meet training, the targets are what
the texts say, and (for SQL) every gold query runs and fits the expert's grammar."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from pathlib import Path

import pytest

from trainer import contact_words, example_data, sql_example

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def fields(row: dict) -> dict:
    return json.loads(row["messages"][-1]["content"])


def text(row: dict) -> str:
    return row["messages"][0]["content"].removeprefix(example_data.INSTRUCTION)


@pytest.fixture(scope="module")
def contact_sets():
    return example_data.make_sets(
        seed=3,
        n_train=600,
        n_dev=80,
        n_wide=300,
        n_test=120,
        n_blind1=60,
        n_broad=300,
        n_blind2=60,
        n_varied=300,
        n_blind3=60,
        n_spelling=300,
    )


ALL_VOCABS = (
    contact_words.BROAD_VOCAB,
    contact_words.WIDE_TRAIN_VOCAB,
    contact_words.VARIED_VOCAB,
    contact_words.SPELLING_VOCAB,
    contact_words.DEV_VOCAB,
    contact_words.BLIND1_VOCAB,
    contact_words.BLIND2_VOCAB,
    contact_words.BLIND3_VOCAB,
    contact_words.TEST_VOCAB,
)
HELD_OUT_VOCABS = ALL_VOCABS[4:]  # dev, first, second and third blind, test


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
    def words(v):
        named = set(v.city_roots) | set(v.jobs) | set(v.titles) | set(v.first_names) | set(v.surnames)
        return {w.lower() for w in named | set(v.praise) | {w for w in v.job_modifiers + v.city_heads if w}}

    training = set().union(*map(words, ALL_VOCABS[:4]))
    vocabularies = [training, *map(words, HELD_OUT_VOCABS)]  # training, dev, three blind splits, test
    rng = random.Random(0)
    composed = {example_data.broad_shape(rng) for _ in range(3000)} | {
        example_data.varied_shape(rng) for _ in range(3000)
    }
    shapes = [set(contact_words.TRAIN_TEMPLATES + contact_words.WIDE_TEMPLATES) | composed]
    for held_out in ("DEV", "BLIND1", "BLIND2", "BLIND3", "TEST"):
        shapes.append(set(getattr(contact_words, f"{held_out}_TEMPLATES")))
    for i in range(6):
        for j in range(i + 1, 6):
            assert not (vocabularies[i] & vocabularies[j]), (i, j, vocabularies[i] & vocabularies[j])
            assert not (shapes[i] & shapes[j]), (i, j)


def test_contact_targets_are_copied_from_the_text(contact_sets):
    train, dev, test = contact_sets
    words = {w for w in example_data.ONES + example_data.TENS if w}
    titles = tuple(f"{t.lower()} " for v in ALL_VOCABS for t in v.titles)
    for row in train + dev + test:
        f, t = fields(row), text(row)
        assert list(f) == list(example_data.KEYS)
        for key in ("name", "city", "job"):
            assert f[key] in t, (key, f, t)
        assert str(f["age"]) in t or any(w in t for w in words), t
        assert not f["name"].lower().startswith(titles), f


def test_contact_data_covers_the_hard_cases(contact_sets):
    train, _, test = contact_sets
    for rows, accents in ((train, "áéöñ"), (test, "øûąì")):
        texts = [text(r) for r in rows]
        assert any(t == t.lower() for t in texts)  # lowercase
        assert any(t.count(".") >= 2 and "." in t[:-1] for t in texts)  # two sentences
        assert any(any(ch in t for ch in accents) for t in texts)  # diacritics
        assert any("'" in fields(r)["name"] or "-" in fields(r)["name"] for r in rows)
        assert any(" " in fields(r)["city"] for r in rows) and any(" " in fields(r)["job"] for r in rows)
        assert any(example_data.age_in_words(fields(r)["age"]) in text(r) for r in rows)  # ages in words
    assert any("-" in fields(r)["job"] for r in train)  # hyphenated job modifiers


def test_contact_dev_and_test_splits_do_not_depend_on_the_training_passes(contact_sets):
    core_train, core_dev, core_test = example_data.make_sets(
        seed=3, n_train=600, n_dev=80, n_test=120, n_blind1=60, n_blind2=60, n_blind3=60
    )
    train, dev, test = contact_sets
    assert dev == core_dev and test == core_test
    assert train[:600] == core_train and len(train) == 1800
    added_texts = [text(r) for r in train[600:]]
    assert len(set(added_texts)) == len(added_texts)


def test_the_dev_split_is_the_dev_rows_then_the_three_blind_splits(contact_sets):
    """Each blind split keeps its own generator: its rows do not depend on the other parts."""
    _, dev, _ = contact_sets
    _, dev_only, _ = example_data.make_sets(seed=3, n_train=600, n_dev=80)
    _, with_blind1, _ = example_data.make_sets(seed=3, n_train=600, n_dev=80, n_blind1=60, n_test=5, n_broad=40)
    _, with_two, _ = example_data.make_sets(seed=3, n_train=600, n_dev=80, n_blind1=60, n_blind2=60, n_varied=40)
    _, with_three, _ = example_data.make_sets(
        seed=3, n_train=600, n_dev=80, n_blind1=60, n_blind2=60, n_blind3=60, n_spelling=40
    )
    assert dev[:80] == dev_only and dev[:140] == with_blind1 and dev[:200] == with_two
    assert dev == with_three and len(dev) == 260


def test_the_broad_pass_covers_titles_counts_and_open_vocabulary(contact_sets):
    train, _, _ = contact_sets
    broad = train[900:]
    no_period = [t for t in contact_words.BROAD_VOCAB.titles if not t.endswith(".")]
    assert any(any(f"{t} " in text(r) for t in no_period) for r in broad)  # titles without a period
    # numbers that are not the age (counts, years), often right beside it
    other_numbers = [n for r in broad for n in re.findall(r"\b\d+\b", text(r)) if int(n) != fields(r)["age"]]
    assert len(other_numbers) > 150
    assert any(re.search(r"is \d+ and has \d+ grandchildren", text(r)) for r in broad)
    firsts = {fields(r)["city"].split()[0] for r in broad} | {fields(r)["job"].split()[0] for r in broad}
    assert len(firsts) > 150  # many different words open a city or a job


def test_the_varied_pass_covers_praise_the_city_first_the_first_person_and_british_spellings(contact_sets):
    train, _, _ = contact_sets
    varied = [(text(r), fields(r)) for r in train[1200:1500]]
    praised = [(t, f) for t, f in varied if any(f" {p} {f['job']}" in t for p in contact_words.VARIED_PRAISE)]
    assert len(praised) > 30  # "a talented baker": the praise is written, the job is "baker"
    assert not any(f["job"].startswith(contact_words.VARIED_PRAISE) for _, f in varied)
    assert sum(t.startswith(f["city"]) for t, f in varied) > 15  # "Kettleby resident X ..."
    assert sum(t.lower().startswith(("i'm ", "i am ", "my name is ", "hello, i am ")) for t, _ in varied) > 30
    assert sum(t.index(f["job"]) < t.index(f["name"]) for t, f in varied) > 30  # "The baker X ..."
    british = ("our", "tre", "lling", "aedi", "aesth", "mme", "ogue", "ium", "ised")
    assert sum(any(b in f["job"] for b in british) for _, f in varied) > 30


def test_the_spelling_pass_opens_values_with_many_words_spelt_anew_after_a_quote(contact_sets):
    train, _, _ = contact_sets
    spelling = [fields(r) for r in train[1500:]]
    listed = set(contact_words.OPEN_WORDS)
    firsts = [f["job"].split()[0].lower() for f in spelling] + [f["city"].split()[-1].lower() for f in spelling]
    assert sum(w in listed for w in firsts) > 300 and len(set(firsts) & listed) > 250  # seldom the same word
    # a job opens with a noun modifier or is a job: never with a listed word that could be praise
    job_firsts = set(contact_words.OPEN_NOUNS) | {j.split()[0] for j in contact_words.SPELLING_VOCAB.jobs}
    assert all(f["job"].split()[0].lower() in job_firsts for f in spelling)
    assert "passionate" in listed and "passionate" not in job_firsts
    assert not (listed & contact_words.HELD_OUT_WORDS)
    held_out_words = {
        w for v in HELD_OUT_VOCABS for w in re.split(r"[\s\-'.]+", " ".join(v.jobs + v.job_modifiers).lower())
    }
    assert "hospice" in held_out_words and not (listed & held_out_words)


def test_the_open_word_list_is_what_the_script_makes():
    """trainer/open_words.txt: the tokenizer's words that open a JSON value in other tokens than in text."""
    from transformers import AutoTokenizer

    from server.manifest.embedded import prepare
    from trainer import open_words

    tokenizer = AutoTokenizer.from_pretrained(str(prepare()))
    loaded = open_words.load()
    assert list(loaded) == open_words.open_words(tokenizer)
    listed = set(loaded)
    assert "ultrasonic" in listed  # one token after a space, three after a quote
    assert "mobile" not in listed  # one token both ways


def test_the_contact_grammar_admits_every_answer_and_no_value_that_is_not_copied(contact_sets):
    from xgrammar.testing import _is_grammar_accept_string

    from server.manifest.input_spans import bind

    grammar = (REPO / "experts" / "contact-extract" / "grammar.gbnf").read_text()
    train, dev, test = contact_sets
    # every answer's name, city and job is a run of its text's words (input-span)
    for row in train[::50] + dev + test:
        text = bind(grammar, row["messages"][0]["content"])
        assert _is_grammar_accept_string(text, row["messages"][-1]["content"]), row
    sentence = "Esi Lindberg, 69, is a seasonal locksmith in Glen Vellamy."
    answer = {"name": "Esi Lindberg", "age": 69, "city": "Glen Vellamy", "job": "seasonal locksmith"}
    bound = bind(grammar, sentence)
    assert _is_grammar_accept_string(bound, json.dumps(answer))
    for key in ("name", "city", "job"):
        spaced = json.dumps({**answer, key: " " + answer[key]})
        assert not _is_grammar_accept_string(bound, spaced), key
    respelt = json.dumps({**answer, "job": "seasonal locksmiths"})
    assert not _is_grammar_accept_string(bound, respelt)


@pytest.mark.parametrize(
    ("expert", "wide", "broad", "varied", "spelling"),
    [("contact-extract", "3000", "6000", "6000", "9000"), ("contact-extract-prompt", "0", "0", "0", "0")],
)
def test_the_shipped_contact_data_is_what_the_script_makes(expert, wide, broad, varied, spelling, tmp_path):
    shipped = REPO / "experts" / expert / "datasets"
    args = ["--seed", "0", "--train", "3000", "--dev", "150", "--wide", wide, "--test", "300"]
    args += ["--blind1", "300", "--broad", broad, "--blind2", "300", "--varied", varied]
    args += ["--blind3", "300", "--spelling", spelling]
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
