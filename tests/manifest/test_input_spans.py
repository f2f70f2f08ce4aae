"""`input-span`: the rule a grammar leaves to each request, a run of words copied from its text.
Checked with xgrammar's own matcher (the decoder vLLM uses), not by reading the rule text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xgrammar.testing import _is_grammar_accept_string

from server.manifest import input_spans
from server.manifest.grammar import compile_gbnf, copies_input
from server.manifest.sampling import Grammar

pytestmark = pytest.mark.unit

COPY = 'root ::= "{\\"v\\": \\"" input-span "\\"}"\n'


def accepts(grammar: str, text: str) -> bool:
    return bool(_is_grammar_accept_string(grammar, text))


def answer(value: str) -> str:
    return json.dumps({"v": value}, ensure_ascii=False, separators=(",", ":")).replace('":"', '": "', 1)


def test_a_run_of_words_is_accepted_and_a_respelt_word_is_not():
    text = "Extract: Much Kilbarrack's own Gwenaëlle Phethqusqìm, 73, is an orchestral bell ringer."
    g = input_spans.bind(COPY, text)
    for value in ["Much Kilbarrack", "Gwenaëlle Phethqusqìm", "orchestral bell ringer", "73", "Extract"]:
        assert accepts(g, answer(value)), value
    for value in ["instrumental bell ringer", "orchestra bell ringer", "Kilbarrack Gwenaëlle", "", "Much  Kilbarrack"]:
        assert not accepts(g, answer(value)), value


def test_edges_lose_punctuation_and_the_last_word_its_possessive_or_hyphenated_tail():
    g = input_spans.bind(COPY, "(Ciudad Albaran-based) \"Bob\" O'Neil-Smith, Kilbarrack's.")
    for value in ["Ciudad Albaran", "Ciudad Albaran-based", "Bob", "O'Neil", "O'Neil-Smith", "Kilbarrack"]:
        assert accepts(g, answer(value)), value
    # inside a span the words keep their punctuation; at its ends they lose it
    assert accepts(g, answer('Albaran-based) "Bob'))
    for value in ["(Ciudad", "Smith", "Kilbarrack's.", "based"]:
        assert not accepts(g, answer(value)), value


def test_quotes_and_backslashes_are_written_as_json_escapes():
    g = input_spans.bind(COPY, 'say a"b and c\\d')
    assert accepts(g, '{"v": "a\\"b and c\\\\d"}')
    assert json.loads('{"v": "a\\"b and c\\\\d"}')["v"] == 'a"b and c\\d'
    assert not accepts(g, '{"v": "a"b"}')


def test_text_without_words_or_with_too_many_is_refused():
    for text in ["", "   ", "-- ... !"]:
        with pytest.raises(ValueError, match="no word"):
            input_spans.rules_for(text)
    with pytest.raises(ValueError, match=f"at most {input_spans.MAX_WORDS}"):
        input_spans.rules_for("a " * (input_spans.MAX_WORDS + 1))
    assert input_spans.rules_for("a " * input_spans.MAX_WORDS)


def test_the_definition_grows_linearly_with_the_text():
    small = input_spans.rules_for("word " * 100)
    large = input_spans.rules_for("word " * 1000)
    assert 9 < len(large) / len(small) < 11


def test_only_a_reference_the_grammar_does_not_define_is_left_to_the_request():
    assert copies_input(COPY)
    assert not copies_input('root ::= input-span\ninput-span ::= "x"\n')  # defined by the file: the file's
    assert not copies_input('root ::= "input-span"  # input-span in a comment\n')
    assert not copies_input('root ::= my-input-span\nmy-input-span ::= "x"\n')
    assert Grammar(COPY).for_text("anything").text == COPY  # a Grammar that does not copy is left alone
    bound = Grammar(COPY, copies_input=True).for_text("red green")
    assert not bound.copies_input and accepts(bound.text, answer("red green"))


def test_compiling_a_copying_grammar_says_what_the_rule_does_and_refuses_the_gateways_names():
    report = compile_gbnf(COPY, None)
    assert report.ok and "input-span copies words from each request's text" in report.message
    clash = compile_gbnf(COPY + 'input-span-rest-0 ::= "x"\n', None)
    assert not clash.ok and "input-span-rest-0" in clash.message
    undefined = compile_gbnf('root ::= "{" nowhere "}"\n', None)
    assert not undefined.ok  # any other undefined rule is still the file's error


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80))
def test_any_text_gives_a_grammar_that_compiles_and_copies_its_words(text):
    try:
        grammar = input_spans.bind(COPY, text)
    except ValueError:
        assert not any(input_spans.last_word_forms(w) for w in text.split())
        return
    words = [f for f in (input_spans.last_word_forms(input_spans.strip_start(w)) for w in text.split()) if f]
    assert words
    for forms in words[:3]:  # a one-word span, as the first word of the text and of the span
        assert accepts(grammar, '{"v": ' + json.dumps(forms[0], ensure_ascii=False) + "}"), (text, forms)
