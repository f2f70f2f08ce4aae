"""Seeded data for the example expert `contact-extract`: English text about one person -> compact JSON.

    python -m trainer.example_data OUT_DIR [--seed 0] [--train 3000] [--dev 150] [--wide 3000]
        [--blind1 300] [--broad 6000] [--test 300]

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

Training rows come in three passes. The core pass (`--train`) uses the core sentence shapes and
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
So no part of the dev split is blind, though its sentences and vocabulary never occur in training.

The test split (`--test`) is blind: its shapes and words were written with the broad pass, before
any expert trained on it was run, and it was never read against an expert's answers before it was
scored. The dev rows are drawn right after the core rows, and the first blind split and the test
split each from their own seeded generator, so no held-out row depends on `--wide` or `--broad`;
`--wide 0 --broad 0` gives the core rows alone.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
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
    # whole first names and surnames from many languages, drawn for half the people when given
    first_names: tuple[str, ...] = ()
    surnames: tuple[str, ...] = ()


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

# The first blind split: shapes and words written after the first two error analyses; scored once
# (2026-11-29, lora 78.0 %), its misses read, and since then part of the dev split.
BLIND1_VOCAB = Vocabulary(
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

# the first blind split's shapes (see BLIND1_VOCAB)
BLIND1_TEMPLATES = [
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

# The broad pass: texts composed from clauses in any order, names from many languages, many titles
# (with and without a period), numbers beside the age, more jobs and cities. Written after the first
# blind split (now part of the dev split) was scored: its misses were unseen titles kept in the name,
# a count next to the age taken for the age, and names, cities and jobs copied with a letter lost.
BROAD_FIRST_NAMES = (
    "Aiko",
    "Amara",
    "Bjørn",
    "Chiara",
    "Dmitri",
    "Emeka",
    "Fatima",
    "Giulia",
    "Hiroshi",
    "Ingrid",
    "Jamal",
    "Kalani",
    "Leilani",
    "Mateus",
    "Nadia",
    "Oluwaseun",
    "Priya",
    "Rafael",
    "Saoirse",
    "Tomás",
    "Ulla",
    "Valentina",
    "Wei",
    "Ximena",
    "Yusuf",
    "Zainab",
    "Anders",
    "Beatriz",
    "Conor",
    "Darya",
    "Elif",
    "Farhan",
    "Gwen",
    "Hamid",
    "Imogen",
    "Jun",
    "Kofi",
    "Lucía",
    "Magnus",
    "Noor",
    "Orla",
    "Pavel",
    "Rosa",
    "Sven",
    "Thandiwe",
    "Uriel",
    "Vikram",
    "Wanjiru",
    "Yara",
    "Zoë",
    "Mary-Jane",
    "Jean-Luc",
    "Anne-Marie",
    "Kwame",
    "Siobhan",
    "Łukasz",
    "Renée",
    "Joaquín",
    "Maëlle",
    "Þóra",
)
BROAD_SURNAMES = (
    "Okafor",
    "Nakamura",
    "Rossi",
    "Kowalski",
    "Haddad",
    "Fernández",
    "Lindqvist",
    "Mensah",
    "Petrov",
    "Chaudhry",
    "O'Brien",
    "McAllister",
    "van Dijk",
    "de la Cruz",
    "Al-Farsi",
    "Nguyen",
    "Schmidt",
    "Oyelaran",
    "Kaur",
    "Moreau",
    "Papadopoulos",
    "Sørensen",
    "Yilmaz",
    "Castillo",
    "Abebe",
    "Takahashi",
    "Brennan",
    "Quispe",
    "Horvath",
    "Adeyemi",
    "Smith-Jones",
    "D'Souza",
    "Ó Súilleabháin",
    "Novák",
    "Zhang",
    "Bianchi",
    "Mwangi",
    "Delacroix",
    "Ivanova",
    "Santos",
)

# Open vocabulary for the broad pass: many English words at the start of a city or a job. A word
# that is one token after a space ("Glen", "seasonal") is spelt in other tokens right after the
# answer's opening quote; the dev split showed an expert trained on a few such words copying the
# spaced token or a look-alike word ("southern" for "seasonal") for ones it had not seen.
BROAD_CITY_HEADS = (
    *TRAIN_VOCAB.city_heads,
    "Santa",
    "Los",
    "El",
    "St.",
    "Great",
    "Old",
    "West",
    "South",
    "Green",
    "Stone",
    "Mill",
    "Church",
    "King's",
    "Queen's",
    "High",
    "Long",
    "Red",
    "White",
    "Black",
    "Silver",
    "Golden",
    "Castle",
    "Market",
    "Nether",
    "Middle",
    "Far",
    "Royal",
    "Bishop's",
    "Abbey",
    "Point",
    "Rock",
    "River",
    "Cross",
    "Wood",
    "Marsh",
    "Iron",
    "Sea",
    "Sandy",
    "Hill",
    "Porto",
    "Villa",
    "Bad",
    "Nova",
    "Santo",
    "Monte",
    "Puerto",
    "Ciudad",
    "Novo",
    "Sankt",
    "Le",
    "Kota",
    "Ras",
    "Oak",
    "Elm",
    "Ash",
    "Bell",
    "Fair",
    "Spring",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
)
BROAD_CITY_ROOTS = (
    *TRAIN_VOCAB.city_roots,
    "Harrowgate",
    "Quenby",
    "Tollmarsh",
    "Aldebrook",
    "Winterfold",
    "Caldera",
    "Ravensholm",
    "Oakhaven",
    "Milbury",
    "Stonebridge",
    "Valverde",
    "Torremar",
    "Nordvik",
    "Ellesmere",
    "Brackwater",
    "Sundale",
    "Falls",
    "Springs",
    "Harbour",
    "Junction",
    "Crossing",
    "Heights",
    "Meadows",
    "Ridge",
    "Hollow",
    "Vale",
)
BROAD_JOB_MODIFIERS = (
    *WIDE_TRAIN_VOCAB.job_modifiers,
    "sous",
    "master",
    "qualified",
    "veteran",
    "remote",
    "contract",
    "regional",
    "district",
    "weekend",
    "experienced",
    "licensed",
    "registered",
    "independent",
    "visiting",
    "resident",
    "consultant",
    "acting",
    "graduate",
    "novice",
    "expert",
    "first-year",
    "hobby",
    "community",
    "school",
    "county",
    "airport",
    "hotel",
    "factory",
    "museum",
    "theatre",
    "agency",
    "in-house",
    "on-site",
    "overnight",
    "evening",
    "morning",
    "private",
    "public",
    "specialist",
    "general",
    "bilingual",
    "accredited",
    "salaried",
    "unpaid",
    "student",
    "probationary",
    "supervising",
    "managing",
    "executive",
    "young",
    "former",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
)
BROAD_JOBS = (
    *TRAIN_VOCAB.jobs,
    "police officer",
    "web developer",
    "nursery teacher",
    "hairdresser",
    "barista",
    "midwife",
    "farmer",
    "fisherman",
    "actuary",
    "pastry chef",
    "civil engineer",
    "lab technician",
    "flight attendant",
    "real estate agent",
    "personal trainer",
    "mail carrier",
    "chemist",
    "ship captain",
    "sound engineer",
    "video editor",
    "dog groomer",
    "tax advisor",
    "gardener",
    "butcher",
    "potter",
    "violinist",
    "statistician",
    "crane operator",
    "receptionist",
    "UX researcher",
    "roofer",
    "bricklayer",
    "tiler",
    "glazier",
    "upholsterer",
    "cobbler",
    "cashier",
    "waiter",
    "bartender",
    "cook",
    "janitor",
    "caretaker",
    "porter",
    "courier",
    "taxi driver",
    "lorry driver",
    "train conductor",
    "deckhand",
    "miner",
    "forester",
    "park ranger",
    "botanist",
    "astronomer",
    "physicist",
    "microbiologist",
    "epidemiologist",
    "surgeon",
    "anaesthetist",
    "cardiologist",
    "psychiatrist",
    "psychologist",
    "counsellor",
    "dietitian",
    "optometrist",
    "audiologist",
    "podiatrist",
    "chiropractor",
    "care worker",
    "nanny",
    "childminder",
    "tutor",
    "lecturer",
    "headteacher",
    "museum curator",
    "sculptor",
    "painter",
    "illustrator",
    "animator",
    "composer",
    "drummer",
    "singer",
    "dancer",
    "actor",
    "stage manager",
    "film director",
    "screenwriter",
    "novelist",
    "poet",
    "editor",
    "proofreader",
    "bookseller",
    "shopkeeper",
    "greengrocer",
    "fishmonger",
    "brewer",
    "winemaker",
    "cheesemaker",
    "shepherd",
    "groundskeeper",
    "landscaper",
    "arborist",
    "plasterer",
    "security guard",
    "bailiff",
    "judge",
    "solicitor",
    "barrister",
    "paralegal",
    "notary",
    "auditor",
    "banker",
    "loan officer",
    "programmer",
    "systems administrator",
    "network engineer",
    "data scientist",
    "game designer",
    "product manager",
    "project manager",
    "office manager",
    "secretary",
    "clerk",
    "diplomat",
    "customs officer",
    "soldier",
    "sailor",
    "coastguard",
    "machinist",
    "toolmaker",
)
BROAD_VOCAB = Vocabulary(
    first_names=BROAD_FIRST_NAMES,
    surnames=BROAD_SURNAMES,
    onsets=(*TRAIN_VOCAB.onsets, "cl", "fl", "gl", "pr", "sl", "sp", "sw", "th", "wr", "kl", "sk", "ts"),
    vowels=(*TRAIN_VOCAB.vowels, "oo", "ay", "eu", "y"),
    codas=(*TRAIN_VOCAB.codas, "nt", "ld", "rd", "ng", "t", "v"),
    accented=(*TRAIN_VOCAB.accented, "à", "ï", "ú", "ë"),
    surname_prefixes=(*TRAIN_VOCAB.surname_prefixes, "Di ", "St. ", "Ó ", "al-", "Ben ", "dos "),
    city_heads=BROAD_CITY_HEADS,
    city_roots=BROAD_CITY_ROOTS,
    job_modifiers=BROAD_JOB_MODIFIERS,
    jobs=BROAD_JOBS,
    titles=(
        *TRAIN_VOCAB.titles,
        "Dr",
        "Ms",
        "Mr",
        "Sir",
        "Dame",
        "Lady",
        "Lord",
        "Rev.",
        "Fr.",
        "Capt.",
        "Col.",
        "Lt.",
        "Herr",
        "Frau",
        "Mme",
        "Señor",
        "Coach",
    ),
)

# The broad pass's texts are composed, not templated: a person's age, job and city clauses in any
# order, with up to two distractor clauses (another city, a year, a count) among them, as one
# sentence, two sentences, or a labelled field list in any order.
BROAD_AGE = (
    "is {age}",
    "is {age} years old",
    "is aged {age}",
    "just turned {age}",
    "turned {age} in {year}",
    "is {age} and has {count} grandchildren",
    "is {age}, with {count} kids at home",
    "is {age} and owns {count} bikes",
    "turned {age} and threw a party for {count} guests",
)
BROAD_JOB = (
    "works as {a_job}",
    "is {a_job}",
    "earns a living as {a_job}",
    "is employed as {a_job}",
    "has been {a_job} since {year}",
    "has worked as {a_job} for {count} years",
    "trained as {a_job}",
)
BROAD_CITY = (
    "lives in {city}",
    "is based in {city}",
    "has a home in {city}",
    "lives and works in {city}",
    "lives in the town of {city}",
    "has lived in {city} since {year}",
)
BROAD_EXTRA = (
    "grew up in {other}",
    "was born in {other} in {year}",
    "visits {other} {count} times a year",
    "has {count} siblings",
    "spent {count} years in {other}",
    "speaks {count} languages",
    "studied in {other}",
    "often travels to {other}",
)
BROAD_OPENERS = ("{name}", "Meet {name}, who", "This is {name}, who", "Our friend {name}", "Everyone knows {name}, who")
BROAD_LABELS = (
    ("name", ("Name", "Full name", "Who", "Person")),
    ("age", ("Age", "Aged", "Years old")),
    ("city", ("City", "Home", "Lives in", "Location", "Residence")),
    ("job", ("Job", "Occupation", "Role", "Work", "Profession")),
)
BROAD_LABEL_VALUES = {"name": "{name}", "age": "{age}", "city": "{city}", "job": "{job}"}


def _joined(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def broad_shape(rng: random.Random) -> str:
    """One composed sentence shape of the broad pass (placeholders as in the templates)."""
    style = rng.random()
    if style < 0.2:  # a labelled field list in any order, sometimes with a distractor field
        fields = [(rng.choice(labels), BROAD_LABEL_VALUES[key]) for key, labels in BROAD_LABELS]
        if rng.random() < 0.4:
            fields.append(rng.choice([("Born in", "{other}"), ("Since", "{year}"), ("Children", "{count}")]))
        rng.shuffle(fields)
        sep, join = rng.choice([(": ", ". "), (": ", "; "), (" - ", " | "), (": ", ", "), (" = ", "; ")])
        return join.join(label + sep + value for label, value in fields) + ("." if join == ". " else "")
    clauses = [rng.choice(BROAD_AGE), rng.choice(BROAD_JOB), rng.choice(BROAD_CITY)]
    clauses += rng.sample(BROAD_EXTRA, rng.choice((0, 0, 1, 1, 2)))
    rng.shuffle(clauses)
    opener = rng.choice(BROAD_OPENERS)
    if style < 0.6 or len(clauses) < 2:
        return f"{opener} {_joined(clauses)}."
    cut = rng.randint(1, len(clauses) - 1)
    subject = rng.choice(("She", "He", "{name_short}"))
    return f"{opener} {_joined(clauses[:cut])}. {subject} {_joined(clauses[cut:])}."


# The test split: shapes and words written after the broad pass and before the expert trained on it
# was run; never used to guide training or read against the expert's answers before it was scored.
TEST_FIRST_NAMES = (
    "Adaeze",
    "Astrid",
    "Mehmet",
    "Keiko",
    "Ngozi",
    "Bartosz",
    "Inés",
    "Tariq",
    "Ailbhe",
    "Mirela",
    "Rohan",
    "Margaux",
    "Thiago",
    "Esi",
    "Lorcan",
    "Anouk",
    "Dagny",
    "Ravi",
    "Hyun-woo",
    "Chloé",
)
TEST_SURNAMES = (
    "Eze",
    "Gallagher",
    "Lindberg",
    "Kapoor",
    "Dubois",
    "Wiśniewska",
    "Ferreira",
    "MacLeod",
    "O'Donnell",
    "Haugen",
    "Suzuki",
    "Achterberg",
    "Nkemelu",
    "Grünewald",
    "Ruiz-Tagle",
    "Costa",
    "Ahn",
    "ten Brink",
    "Oyelowo",
    "Marchetti",
)
TEST_VOCAB = Vocabulary(
    onsets=("ph", "sc", "x", "vl", "kn", "tw"),
    vowels=("a", "e", "i", "o", "u", "au", "ue"),
    codas=("", "ft", "m", "sh", "z", "p"),
    accented=("â", "ê", "û", "ì"),
    surname_prefixes=("Van der ", "Ní ", "La ", "Abu "),
    city_heads=("Lower", "Cape", "Isla", "Val", ""),
    city_roots=("Thornbury", "Quarrington", "Solmaris", "Kettleby", "Azulmar", "Pinecrest", "Draycott", "Villafranca"),
    job_modifiers=("interim", "staff", "travelling", "hospital-based", ""),
    jobs=(
        "speech therapist",
        "glassblower",
        "insurance broker",
        "sign language interpreter",
        "tram driver",
        "archivist",
        "blacksmith",
        "orthodontist",
        "event planner",
        "saddler",
        "ecologist",
        "lifeguard",
        "copywriter",
    ),
    titles=("Sgt.", "Maj.", "Sra.", "Mlle"),
    first_names=TEST_FIRST_NAMES,
    surnames=TEST_SURNAMES,
)
TEST_TEMPLATES = [
    "{name} lives in {city} with {count} cats and works as {a_job}; {name_short} is {age}.",
    "At {age} years of age, {name} is {a_job} in {city}.",
    "{name} left {other} at {count} and is now {a_job} in {city}, aged {age}.",
    "For {count} years now, {name} ({age}) has worked as {a_job} in {city}.",
    "{name} celebrates {age} this year and teaches {count} classes a week as {a_job} in {city}.",
    "Contact: {name}. Based: {city}. Age: {age}. Profession: {job}.",
    "We spoke to {name}, {a_job} from {city}. The {age}-year-old has visited {other} {count} times.",
    "{name} lives in {city} but drives {count} hours to {other} each week; the {job} is {age}.",
    "Hi, I'm {name}! I'm {age}, I live in {city} and I work as {a_job}.",
    "{city} resident {name}, {age}, is {a_job} with {count} years of experience.",
    "{name}, {a_job}, worked in {other} until {year} and now lives in {city}; {name_short} is {age}.",
    "Age: {age} | Name: {name} | Town: {city} | Trade: {job}",
    "Known across {city} as a reliable {job}, {name} turned {age} last month.",
    "Profile - {name}; {age}; {job}; lives in {city}; born in {other}.",
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


def city(rng: random.Random, v: Vocabulary) -> str:
    head = rng.choice(v.city_heads)
    root = rng.choice(v.city_roots) if rng.random() < 0.6 else word(rng, v, rng.randint(2, 3))
    return f"{head} {root}" if head else root


def job(rng: random.Random, v: Vocabulary) -> str:
    modifier = rng.choice(v.job_modifiers)
    base = rng.choice(v.jobs)
    return f"{modifier} {base}" if modifier else base


Shapes = list[str] | Callable[[random.Random], str]  # a list to draw from, or a composer


def make_row(
    rng: random.Random, shapes: Shapes, v: Vocabulary, counts: tuple[int, int] = (2, 9)
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
    text = shape.format(
        name=written_name,
        name_short=short,
        age=written_age,
        city=home,
        other=other,
        job=work,
        a_job=f"{article(work)} {work}",
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
    v: Vocabulary,
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
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, dev, test).

    train: `n_train` core rows, then `n_wide` wide rows, then `n_broad` broad rows.
    dev: `n_dev` dev rows (drawn right after the core rows, from the same generator), then
    `n_blind1` rows of the first blind split (its own generator).
    test: `n_test` rows from their own shapes, words and generator.
    Each held-out part shares no name, city, job or text with any training pass (filtered where a
    pass is drawn after it, asserted where before), and the test split none with the dev split.
    So the dev and test splits do not depend on `n_wide` or `n_broad`, nor the core and wide rows
    on the held-out splits' sizes.
    """
    rng = random.Random(seed)
    core, core_seen = _draw(rng, n_train, TRAIN_TEMPLATES, TRAIN_VOCAB)
    dev, dev_seen = _draw(rng, n_dev, DEV_TEMPLATES, DEV_VOCAB, fields_of=(core_seen,))
    blind1, blind1_seen = _draw(
        random.Random(f"{seed}-test"), n_blind1, BLIND1_TEMPLATES, BLIND1_VOCAB, fields_of=(core_seen, dev_seen)
    )
    test, test_seen = _draw(
        random.Random(f"{seed}-test2"),
        n_test,
        TEST_TEMPLATES,
        TEST_VOCAB,
        fields_of=(core_seen, dev_seen, blind1_seen),
        counts=(2, 40),
    )
    wide, wide_seen = _draw(
        random.Random(f"{seed}-wide"),
        n_wide,
        WIDE_TEMPLATES,
        WIDE_TRAIN_VOCAB,
        texts_of=(core_seen, dev_seen),
        fields_of=(dev_seen,),
    )
    broad, broad_seen = _draw(
        random.Random(f"{seed}-broad"),
        n_broad,
        broad_shape,
        BROAD_VOCAB,
        texts_of=(core_seen, wide_seen),
        fields_of=(dev_seen, blind1_seen, test_seen),
        counts=(2, 60),
    )
    for held_out, part in ((dev_seen, "dev"), (blind1_seen, "first blind"), (test_seen, "test")):
        for trained in (core_seen, wide_seen, broad_seen):
            assert not _shares_any(trained, held_out), f"a {part} row shares a text or field with training"
    assert not _shares_any(test_seen, dev_seen) and not _shares_any(test_seen, blind1_seen)
    return core + wide + broad, dev + blind1, test


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
    parser.add_argument("--test", type=int, default=300, metavar="M", help="rows of the test split (default 300)")
    args = parser.parse_args(argv)
    train, dev, test = make_sets(
        args.seed, args.train, args.dev, args.wide, args.test, n_blind1=args.blind1, n_broad=args.broad
    )
    splits = {"train": train, "dev": dev, "test": test}
    for name, rows in splits.items():
        write_jsonl(args.out_dir / f"{name}.jsonl", rows)
    print("wrote " + ", ".join(f"{len(rows)} rows to {args.out_dir / name}.jsonl" for name, rows in splits.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
