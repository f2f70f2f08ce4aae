"""Grammars for constrained decoding: GBNF files and the `json` grammar type.

`compile_gbnf` compiles a grammar with xgrammar, the constrained decoder vLLM uses, so a
grammar that cannot be served is found at validation time. `left_recursion` finds rules
that can derive themselves as their first symbol: xgrammar (an Earley parser) accepts
them, but GBNF engines without left-recursion support (llama.cpp's) do not, and they are
costlier to match, so they are reported.

What a grammar may cost is bounded before anything parses it: at most `MAX_GRAMMAR_BYTES`,
`MAX_GRAMMAR_RULES` rules and `MAX_GRAMMAR_NESTING` nested groups (xgrammar's compile time
grows faster than linearly with the rules, and deep groups exhaust recursive parsers), and a
compile that takes longer than `GRAMMAR_COMPILE_SECONDS` is refused. Compiling releases the
GIL, so a caller that runs this in a worker thread keeps its event loop free.
"""

from __future__ import annotations

import concurrent.futures
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from server.manifest import input_spans

MAX_GRAMMAR_BYTES = 100_000
MAX_GRAMMAR_RULES = 1_000
MAX_GRAMMAR_NESTING = 64
GRAMMAR_COMPILE_SECONDS = 30.0

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
            cycle = [start, *reversed(path[:-1]), start]
            seen_in_cycle.update(cycle)
            cycles.append(cycle)
    return cycles


@lru_cache(maxsize=4)
def _compiler(tokenizer_dir: str) -> Any:
    import xgrammar
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer))


def limits_problem(text: str) -> str | None:
    """Why `text` is too costly to parse and compile, or None."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_GRAMMAR_BYTES:
        return f"is {size} bytes, over the limit of {MAX_GRAMMAR_BYTES}"
    stripped = _strip_comments(text)
    rules = len(_RULE_HEAD.findall(stripped))
    if rules > MAX_GRAMMAR_RULES:
        return f"has {rules} rules, over the limit of {MAX_GRAMMAR_RULES}"
    depth = deepest = 0
    for token in _TOKEN.findall(stripped):
        if token == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif token == ")":
            depth -= 1
    if deepest > MAX_GRAMMAR_NESTING:
        return f"nests groups {deepest} deep, over the limit of {MAX_GRAMMAR_NESTING}"
    return None


def copies_input(text: str) -> bool:
    """Whether the grammar leaves the rule `input-span` to each request (server.manifest.input_spans)."""
    return input_spans.uses_input_spans(parse_rules(text))


_compile_pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-compile")


def compile_gbnf(text: str, tokenizer_dir: Path | None, time_limit: float = GRAMMAR_COMPILE_SECONDS) -> GrammarReport:
    """Parse (and, with a tokenizer, compile) a GBNF grammar with xgrammar, within the limits."""
    problem = limits_problem(text)
    if problem is not None:
        return GrammarReport(False, f"refused: the grammar {problem}")
    rules = parse_rules(text)
    clash = input_spans.own_rule_clash(rules)
    if clash is not None:
        return GrammarReport(False, f"refused: rule {clash!r} — names starting with 'input-span-' are the gateway's")
    copies = input_spans.uses_input_spans(rules)
    if copies:  # compiled here with an example text; each request defines the rule from its own text
        text = input_spans.bind(text, input_spans.SAMPLE_TEXT)
    try:
        future = _compile_pool.submit(_compile, text, tokenizer_dir)
        result: GrammarReport = future.result(timeout=time_limit)
        if copies and result.ok:
            note = "; its rule input-span copies words from each request's text"
            return GrammarReport(True, result.message + note, result.left_recursive)
        return result
    except concurrent.futures.TimeoutError:
        # the compile runs on in its worker (xgrammar cannot be interrupted) and is discarded
        return GrammarReport(False, f"refused: the grammar did not compile within {time_limit:g} s")
    except RecursionError:
        return GrammarReport(False, "refused: the grammar nests too deeply to parse")


def _compile(text: str, tokenizer_dir: Path | None) -> GrammarReport:
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


# Bounds of numbers in a JSON schema: xgrammar builds integer ranges on 64-bit integers.
_MAX_SCHEMA_NUMBER = 2**63 - 1
_NUMERIC_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def json_schema_problem(schema: Any) -> str | None:
    """Why a request's JSON schema cannot constrain generation, or None: not a valid JSON
    Schema (draft 2020-12), a `$ref` that points nowhere or only at itself, a numeric bound
    outside 64-bit integers, or a schema xgrammar (vLLM's structured-output backend) refuses."""
    import json
    import math

    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, (dict, bool)):
        return "a JSON schema is an object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        return f"not a valid JSON Schema at {where}: {exc.message[:200]}"
    except RecursionError:
        return "the JSON schema nests too deeply"
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in _NUMERIC_KEYWORDS:
                value = node.get(key)
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and (not math.isfinite(value) or abs(value) > _MAX_SCHEMA_NUMBER)
                ):
                    return f"{key} {value!r} is outside the 64-bit integer range"
            ref = node.get("$ref")
            if isinstance(ref, str):
                problem = _ref_problem(schema, node, ref)
                if problem is not None:
                    return problem
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if isinstance(schema, dict):
        import xgrammar

        try:
            xgrammar.Grammar.from_json_schema(json.dumps(schema))
        except Exception as exc:  # xgrammar raises RuntimeError with the converter's message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = re.sub(r"^\[[0-9:]+\] \S+:\d+: ", "", first)
            return f"the JSON schema cannot be turned into a grammar: {first[:200]}"
    return None


def _resolve_local(schema: Any, ref: str) -> Any:
    if ref == "#":
        return schema
    if not ref.startswith("#/"):
        return None
    node = schema
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _ref_problem(schema: Any, node: dict[str, Any], ref: str) -> str | None:
    if not ref.startswith("#"):
        return f"$ref {ref[:100]!r}: only references inside the schema ('#...') are supported"
    seen: list[int] = [id(node)]
    target: Any = node
    while isinstance(target, dict) and set(target) == {"$ref"}:  # a schema that is only a reference
        target = _resolve_local(schema, target["$ref"]) if isinstance(target["$ref"], str) else None
        if target is None:
            return f"$ref {ref[:100]!r} points nowhere in the schema"
        if id(target) in seen:
            return f"$ref {ref[:100]!r} refers only to itself: no value can match"
        seen.append(id(target))
    if _resolve_local(schema, ref) is None:
        return f"$ref {ref[:100]!r} points nowhere in the schema"
    return None
