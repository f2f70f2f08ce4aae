"""Seeded data for the example expert `contact-extract`: English text about one person -> compact JSON.

    python -m trainer.example_data OUT_DIR [--seed 0] [--train 3000] [--dev 150] [--wide 3000]
        [--blind1 300] [--broad 6000] [--blind2 300] [--varied 6000] [--blind3 300]
        [--spelling 9000] [--test 300]

writes OUT_DIR/train.jsonl, OUT_DIR/dev.jsonl and OUT_DIR/test.jsonl. Each row is a chat:

    {"messages": [{"role": "user", "content": "Extract name, age, city and job as JSON: <text>"},
                  {"role": "assistant", "content": "{\\"name\\": \\"Ana Silva\\", \\"age\\": 34, ...}"}]}

The answer is `json.dumps` of {"name", "age", "city", "job"} in that order (default separators,
non-ASCII kept). Values are copied from the text as written (a lowercase text gives lowercase
values), except that a title (Dr., Ms., ...) is not part of the name and the age is a number
even when the text spells it out.

The texts cover many phrasings: dozens of sentence shapes and clause orders, two-sentence texts,
distractors (a year, a count, a second city that is not where the person lives or works), ages in
words, titles, lowercase texts, and open vocabulary (names made from syllables, with hyphens,
apostrophes and diacritics; multi-word cities and jobs). The dev and test splits never meet
training: each has its own sentence shapes, distractor phrasings, name syllables, city words, job
words and titles, and the script asserts that no dev or test name, city, job or sentence occurs
in training.

Training rows come in up to five passes. The core pass (`--train`) uses the core sentence shapes and
vocabulary; the dev rows are drawn next; the wide pass (`--wide`) then uses more shapes: other
clause orders, participial openers ("Based in X, ..."), distractor cities before and after the
real one (born in, raised in, commutes to ...), field lists in other orders and hyphenated job
modifiers, from its own seeded generator. The wide shapes were added after an error analysis of
the core-only expert on the dev rows (it copied the distractor city, dropped hyphenated modifiers,
and took the first field of a field list for the name), and widened after a second one (a held-out
hyphenated modifier dropped, a former workplace named after the home city taken, a count taken
for the age).

The dev split (dev.jsonl) is those dev rows followed by the first blind split (`--blind1`): shapes
and words written after both analyses, scored once (an expert trained on the core and wide passes
got 78 % of it exactly), and then read. Its misses guided the broad pass (`--broad`): texts
composed from clauses in any order (see broad_shape), names from many languages, many titles with
and without a period, numbers beside the age, and many English words opening a city or a job.
After the broad pass came the second blind split (`--blind2`, the test split until then), scored
once (54 % with the adapter) and read; it follows the first in dev.jsonl. Its misses guided the
varied pass (`--varied`, see varied_shape): British spellings to copy, praise before the job that
is not part of it, the city before the name, the first person, the job before the name. After it
came the third blind split (`--blind3`, the test split until then), scored once for two experts
and read; it follows the second in dev.jsonl. Its misses were nearly all one mechanism: a
value's first word that the tokenizer spells in other tokens after the answer's opening quote than
after a space in the text. The spelling pass (`--spelling`, see spelling_shape) gives values that
open with thousands of such words (trainer/open_words.txt, less every held-out word). No part of
the dev split is blind, though its sentences and vocabulary never occur in training.

The test split (`--test`) is blind: its shapes and words were written with the spelling pass,
before any expert trained on it was run, and it was never read against an expert's answers
before it was scored. The dev rows are drawn right after the core rows, and each blind split and
the test split from its own seeded generator, so no held-out row depends on `--wide`, `--broad`,
`--varied` or `--spelling`; `--wide 0 --broad 0 --varied 0 --spelling 0` gives the core rows
alone.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from trainer import contact_words as words

INSTRUCTION = "Extract name, age, city and job as JSON: "
KEYS = ("name", "age", "city", "job")


def _joined(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def broad_shape(rng: random.Random) -> str:
    """One composed sentence shape of the broad pass (placeholders as in the templates)."""
    style = rng.random()
    if style < 0.2:  # a labelled field list in any order, sometimes with a distractor field
        fields = [(rng.choice(labels), words.BROAD_LABEL_VALUES[key]) for key, labels in words.BROAD_LABELS]
        if rng.random() < 0.4:
            fields.append(rng.choice([("Born in", "{other}"), ("Since", "{year}"), ("Children", "{count}")]))
        rng.shuffle(fields)
        sep, join = rng.choice([(": ", ". "), (": ", "; "), (" - ", " | "), (": ", ", "), (" = ", "; ")])
        return join.join(label + sep + value for label, value in fields) + ("." if join == ". " else "")
    clauses = [rng.choice(words.BROAD_AGE), rng.choice(words.BROAD_JOB), rng.choice(words.BROAD_CITY)]
    clauses += rng.sample(words.BROAD_EXTRA, rng.choice((0, 0, 1, 1, 2)))
    rng.shuffle(clauses)
    opener = rng.choice(words.BROAD_OPENERS)
    return _sentences(rng, opener, clauses, two=style >= 0.6)


def _sentences(rng: random.Random, opener: str, clauses: list[str], *, two: bool, subject: str = "") -> str:
    """The opener and its clauses as one sentence, or (when `two` and there are two clauses or
    more) as two, the second led by `subject`, else by a pronoun or the short name."""
    if not two or len(clauses) < 2:
        return f"{opener} {_joined(clauses)}."
    cut = rng.randint(1, len(clauses) - 1)
    subject = subject or rng.choice(("She", "He", "{name_short}"))
    return f"{opener} {_joined(clauses[:cut])}. {subject} {_joined(clauses[cut:])}."


def varied_shape(rng: random.Random) -> str:
    """One composed sentence shape of the varied pass: the opener says who (and maybe where or what),
    then the clauses it left, in any order, as one or two sentences."""
    style = rng.random()
    extras = rng.sample(words.VARIED_EXTRA, rng.choice((0, 1, 1, 2)))
    if style < 0.25:  # the city first: "Kettleby resident X is ..."
        opener, clauses = (
            rng.choice(words.VARIED_CITY_FIRST),
            [rng.choice(words.VARIED_AGE), rng.choice(words.VARIED_JOB)],
        )
    elif style < 0.45:  # the first person
        opener = rng.choice(words.VARIED_FIRST_PERSON)
        extras = rng.sample(words.VARIED_I_EXTRA, len(extras))
        clauses = [rng.choice(words.VARIED_I_AGE), rng.choice(words.VARIED_I_JOB), rng.choice(words.VARIED_I_CITY)]
    elif style < 0.6:  # the job first: "A talented baker called X ..."
        opener, clauses = (
            rng.choice(words.VARIED_JOB_FIRST),
            [rng.choice(words.VARIED_AGE), rng.choice(words.VARIED_CITY)],
        )
    else:
        opener = rng.choice(("{name}", "{name}, {age},", "{name} ({age})", "Meet {name}, who"))
        clauses = [rng.choice(words.VARIED_JOB), rng.choice(words.VARIED_CITY)]
        if "{age}" not in opener:
            clauses.append(rng.choice(words.VARIED_AGE))
    clauses += extras
    rng.shuffle(clauses)
    two = rng.random() >= 0.6
    return _sentences(rng, opener, clauses, two=two, subject="I" if opener in words.VARIED_FIRST_PERSON else "")


def spelling_shape(rng: random.Random) -> str:
    """One sentence shape of the spelling pass: a broad or a varied one (its words are the point)."""
    return broad_shape(rng) if rng.random() < 0.5 else varied_shape(rng)


ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def age_in_words(age: int) -> str:
    """19..99 in English words ('thirty-four')."""
    if age == 19:
        return "nineteen"
    tens, ones = divmod(age, 10)
    return TENS[tens] + (f"-{ONES[ones]}" if ones else "")


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def syllable(rng: random.Random, v: words.Vocabulary, accent: bool) -> str:
    vowel = rng.choice(v.accented) if accent else rng.choice(v.vowels)
    return rng.choice(v.onsets) + vowel + rng.choice(v.codas)


def word(rng: random.Random, v: words.Vocabulary, syllables: int) -> str:
    accent_at = rng.randrange(syllables) if rng.random() < 0.2 else -1
    return "".join(syllable(rng, v, i == accent_at) for i in range(syllables)).capitalize()


def person_name(rng: random.Random, v: words.Vocabulary) -> tuple[str, str]:
    """(full name, short form used later in the text)."""
    if v.first_names and rng.random() < 0.5:
        first = rng.choice(v.first_names)
    else:
        first = word(rng, v, rng.randint(1, 3))
        if rng.random() < 0.12:
            first = f"{first}-{word(rng, v, rng.randint(1, 2))}"
    if v.surnames and rng.random() < 0.5:
        return f"{first} {rng.choice(v.surnames)}", first
    last = word(rng, v, rng.randint(1, 3))
    r = rng.random()
    if r < 0.12:
        prefix = rng.choice(v.surname_prefixes)
        last = prefix + (last if prefix.endswith((" ", "-")) else last.capitalize())
    elif r < 0.2:
        last = f"{last}-{word(rng, v, 2)}"
    return f"{first} {last}", first


def city(rng: random.Random, v: words.Vocabulary) -> str:
    head = rng.choice(v.city_heads)
    root = rng.choice(v.city_roots) if rng.random() < 0.6 else word(rng, v, rng.randint(2, 3))
    return f"{head} {root}" if head else root


def job(rng: random.Random, v: words.Vocabulary) -> str:
    modifier = rng.choice(v.job_modifiers)
    base = rng.choice(v.jobs)
    return f"{modifier} {base}" if modifier else base


Shapes = list[str] | Callable[[random.Random], str]  # a list to draw from, or a composer


def make_row(
    rng: random.Random, shapes: Shapes, v: words.Vocabulary, counts: tuple[int, int] = (2, 9)
) -> tuple[str, dict, dict]:
    name, short = person_name(rng, v)
    age = rng.randint(19, 78)
    home, work = city(rng, v), job(rng, v)
    other = city(rng, v)
    while other == home:
        other = city(rng, v)
    written_name = f"{rng.choice(v.titles)} {name}" if rng.random() < 0.15 else name
    written_age = age_in_words(age) if rng.random() < 0.25 else str(age)
    shape = rng.choice(shapes) if isinstance(shapes, list) else shapes(rng)
    praise = rng.choice(v.praise) if v.praise else ""  # drawn only where a vocabulary has praise
    text = shape.format(
        name=written_name,
        name_short=short,
        age=written_age,
        city=home,
        other=other,
        job=work,
        a_job=f"{article(work)} {work}",
        praise=praise,
        a_praise_job=f"{article(praise)} {praise} {work}" if praise else "",
        year=rng.randint(1990, 2024),
        count=rng.randint(*counts),
    )
    text = text[0].upper() + text[1:]
    fields = {"name": name, "age": age, "city": home, "job": work}
    if rng.random() < 0.12:  # lowercase texts: the values are copied as written
        text = text.lower()
        fields = {"name": name.lower(), "age": age, "city": home.lower(), "job": work.lower()}
    row = {
        "messages": [
            {"role": "user", "content": INSTRUCTION + text},
            {"role": "assistant", "content": json.dumps(fields, ensure_ascii=False)},
        ]
    }
    return text, row, fields


FIELDS = ("name", "city", "job")  # what a held-out person shares with nobody in training


def _seen() -> dict[str, set[str]]:
    """The texts, and the names, cities and jobs (lowercased), of the rows drawn so far."""
    return {"text": set(), **{key: set() for key in FIELDS}}


def _note(seen: dict[str, set[str]], text: str, fields: dict) -> None:
    seen["text"].add(text)
    for key in FIELDS:
        seen[key].add(str(fields[key]).lower())


def _shares(seen: dict[str, set[str]], fields: dict) -> bool:
    return any(str(fields[key]).lower() in seen[key] for key in FIELDS)


def _draw(
    rng: random.Random,
    n: int,
    shapes: Shapes,
    v: words.Vocabulary,
    *,
    texts_of: tuple[dict[str, set[str]], ...] = (),
    fields_of: tuple[dict[str, set[str]], ...] = (),
    counts: tuple[int, int] = (2, 9),
) -> tuple[list[dict], dict[str, set[str]]]:
    """`n` rows with distinct texts, none with a text of `texts_of` or a name, city or job of
    `fields_of`; and what they hold (see _seen)."""
    rows: list[dict] = []
    seen = _seen()
    while len(rows) < n:
        text, row, fields = make_row(rng, shapes, v, counts)
        if text in seen["text"] or any(text in other["text"] for other in texts_of):
            continue
        if any(_shares(other, fields) for other in fields_of):
            continue
        _note(seen, text, fields)
        rows.append(row)
    return rows, seen


def make_sets(
    seed: int = 0,
    n_train: int = 3000,
    n_dev: int = 150,
    n_wide: int = 0,
    n_test: int = 0,
    *,
    n_blind1: int = 0,
    n_broad: int = 0,
    n_blind2: int = 0,
    n_varied: int = 0,
    n_blind3: int = 0,
    n_spelling: int = 0,
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, dev, test).

    train: `n_train` core rows, then `n_wide` wide rows, `n_broad` broad rows, `n_varied` varied
    rows and `n_spelling` spelling rows.
    dev: `n_dev` dev rows (drawn right after the core rows, from the same generator), then
    `n_blind1` rows of the first blind split, `n_blind2` of the second and `n_blind3` of the third
    (each its own generator).
    test: `n_test` rows from their own shapes, words and generator.
    Each held-out part shares no name, city, job or text with any training pass (filtered where a
    pass is drawn after it, asserted where before), and the test split none with the dev split.
    So the dev and test splits do not depend on `n_wide`, `n_broad`, `n_varied` or `n_spelling`,
    nor the core rows on the held-out splits' sizes (the wide rows avoid the dev rows, the broad,
    varied and spelling rows every held-out row).
    """
    rng = random.Random(seed)
    core, core_seen = _draw(rng, n_train, words.TRAIN_TEMPLATES, words.TRAIN_VOCAB)
    dev, dev_seen = _draw(rng, n_dev, words.DEV_TEMPLATES, words.DEV_VOCAB, fields_of=(core_seen,))
    blind1, blind1_seen = _draw(
        random.Random(f"{seed}-test"),
        n_blind1,
        words.BLIND1_TEMPLATES,
        words.BLIND1_VOCAB,
        fields_of=(core_seen, dev_seen),
    )
    blind2, blind2_seen = _draw(
        random.Random(f"{seed}-test2"),
        n_blind2,
        words.BLIND2_TEMPLATES,
        words.BLIND2_VOCAB,
        fields_of=(core_seen, dev_seen, blind1_seen),
        counts=(2, 40),
    )
    blind3, blind3_seen = _draw(
        random.Random(f"{seed}-test3"),
        n_blind3,
        words.BLIND3_TEMPLATES,
        words.BLIND3_VOCAB,
        fields_of=(core_seen, dev_seen, blind1_seen, blind2_seen),
        counts=(2, 30),
    )
    test, test_seen = _draw(
        random.Random(f"{seed}-test4"),
        n_test,
        words.TEST_TEMPLATES,
        words.TEST_VOCAB,
        fields_of=(core_seen, dev_seen, blind1_seen, blind2_seen, blind3_seen),
        counts=(2, 50),
    )
    held_out = (dev_seen, blind1_seen, blind2_seen, blind3_seen, test_seen)
    wide, wide_seen = _draw(
        random.Random(f"{seed}-wide"),
        n_wide,
        words.WIDE_TEMPLATES,
        words.WIDE_TRAIN_VOCAB,
        texts_of=(core_seen, dev_seen),
        fields_of=(dev_seen,),
    )
    broad, broad_seen = _draw(
        random.Random(f"{seed}-broad"),
        n_broad,
        broad_shape,
        words.BROAD_VOCAB,
        texts_of=(core_seen, wide_seen),
        fields_of=held_out,
        counts=(2, 60),
    )
    varied, varied_seen = _draw(
        random.Random(f"{seed}-varied"),
        n_varied,
        varied_shape,
        words.VARIED_VOCAB,
        texts_of=(core_seen, wide_seen, broad_seen),
        fields_of=held_out,
        counts=(2, 60),
    )
    spelling, spelling_seen = _draw(
        random.Random(f"{seed}-spelling"),
        n_spelling,
        spelling_shape,
        words.SPELLING_VOCAB,
        texts_of=(core_seen, wide_seen, broad_seen, varied_seen),
        fields_of=held_out,
        counts=(2, 60),
    )
    parts = zip(held_out, ("dev", "first blind", "second blind", "third blind", "test"), strict=True)
    for seen, part in parts:
        for trained in (core_seen, wide_seen, broad_seen, varied_seen, spelling_seen):
            assert not _shares_any(trained, seen), f"a {part} row shares a text or field with training"
    assert not any(_shares_any(test_seen, seen) for seen in held_out[:4])
    return core + wide + broad + varied + spelling, dev + blind1 + blind2 + blind3, test


def _shares_any(a: dict[str, set[str]], b: dict[str, set[str]]) -> bool:
    return any(a[key] & b[key] for key in ("text", *FIELDS))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.example_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=3000, metavar="N", help="rows of the core pass (default 3000)")
    parser.add_argument("--dev", type=int, default=150, metavar="D", help="rows of the dev split (default 150)")
    parser.add_argument("--wide", type=int, default=3000, metavar="W", help="rows of the wide pass (default 3000)")
    parser.add_argument(
        "--blind1",
        type=int,
        default=300,
        metavar="B",
        help="rows of the first blind split, written to dev.jsonl after the dev rows (default 300)",
    )
    parser.add_argument("--broad", type=int, default=6000, metavar="R", help="rows of the broad pass (default 6000)")
    parser.add_argument(
        "--blind2",
        type=int,
        default=300,
        metavar="B",
        help="rows of the second blind split, written to dev.jsonl after the first (default 300)",
    )
    parser.add_argument(
        "--varied",
        type=int,
        default=6000,
        metavar="V",
        help="rows of the varied pass (default 6000)",
    )
    parser.add_argument(
        "--blind3",
        type=int,
        default=300,
        metavar="B",
        help="rows of the third blind split, written to dev.jsonl after the second (default 300)",
    )
    parser.add_argument(
        "--spelling", type=int, default=9000, metavar="S", help="rows of the spelling pass (default 9000)"
    )
    parser.add_argument("--test", type=int, default=300, metavar="M", help="rows of the test split (default 300)")
    args = parser.parse_args(argv)
    train, dev, test = make_sets(
        args.seed,
        args.train,
        args.dev,
        args.wide,
        args.test,
        n_blind1=args.blind1,
        n_broad=args.broad,
        n_blind2=args.blind2,
        n_varied=args.varied,
        n_blind3=args.blind3,
        n_spelling=args.spelling,
    )
    splits = {"train": train, "dev": dev, "test": test}
    for name, rows in splits.items():
        write_jsonl(args.out_dir / f"{name}.jsonl", rows)
    print("wrote " + ", ".join(f"{len(rows)} rows to {args.out_dir / name}.jsonl" for name, rows in splits.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
