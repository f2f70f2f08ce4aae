"""Every field's fate, shown: the review's method — change one field in a copy of an expert, run
`validate`, compare the fate with what the code does — as cases, one per fate of each field.

Each case writes an expert folder (a real safetensors LoRA adapter made here with numpy, soft
prompt tensors, grammars, sibling experts) and runs the real `validate_path` against the
embedded base model. The cases are the rows of server/manifest/FIELDS.md: `test_reference_is_current`
fails when the file is stale, when a field of `expert schema` has no fate, or when a case's
manifest gets a fate no case names (so a fate cannot change without the reference changing).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.manifest.artifacts import BaseInfo
from server.manifest.reference import normalise, render, schema_paths
from server.manifest.validate import ValidationResult, validate_path
from server.settings import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
FIELDS_MD = REPO / "server" / "manifest" / "FIELDS.md"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
HIDDEN = 576
# vLLM's names, as the CLI passes them (test_platform_lists_match_vllm checks they are vLLM's)
BACKENDS = frozenset({"CPU_ATTN", "FLASH_ATTN", "FLASHINFER", "TORCH_SDPA", "TRITON_ATTN", "FLEX_ATTENTION"})
CPU_KV_DTYPES = frozenset({"auto", "fp8", "fp8_e4m3", "fp8_e5m2"})
GRAMMAR = 'root ::= "{" "}"\n'

Patch = dict[str, Any]
DELETE = object()


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.replace("[", ".").replace("]", "").split(".")
    node: Any = data
    for k in keys[:-1]:
        k2: Any = int(k) if k.isdigit() else k
        if isinstance(node, dict) and k2 not in node:
            node[k2] = {}
        node = node[k2]
    last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


def adapter_files(folder: Path, *, zero: bool = False, module: str = "q_proj", seed: int = 0) -> dict[str, Any]:
    """A PEFT-format LoRA adapter on layer 0's `module` (q_proj: 576 -> 576), r=8."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    prefix = f"base_model.model.model.layers.0.self_attn.{module}"
    tensors = {
        f"{prefix}.lora_A.weight": rng.normal(0, 0.02, (8, HIDDEN)).astype(np.float32),
        f"{prefix}.lora_B.weight": np.zeros((HIDDEN, 8), np.float32)
        if zero
        else rng.normal(0, 0.02, (HIDDEN, 8)).astype(np.float32),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": [module],
        "base_model_name_or_path": BASE_ID,
        "task_type": "CAUSAL_LM",
        "bias": "none",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": [module], "path": "."}


def soft_prompt_file(path: Path, tokens: int, seed: int = 1) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = np.random.default_rng(seed).normal(0, 0.05, (tokens, HIDDEN)).astype(np.float32)
    save_file({"prompt_embeddings": tensor}, str(path))


def base_manifest(name: str = "fx") -> dict[str, Any]:
    return {
        "name": name,
        "version": "1.0.0",
        "schema_version": "2.0",
        "base_models": [{"name": BASE_ID, "adapters": [{"type": "lora"}]}],
    }


@dataclass
class Case:
    id: str
    expect: list[tuple[str, str, str]]  # (field path, fate, text the detail contains)
    patch: Patch = field(default_factory=dict)
    build: Callable[[Path, dict[str, Any]], None] | None = None  # extra files / manifest edits
    adapter: str = "live"  # live | zero | missing-module | none
    servable: bool | None = True  # None: not asserted
    valid: bool = True
    reason: str = ""  # text one of not_servable_because holds


def _sibling(name: str, version: str, load_order: int = 0) -> Callable[[Path, dict[str, Any]], None]:
    def build(folder: Path, data: dict[str, Any]) -> None:
        other = folder.parent / name
        other.mkdir()
        m = base_manifest(name)
        m["version"] = version
        m["base_models"][0]["adapters"] = []
        m["constraints"] = {"load_order": load_order}
        (other / "manifest.json").write_text(json.dumps(m))

    return build


def _files(**files: str) -> Callable[[Path, dict[str, Any]], None]:
    def build(folder: Path, data: dict[str, Any]) -> None:
        for rel, text in files.items():
            (folder / rel).write_text(text)

    return build


def _soft_prompts(*entries: tuple[str, int, int]) -> Callable[[Path, dict[str, Any]], None]:
    """Soft prompt files (name, tokens in the file, tokens in the manifest)."""

    def build(folder: Path, data: dict[str, Any]) -> None:
        for i, (name, have, _) in enumerate(entries):
            soft_prompt_file(folder / "sp" / f"{name}.safetensors", have, seed=i)

    return build


def _sp(name: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": f"sp/{name}.safetensors", "tokens": tokens, **extra}


def _chain(*builds: Callable[[Path, dict[str, Any]], None]) -> Callable[[Path, dict[str, Any]], None]:
    def build(folder: Path, data: dict[str, Any]) -> None:
        for b in builds:
            b(folder, data)

    return build


SHOWN = "shown by GET /experts/{name}"
A0 = "base_models[0].adapters[0]"
TRAINER_APPLIED = {
    "method": "sft",
    "adapter_type": "lora",
    "max_steps": 10,
    "learning_rate": 1e-4,
    "prompt_learning_rate": 1e-2,
    "batch_size": 4,
    "gradient_accumulation_steps": 2,
    "warmup_steps": 2,
    "lr_scheduler": "cosine",
    "max_seq_length": 256,
    "seed": 1,
    "logging_steps": 5,
    "prompt_max_steps": 5,
}
TRAINER_REFUSED = {
    "save_steps": 10,
    "save_strategy": "steps",
    "save_total_limit": 2,
    "eval_steps": 10,
    "evaluation_strategy": "steps",
    "load_best_model_at_end": True,
    "metric_for_best_model": "loss",
    "greater_is_better": False,
    "fp16": False,
    "bf16": True,
    "use_tf32": True,
    "use_sdpa": True,
    "flash_attention_2": False,
    "memory_efficient_attention": True,
    "packing": False,
    "group_by_length": True,
    "gradient_checkpointing": True,
    "activation_checkpointing": "full",
    "optim": "adamw_bnb_8bit",
    "use_unsloth": True,
    "torch_compile": False,
    "torch_compile_backend": "inductor",
    "torch_compile_mode": "default",
    "use_cuda_graphs": False,
    "cuda_graph_warmup_steps": 3,
    "memory_clear_every": 10,
    "dataloader_num_workers": 2,
    "dataloader_pin_memory": True,
    "dataloader_prefetch_factor": 2,
    "dataloader_persistent_workers": True,
    "pretokenized_cache": "cache/",
}
SAMPLING = {
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
    "max_tokens": 32,
    "seed": 7,
    "stop_sequences": ["\n\n"],
}

CASES: list[Case] = [
    Case(
        "plain-lora-expert",
        [
            ("name", "applied", "OpenAI model id"),
            ("version", "applied", "X-Expert-Version"),
            ("schema_version", "applied", "schema 2.0"),
            ("base_models[0].name", "applied", "matches the served base model"),
            (f"{A0}.type", "applied", "LoRARequest"),
            (f"{A0}.path", "applied", "folder of adapter_config.json"),
            (f"{A0}.r", "checked", "agrees with adapter_config.json"),
            (f"{A0}.alpha", "checked", "agrees with adapter_config.json"),
            (f"{A0}.dropout", "checked", "agrees with adapter_config.json"),
            (f"{A0}.target_modules", "checked", "non-zero lora_B"),
            ("_comment", "checked", "comment"),
        ],
        patch={"_comment": "a comment"},
    ),
    Case(
        "adapter-hashes",
        [
            (f"{A0}.sha256", "applied", "verified"),
            (f"{A0}.size_bytes", "applied", "verified"),
            (f"{A0}.checkpoint_step", "checked", SHOWN),
            (f"{A0}.scaling", "checked", "alpha/r"),
        ],
        build=lambda folder, data: data["base_models"][0]["adapters"][0].update(
            sha256=__import__("hashlib").sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest(),
            size_bytes=(folder / "adapter_model.safetensors").stat().st_size,
            checkpoint_step=250,
            scaling="standard",
        ),
    ),
    Case(
        "adapter-sha-empty",
        [(f"{A0}.sha256", "checked", "nothing to verify"), (f"{A0}.size_bytes", "checked", "nothing to verify")],
        patch={f"{A0}.sha256": "", f"{A0}.size_bytes": 0},
    ),
    Case(
        "adapter-sha-mismatch",
        [(f"{A0}.sha256", "refused", "does not match")],
        patch={f"{A0}.sha256": "0" * 64},
        valid=False,
        servable=False,
    ),
    Case(
        "adapter-size-mismatch",
        [(f"{A0}.size_bytes", "refused", "manifest says 1")],
        patch={f"{A0}.size_bytes": 1},
        valid=False,
        servable=False,
    ),
    Case(
        "adapter-r-differs",
        [(f"{A0}.r", "refused", "adapter_config.json says 8")],
        patch={f"{A0}.r": 4},
        valid=False,
        servable=False,
    ),
    Case(
        "adapter-scaling-learned",
        [(f"{A0}.scaling", "refused", "'learned' scaling is not applied")],
        patch={f"{A0}.scaling": "learned"},
    ),
    Case(
        "adapter-dora",
        [(f"{A0}.type", "refused", "'dora'")],
        patch={f"{A0}.type": "dora"},
        valid=False,
        servable=False,
    ),
    Case(
        "second-adapter",
        [
            ("base_models[0].adapters[1].type", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].path", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].r", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].alpha", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].target_modules", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].dropout", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].sha256", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].size_bytes", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].scaling", "refused", "one adapter per expert is served"),
            ("base_models[0].adapters[1].checkpoint_step", "refused", "one adapter per expert is served"),
        ],
        build=lambda folder, data: data["base_models"][0]["adapters"].append(
            {
                "type": "lora",
                "r": 8,
                "alpha": 16,
                "dropout": 0.0,
                "target_modules": ["q_proj"],
                "path": "second",
                "sha256": "",
                "size_bytes": 0,
                "scaling": "standard",
                "checkpoint_step": 1,
            }
        ),
        servable=False,
        reason="one adapter per expert is served",
    ),
    Case(
        "adapter-all-zero-lora-b",
        [(f"{A0}.type", "refused", "every lora_B weight is zero")],
        adapter="zero",
        servable=False,
        reason="the adapter changes nothing",
    ),
    Case(
        "adapter-modules-the-model-lacks",
        [(f"{A0}.type", "refused", "exists in the base model")],
        adapter="missing-module",
        servable=False,
        reason="the adapter changes nothing",
    ),
    Case(
        "base-other-model",
        [("base_models[0].name", "refused", "the expert needs 'other/model'")],
        patch={"base_models[0].name": "other/model"},
        servable=False,
        reason="base model not served here",
    ),
    Case(
        "two-bases-second-served",
        [
            ("base_models[0].name", "checked", "not served here"),
            ("base_models[0].adapters[0].type", "checked", "not served here"),
            ("base_models[0].adapters[0].path", "checked", "not served here"),
            ("base_models[1].name", "applied", "matches the served base model"),
        ],
        build=lambda folder, data: data["base_models"].insert(
            0, {"name": "Qwen/Qwen3-0.6B", "adapters": [{"type": "dora", "r": 8, "alpha": 16, "path": "qwen"}]}
        ),
    ),
    Case("base-sha-empty", [("base_models[0].sha256", "checked", "empty")], patch={"base_models[0].sha256": ""}),
    Case(
        "base-sha-mismatch",
        [("base_models[0].sha256", "refused", "does not match the sha256 of the served weights")],
        patch={"base_models[0].sha256": "ab" * 32},
        servable=False,
        reason="does not match the sha256",
    ),
    Case(
        "base-sha-match",
        [("base_models[0].sha256", "applied", "matches the served weights")],
        build=lambda folder, data: data["base_models"][0].update(sha256=sorted(_BASE.weight_sha256)[0]),
    ),
    Case(
        "base-shape",
        [
            ("base_models[0].quantization", "checked", "engine serves"),
            ("base_models[0].rope_scaling.type", "checked", "rope_scaling"),
            ("base_models[0].rope_scaling.factor", "checked", "rope_scaling"),
            ("base_models[0].rope_scaling.max_position_embeddings", "checked", "rope_scaling"),
            ("base_models[0].rope_scaling.original_max_position_embeddings", "checked", "rope_scaling"),
            ("base_models[0].rope_scaling.fine_grained", "checked", "rope_scaling"),
        ],
        patch={
            "base_models[0].quantization": "bf16",
            "base_models[0].rope_scaling": {
                "type": "yarn",
                "factor": 2.0,
                "max_position_embeddings": 16384,
                "original_max_position_embeddings": 8192,
                "fine_grained": False,
            },
        },
    ),
    Case(
        "prompt-template-known",
        [("base_models[0].prompt_template", "applied", "prompt format")],
        patch={"base_models[0].prompt_template": "chatml"},
    ),
    Case(
        "prompt-template-unknown",
        [("base_models[0].prompt_template", "refused", "not servable")],
        patch={"base_models[0].prompt_template": "alpaca-nope"},
        servable=None,
    ),
    Case(
        "schema-v1",
        [
            ("schema_version", "applied", "schema 1.0"),
            ("base_model.name", "applied", "matches the served base model"),
            ("base_model.sha256", "checked", "empty"),
            ("base_model.quantization", "checked", "engine serves"),
            ("base_model.rope_scaling.type", "checked", "rope_scaling"),
            ("base_model.rope_scaling.factor", "checked", "rope_scaling"),
            ("base_model.rope_scaling.max_position_embeddings", "checked", "rope_scaling"),
            ("base_model.rope_scaling.original_max_position_embeddings", "checked", "rope_scaling"),
            ("base_model.rope_scaling.fine_grained", "checked", "rope_scaling"),
            ("base_model.prompt_template", "applied", "prompt format"),
            ("adapters[0].type", "applied", "LoRARequest"),
            ("adapters[0].path", "applied", "folder of adapter_config.json"),
            ("adapters[0].r", "checked", "agrees"),
            ("adapters[0].alpha", "checked", "agrees"),
            ("adapters[0].dropout", "checked", "agrees"),
            ("adapters[0].target_modules", "checked", "non-zero lora_B"),
            ("adapters[0].sha256", "checked", "nothing to verify"),
            ("adapters[0].size_bytes", "checked", "nothing to verify"),
            ("adapters[0].scaling", "checked", "alpha/r"),
            ("adapters[0].checkpoint_step", "checked", SHOWN),
        ],
        build=lambda folder, data: _to_v1(data),
    ),
    Case(
        "schema-v1-adapters-inside-base-model",
        [(p, "invalid", "adapters belong at the root") for p in ("base_model.adapters",)],
        build=lambda folder, data: _to_v1(data, inside=True),
        valid=False,
        servable=False,
    ),
    Case(
        "descriptive-fields",
        [
            ("description", "checked", SHOWN),
            ("author", "checked", SHOWN),
            ("homepage", "checked", SHOWN),
            ("license", "checked", SHOWN),
            ("repository", "checked", SHOWN),
            ("tags", "checked", SHOWN),
            ("capabilities", "checked", SHOWN),
            ("limitations", "checked", SHOWN),
            ("quality_metrics.exact_match", "checked", SHOWN),
            ("perf.latency_ms_overhead", "checked", SHOWN),
            ("perf.vram_mb_overhead", "checked", SHOWN),
            ("perf.supported_batch_sizes", "checked", SHOWN),
            ("routing.keywords", "checked", "no automatic expert selection"),
            ("routing.exclude_keywords", "checked", "no automatic expert selection"),
            ("routing.router_hint", "checked", "no automatic expert selection"),
            ("routing.priority", "checked", "no automatic expert selection"),
        ],
        patch={
            "description": "d",
            "author": "a",
            "homepage": "https://example.org",
            "license": "MIT",
            "repository": "https://example.org/repo.git",
            "tags": ["t"],
            "capabilities": ["c"],
            "limitations": ["l"],
            "quality_metrics": {"exact_match": 0.9},
            "perf": {"latency_ms_overhead": 1.0, "vram_mb_overhead": 10, "supported_batch_sizes": [1, 2]},
            "routing": {"keywords": ["k"], "exclude_keywords": ["x"], "router_hint": "a=b", "priority": 0.5},
        },
    ),
    Case(
        "descriptive-objects",
        [
            ("repository.url", "checked", SHOWN),
            ("limitations[0].pattern", "checked", SHOWN),
            ("limitations[0].description", "checked", SHOWN),
            ("limitations[0].example", "checked", SHOWN),
            ("limitations[0].workaround", "checked", SHOWN),
        ],
        patch={
            "repository": {"type": "git", "url": "https://example.org/repo.git"},
            "limitations": [{"pattern": "p", "description": "d", "example": "e", "workaround": "w"}],
        },
    ),
    Case(
        "soft-prompts",
        [
            ("soft_prompts[0].name", "applied", "the default soft prompt"),
            ("soft_prompts[0].path", "applied", "the default soft prompt"),
            ("soft_prompts[0].tokens", "applied", "tensor shape [4, 576]"),
            ("soft_prompts[0].init_method", "applied", "by the trainer"),
            ("soft_prompts[0].init_text", "applied", "by the trainer"),
            ("soft_prompts[0].purpose", "checked", SHOWN),
            ("soft_prompts[0].sha256", "applied", "verified"),
            ("soft_prompts[1].name", "applied", "when a request names it"),
            ("soft_prompts[1].init_method", "refused", "trains soft_prompts[0] only"),
            ("soft_prompts[1].init_text", "refused", "trains soft_prompts[0] only"),
        ],
        build=lambda folder, data: (
            _soft_prompts(("a", 4, 4), ("b", 3, 3))(folder, data),
            data.update(
                soft_prompts=[
                    _sp(
                        "a",
                        4,
                        init_method="text",
                        init_text="hi",
                        purpose="p",
                        sha256=__import__("hashlib").sha256((folder / "sp/a.safetensors").read_bytes()).hexdigest(),
                    ),
                    _sp("b", 3, init_method="text", init_text="ho"),
                ]
            ),
        ),
    ),
    Case(
        "soft-prompt-tokens-differ",
        [("soft_prompts[0].tokens", "refused", "tensor has 3 tokens, manifest says 4")],
        build=lambda folder, data: (
            _soft_prompts(("a", 3, 4))(folder, data),
            data.update(soft_prompts=[_sp("a", 4)]),
        ),
        valid=False,
        servable=False,
    ),
    Case(
        "soft-prompt-sha-mismatch",
        [("soft_prompts[0].sha256", "refused", "does not match")],
        build=lambda folder, data: (
            _soft_prompts(("a", 4, 4))(folder, data),
            data.update(soft_prompts=[_sp("a", 4, sha256="1" * 64)]),
        ),
        valid=False,
        servable=False,
    ),
    Case(
        "soft-prompt-missing",
        [("soft_prompts[0].path", "refused", "not present")],
        patch={"soft_prompts": [_sp("a", 4)]},
        servable=False,
        reason="soft prompt file",
    ),
    Case(
        "sampling-defaults",
        [(f"training.decoding.{k}", "applied", "expert default of SamplingParams") for k in SAMPLING],
        patch={"training": {"decoding": dict(SAMPLING)}},
    ),
    Case(
        "grammar-json",
        [
            ("training.decoding.use_grammar", "applied", "constrained decoding on"),
            ("training.decoding.grammar_type", "applied", "JSON grammar"),
        ],
        patch={"training": {"decoding": {"use_grammar": True, "grammar_type": "json"}}},
    ),
    Case(
        "grammar-off-with-type",
        [
            ("training.decoding.use_grammar", "checked", "use_grammar is false: nothing is constrained"),
            ("training.decoding.grammar_type", "checked", "use_grammar is false: nothing is constrained"),
            ("training.decoding.grammar_file", "checked", "use_grammar is false: nothing is constrained"),
        ],
        patch={"training": {"decoding": {"use_grammar": False, "grammar_type": "json", "grammar_file": "g.gbnf"}}},
        build=_files(**{"g.gbnf": GRAMMAR}),
    ),
    Case(
        "grammar-type-alone",
        [("training.decoding.grammar_type", "checked", "neither use_grammar: true nor a grammar_file")],
        patch={"training": {"decoding": {"grammar_type": "json"}}},
    ),
    Case(
        "grammar-file",
        [
            ("training.decoding.grammar_file", "applied", "compiles with xgrammar"),
            ("training.decoding.grammar_type", "applied", "the grammar_file decides"),
        ],
        patch={"training": {"decoding": {"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "g.gbnf"}}},
        build=_files(**{"g.gbnf": GRAMMAR}),
    ),
    Case(
        "grammar-file-copying",
        [("training.decoding.grammar_file", "applied", "its rule input-span copies words from each request's text")],
        patch={"training": {"decoding": {"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "g.gbnf"}}},
        build=_files(**{"g.gbnf": 'root ::= "{\\"v\\": \\"" input-span "\\"}"\n'}),
    ),
    Case(
        "grammar-file-missing",
        [("training.decoding.grammar_file", "refused", "not found")],
        patch={"training": {"decoding": {"use_grammar": True, "grammar_file": "nope.gbnf"}}},
        servable=False,
        reason="not found",
    ),
    Case(
        "grammar-file-gateway-rule",
        [("training.decoding.grammar_file", "refused", "names starting with 'input-span-' are the gateway's")],
        patch={"training": {"decoding": {"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "g.gbnf"}}},
        build=_files(**{"g.gbnf": 'root ::= input-span-x\ninput-span-x ::= "a"\n'}),
        servable=False,
    ),
    Case(
        "grammar-file-broken",
        [("training.decoding.grammar_file", "refused", "does not compile")],
        patch={"training": {"decoding": {"use_grammar": True, "grammar_file": "g.gbnf"}}},
        build=_files(**{"g.gbnf": "root ::= missing-rule\n"}),
        servable=False,
        reason="does not compile",
    ),
    Case(
        "output-checks",
        [
            ("training.decoding.validation", "applied", "parsed as JSON"),
            ("training.decoding.validation_cmd", "refused", "never runs commands"),
        ],
        patch={"training": {"decoding": {"validation": "json", "validation_cmd": "rm -rf /"}}},
    ),
    Case(
        "output-check-unknown",
        [("training.decoding.validation", "refused", "no 'sql' output checker")],
        patch={"training": {"decoding": {"validation": "sql"}}},
    ),
    Case(
        "dataset-used",
        [
            ("training.dataset.path", "applied", "read by the trainer"),
            ("training.dataset.validation_path", "applied", "read by the trainer"),
            ("training.dataset.test_path", "applied", "the test cases of `expert eval`"),
            ("training.dataset.format", "applied", "JSON lines"),
            ("training.dataset.streaming", "checked", "reads the whole file"),
            ("training.dataset.field_mapping.input", "applied", "column names"),
        ],
        patch={
            "training": {
                "dataset": {
                    "path": "train.jsonl",
                    "validation_path": "val.jsonl",
                    "test_path": "test.jsonl",
                    "format": "jsonl",
                    "streaming": False,
                    "field_mapping": {"input": "question"},
                }
            }
        },
    ),
    Case(
        "dataset-not-used",
        [
            ("training.dataset.test_path", "checked", "names another file, and `expert eval` scores that one"),
            ("training.dataset.format", "refused", "reads 'jsonl' only"),
            ("training.dataset.streaming", "refused", "streaming is not implemented"),
            ("evaluation.test_cases", "applied", "test cases of `expert eval`"),
        ],
        patch={
            "training": {"dataset": {"test_path": "t.jsonl", "format": "parquet", "streaming": True}},
            "evaluation": {"test_cases": "tests/cases.json"},
        },
    ),
    Case(
        "dataset-test-named-twice",
        [
            (
                "training.dataset.test_path",
                "checked",
                "evaluation.test_cases comes first in `expert eval`; the trainer never reads it; it names the same file",
            )
        ],
        patch={
            "training": {"dataset": {"test_path": "datasets/test.jsonl"}},
            "evaluation": {"test_cases": "datasets/./test.jsonl"},
        },
    ),
    Case(
        "dataset-descriptive",
        [
            ("training.dataset.source", "checked", SHOWN),
            ("training.dataset.sources[0].name", "checked", SHOWN),
            ("training.dataset.sources[0].original_examples", "checked", SHOWN),
            ("training.dataset.sources[0].processed_examples", "checked", SHOWN),
            ("training.dataset.sources[0].duplicates_removed", "checked", SHOWN),
            ("training.dataset.sources[0].invalid_removed", "checked", SHOWN),
            ("training.dataset.splits.train", "checked", SHOWN),
            ("training.dataset.preprocessing.dedupe", "checked", SHOWN),
            ("training.dataset.task_distribution.a", "checked", SHOWN),
            ("training.dataset.format_distribution.b", "checked", SHOWN),
            ("training.trained_on", "checked", SHOWN),
            ("training.base_model_version", "checked", SHOWN),
            ("training.checkpoint", "checked", SHOWN),
            ("training.packaging_checkpoint", "checked", SHOWN),
            ("training.alternative_checkpoints.best.path", "checked", SHOWN),
            ("training.alternative_checkpoints.best.step", "checked", SHOWN),
            ("training.alternative_checkpoints.best.score", "checked", SHOWN),
            ("training.alternative_checkpoints.best.win_rate", "checked", SHOWN),
            ("training.alternative_checkpoints.best.best_for", "checked", SHOWN),
        ],
        patch={
            "training": {
                "dataset": {
                    "source": "s",
                    "sources": [
                        {
                            "name": "n",
                            "original_examples": 1,
                            "processed_examples": 1,
                            "duplicates_removed": 0,
                            "invalid_removed": 0,
                        }
                    ],
                    "splits": {"train": 10},
                    "preprocessing": {"dedupe": True},
                    "task_distribution": {"a": 0.5},
                    "format_distribution": {"b": 0.5},
                },
                "trained_on": "2025-01-01",
                "base_model_version": "x",
                "checkpoint": "checkpoint-1",
                "packaging_checkpoint": "checkpoint-1",
                "alternative_checkpoints": {
                    "best": {"path": "p", "step": 1, "score": 1.0, "win_rate": 0.5, "best_for": ["x"]}
                },
            }
        },
    ),
    Case(
        "trainer-keys-used",
        [(f"training.config.{k}", "applied", "by the trainer") for k in TRAINER_APPLIED]
        + [("training.config.warmup_ratio", "checked", "warmup_steps decides")]
        + [("training.config.epochs", "checked", "max_steps decides")]
        + [("training.config.prompt_epochs", "applied", "by the trainer")]
        + [(f"training.config.{k}", "checked", "the adapter entry's") for k in ("rank", "alpha", "dropout")]
        + [("training.config.target_modules", "checked", "the adapter entry's")],
        patch={
            "training": {
                "config": {
                    **TRAINER_APPLIED,
                    "warmup_ratio": 0.1,
                    "epochs": 2,
                    "prompt_epochs": 1,
                    "rank": 16,
                    "alpha": 32,
                    "dropout": 0.1,
                    "target_modules": ["v_proj"],
                }
            }
        },
    ),
    Case(
        "trainer-keys-without-adapter",
        [
            ("training.config.rank", "applied", "LoRA rank"),
            ("training.config.alpha", "applied", "LoRA alpha"),
            ("training.config.dropout", "applied", "LoRA dropout"),
            ("training.config.target_modules", "applied", "LoRA target modules"),
            ("training.config.epochs", "applied", "by the trainer"),
            ("training.config.warmup_ratio", "applied", "by the trainer"),
        ],
        adapter="none",
        patch={
            "training": {
                "config": {
                    "rank": 8,
                    "alpha": 16,
                    "dropout": 0.0,
                    "target_modules": ["q_proj"],
                    "epochs": 1,
                    "warmup_ratio": 0.1,
                }
            }
        },
    ),
    Case(
        "trainer-keys-refused",
        [(f"training.config.{k}", "refused", "") for k in TRAINER_REFUSED]
        + [
            ("training.config.method", "refused", "'sft') only"),
            ("training.config.adapter_type", "refused", "LoRA adapters only"),
            ("training.config.lr_scheduler", "refused", "not implemented"),
        ],
        patch={
            "training": {
                "config": {**TRAINER_REFUSED, "method": "dpo", "adapter_type": "dora", "lr_scheduler": "polynomial"}
            }
        },
    ),
    Case(
        "runtime-cpu-honoured",
        [
            ("runtime.candle_compatible", "checked", "not Candle"),
            ("runtime.attention_kernel", "applied", "CPU_ATTN"),
            ("runtime.requires_kv_cache_persistence", "applied", "enable_prefix_caching=True"),
            ("runtime.kv_cache_dtype", "applied", "kv_cache_dtype='fp8'"),
            ("runtime.max_model_len", "applied", "max_model_len=1024"),
        ],
        patch={
            "runtime": {
                "candle_compatible": True,
                "attention_kernel": "cpu",
                "requires_kv_cache_persistence": True,
                "kv_cache_dtype": "fp8",
                "max_model_len": 1024,
            }
        },
    ),
    Case(
        "runtime-not-honoured",
        [
            ("runtime.attention_backend", "refused", "every attention backend is CPU_ATTN"),
            ("runtime.kv_cache_dtype", "refused", "supports kv_cache_dtype"),
            ("runtime.prefix_caching", "applied", "enable_prefix_caching=False"),
            ("runtime.requires_kv_cache_persistence", "refused", "prefix_caching: false in this manifest"),
            ("runtime.attention_kernel", "refused", "overridden by runtime.attention_backend"),
        ],
        patch={
            "runtime": {
                "attention_backend": "FLASH_ATTN",
                "attention_kernel": "sdpa",
                "kv_cache_dtype": "bfloat16",
                "prefix_caching": False,
                "requires_kv_cache_persistence": True,
            }
        },
    ),
    Case(
        "runtime-backend-unknown-and-persistence-off",
        [
            ("runtime.attention_backend", "refused", "unknown attention backend"),
            ("runtime.attention_kernel", "refused", "overridden by runtime.attention_backend"),
            ("runtime.requires_kv_cache_persistence", "checked", "false asks for nothing"),
            ("runtime.prefix_caching", "applied", "enable_prefix_caching=True"),
        ],
        patch={
            "runtime": {
                "attention_backend": "NOPE_ATTN",
                "attention_kernel": "nope_attn",
                "requires_kv_cache_persistence": False,
                "prefix_caching": True,
            }
        },
    ),
    Case(
        "constraints-met",
        [
            ("constraints.load_order", "applied", "lowest first"),
            ("constraints.max_chain", "checked", "no chaining"),
            ("constraints.requires", "applied", "every required expert is loaded"),
            ("constraints.incompatible_with", "applied", "none of them is loaded"),
        ],
        patch={
            "constraints": {
                "load_order": 5,
                "max_chain": 2,
                "requires": ["dep@>=1.0.0", "dep"],
                "incompatible_with": ["other"],
            }
        },
        build=_sibling("dep", "1.2.0"),
    ),
    Case(
        "constraints-requires-unmet",
        [("constraints.requires", "refused", "'dep' is not loaded")],
        patch={"constraints": {"requires": ["dep@>=1.0.0"]}},
        servable=False,
        reason="constraints.requires",
    ),
    Case(
        "constraints-requires-old-version",
        [("constraints.requires", "refused", "does not satisfy 'dep@>=1.0.0'")],
        patch={"constraints": {"load_order": 5, "requires": ["dep@>=1.0.0"]}},
        build=_sibling("dep", "0.9.0"),
        servable=False,
        reason="constraints.requires",
    ),
    Case(
        "constraints-incompatible-loaded",
        [("constraints.incompatible_with", "refused", "'rival' loaded")],
        patch={"constraints": {"load_order": 5, "incompatible_with": ["rival"]}},
        build=_sibling("rival", "1.0.0"),
        servable=False,
        reason="constraints.incompatible_with",
    ),
    Case(
        "evaluation",
        [
            ("evaluation.test_cases[0].input", "applied", "a test case of `expert eval`"),
            ("evaluation.metric", "applied", "rows of the answer's query"),
            ("evaluation.database", "applied", "SQLite file"),
        ],
        patch={
            "evaluation": {"test_cases": [{"input": "q", "expected": "a"}], "metric": "sql_execution", "database": "db"}
        },
    ),
    Case(
        "evaluation-database-unused",
        [("evaluation.metric", "applied", "exact match"), ("evaluation.database", "checked", "not used")],
        patch={"evaluation": {"metric": "exact_match", "database": "db"}},
    ),
    Case(
        "integrity-map",
        [
            ("integrity.files.adapter_model.safetensors", "applied", "verified"),
            ("integrity.files.empty.txt", "checked", "empty hash"),
            ("integrity.signature", "checked", "unverified"),
            ("integrity.signature_algorithm", "checked", "unverified"),
            ("integrity.algorithm", "checked", "unverified"),
            ("integrity.public_key", "checked", "unverified"),
            ("integrity.signed_by", "checked", "unverified"),
            ("integrity.publisher", "checked", "unverified"),
            ("integrity.signed_at", "checked", "unverified"),
            ("integrity.created_at", "checked", SHOWN),
        ],
        build=lambda folder, data: data.update(
            integrity={
                "files": {
                    "adapter_model.safetensors": __import__("hashlib")
                    .sha256((folder / "adapter_model.safetensors").read_bytes())
                    .hexdigest(),
                    "empty.txt": "",
                },
                "signature": "s",
                "signature_algorithm": "ed25519",
                "algorithm": "sha256",
                "public_key": "k",
                "signed_by": "me",
                "publisher": "me",
                "signed_at": "2025-01-01",
                "created_at": "2025-01-01",
            }
        ),
    ),
    Case(
        "integrity-list",
        [
            ("integrity.files[0].path", "applied", "verified"),
            ("integrity.files[0].sha256", "applied", "verified"),
            ("integrity.files[0].size_bytes", "checked", "the sha256 is compared"),
        ],
        build=lambda folder, data: data.update(
            integrity={
                "files": [
                    {
                        "path": "adapter_model.safetensors",
                        "sha256": __import__("hashlib")
                        .sha256((folder / "adapter_model.safetensors").read_bytes())
                        .hexdigest(),
                        "size_bytes": 1,
                    }
                ]
            }
        ),
    ),
    Case(
        "integrity-mismatch",
        [("integrity.files.adapter_model.safetensors", "refused", "does not match")],
        patch={"integrity": {"files": {"adapter_model.safetensors": "2" * 64}}},
        valid=False,
        servable=False,
    ),
]


def _to_v1(data: dict[str, Any], inside: bool = False) -> None:
    adapters = data["base_models"][0]["adapters"]
    for a in adapters:
        a.update(sha256="", size_bytes=0, scaling="default", checkpoint_step=3)
    data["schema_version"] = "1.0"
    data["base_model"] = {
        "name": BASE_ID,
        "sha256": "",
        "quantization": "bf16",
        "prompt_template": "chatml",
        "rope_scaling": {
            "type": "yarn",
            "factor": 2.0,
            "max_position_embeddings": 16384,
            "original_max_position_embeddings": 8192,
            "fine_grained": False,
        },
    }
    if inside:
        data["base_model"]["adapters"] = adapters
    else:
        data["adapters"] = adapters
    del data["base_models"]


_BASE: BaseInfo


@pytest.fixture(scope="module")
def base(base_path: Path) -> BaseInfo:
    global _BASE
    from server.experts.base_model import base_info

    _BASE = base_info(Settings())
    assert _BASE.path is not None and _BASE.hidden_size == HIDDEN
    return _BASE


def run_case(case: Case, root: Path, base: BaseInfo) -> ValidationResult:
    folder = root / case.id / "fx"
    folder.mkdir(parents=True)
    data = base_manifest()
    if case.adapter == "none":
        data["base_models"][0]["adapters"] = []
    else:
        entry = adapter_files(
            folder, zero=case.adapter == "zero", module="nope_proj" if case.adapter == "missing-module" else "q_proj"
        )
        data["base_models"][0]["adapters"] = [entry]
    for path, value in case.patch.items():
        set_path(data, path, copy.deepcopy(value))
    if case.build is not None:
        case.build(folder, data)
    (folder / "manifest.json").write_text(json.dumps(data))
    return validate_path(
        folder,
        base,
        platform="cpu",
        engine_defaults=Settings().engine_defaults(),
        max_lora_rank=16,
        known_backends=BACKENDS,
        kv_cache_dtypes=CPU_KV_DTYPES,
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, base: BaseInfo) -> dict[str, ValidationResult]:
    root = tmp_path_factory.mktemp("fates")
    return {case.id: run_case(case, root, base) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, results: dict[str, ValidationResult]) -> None:
    result = results[case.id]
    by_field = {f.field: f for f in result.fields}
    for path, fate, text in case.expect:
        if fate == "invalid":
            assert not result.valid and any(e["field"] == path and text in e["message"] for e in result.errors), (
                result.errors
            )
            continue
        assert path in by_field, f"{path} not reported: {sorted(by_field)}"
        got = by_field[path]
        assert (got.fate, text in got.detail) == (fate, True), f"{path}: {got}"
    assert result.valid == case.valid, result.errors
    if case.servable is not None:
        assert result.servable == case.servable, result.reasons
        assert result.exit_code() == (0 if case.servable else (2 if case.valid else 1))
    if case.reason:
        assert any(case.reason in r for r in result.reasons), result.reasons


def reference_rows(results: dict[str, ValidationResult]) -> list[tuple[str, str, str, str]]:
    rows: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    for case in CASES:
        by_field = {f.field: f for f in results[case.id].fields}
        for path, fate, text in case.expect:
            key = (normalise(path), fate)
            what = text if fate == "invalid" else by_field[path].detail
            what = what.replace("|", "\\|").replace("\n", " ")
            if key not in rows:
                rows[key] = (key[0], fate, what, f"tests/manifest/test_field_reference.py::test_case[{case.id}]")
    return list(rows.values())


def test_reference_is_current(results: dict[str, ValidationResult]) -> None:
    rows = reference_rows(results)
    text = render(rows)
    if os.environ.get("EXPERT_WRITE_REFERENCE") == "1":
        FIELDS_MD.write_text(text)
    assert FIELDS_MD.is_file() and FIELDS_MD.read_text() == text, (
        "server/manifest/FIELDS.md is stale: EXPERT_WRITE_REFERENCE=1 .venv/bin/python -m pytest tests/manifest/test_field_reference.py"
    )


def test_every_schema_field_has_a_fate_shown_by_a_test(results: dict[str, ValidationResult]) -> None:
    shown = {row[0] for row in reference_rows(results)}
    # a v1 base_model never holds adapters: every field under it is the same schema error
    missing = [p for p in schema_paths() if p not in shown and not p.startswith("base_model.adapters[]")]
    assert missing == [], f"fields of `expert schema` with no case showing a fate: {missing}"
    assert "base_model.adapters" in shown


def test_no_fate_without_a_row(results: dict[str, ValidationResult]) -> None:
    """Every fate the code gives any field of any case is a row of the reference."""
    rows = {(r[0], r[1]) for r in reference_rows(results)}
    unlisted = sorted(
        {
            (normalise(f.field), f.fate, case.id)
            for case in CASES
            for f in results[case.id].fields
            if f.detail not in ("comment", "empty") and (normalise(f.field), f.fate) not in rows
        }
    )
    assert unlisted == [], unlisted


def test_hivellm_manifests_get_only_listed_fates(results: dict[str, ValidationResult], base: BaseInfo) -> None:
    """The review's method on hivellm's own manifests: every fate they get is a row of the
    reference (shown by a case), none is 'no code of this server uses this field'."""
    rows = {(r[0], r[1]) for r in reference_rows(results)}
    fixtures = REPO / "tests" / "fixtures" / "hivellm"
    for file in sorted(fixtures.glob("*.manifest.json")):
        result = validate_path(
            file,
            base,
            platform="cpu",
            engine_defaults=Settings().engine_defaults(),
            max_lora_rank=16,
            known_backends=BACKENDS,
            kv_cache_dtypes=CPU_KV_DTYPES,
        )
        assert result.valid, (file.name, result.errors)
        assert not result.servable  # DoRA adapters, a Windows base path
        for f in result.fields:
            assert "no code of this server uses" not in f.detail, (file.name, f)
            if f.detail != "comment" and f.detail != "empty":
                assert (normalise(f.field), f.fate) in rows, (file.name, f)


def test_platform_lists_match_vllm() -> None:
    """The lists these cases pass are the installed vLLM's, as `expert validate` passes them
    (read in a subprocess: importing vLLM warns, and warnings are errors here)."""
    code = (
        "import json; from server.engine.vllm_engine import known_attention_backends as k, supported_kv_cache_dtypes as s;"
        "print(json.dumps([sorted(k()), sorted(s('cpu')), s('cuda')]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    backends, cpu_kv, cuda_kv = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(cpu_kv) == CPU_KV_DTYPES and cuda_kv is None
    assert set(backends) >= BACKENDS - {"FLEX_ATTENTION"}
