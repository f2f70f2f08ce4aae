"""Grammars for constrained decoding: GBNF files and the `json` grammar type.

`compile_gbnf` compiles a grammar with xgrammar, the constrained decoder vLLM uses, so a
grammar that cannot be served is found at validation time. `left_recursion` finds rules
that can derive themselves as their first symbol: xgrammar (an Earley parser) accepts
them, but GBNF engines without left-recursion support (llama.cpp's) do not, and they are
costlier to match, so they are reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

_RULE_HEAD = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)\s*::=", re.M)
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"'  # string literal
    r"|\[(?:\\.|[^\]\\])*\]"  # character class
    r"|[A-Za-z][A-Za-z0-9_-]*"  # rule reference
    r"|\{[0-9,\s]*\}"  # repetition range
    r"|[()|?*+.]"
)


@dataclass(frozen=True)
class GrammarReport:
    ok: bool
    message: str
    left_recursive: tuple[str, ...] = ()


def _strip_comments(text: str) -> str:
    out = []
    for line in text.splitlines():
        # a '#' outside quotes and brackets starts a comment
        in_str = in_cls = False
        cut = len(line)
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "\\":
                i += 2
                continue
            if ch == '"' and not in_cls:
                in_str = not in_str
            elif ch == "[" and not in_str:
                in_cls = True
            elif ch == "]" and not in_str:
                in_cls = False
            elif ch == "#" and not in_str and not in_cls:
                cut = i
                break
            i += 1
        out.append(line[:cut])
    return "\n".join(out)


def parse_rules(text: str) -> dict[str, list[str]]:
    """Rule name -> its body as tokens (enough structure to reason about first symbols)."""
    text = _strip_comments(text)
    heads = list(_RULE_HEAD.finditer(text))
    rules: dict[str, list[str]] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        rules[m.group(1)] = _TOKEN.findall(text[m.end() : end])
    return rules


def _alternatives(tokens: list[str]) -> list[list[Any]]:
    """Split a token list into alternatives of items; an item is a token or (group, op)."""
    pos = 0

    def seq() -> list[list[Any]]:
        nonlocal pos
        alts: list[list[Any]] = [[]]
        while pos < len(tokens):
            t = tokens[pos]
            if t == ")":
                return alts
            pos += 1
            if t == "|":
                alts.append([])
            elif t == "(":
                inner = seq()
                pos += 1  # ')'
                alts[-1].append(("group", inner))
            elif t in "?*+" or t.startswith("{"):
                if alts[-1]:
                    alts[-1][-1] = ("op", alts[-1][-1], t)
            else:
                alts[-1].append(t)
        return alts

    return seq()


def left_recursion(text: str) -> list[list[str]]:
    """Cycles of rules that reach themselves through first symbols, e.g. [expr, cmp, expr]."""
    rules = parse_rules(text)
    parsed = {name: _alternatives(body) for name, body in rules.items()}
    nullable: set[str] = set()

    def item_nullable(item: Any) -> bool:
        if isinstance(item, tuple):
            if item[0] == "op":
                op = item[2]
                return op in ("?", "*") or op.startswith("{0") or item_nullable(item[1])
            return any(all(item_nullable(x) for x in alt) for alt in item[1])
        if item.startswith('"'):
            return item == '""'
        if item.startswith("[") or item == ".":
            return False
        return item in nullable

    changed = True
    while changed:
        changed = False
        for name, alts in parsed.items():
            if name not in nullable and any(all(item_nullable(x) for x in alt) for alt in alts):
                nullable.add(name)
                changed = True

    def firsts(alts: list[list[Any]]) -> set[str]:
        out: set[str] = set()
        for alt in alts:
            for item in alt:
                out |= first_of(item)
                if not item_nullable(item):
                    break
        return out

    def first_of(item: Any) -> set[str]:
        if isinstance(item, tuple):
            return first_of(item[1]) if item[0] == "op" else firsts(item[1])
        if item in parsed:
            return {item}
        return set()

    graph = {name: firsts(alts) for name, alts in parsed.items()}
    cycles: list[list[str]] = []
    seen_in_cycle: set[str] = set()
    for start in graph:
        if start in seen_in_cycle:
            continue
        # shortest path start -> ... -> start
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        visited = {start}
        while frontier and found is None:
            nxt = []
            for node in frontier:
                for succ in graph.get(node, ()):
                    if succ == start:
                        found = node
                        break
                    if succ not in visited:
                        visited.add(succ)
                        prev[succ] = node
                        nxt.append(succ)
                if found is not None:
                    break
            frontier = nxt
        if found is not None:
            path = [found]
            while path[-1] != start:
                path.append(prev[path[-1]])
            cycle = [start] + list(reversed(path[:-1])) + [start]
            seen_in_cycle.update(cycle)
            cycles.append(cycle)
    return cycles


@lru_cache(maxsize=4)
def _compiler(tokenizer_dir: str) -> Any:
    import xgrammar
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer))


def compile_gbnf(text: str, tokenizer_dir: Path | None) -> GrammarReport:
    """Parse (and, with a tokenizer, compile) a GBNF grammar with xgrammar."""
    import xgrammar

    cycles = left_recursion(text)
    note = ""
    if cycles:
        shown = "; ".join(" → ".join(c) for c in cycles[:3])
        more = f" (+{len(cycles) - 3} more)" if len(cycles) > 3 else ""
        note = (
            f"; left-recursive: {shown}{more} — xgrammar accepts left recursion, "
            "GBNF engines without it (llama.cpp) reject this grammar"
        )
    try:
        grammar = xgrammar.Grammar.from_ebnf(text)
        if tokenizer_dir is not None:
            _compiler(str(tokenizer_dir)).compile_grammar(grammar)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the parser's message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"^\[[0-9:]+\] \S+:\d+: ", "", first)  # drop xgrammar's time and source location
        return GrammarReport(
            False, f"does not compile with xgrammar: {first}{note}", tuple(" → ".join(c) for c in cycles)
        )
    what = (
        "compiles with xgrammar"
        if tokenizer_dir is not None
        else "parses with xgrammar (no tokenizer to compile against)"
    )
    return GrammarReport(True, what + note, tuple(" → ".join(c) for c in cycles))
