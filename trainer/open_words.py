"""The open word list of the contact-extract data's spelling pass (`trainer/open_words.txt`).

    python -m trainer.open_words [MODEL_DIR]

rewrites trainer/open_words.txt from the base model's tokenizer: the lowercase ASCII words of 5 to
12 letters that it holds as one token after a space (" hospice") and spells in two tokens or more
after a quote ('"hospice'), which is where a value opens in a JSON answer. An expert that copies
such a word from the text into its answer has to spell it anew; the spelling pass gives it
thousands of them to practise on. Words on a short list of unwanted stems are left out, and
example_data leaves out every word of a held-out vocabulary.
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = Path(__file__).with_name("open_words.txt")
HEADER = "# python -m trainer.open_words: words the tokenizer spells in other tokens after a quote than after a space\n"
UNWANTED = (
    "fuck", "shit", "cunt", "nigg", "fagg", "whore", "slut", "rape", "bitch", "porn", "penis", "vagin",
    "dick", "pussy", "cock", "anal", "sex", "nazi", "hitler", "genocid", "terror", "kill", "murder",
    "suicid", "masturb", "orgasm", "erotic", "nude", "naked", "boob", "breast", "tits", "semen", "sperm",
    "bastard", "damn", "crap", "abuse", "abusi", "assault", "incest", "pedo", "paedo", "molest", "slave",
    "rapist", "racis", "bomb", "jihad", "drunk", "cocaine", "heroin", "weapon", "gun", "corpse", "dead",
)  # fmt: skip


def open_words(tokenizer) -> list[str]:
    """The words of `tokenizer`'s vocabulary that open a JSON value in other tokens than in text."""
    vocab = tokenizer.get_vocab()
    spaced = sorted({k[1:] for k in vocab if k.startswith("\u0120")})
    words = [w for w in spaced if w.isascii() and w.isalpha() and w.islower() and 5 <= len(w) <= 12]
    words = [w for w in words if not any(stem in w for stem in UNWANTED)]
    return [w for w in words if len(tokenizer.tokenize('"' + w)) > 2]


def load() -> tuple[str, ...]:
    lines = WORDS.read_text(encoding="utf-8").splitlines()
    return tuple(line for line in lines if line and not line.startswith("#"))


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    args = sys.argv[1:] if argv is None else argv
    model = args[0] if args else "HuggingFaceTB/SmolLM2-135M-Instruct"
    words = open_words(AutoTokenizer.from_pretrained(model))
    WORDS.write_text(HEADER + "".join(w + "\n" for w in words), encoding="utf-8")
    print(f"wrote {len(words)} words to {WORDS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
