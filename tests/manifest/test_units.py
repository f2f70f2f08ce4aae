"""Unit tests of pure helpers: runtime hints (server/hints.py), sampling merge (server/sampling.py)
and GBNF left-recursion analysis (server/grammar.py)."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest

from server.manifest.artifacts import inside
from server.manifest.grammar import left_recursion, parse_rules
from server.manifest.hints import CPU_ATTENTION, engine_wide_diff, plan_engine, requests_of
from server.manifest.sampling import SERVER_DEFAULTS, expert_defaults, header_value, resolve
from server.manifest.schema import Decoding, Runtime

pytestmark = pytest.mark.unit

DEFAULTS = {"max_model_len": 2048, "enable_prefix_caching": True, "kv_cache_dtype": "auto"}


def outcome(plan, expert: str, field: str):
    found = [o for o in plan.reports[expert] if o.field == field]
    assert len(found) == 1, plan.reports[expert]
    return found[0]


# ----------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    ("runtime", "field", "asked"),
    [
        (Runtime(attention_kernel="flash-v2"), "runtime.attention_kernel", "FLASH_ATTN"),
        (Runtime(attention_kernel="sdpa"), "runtime.attention_kernel", "TORCH_SDPA"),
        (Runtime(attention_kernel="some-new-kernel"), "runtime.attention_kernel", "some-new-kernel"),
        (Runtime(attention_backend="flashinfer"), "runtime.attention_backend", "FLASHINFER"),
        (
            Runtime(attention_backend="triton_attn", attention_kernel="flash-v2"),
            "runtime.attention_backend",
            "TRITON_ATTN",
        ),
    ],
)
def test_cpu_turns_any_attention_backend_into_a_not_honoured_report(runtime: Runtime, field: str, asked: str) -> None:
    plan = plan_engine([("a", runtime)], platform="cpu", defaults=DEFAULTS)
    [o] = [o for o in plan.reports["a"] if o.field == field]
    assert (o.field, o.engine_arg, o.requested, o.effective, o.honoured) == (
        field,
        "attention_backend",
        asked,
        CPU_ATTENTION,
        False,
    )
    assert CPU_ATTENTION in o.reason and "CPU" in o.reason
    assert "attention_backend" not in plan.engine_args  # the engine keeps its default
    assert "attention_backend" not in plan.deciders


def test_cpu_attention_asked_on_cpu_is_honoured() -> None:
    plan = plan_engine([("a", Runtime(attention_kernel="cpu"))], platform="cpu", defaults=DEFAULTS)
    [o] = plan.reports["a"]
    assert o.honoured is True and o.effective == CPU_ATTENTION
    assert plan.engine_args["attention_backend"] == CPU_ATTENTION


def test_attention_backend_on_cuda_is_set_by_the_first_expert() -> None:
    plan = plan_engine(
        [("a", Runtime(attention_kernel="flash-v2")), ("b", Runtime(attention_backend="FLASHINFER"))],
        platform="cuda",
        defaults=DEFAULTS,
    )
    assert plan.engine_args["attention_backend"] == "FLASH_ATTN"
    assert outcome(plan, "a", "runtime.attention_kernel").honoured is True
    b = outcome(plan, "b", "runtime.attention_backend")
    assert b.honoured is False and b.effective == "FLASH_ATTN" and "'a'" in b.reason


def test_unknown_attention_backend_is_not_honoured_when_names_are_known() -> None:
    plan = plan_engine(
        [("a", Runtime(attention_backend="WARP_DRIVE"))],
        platform="cuda",
        defaults=DEFAULTS,
        known_backends=frozenset({"FLASH_ATTN", "TRITON_ATTN"}),
    )
    [o] = plan.reports["a"]
    assert o.honoured is False and "unknown attention backend" in o.reason and "WARP_DRIVE" in o.reason
    assert "attention_backend" not in plan.engine_args


def test_conflicting_kv_cache_dtype_first_in_order_decides() -> None:
    experts = [
        ("first", Runtime(kv_cache_dtype="fp8")),
        ("second", Runtime(kv_cache_dtype="bfloat16")),
        ("third", Runtime(kv_cache_dtype="fp8")),
    ]
    plan = plan_engine(experts, platform="cuda", defaults=DEFAULTS)
    assert plan.engine_args["kv_cache_dtype"] == "fp8"
    assert plan.deciders["kv_cache_dtype"] == "first"
    first = outcome(plan, "first", "runtime.kv_cache_dtype")
    assert (first.honoured, first.effective) == (True, "fp8")
    second = outcome(plan, "second", "runtime.kv_cache_dtype")
    assert (second.honoured, second.requested, second.effective) == (False, "bfloat16", "fp8")
    assert "'first'" in second.reason and "load order" in second.reason
    assert outcome(plan, "third", "runtime.kv_cache_dtype").honoured is True


def test_order_of_experts_decides_not_their_names() -> None:
    experts = [("zeta", Runtime(kv_cache_dtype="float16")), ("alpha", Runtime(kv_cache_dtype="fp8"))]
    plan = plan_engine(experts, platform="cuda", defaults=DEFAULTS)
    assert plan.engine_args["kv_cache_dtype"] == "float16"
    assert outcome(plan, "alpha", "runtime.kv_cache_dtype").honoured is False
    assert "'zeta'" in outcome(plan, "alpha", "runtime.kv_cache_dtype").reason


def test_max_model_len_takes_the_max_and_all_are_honoured() -> None:
    experts = [("small", Runtime(max_model_len=512)), ("big", Runtime(max_model_len=4096)), ("none", None)]
    plan = plan_engine(experts, platform="cpu", defaults=DEFAULTS)
    assert plan.engine_args["max_model_len"] == 4096
    small = outcome(plan, "small", "runtime.max_model_len")
    big = outcome(plan, "big", "runtime.max_model_len")
    assert (small.honoured, small.effective) == (True, 512)
    assert (big.honoured, big.effective) == (True, 4096)
    assert "4096" in small.reason and "512" in small.reason
    assert plan.reports["none"] == []


def test_max_model_len_below_the_server_default_keeps_the_default() -> None:
    plan = plan_engine([("a", Runtime(max_model_len=256))], platform="cpu", defaults=DEFAULTS)
    assert plan.engine_args["max_model_len"] == 2048
    assert outcome(plan, "a", "runtime.max_model_len").honoured is True


def test_prefix_caching_from_kv_cache_persistence_and_conflict() -> None:
    experts = [("a", Runtime(requires_kv_cache_persistence=True)), ("b", Runtime(prefix_caching=False))]
    plan = plan_engine(experts, platform="cpu", defaults=DEFAULTS)
    assert plan.engine_args["enable_prefix_caching"] is True
    a = outcome(plan, "a", "runtime.requires_kv_cache_persistence")
    assert (a.engine_arg, a.honoured) == ("enable_prefix_caching", True)
    b = outcome(plan, "b", "runtime.prefix_caching")
    assert b.honoured is False and b.requested is False and b.effective is True


def test_plan_does_not_touch_the_defaults_and_keeps_unasked_args() -> None:
    defaults = dict(DEFAULTS)
    plan = plan_engine([("a", Runtime(kv_cache_dtype="fp8", max_model_len=8192))], platform="cuda", defaults=defaults)
    assert defaults == DEFAULTS
    assert plan.engine_args == {"max_model_len": 8192, "enable_prefix_caching": True, "kv_cache_dtype": "fp8"}


def test_requests_of_runtime() -> None:
    assert requests_of(None) == []
    reqs = requests_of(Runtime(candle_compatible=True, requires_kv_cache_persistence=False))
    assert reqs == []  # candle_compatible is no engine arg; persistence False asks nothing
    reqs = requests_of(
        Runtime(attention_kernel="Flash-V2", prefix_caching=True, kv_cache_dtype="fp8", max_model_len=64)
    )
    assert [(r.field, r.engine_arg, r.value) for r in reqs] == [
        ("runtime.attention_kernel", "attention_backend", "FLASH_ATTN"),
        ("runtime.prefix_caching", "enable_prefix_caching", True),
        ("runtime.kv_cache_dtype", "kv_cache_dtype", "fp8"),
        ("runtime.max_model_len", "max_model_len", 64),
    ]


def test_engine_wide_diff() -> None:
    old = Runtime(attention_kernel="flash-v2", kv_cache_dtype="fp8", max_model_len=1024)
    new = Runtime(attention_backend="FLASH_ATTN", kv_cache_dtype="auto", prefix_caching=True, max_model_len=1024)
    assert engine_wide_diff(old, new) == {
        "enable_prefix_caching": (None, True),
        "kv_cache_dtype": ("fp8", "auto"),
    }
    assert engine_wide_diff(old, old) == {}
    assert engine_wide_diff(None, None) == {}
    assert engine_wide_diff(None, Runtime(max_model_len=512)) == {"max_model_len": (None, 512)}
    assert engine_wide_diff(Runtime(attention_kernel="sdpa"), None) == {"attention_backend": ("TORCH_SDPA", None)}


# ----------------------------------------------------------------------------- sampling


def test_request_temperature_zero_wins_over_manifest() -> None:
    out = resolve({"temperature": 0.0}, {"temperature": 0.7})
    assert out["temperature"].value == 0.0
    assert out["temperature"].source == "request"


def test_request_over_manifest_over_server_field_by_field() -> None:
    request = {"temperature": 0.2, "top_p": None, "max_tokens": 5, "seed": 0}
    expert = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "stop": ["\n\n"], "min_p": 0.0}
    server = {**SERVER_DEFAULTS, "max_tokens": 128}
    out = resolve(request, expert, server)
    got = {k: (v.value, v.source) for k, v in out.items()}
    assert got == {
        "temperature": (0.2, "request"),
        "top_p": (0.8, "manifest"),
        "top_k": (20, "manifest"),
        "min_p": (0.0, "manifest"),
        "repetition_penalty": (1.0, "server"),
        "presence_penalty": (0.0, "server"),
        "frequency_penalty": (0.0, "server"),
        "max_tokens": (5, "request"),
        "seed": (0, "request"),
        "stop": (["\n\n"], "manifest"),
        "n": (1, "server"),
    }


def test_request_empty_stop_list_wins_over_manifest_stops() -> None:
    out = resolve({"stop": []}, {"stop": [";"]})
    assert (out["stop"].value, out["stop"].source) == ([], "request")


def test_server_value_used_when_neither_sets_it() -> None:
    out = resolve({}, {}, {**SERVER_DEFAULTS, "max_tokens": 77})
    assert (out["max_tokens"].value, out["max_tokens"].source) == (77, "server")
    assert (out["temperature"].value, out["temperature"].source) == (1.0, "server")


def test_resolve_does_not_mutate_inputs() -> None:
    request = {"temperature": 0.0, "stop": ["x"], "n": None}
    expert = {"temperature": 0.7, "stop": [";"], "top_k": 20}
    server = dict(SERVER_DEFAULTS)
    before = copy.deepcopy((request, expert, server, SERVER_DEFAULTS))
    resolve(request, expert, server)
    resolve({}, expert)
    assert (request, expert, server, SERVER_DEFAULTS) == before


def test_expert_defaults_only_lists_what_the_manifest_sets() -> None:
    d = Decoding(temperature=0.0, top_k=20, stop_sequences=[";"], min_p=0)
    assert expert_defaults(d) == {"temperature": 0.0, "top_k": 20, "min_p": 0, "stop": [";"]}
    assert expert_defaults(Decoding()) == {}


def test_header_value_is_compact_ascii_json() -> None:
    out = resolve({"stop": ["→", "\n"]}, {"temperature": 0.7})
    header = header_value(out)
    assert header.isascii()
    assert "\n" not in header and " " not in header
    decoded = json.loads(header)
    assert decoded["stop"] == {"value": ["→", "\n"], "source": "request"}
    assert decoded["temperature"] == {"value": 0.7, "source": "manifest"}
    assert set(decoded) == set(SERVER_DEFAULTS)


# ----------------------------------------------------------------------------- grammar


def _check_cycles(text: str, cycles: list[list[str]]) -> None:
    """Each cycle starts and ends at one rule and every step is a first-symbol reference."""
    rules = parse_rules(text)
    for cycle in cycles:
        assert cycle[0] == cycle[-1] and len(cycle) >= 2
        for a, b in itertools.pairwise(cycle):
            assert a in rules and b in rules[a], (a, b)


def test_left_recursion_in_the_hivellm_sql_grammar(reference_dir: Path) -> None:
    text = (reference_dir / "expert-sql.grammar.gbnf").read_text(encoding="utf-8")
    cycles = left_recursion(text)
    assert len(cycles) == 3
    assert {rule for cycle in cycles for rule in cycle} == {
        "expression",
        "comparison-expr",
        "logical-expr",
        "arithmetic-expr",
    }
    assert all("expression" in cycle for cycle in cycles)
    _check_cycles(text, cycles)


def test_left_recursion_in_the_hivellm_cypher_grammar(reference_dir: Path) -> None:
    text = (reference_dir / "expert-neo4j.grammar.gbnf").read_text(encoding="utf-8")
    cycles = left_recursion(text)
    assert {rule for cycle in cycles for rule in cycle} == {"expression", "comparison", "logical-expr"}
    _check_cycles(text, cycles)


def test_no_left_recursion_in_the_hivellm_json_grammar(reference_dir: Path) -> None:
    text = (reference_dir / "expert-json.grammar.gbnf").read_text(encoding="utf-8")
    assert len(parse_rules(text)) > 3  # the grammar was read, it is not empty
    assert left_recursion(text) == []


@pytest.mark.parametrize(
    ("grammar", "expected"),
    [
        ('a ::= a "x" | "y"', [["a", "a"]]),
        ('a ::= b? a "x" | "y"\nb ::= "z"', [["a", "a"]]),
        ('a ::= b* a "x" | "y"\nb ::= "z"', [["a", "a"]]),
        ('a ::= b a "x" | "y"\nb ::= "z"?', [["a", "a"]]),
        ('a ::= b a "x" | "y"\nb ::= ""', [["a", "a"]]),
        ('a ::= ("q" | "") a "x" | "y"', [["a", "a"]]),
        ('a ::= "y" | (a "x")', [["a", "a"]]),
        ('root ::= a\na ::= b "x" | "y"\nb ::= a "q"', [["a", "b", "a"]]),
        ('# a comment ::= a\na ::= "x" a | "y"', []),
        ('a ::= b a "x" | "y"\nb ::= "z"', []),
        ('a ::= [a-z]* a | "y"', [["a", "a"]]),
        ('a ::= [a-z]+ a | "y"', []),
        ('a ::= "#" a | "y"', []),
    ],
)
def test_left_recursion_toy_grammars(grammar: str, expected: list[list[str]]) -> None:
    cycles = left_recursion(grammar)
    if len(expected) == 1 and len(expected[0]) > 2:
        # a cycle through several rules may be reported from any of them
        assert len(cycles) == 1 and set(cycles[0]) == set(expected[0]) and cycles[0][0] == cycles[0][-1]
    else:
        assert cycles == expected


# ----------------------------------------------------------------------------- paths


def test_inside_keeps_paths_in_the_folder_and_refuses_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "expert"
    (root / "data").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert inside(root, "data/missing.jsonl") == (root / "data" / "missing.jsonl").resolve()
    for bad in ("", "/etc/passwd", "../x", "out/x", "a\x00b", "x" * 5000, "data/" + "y" * 300):
        assert inside(root, bad) is None, bad[:20]
