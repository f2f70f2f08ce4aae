"""`input-span`: a GBNF rule that copies a run of words from the request's own text.

An extraction expert answers with values that stand in its input: a name, a city, a job. A
small model often spells such a value anew instead of copying it (the tokenizer splits a word
after a quote differently than after a space), and no fixed grammar can stop that, because the
allowed values change with every request. So a grammar file may use the rule `input-span`
without defining it; the gateway defines it for each request as:

    any run of consecutive words of the request's text (words are split at whitespace),
    without the punctuation at its two ends, and, for its last word, also that word without
    a possessive 's or cut at one of its hyphens ("Albaran-based" -> "Albaran"),
    written as it appears inside a JSON string (quotes and backslashes escaped).

The definition is linear in the number of words (two rules per word); the engine compiles it
for every new text (what that costs a request: the benchmark's section 3d, bench/grammar_copy.py).
The request's text is data: it only becomes GBNF string literals, escaped.
"""

from __future__ import annotations

import json
import unicodedata

RULE = "input-span"
# Names of the rules `rules_for` writes; a grammar file may not define rules with this prefix.
_OWN_PREFIX = RULE + "-"
MAX_WORDS = 4_096  # more words than any context this server serves holds; longer text is refused
# An example text to compile a grammar that uses the rule before any request exists.
SAMPLE_TEXT = "Ada Lovelace, 36, is a mathematician in London."


def _is_punctuation(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def strip_start(word: str) -> str:
    i = 0
    while i < len(word) and _is_punctuation(word[i]):
        i += 1
    return word[i:]


def strip_end(word: str) -> str:
    j = len(word)
    while j > 0 and _is_punctuation(word[j - 1]):
        j -= 1
    return word[:j]


def last_word_forms(word: str) -> list[str]:
    """What a span may end with, from the word that ends it (empty: the span cannot end here)."""
    core = strip_end(word)
    if not core:
        return []
    forms = {core}
    for possessive in ("'s", "\u2019s"):
        if core.endswith(possessive) and len(core) > len(possessive):
            forms.add(strip_end(core[: -len(possessive)]))
    parts = core.split("-")
    for k in range(1, len(parts)):
        forms.add(strip_end("-".join(parts[:k])))
    return sorted(f for f in forms if f)


def _literal(text: str) -> str:
    """`text` as it is written inside a JSON string, as a GBNF string literal."""
    inside_json = json.dumps(text, ensure_ascii=False)[1:-1]
    return json.dumps(inside_json, ensure_ascii=False)


def uses_input_spans(rules: dict[str, list[str]]) -> bool:
    """Whether a grammar (its rules, as server.manifest.grammar.parse_rules reads them) refers to
    `input-span` and leaves it to the gateway (does not define it)."""
    return RULE not in rules and any(RULE in body for body in rules.values())


def own_rule_clash(rules: dict[str, list[str]]) -> str | None:
    """The first rule a grammar defines under the prefix the gateway's rules use, or None."""
    return next((n for n in sorted(rules) if n.startswith(_OWN_PREFIX)), None)


def rules_for(text: str) -> str:
    """The GBNF definition of `input-span` for one request's text (ValueError: too many words, or none)."""
    words = text.split()
    if len(words) > MAX_WORDS:
        raise ValueError(f"the text has {len(words)} words; an answer copied from it allows at most {MAX_WORDS}")
    # rest-j: a span's words from position j on; it ends at j or goes on to j + 1 (built from the
    # end, so that a rule is only referred to when a span can end somewhere after it)
    rest: dict[int, str] = {}
    for j in range(len(words) - 1, -1, -1):
        alternatives = [_literal(f) for f in last_word_forms(words[j])]
        if j + 1 in rest:
            alternatives.append(f'{_literal(words[j])} " " {_OWN_PREFIX}rest-{j + 1}')
        if alternatives:
            rest[j] = f"{_OWN_PREFIX}rest-{j} ::= " + " | ".join(alternatives)
    lines: list[str] = []
    starts: list[str] = []
    for i, word in enumerate(words):
        head = strip_start(word)
        alternatives = [_literal(f) for f in last_word_forms(head)] if head else []
        if head and i + 1 in rest:
            alternatives.append(f'{_literal(head)} " " {_OWN_PREFIX}rest-{i + 1}')
        if alternatives:
            lines.append(f"{_OWN_PREFIX}start-{i} ::= " + " | ".join(alternatives))
            starts.append(f"{_OWN_PREFIX}start-{i}")
    lines.extend(rest[j] for j in sorted(rest) if j > 0)  # a span starts at a start rule, never at rest-0
    if not starts:
        raise ValueError("the text has no word an answer could copy")
    return "\n".join([f"{RULE} ::= " + " | ".join(starts), *lines])


def bind(grammar: str, text: str) -> str:
    """The grammar with `input-span` defined from `text` (ValueError: see `rules_for`)."""
    return (
        grammar.rstrip("\n") + "\n# input-span: the request's text, defined by the gateway\n" + rules_for(text) + "\n"
    )
