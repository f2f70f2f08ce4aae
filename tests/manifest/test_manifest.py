"""Unit tests of the manifest schema (server/manifest.py), on the real hivellm manifests as they are."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server.manifest.schema import (
    Manifest,
    ManifestError,
    json_schema,
    load_manifest,
    parse_manifest,
)

pytestmark = pytest.mark.unit

REAL = ("expert-json", "expert-neo4j", "expert-sql", "expert-typescript")
QWEN = "F:/Node/hivellm/expert/models/Qwen3-0.6B"
DELETE = object()


# ----------------------------------------------------------------------------- helpers


def raw_manifest(reference_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((reference_dir / f"{name}.manifest.json").read_text(encoding="utf-8"))


_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parts(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _PART.findall(path)]


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with `path` (dotted, with [i] indices) set, or deleted with DELETE."""
    out = copy.deepcopy(data)
    parts = _parts(path)
    node: Any = out
    for p in parts[:-1]:
        node = node[p]
    if value is DELETE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return out


def issues_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    issues = [(i.field, i.message) for i in info.value.issues]
    assert issues, "a ManifestError must carry at least one issue"
    return issues


def v1_manifest(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "legacy-expert",
        "version": "0.1.0",
        "base_model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt_template": "chatml"},
        "adapters": [{"type": "lora", "r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}],
    }
    data.update(extra)
    return data


# ----------------------------------------------------------------------------- the real manifests


EXPECTED = {
    # name: (version, prompt_template, r, alpha, dropout, temperature, top_p, top_k, grammar_type, load_order)
    "expert-json": ("0.4.1", "chatml", 14, 28, 0.1, 0.7, 0.8, 20, "json", 5),
    "expert-neo4j": ("0.2.3", "qwen3", 16, 32, 0.1, 0.6, 0.95, 20, "cypher", 6),
    "expert-sql": ("0.3.0", "qwen3", 12, 24, 0.1, 0.7, 0.8, 20, "sql-postgres", 6),
    "expert-typescript": ("0.0.1", "chatml", 12, 24, 0.05, 0.4, 0.95, None, None, 5),
}


@pytest.mark.parametrize("name", REAL)
def test_real_manifest_parses_as_v2_with_its_fields(reference_dir: Path, name: str) -> None:
    m = load_manifest(reference_dir / f"{name}.manifest.json")
    version, template, r, alpha, dropout, temperature, top_p, top_k, grammar_type, load_order = EXPECTED[name]
    assert m.name == name
    assert m.version == version
    assert m.schema_version == "2.0"
    assert m.base_model is None and m.adapters is None
    [(base, adapters)] = m.bases()
    assert base.name == QWEN
    assert base.sha256 == ""
    assert base.quantization == "int4"
    assert base.prompt_template == template
    assert base.rope_scaling is not None
    assert base.rope_scaling.type == "ntk-by-parts"
    assert base.rope_scaling.factor == 8.0
    assert base.rope_scaling.max_position_embeddings == 32768
    [adapter] = adapters
    assert adapter.type == "dora"
    assert (adapter.r, adapter.alpha, adapter.dropout) == (r, alpha, dropout)
    assert adapter.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    assert adapter.size_bytes == 0 and adapter.sha256 == ""
    d = m.decoding
    assert (d.temperature, d.top_p, d.top_k, d.grammar_type) == (temperature, top_p, top_k, grammar_type)
    assert m.load_order == load_order
    assert m.runtime is not None
    assert m.runtime.attention_kernel == "flash-v2"
    assert m.runtime.requires_kv_cache_persistence is True
    assert m.runtime.candle_compatible is True
    assert m.training is not None and m.training.config is not None
    assert m.training.config.adapter_type == "dora"
    assert m.training.config.rank == r


def test_real_sql_manifest_details(reference_dir: Path) -> None:
    m = parse_manifest(raw_manifest(reference_dir, "expert-sql"))
    assert m.decoding.stop_sequences == [";", "\n\n"]
    assert m.decoding.min_p == 0  # a field hivellm's own schema lacks
    assert m.decoding.validation == "parser-strict"
    assert m.routing is not None and m.routing.priority == 0.85
    assert "select" in (m.routing.keywords or [])
    assert m.limitations is not None and len(m.limitations) == 5
    assert m.limitations[0].pattern == "no_recursive_cte"  # type: ignore[union-attr]
    assert m.training is not None and m.training.dataset is not None
    assert [s.name for s in m.training.dataset.sources or []] == [
        "gretelai/synthetic_text_to_sql",
        "Clinton/Text-to-sql-v1",
        "synthetic_fixes",
    ]
    assert m.training.dataset.field_mapping == {"text": "text"}
    assert m.training.alternative_checkpoints is not None
    assert m.training.alternative_checkpoints["checkpoint-1250"].step == 1250
    assert m.constraints is not None and m.constraints.max_chain == 10
    assert m.perf is not None and m.perf.supported_batch_sizes == [1, 2, 4, 8]
    assert m.training.config is not None
    assert m.training.config.learning_rate == 5e-5
    assert m.training.config.gradient_accumulation_steps == 45


def test_real_typescript_manifest_soft_prompt_and_validation_cmd(reference_dir: Path) -> None:
    m = parse_manifest(raw_manifest(reference_dir, "expert-typescript"))
    [sp] = m.soft_prompts
    assert (sp.name, sp.path, sp.tokens, sp.init_method) == (
        "typescript_style",
        "soft_prompts/ts_style_48.bin",
        48,
        "text",
    )
    assert sp.init_text is not None and sp.init_text.startswith("Generate TypeScript code")
    assert m.decoding.validation_cmd == "tsc --noEmit"
    assert m.decoding.validation == "tsc"


def test_load_manifest_accepts_a_folder(tmp_path: Path, reference_dir: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(raw_manifest(reference_dir, "expert-json")))
    assert load_manifest(tmp_path).name == "expert-json"


# ----------------------------------------------------------------------------- v1


def test_v1_manifest_without_schema_version_parses_and_bases_normalises() -> None:
    m = parse_manifest(v1_manifest())
    assert m.schema_version == "1.0"
    assert m.base_models is None
    [(base, adapters)] = m.bases()
    assert base.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base.prompt_template == "chatml"
    assert [(a.type, a.r, a.alpha, a.target_modules) for a in adapters] == [("lora", 8, 16, ["q_proj", "v_proj"])]
    assert base is m.base_model


def test_v1_explicit_schema_version_equals_implicit() -> None:
    implicit = parse_manifest(v1_manifest())
    explicit = parse_manifest(v1_manifest(schema_version="1.0"))
    assert implicit.model_dump() == explicit.model_dump()


def test_v1_without_adapters_has_an_empty_adapter_list() -> None:
    data = v1_manifest()
    del data["adapters"]
    [(base, adapters)] = parse_manifest(data).bases()
    assert adapters == [] and base.name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_v1_adapters_inside_base_model_is_an_error() -> None:
    data = v1_manifest()
    data["base_model"]["adapters"] = data.pop("adapters")
    issues = issues_of(data)
    assert [f for f, _ in issues] == ["base_model.adapters"]
    assert "root" in issues[0][1]


def test_v1_with_base_models_is_an_error(reference_dir: Path) -> None:
    data = raw_manifest(reference_dir, "expert-sql")
    del data["schema_version"]  # no schema_version: v1, which has no base_models[]
    fields = [f for f, _ in issues_of(data)]
    assert fields == ["base_model"]


def test_v2_with_base_model_is_an_error(reference_dir: Path) -> None:
    data = raw_manifest(reference_dir, "expert-sql")
    data["base_model"] = {"name": QWEN}
    issues = issues_of(data)
    assert [f for f, _ in issues] == ["base_model"]
    assert "v1" in issues[0][1]


def test_v2_with_root_adapters_is_an_error(reference_dir: Path) -> None:
    data = raw_manifest(reference_dir, "expert-sql")
    data["adapters"] = [{"type": "lora", "r": 8, "alpha": 16}]
    assert [f for f, _ in issues_of(data)] == ["adapters"]


@pytest.mark.parametrize("shape", ["v2-missing", "v2-empty", "v1-missing"])
def test_no_base_at_all_is_an_error(reference_dir: Path, shape: str) -> None:
    if shape == "v1-missing":
        data = v1_manifest()
        del data["base_model"], data["adapters"]
        expected = "base_model"
    else:
        data = raw_manifest(reference_dir, "expert-json")
        if shape == "v2-missing":
            del data["base_models"]
        else:
            data["base_models"] = []
        expected = "base_models"
    issues = issues_of(data)
    assert [f for f, _ in issues] == [expected]
    assert "needs" in issues[0][1]


# ----------------------------------------------------------------------------- comments


COMMENT_SPOTS = [
    "_top",
    "base_models[0]._c",
    "base_models[0].adapters[0]._note",
    "base_models[0].rope_scaling._why",
    "limitations[0]._c",
    "quality_metrics._c2",
    "routing._c",
    "perf._c",
    "constraints._c",
    "runtime._c2",
    "training._c",
    "training.dataset._c2",
    "training.dataset.sources[1]._c",
    "training.dataset.preprocessing._c",
    "training.dataset.field_mapping._c",
    "training.config._c3",
    "training.decoding._c2",
    "training.alternative_checkpoints._c",
    "training.alternative_checkpoints.checkpoint-1250._c2",
]


def test_comment_keys_allowed_at_any_depth_and_ignored(reference_dir: Path) -> None:
    data = raw_manifest(reference_dir, "expert-sql")
    plain = parse_manifest(data)
    commented = data
    for spot in COMMENT_SPOTS:
        commented = with_value(commented, spot, {"free": ["form", 1]} if spot.endswith("_c") else "a comment")
    commented["integrity"] = {"_c": "x", "files": {"_c": "not a hash", "weights.bin": ""}}
    plain_with_integrity = parse_manifest({**data, "integrity": {"files": {"weights.bin": ""}}})
    m = parse_manifest(commented)
    assert m.model_dump() == plain_with_integrity.model_dump()
    assert m.model_dump(exclude={"integrity"}) == plain.model_dump(exclude={"integrity"})
    # free-form maps do not gain comment entries
    assert m.training is not None and m.training.dataset is not None
    assert m.training.dataset.field_mapping == {"text": "text"}
    assert list(m.training.alternative_checkpoints or {}) == ["checkpoint-1250"]
    assert m.integrity is not None and m.integrity.file_hashes() == {"weights.bin": ""}


def test_real_manifests_carry_comments(reference_dir: Path) -> None:
    """The real files use `_` comments at several depths: the test above is about real input."""
    text = (reference_dir / "expert-sql.manifest.json").read_text(encoding="utf-8")
    for key in ('"_comment"', '"_lr_comment"', '"_unsloth_comment"'):
        assert key in text


# ----------------------------------------------------------------------------- unknown keys


UNKNOWN_KEYS = [
    # (path of the unknown key, suggestion expected in the message or None)
    ("training.decoding.temperatur", "temperature"),
    ("base_models[0].adapters[0].alfa", "alpha"),
    ("base_models[0].rope_scaling.fator", "factor"),
    ("base_models[0].prompt_templte", "prompt_template"),
    ("limitations[1].descripton", "description"),
    ("training.dataset.sources[2].nme", "name"),
    ("training.config.learning_rte", "learning_rate"),
    ("training.alternative_checkpoints.checkpoint-1250.stpe", "step"),
    ("runtime.atention_kernel", "attention_kernel"),
    ("routing.keywrds", "keywords"),
    ("descripton", "description"),
    ("colour", None),
    ("training.decoding.frobnicate", None),
]


@pytest.mark.parametrize(("path", "suggestion"), UNKNOWN_KEYS, ids=[p for p, _ in UNKNOWN_KEYS])
def test_unknown_key_is_an_error_naming_its_full_path(reference_dir: Path, path: str, suggestion: str | None) -> None:
    data = with_value(raw_manifest(reference_dir, "expert-sql"), path, 1)
    issues = issues_of(data)
    assert [f for f, _ in issues] == [path]
    message = issues[0][1]
    key = path.rsplit(".", 1)[-1]
    assert f"unknown field '{key}'" in message
    if suggestion is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean '{suggestion}'?" in message


def test_several_unknown_keys_are_all_reported(reference_dir: Path) -> None:
    data = raw_manifest(reference_dir, "expert-neo4j")
    data = with_value(data, "training.decoding.temperatur", 0.3)
    data = with_value(data, "base_models[0].adapters[0].alfa", 3)
    fields = sorted(f for f, _ in issues_of(data))
    assert fields == ["base_models[0].adapters[0].alfa", "training.decoding.temperatur"]


def test_unknown_key_in_v1_adapter_names_root_adapters_path() -> None:
    data = v1_manifest()
    data["adapters"][0]["rank"] = 8
    issues = issues_of(data)
    assert [f for f, _ in issues] == ["adapters[0].rank"]


# ----------------------------------------------------------------------------- ranges, enums, cross-field rules


BROKEN: list[tuple[str, str, Any, str, str]] = [
    # (id, path, value, field named, fragment of the message)
    (
        "temperature-above-2",
        "training.decoding.temperature",
        2.01,
        "training.decoding.temperature",
        "less than or equal to 2",
    ),
    (
        "temperature-negative",
        "training.decoding.temperature",
        -0.1,
        "training.decoding.temperature",
        "greater than or equal to 0",
    ),
    ("temperature-string", "training.decoding.temperature", "warm", "training.decoding.temperature", "number"),
    ("top_p-zero", "training.decoding.top_p", 0, "training.decoding.top_p", "greater than 0"),
    ("top_p-above-1", "training.decoding.top_p", 1.5, "training.decoding.top_p", "less than or equal to 1"),
    ("top_p-negative", "training.decoding.top_p", -0.5, "training.decoding.top_p", "greater than 0"),
    ("top_k-zero", "training.decoding.top_k", 0, "training.decoding.top_k", "-1"),
    ("top_k-minus-2", "training.decoding.top_k", -2, "training.decoding.top_k", "-1"),
    ("top_k-fraction", "training.decoding.top_k", 2.5, "training.decoding.top_k", "integer"),
    ("min_p-above-1", "training.decoding.min_p", 1.2, "training.decoding.min_p", "less than or equal to 1"),
    (
        "max_tokens-zero",
        "training.decoding.max_tokens",
        0,
        "training.decoding.max_tokens",
        "greater than or equal to 1",
    ),
    (
        "presence_penalty",
        "training.decoding.presence_penalty",
        3,
        "training.decoding.presence_penalty",
        "less than or equal to 2",
    ),
    ("stop-not-a-list", "training.decoding.stop_sequences", ";", "training.decoding.stop_sequences", "list"),
    ("stop-an-int", "training.decoding.stop_sequences", [";", 7], "training.decoding.stop_sequences[1]", "string"),
    ("stop-a-dict", "training.decoding.stop_sequences", [{"s": ";"}], "training.decoding.stop_sequences[0]", "string"),
    ("stop-empty-string", "training.decoding.stop_sequences", [""], "training.decoding.stop_sequences", "non-empty"),
    ("adapter-type-enum", "base_models[0].adapters[0].type", "qlora", "base_models[0].adapters[0].type", "'lora'"),
    ("adapter-no-type", "base_models[0].adapters[0].type", DELETE, "base_models[0].adapters[0].type", "missing"),
    ("adapter-no-r", "base_models[0].adapters[0].r", DELETE, "base_models[0].adapters[0].r", "r required"),
    (
        "adapter-no-alpha",
        "base_models[0].adapters[0].alpha",
        DELETE,
        "base_models[0].adapters[0].alpha",
        "alpha required",
    ),
    ("adapter-r-zero", "base_models[0].adapters[0].r", 0, "base_models[0].adapters[0].r", "greater than or equal to 1"),
    ("adapter-alpha-zero", "base_models[0].adapters[0].alpha", 0, "base_models[0].adapters[0].alpha", "greater than 0"),
    (
        "adapter-dropout-1",
        "base_models[0].adapters[0].dropout",
        1.0,
        "base_models[0].adapters[0].dropout",
        "less than 1",
    ),
    (
        "adapter-sha-short",
        "base_models[0].adapters[0].sha256",
        "abc",
        "base_models[0].adapters[0].sha256",
        "64 hexadecimal",
    ),
    ("base-sha-not-hex", "base_models[0].sha256", "z" * 64, "base_models[0].sha256", "64 hexadecimal"),
    ("base-name-empty", "base_models[0].name", "", "base_models[0].name", "at least 1"),
    ("base-name-missing", "base_models[0].name", DELETE, "base_models[0].name", "missing"),
    (
        "rope-factor-zero",
        "base_models[0].rope_scaling.factor",
        0,
        "base_models[0].rope_scaling.factor",
        "greater than or equal to 1",
    ),
    ("schema-version-enum", "schema_version", "3.0", "schema_version", "'2.0'"),
    ("name-missing", "name", DELETE, "name", "missing"),
    ("name-a-path", "name", "../evil", "name", "pattern"),
    ("version-missing", "version", DELETE, "version", "missing"),
    ("version-empty", "version", "", "version", "at least 1"),
    ("tags-not-strings", "tags", ["sql", 3], "tags[1]", "string"),
    ("routing-priority", "routing.priority", 1.5, "routing.priority", "less than or equal to 1"),
    ("kv-cache-dtype-enum", "runtime.kv_cache_dtype", "int3", "runtime.kv_cache_dtype", "'fp8'"),
    ("max-model-len-small", "runtime.max_model_len", 8, "runtime.max_model_len", "greater than or equal to 16"),
    ("load-order-string", "constraints.load_order", "first", "constraints.load_order", "integer"),
    ("limitation-no-description", "limitations[2].description", DELETE, "limitations[2].description", "missing"),
    ("config-adapter-type", "training.config.adapter_type", "qlora", "training.config.adapter_type", "'lora'"),
    ("config-rank-zero", "training.config.rank", 0, "training.config.rank", "greater than or equal to 1"),
    (
        "sp-no-tokens",
        "soft_prompts",
        [{"name": "style", "path": "style.safetensors"}],
        "soft_prompts[0].tokens",
        "missing",
    ),
    (
        "sp-tokens-zero",
        "soft_prompts",
        [{"name": "style", "path": "s.safetensors", "tokens": 0}],
        "soft_prompts[0].tokens",
        "greater than or equal to 1",
    ),
    ("sp-no-path", "soft_prompts", [{"name": "style", "tokens": 4}], "soft_prompts[0].path", "missing"),
    (
        "sp-text-init-without-text",
        "soft_prompts",
        [{"name": "style", "path": "s.pt", "tokens": 4, "init_method": "text"}],
        "soft_prompts[0].init_text",
        "init_text required",
    ),
    (
        "sp-init-method-enum",
        "soft_prompts",
        [{"name": "style", "path": "s.pt", "tokens": 4, "init_method": "zeros"}],
        "soft_prompts[0].init_method",
        "'random'",
    ),
    (
        "sp-duplicate-names",
        "soft_prompts",
        [{"name": "a", "path": "a.pt", "tokens": 4}, {"name": "a", "path": "b.pt", "tokens": 4}],
        "soft_prompts",
        "unique",
    ),
    (
        "integrity-map-bad-hash",
        "integrity",
        {"files": {"adapter_model.safetensors": "xyz"}},
        "integrity.files.adapter_model.safetensors",
        "64 hexadecimal",
    ),
    ("integrity-list-no-sha", "integrity", {"files": [{"path": "a.bin"}]}, "integrity.files[0].sha256", "missing"),
    ("integrity-wrong-shape", "integrity", {"files": 3}, "integrity.files", "wrong type"),
]


@pytest.mark.parametrize(("path", "value", "field", "fragment"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_variant_of_a_real_manifest_is_rejected_naming_the_field(
    reference_dir: Path, path: str, value: Any, field: str, fragment: str
) -> None:
    data = with_value(raw_manifest(reference_dir, "expert-sql"), path, value)
    issues = issues_of(data)
    fields = [f for f, _ in issues]
    assert fields == [field], issues
    assert fragment in issues[0][1], issues


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("training.decoding.temperature", 0),
        ("training.decoding.temperature", 2),
        ("training.decoding.top_p", 1),
        ("training.decoding.top_p", 0.01),
        ("training.decoding.top_k", -1),
        ("training.decoding.top_k", 1),
        ("training.decoding.stop_sequences", []),
        ("base_models[0].adapters[0].type", "lora"),
        ("base_models[0].adapters[0].sha256", "AB" * 32),
    ],
)
def test_range_boundaries_are_accepted(reference_dir: Path, path: str, value: Any) -> None:
    m = parse_manifest(with_value(raw_manifest(reference_dir, "expert-sql"), path, value))
    got: Any = m
    for p in _parts(path.replace("base_models[0].adapters[0]", "ADAPTER")):
        got = m.bases()[0][1][0] if p == "ADAPTER" else (got[p] if isinstance(p, int) else getattr(got, p))
    assert got == (value.lower() if isinstance(value, str) and path.endswith("sha256") else value)


def test_ia3_adapter_needs_no_rank() -> None:
    data = v1_manifest(adapters=[{"type": "ia3"}])
    [(_, [adapter])] = parse_manifest(data).bases()
    assert adapter.type == "ia3" and adapter.r is None


def test_lora_without_rank_and_alpha_names_both() -> None:
    data = v1_manifest(adapters=[{"type": "lora"}])
    issues = issues_of(data)
    assert sorted(f for f, _ in issues) == ["adapters[0].alpha", "adapters[0].r"]
    assert all(msg == "r and alpha required for a lora adapter" for _, msg in issues)


@pytest.mark.parametrize("data", [[], "manifest", 3, None])
def test_not_an_object_is_an_error(data: Any) -> None:
    assert issues_of(data) == [("", "a manifest is a JSON object")]


def test_invalid_json_file_is_a_manifest_error(tmp_path: Path) -> None:
    file = tmp_path / "manifest.json"
    file.write_text('{"name": "x",\n "version": }')
    with pytest.raises(ManifestError) as info:
        load_manifest(file)
    [issue] = info.value.issues
    assert issue.field == ""
    assert "invalid JSON at line 2" in issue.message


def test_missing_manifest_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert "no manifest at" in info.value.issues[0].message


def test_every_issue_is_reported_at_once(reference_dir: Path) -> None:
    data = raw_manifest(reference_dir, "expert-sql")
    data = with_value(data, "training.decoding.top_p", 0)
    data = with_value(data, "training.decoding.top_k", 0)
    data = with_value(data, "name", DELETE)
    assert sorted(f for f, _ in issues_of(data)) == ["name", "training.decoding.top_k", "training.decoding.top_p"]


# ----------------------------------------------------------------------------- JSON Schema


def test_json_schema_is_a_json_serialisable_dict() -> None:
    schema = json_schema()
    assert isinstance(schema, dict)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert {"name", "version", "schema_version", "base_models", "base_model", "adapters"} <= set(schema["properties"])
    assert set(schema["required"]) == {"name", "version"}
    assert json.loads(json.dumps(schema)) == schema


@pytest.fixture(scope="module")
def schema_validator() -> Callable[[Any], list[Any]]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return lambda data: list(validator.iter_errors(data))


@pytest.mark.parametrize("name", REAL)
def test_json_schema_validates_the_real_manifests(reference_dir: Path, schema_validator, name: str) -> None:
    errors = schema_validator(raw_manifest(reference_dir, name))
    assert [(list(e.absolute_path), e.message[:200]) for e in errors] == []


def test_json_schema_validates_a_v1_manifest_with_comments(schema_validator) -> None:
    data = v1_manifest(_comment="legacy")
    data["adapters"][0]["_c"] = "nested comment"
    assert schema_validator(data) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("training.decoding.temperatur", 0.3),
        ("base_models[0].adapters[0].alfa", 3),
        ("training.decoding.top_p", 0),
        ("training.decoding.temperature", 3),
        ("base_models[0].adapters[0].type", "qlora"),
        ("name", DELETE),
    ],
)
def test_json_schema_rejects_broken_manifests(reference_dir: Path, schema_validator, path: str, value: Any) -> None:
    assert schema_validator(with_value(raw_manifest(reference_dir, "expert-sql"), path, value)) != []


def test_manifest_model_is_frozen(reference_dir: Path) -> None:
    m = parse_manifest(raw_manifest(reference_dir, "expert-json"))
    assert isinstance(m, Manifest)
    with pytest.raises(ValidationError, match="frozen"):
        m.name = "other"  # type: ignore[misc]
    assert m.name == "expert-json"
