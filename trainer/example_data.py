"""Seeded data for the example expert `contact-extract`: English text about one person -> compact JSON.

    python -m trainer.example_data OUT_DIR [--seed 0] [--train 3000] [--dev 150] [--wide 3000] [--test 300]

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

Training rows come in two passes around the dev split. The core pass (`--train`) uses the core
sentence shapes and vocabulary; the dev split is drawn next; the wide pass (`--wide`) then uses
more shapes: other clause orders, participial openers ("Based in X, ..."),
distractor cities before and after the real one (born in, raised in, commutes to ...), field lists
in other orders and hyphenated job modifiers, from its own seeded generator. So the dev split
does not depend on `--wide`, and `--wide 0` gives the core rows alone. The wide shapes were added
after an error analysis of the core-only expert on the dev split (it copied the distractor city,
dropped hyphenated modifiers, and took the first field of a field list for the name), and widened
after a second one (the expert dropped a held-out hyphenated modifier, took a former workplace
named after the home city, and took a count for the age): the dev split is therefore not blind to
those error classes, though its sentences and vocabulary still never occur in training.

The test split (`--test`) is the blind one: its shapes and words were written after both
analyses and were never read against the expert's answers before it was scored. It comes from its
own seeded generator and shares nothing with the core rows or the dev split, so it too does not
depend on `--wide`.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = "Extract name, age, city and job as JSON: "
KEYS = ("name", "age", "city", "job")


@dataclass(frozen=True)
class Vocabulary:
    """The words one split builds its people from."""

    onsets: tuple[str, ...]
    vowels: tuple[str, ...]
    codas: tuple[str, ...]
    accented: tuple[str, ...]  # vowels with diacritics
    surname_prefixes: tuple[str, ...]  # "O'", "Mac", "van der " ...
    city_heads: tuple[str, ...]  # "Port", "San", "New" ...
    city_roots: tuple[str, ...]
    job_modifiers: tuple[str, ...]
    jobs: tuple[str, ...]
    titles: tuple[str, ...]


TRAIN_VOCAB = Vocabulary(
    onsets=("b", "d", "f", "g", "k", "l", "m", "n", "r", "s", "t", "v", "br", "tr", "st"),
    vowels=("a", "e", "i", "o", "u", "ai", "ea"),
    codas=("", "n", "r", "s", "l", "th"),
    accented=("á", "é", "ö", "ñ"),
    surname_prefixes=("O'", "Mac", "van ", "de "),
    city_heads=("Port", "San", "New", "Lake", "Fort", ""),
    city_roots=(
        "Elmora",
        "Varden",
        "Calisto",
        "Brenmoor",
        "Tessaly",
        "Orvik",
        "Lunaport",
        "Marisol",
        "Kestrel",
        "Dunhollow",
        "Albaran",
        "Corvina",
        "Halden",
        "Serrano",
        "Wexley",
        "Ilmari",
    ),
    job_modifiers=("senior", "junior", "freelance", "chief", "lead", "assistant", ""),
    jobs=(
        "nurse",
        "software engineer",
        "baker",
        "architect",
        "data analyst",
        "pharmacist",
        "carpenter",
        "teacher",
        "lawyer",
        "electrician",
        "journalist",
        "chef",
        "dentist",
        "pilot",
        "accountant",
        "graphic designer",
        "veterinarian",
        "plumber",
        "librarian",
        "translator",
        "photographer",
        "mechanic",
        "economist",
        "tailor",
    ),
    titles=("Dr.", "Ms.", "Mr."),
)
# the wide pass: the core vocabulary plus hyphenated job modifiers
WIDE_TRAIN_VOCAB = Vocabulary(
    **{
        **TRAIN_VOCAB.__dict__,
        "job_modifiers": (
            *TRAIN_VOCAB.job_modifiers,
            "full-time",
            "semi-retired",
            "self-employed",
            "on-call",
            "night-shift",
            "retired",
            "volunteer",
            "apprentice",
            "deputy",
            "certified",
            "temporary",
            "locum",
            "stand-in",
        ),
    }
)
DEV_VOCAB = Vocabulary(
    onsets=("c", "h", "j", "p", "w", "z", "ch", "sh", "pl", "gr"),
    vowels=("a", "e", "i", "o", "u", "ou", "ie"),
    codas=("", "m", "k", "x", "nd", "sk"),
    accented=("ü", "ç", "ø", "ã"),
    surname_prefixes=("D'", "Fitz", "von ", "da "),
    city_heads=("Saint", "North", "Upper", "Bay", ""),
    city_roots=("Quillon", "Zephyra", "Ashgrove", "Pelladon", "Yarrowby", "Juniper", "Cotswick", "Rhosyn"),
    job_modifiers=("head", "trainee", "principal", "part-time", ""),
    jobs=(
        "marine biologist",
        "optician",
        "social worker",
        "bus driver",
        "interior designer",
        "surveyor",
        "paramedic",
        "florist",
        "sommelier",
        "radiographer",
        "geologist",
        "welder",
    ),
    titles=("Prof.", "Mrs."),
)

# The test split: shapes and words written after both error analyses, never used to guide training
# or read against the expert's answers before the test split was scored.
TEST_VOCAB = Vocabulary(
    onsets=("y", "qu", "bl", "fr", "gw", "kr", "sn", "dr"),
    vowels=("a", "e", "i", "o", "u", "oa", "ei"),
    codas=("", "p", "ck", "lt", "rn", "ss"),
    accented=("è", "í", "å", "ô"),
    surname_prefixes=("Mc", "del ", "ter ", "le "),
    city_heads=("East", "Little", "Glen", "Mount", ""),
    city_roots=("Vellamy", "Brightwater", "Kilnsey", "Marrowdale", "Esterhold", "Fennick", "Wyndham", "Loxley"),
    job_modifiers=("associate", "self-taught", "seasonal", "award-winning", ""),
    jobs=(
        "nutritionist",
        "air traffic controller",
        "locksmith",
        "zookeeper",
        "stonemason",
        "court reporter",
        "physiotherapist",
        "beekeeper",
        "tour guide",
        "cartographer",
        "firefighter",
        "jeweller",
    ),
    titles=("Miss", "Mx."),
)

# Sentence shapes. {name} is the name as written (with its title when it has one), {age} the age as
# written (digits or words), {job} the job, {a_job} the job with its article, {city} the city,
# {other} a distractor city, {year} a distractor year, {count} a distractor count.
TRAIN_TEMPLATES = [
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "Meet {name}, {age}, {a_job} based in {city}.",
    "{name} ({age}) works as {a_job} in {city}.",
    "At {age}, {name} is {a_job} living in {city}.",
    "{name}, aged {age}, is {a_job} from {city}.",
    "My neighbor {name} is {age} and works as {a_job} in {city}.",
    "{city} is home to {name}, a {job} who is {age} years old.",
    "{name} has worked as {a_job} in {city} and is {age} years old.",
    "The {job} {name}, {age}, moved to {city} in {year}.",
    "{name} is {age} years old, lives in {city} and is {a_job}.",
    "Say hello to {name}: {age} years old, {job}, {city}.",
    "Our new colleague {name} is {a_job} from {city}, age {age}.",
    "In {city}, {name} ({age}) runs a small business as {a_job}.",
    "{name} was born {age} years ago and now works as {a_job} in {city}.",
    "Originally from {other}, {name} now lives in {city}, where the {age}-year-old works as {a_job}.",
    "{name} is {a_job}. She is {age} and lives in {city}.",
    "{name} is {a_job}. He is {age} and lives in {city}.",
    "{name} lives in {city}. At {age}, they work as {a_job}.",
    "Working as {a_job} in {city} since {year}, {name} is now {age}.",
    "{name}, {age}, {job}, {city}.",
    "Name: {name}. Age: {age}. City: {city}. Job: {job}.",
    "{name} spent {count} years in {other} before settling in {city}; the {age}-year-old is {a_job}.",
    "Ask {name} about {city}: the {job} has lived there for {count} years and is {age}.",
    "{name} is {age}. {name_short} works as {a_job} in {city}.",
    "After {count} trips to {other}, {name} ({age}) decided to stay in {city} as {a_job}.",
    "As {a_job} in {city}, {name} is busy; {name_short} turned {age} in {year}.",
    "{name} from {city} is {a_job}, {age} years old, with {count} children.",
    "The {age}-year-old {name} works in {city} as {a_job}.",
    "Here is {name}: {a_job}, {age}, living in {city} and visiting {other} often.",
    "{name} is {a_job} in {city}. {name_short} is {age}.",
]
# more shapes for the wide pass: other clause orders, openers, distractors and field lists
WIDE_TEMPLATES = [
    "Raised in {other}, {name} moved to {city} in {year} and is now {a_job}, aged {age}.",
    "Based in {city}, {name} is {a_job} and {age} years old.",
    "Currently living in {city}, {name} is {a_job} who is {age}.",
    "Having grown up in {other}, {name} ({age}) settled in {city}, where {name_short} is {a_job}.",
    "{name} studied in {other} but lives in {city} now; the {age}-year-old is {a_job}.",
    "{name} used to live in {other}. These days the {job} lives in {city} and is {age}.",
    "After {count} years in {other}, {name} relocated to {city}; {name_short} is {a_job} and {age} now.",
    "{name} left {other} in {year} for {city}, where the {age}-year-old now works as {a_job}.",
    "In {year}, {name} moved from {other} to {city}; today the {job} is {age}.",
    "{name} is {age} and {a_job}. Home is {city}; {name_short} was born in {other}.",
    "A {job} aged {age}, {name} lives in {city} but commutes to {other}.",
    "{name} ({job}, {age}) lives in {city}, not far from {other}.",
    "{name} has made {city} home and works as {a_job}; {name_short} is {age}.",
    "Home for {name} is {city}, and the {age}-year-old {job} rarely visits {other}.",
    "A {age}-year-old {job} named {name} lives in {city}.",
    "This is {name}, {a_job} in {city}. {name_short} is {age} and has {count} siblings.",
    "{name} turned {age} in {year}; the {job} lives in {city}.",
    "Role: {job}. Name: {name}. Age: {age}. Lives in: {city}.",
    "City - {city}; job - {job}; name - {name}; age - {age}.",
    "Occupation: {job}; residence: {city}; {name}, age {age}.",
    "Location: {city}. Occupation: {job}. Person: {name} ({age}).",
    "Works as {a_job}, {city}: {name}, {age}.",
    "Age {age}, {job}, {city}: that is {name}.",
    "{city}: {name}, {age}, {job}.",
    "{name} - {age} - {job} - {city}",
    "Name {name}; age {age}; job {job}; home {city}.",
    "Working as {a_job} in {city}, {name} is {age} and spends holidays in {other}.",
    "Once a student in {other}, {name} is now {a_job} in {city} at the age of {age}.",
    # added with the second error analysis: the real city first and a former workplace after it,
    # a count before the age, and a modifier in "is now a ..." clauses
    "{name} now lives in {city}; until {year}, {name_short} worked in {other}. The {age}-year-old is {a_job}.",
    "{name} settled in {city} after working in {other} for {count} years, and is now {a_job}, aged {age}.",
    "{name} owns {count} bikes, lives in {city}, is {age} and works as {a_job}.",
    "With {count} grandchildren and a house in {city}, {name} ({age}) is {a_job}.",
    "Raised in {other}, {name} is now {a_job} in {city} and {age} years old.",
]
DEV_TEMPLATES = [
    "{name} turned {age} this spring and is {a_job} in {city}.",
    "Living in {city}, {name} is {a_job} aged {age}.",
    "Everyone in {city} knows {name}, the {age}-year-old {job}.",
    "{name}, {job}, {age}, resides in {city}, though {name_short} grew up in {other}.",
    "Before moving to {city} in {year}, {name} worked in {other}; today the {age}-year-old is {a_job}.",
    "{name} has {count} cats, lives in {city}, is {age} and earns a living as {a_job}.",
    "Job: {job}. City: {city}. {name}, {age}.",
    "{name} is a {job} of {age} years who calls {city} home.",
    "You will find {name} in {city}; {name_short} is {a_job} and {age} years old.",
    "Born in {other}, {name} ({age}) is now {a_job} in {city}.",
]

# the test split's shapes (see TEST_VOCAB)
TEST_TEMPLATES = [
    "{name} is {age} and has been {a_job} in {city} since {year}.",
    "Please meet {name}: {a_job} from {city}, {age} years of age.",
    "{name} works in {city} as {a_job}. {name_short} is {age}.",
    "Now {age}, {name} makes a living as {a_job} in {city}.",
    "{name} grew up in {other} and, at {age}, works as {a_job} in {city}.",
    "The {job} in this story is {name}, {age}, of {city}.",
    "Person: {name}. Years: {age}. Town: {city}. Work: {job}.",
    "{name} ({age}), {a_job}, visited {other} {count} times last year but lives in {city}.",
    "Since {year}, {name} has lived in {city}; the {job} is {age} years old.",
    "{name}, who is {age}, studied in {other} and now works as {a_job} in {city}.",
    "A resident of {city}, {name} is {a_job}. {name_short} celebrated turning {age} with {count} friends.",
    "Ask around {city} for {name}, {a_job} who is {age}.",
]

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


def syllable(rng: random.Random, v: Vocabulary, accent: bool) -> str:
    vowel = rng.choice(v.accented) if accent else rng.choice(v.vowels)
    return rng.choice(v.onsets) + vowel + rng.choice(v.codas)


def word(rng: random.Random, v: Vocabulary, syllables: int) -> str:
    accent_at = rng.randrange(syllables) if rng.random() < 0.2 else -1
    return "".join(syllable(rng, v, i == accent_at) for i in range(syllables)).capitalize()


def person_name(rng: random.Random, v: Vocabulary) -> tuple[str, str]:
    """(full name, short form used later in the text)."""
    first = word(rng, v, rng.randint(1, 3))
    if rng.random() < 0.12:
        first = f"{first}-{word(rng, v, rng.randint(1, 2))}"
    last = word(rng, v, rng.randint(1, 3))
    r = rng.random()
    if r < 0.12:
        prefix = rng.choice(v.surname_prefixes)
        last = prefix + (last if prefix.endswith(" ") else last.capitalize())
    elif r < 0.2:
        last = f"{last}-{word(rng, v, 2)}"
    return f"{first} {last}", first


def city(rng: random.Random, v: Vocabulary) -> str:
    head = rng.choice(v.city_heads)
    root = rng.choice(v.city_roots) if rng.random() < 0.6 else word(rng, v, rng.randint(2, 3))
    return f"{head} {root}" if head else root


def job(rng: random.Random, v: Vocabulary) -> str:
    modifier = rng.choice(v.job_modifiers)
    base = rng.choice(v.jobs)
    return f"{modifier} {base}" if modifier else base


def make_row(rng: random.Random, templates: list[str], v: Vocabulary) -> tuple[str, dict, dict]:
    name, short = person_name(rng, v)
    age = rng.randint(19, 78)
    home, work = city(rng, v), job(rng, v)
    other = city(rng, v)
    while other == home:
        other = city(rng, v)
    written_name = f"{rng.choice(v.titles)} {name}" if rng.random() < 0.15 else name
    written_age = age_in_words(age) if rng.random() < 0.25 else str(age)
    text = rng.choice(templates).format(
        name=written_name,
        name_short=short,
        age=written_age,
        city=home,
        other=other,
        job=work,
        a_job=f"{article(work)} {work}",
        year=rng.randint(1990, 2024),
        count=rng.randint(2, 9),
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


def make_sets(
    seed: int = 0, n_train: int = 3000, n_dev: int = 150, n_wide: int = 0, n_test: int = 0
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, dev, test): `n_train` core rows then `n_wide` wide rows; `n_dev` dev rows drawn
    between the two passes (so the dev split does not depend on `n_wide`); and `n_test` test rows
    from their own shapes and words and their own generator, sharing no name, city, job or text
    with the core rows or the dev split (so the test split does not depend on `n_wide` either) and,
    as asserted, none with the wide rows."""
    rng = random.Random(seed)
    train: list[dict] = []
    seen = _seen()  # the core rows; the wide rows add their texts
    while len(train) < n_train:
        text, row, fields = make_row(rng, TRAIN_TEMPLATES, TRAIN_VOCAB)
        if text not in seen["text"]:
            _note(seen, text, fields)
            train.append(row)
    dev: list[dict] = []
    dev_seen = _seen()
    while len(dev) < n_dev:
        text, row, fields = make_row(rng, DEV_TEMPLATES, DEV_VOCAB)
        # a dev person shares no name, city or job with anyone in training
        if text in dev_seen["text"] or _shares(seen, fields):
            continue
        _note(dev_seen, text, fields)
        dev.append(row)
    test: list[dict] = []
    test_seen = _seen()
    test_rng = random.Random(f"{seed}-test")
    while len(test) < n_test:
        text, row, fields = make_row(test_rng, TEST_TEMPLATES, TEST_VOCAB)
        if text in test_seen["text"] or _shares(seen, fields) or _shares(dev_seen, fields):
            continue
        _note(test_seen, text, fields)
        test.append(row)
    wide_rng = random.Random(f"{seed}-wide")
    wide: list[dict] = []
    wide_seen = _seen()
    while len(wide) < n_wide:
        text, row, fields = make_row(wide_rng, WIDE_TEMPLATES, WIDE_TRAIN_VOCAB)
        if text in seen["text"] or text in dev_seen["text"] or _shares(dev_seen, fields):
            continue
        seen["text"].add(text)
        _note(wide_seen, text, fields)
        wide.append(row)
    train += wide
    assert not (seen["text"] & dev_seen["text"]), "a dev text appears in the training set"
    assert not (seen["text"] & test_seen["text"]), "a test text appears in the training set"
    for key in FIELDS:
        assert not (wide_seen[key] & test_seen[key]), f"a test {key} appears in the wide pass"
    return train, dev, test


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
    parser.add_argument("--test", type=int, default=300, metavar="M", help="rows of the test split (default 300)")
    args = parser.parse_args(argv)
    train, dev, test = make_sets(args.seed, args.train, args.dev, args.wide, args.test)
    splits = {"train": train, "dev": dev, "test": test}
    for name, rows in splits.items():
        write_jsonl(args.out_dir / f"{name}.jsonl", rows)
    print("wrote " + ", ".join(f"{len(rows)} rows to {args.out_dir / name}.jsonl" for name, rows in splits.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
