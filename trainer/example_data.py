"""Seeded data for the example expert `contact-extract`: one English sentence -> compact JSON.

    python -m trainer.example_data OUT_DIR [--seed 0] [--train 1500] [--test 100]

writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl. Each row is a chat:

    {"messages": [{"role": "user", "content": "Extract name, age, city and job as JSON: <sentence>"},
                  {"role": "assistant", "content": "{\\"name\\": \\"Ana Silva\\", \\"age\\": 34, ...}"}]}

The answer is `json.dumps` of {"name", "age", "city", "job"} in that order, with the default
separators (", " and ": "). The test set never meets the training set: its sentences use
held-out templates, and its full names never occur in training (so no name/city pair
does either); the script asserts that no test sentence is a training sentence.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

INSTRUCTION = "Extract name, age, city and job as JSON: "
KEYS = ("name", "age", "city", "job")

FIRST_NAMES = [
    "Ana",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kara",
    "Liam",
    "Maya",
    "Nikolai",
    "Olivia",
    "Pedro",
    "Quinn",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Aiko",
    "Bruno",
    "Chloe",
    "Dmitri",
    "Emma",
    "Felix",
    "Greta",
    "Hassan",
    "Ivy",
    "Jamal",
    "Lena",
    "Marco",
    "Nadia",
    "Oscar",
    "Priya",
    "Rafael",
    "Sofia",
    "Tomas",
    "Uma",
    "Victor",
    "Wanda",
    "Yara",
    "Amir",
    "Beatriz",
]
LAST_NAMES = [
    "Silva",
    "Novak",
    "Kim",
    "Okafor",
    "Garcia",
    "Schmidt",
    "Rossi",
    "Tanaka",
    "Dubois",
    "Khan",
    "Larsen",
    "Moreau",
    "Nguyen",
    "Petrov",
    "Quispe",
    "Reyes",
    "Sato",
    "Torres",
    "Ulrich",
    "Varga",
    "Weber",
    "Yilmaz",
    "Zhang",
    "Abbott",
    "Brennan",
    "Costa",
    "Diaz",
    "Eriksen",
    "Fischer",
    "Gomez",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Mendes",
    "Nakamura",
    "Olsen",
    "Park",
    "Ramos",
]
CITIES = [
    "Lisbon",
    "Berlin",
    "Toronto",
    "Nairobi",
    "Osaka",
    "Lima",
    "Oslo",
    "Cairo",
    "Dublin",
    "Austin",
    "Madrid",
    "Seoul",
    "Prague",
    "Chicago",
    "Melbourne",
    "Bogota",
    "Lyon",
    "Krakow",
    "Denver",
    "Porto",
    "Hamburg",
    "Manila",
    "Accra",
    "Zurich",
    "Boston",
    "Vienna",
    "Istanbul",
    "Santiago",
    "Helsinki",
    "Mumbai",
    "Seattle",
    "Naples",
    "Leeds",
    "Quito",
    "Tunis",
    "Perth",
    "Gdansk",
    "Valencia",
    "Montreal",
    "Athens",
    "New York",
    "San Diego",
    "Buenos Aires",
    "Cape Town",
    "Hong Kong",
    "Kuala Lumpur",
    "Rio de Janeiro",
]
JOBS = [
    "nurse",
    "teacher",
    "software engineer",
    "architect",
    "baker",
    "pilot",
    "electrician",
    "lawyer",
    "graphic designer",
    "accountant",
    "chef",
    "dentist",
    "journalist",
    "plumber",
    "photographer",
    "data analyst",
    "firefighter",
    "librarian",
    "mechanic",
    "pharmacist",
    "translator",
    "carpenter",
    "veterinarian",
    "police officer",
    "barista",
    "civil engineer",
    "musician",
    "farmer",
    "surgeon",
    "web developer",
    "tailor",
    "economist",
    "flight attendant",
    "gardener",
    "optician",
    "interior designer",
    "real estate agent",
    "bus driver",
    "marine biologist",
    "social worker",
]

# {a_job} is the job with its article ("an architect"), {job} the bare job.
TRAIN_TEMPLATES = [
    "{name} is a {age}-year-old {job} who lives in {city}.",
    "Meet {name}, {age}, {a_job} based in {city}.",
    "{name} ({age}) works as {a_job} in {city}.",
    "At {age}, {name} is {a_job} living in {city}.",
    "{name}, aged {age}, is {a_job} from {city}.",
    "My neighbor {name} is {age} and works as {a_job} in {city}.",
    "{city} is home to {name}, {a_age} {age}-year-old {job}.",
    "{name} has worked as {a_job} in {city} and is {age} years old.",
    "The {job} {name}, {age}, moved to {city} last year.",
    "{name} is {age} years old, lives in {city} and is {a_job}.",
    "Say hello to {name}: {age} years old, {job}, {city}.",
    "Our new colleague {name} is {a_job} from {city}, age {age}.",
    "In {city}, {name} ({age}) runs a small business as {a_job}.",
    "{name} was born {age} years ago and now works as {a_job} in {city}.",
]
TEST_TEMPLATES = [
    "{name} turned {age} this spring and is {a_job} in {city}.",
    "Living in {city}, {name} is {a_job} aged {age}.",
    "Ask {name} from {city}; the {age}-year-old works as {a_job}.",
    "{name}, {job}, {age}, resides in {city}.",
    "Everyone in {city} knows {name}, the {age}-year-old {job}.",
]


def article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def age_article(age: int) -> str:
    """'an 18-year-old', 'an 80-year-old', 'a 34-year-old'."""
    return "an" if age in (8, 11, 18) or 80 <= age <= 89 else "a"


def answer(name: str, age: int, city: str, job: str) -> str:
    """The exact target text: compact JSON, keys in the fixed order."""
    return json.dumps({"name": name, "age": age, "city": city, "job": job}, ensure_ascii=False)


def make_row(rng: random.Random, templates: list[str], name: str) -> tuple[str, dict]:
    age = rng.randint(19, 78)
    city, job = rng.choice(CITIES), rng.choice(JOBS)
    template = rng.choice(templates)
    sentence = template.format(
        name=name,
        age=age,
        city=city,
        job=job,
        a_job=f"{article(job)} {job}",
        a_age=age_article(age),
    )
    sentence = sentence[0].upper() + sentence[1:]
    row = {
        "messages": [
            {"role": "user", "content": INSTRUCTION + sentence},
            {"role": "assistant", "content": answer(name, age, city, job)},
        ]
    }
    return sentence, row


def make_sets(seed: int = 0, n_train: int = 1500, n_test: int = 100) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    all_names = [f"{f} {l}" for f in FIRST_NAMES for l in LAST_NAMES]
    rng.shuffle(all_names)
    # Full names held out for the test set: never used in training.
    test_names, train_names = all_names[: n_test * 2], all_names[n_test * 2 :]

    train, train_sentences = [], set()
    while len(train) < n_train:
        sentence, row = make_row(rng, TRAIN_TEMPLATES, rng.choice(train_names))
        if sentence not in train_sentences:
            train_sentences.add(sentence)
            train.append(row)

    test, test_sentences = [], set()
    while len(test) < n_test:
        sentence, row = make_row(rng, TEST_TEMPLATES, rng.choice(test_names))
        if sentence not in test_sentences:
            test_sentences.add(sentence)
            test.append(row)

    assert not (train_sentences & test_sentences), "a test sentence appears in the training set"
    train_names_used = {json.loads(r["messages"][1]["content"])["name"] for r in train}
    test_names_used = {json.loads(r["messages"][1]["content"])["name"] for r in test}
    assert not (train_names_used & test_names_used), "a test name appears in the training set"
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.example_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1500, metavar="N")
    parser.add_argument("--test", type=int, default=100, metavar="M")
    args = parser.parse_args(argv)
    train, test = make_sets(args.seed, args.train, args.test)
    write_jsonl(args.out_dir / "train.jsonl", train)
    write_jsonl(args.out_dir / "test.jsonl", test)
    print(f"wrote {len(train)} rows to {args.out_dir / 'train.jsonl'}, {len(test)} to {args.out_dir / 'test.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
