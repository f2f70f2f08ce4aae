"""Every field of a manifest gets a fate: applied, checked, or refused with a reason.

`field_fates` walks the manifest as written (so every key present is listed, `_` comments
included) and gives each leaf its fate from the rules below, refined by what the artifact
checks and the runtime-hints plan found. The rules are the table of docs/MANIFEST.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from server.manifest.artifacts import ArtifactReport
from server.manifest.hints import HintOutcome
from server.manifest.schema import Manifest

Fate = Literal["applied", "checked", "refused"]


@dataclass(frozen=True)
class FieldFate:
    field: str
    fate: Fate
    detail: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


# training.config keys the trainer honours; every other key is refused with a reason.
TRAINER_KEYS = {
    "method": "training method (sft)",
    "adapter_type": "adapter type to train (lora)",
    "rank": "LoRA rank",
    "alpha": "LoRA alpha",
    "dropout": "LoRA dropout",
    "target_modules": "LoRA target modules",
    "epochs": "epochs (unless max_steps)",
    "max_steps": "optimizer steps",
    "learning_rate": "AdamW learning rate (LoRA phase)",
    "prompt_learning_rate": "AdamW learning rate (soft-prompt phase)",
    "batch_size": "micro-batch size",
    "gradient_accumulation_steps": "gradient accumulation",
    "warmup_steps": "warm-up steps",
    "warmup_ratio": "warm-up ratio",
    "lr_scheduler": "learning-rate schedule (linear, cosine, constant)",
    "max_seq_length": "longest row in tokens (a longer row is refused with its line number)",
    "seed": "random seed",
    "logging_steps": "progress-bar loss interval",
}
TRAINER_REFUSALS = {
    "use_unsloth": "the trainer uses PEFT, not Unsloth",
    "optim": "the trainer uses torch AdamW",
    "torch_compile": "the trainer runs eager",
    "torch_compile_backend": "the trainer runs eager",
    "torch_compile_mode": "the trainer runs eager",
    "use_cuda_graphs": "the trainer does not capture CUDA graphs",
    "cuda_graph_warmup_steps": "the trainer does not capture CUDA graphs",
    "flash_attention_2": "the trainer uses the model's default attention",
    "use_sdpa": "the trainer uses the model's default attention",
    "memory_efficient_attention": "the trainer uses the model's default attention",
    "fp16": "the trainer trains in float32 on CPU and bfloat16 autocast on CUDA",
    "bf16": "the trainer trains in float32 on CPU and bfloat16 autocast on CUDA",
    "use_tf32": "the trainer leaves TF32 to torch's default",
    "packing": "the trainer does not pack sequences",
    "group_by_length": "the trainer does not group by length",
    "gradient_checkpointing": "not needed for the small models trained here; not implemented",
    "activation_checkpointing": "not implemented",
    "save_steps": "the trainer saves once, at the end",
    "save_strategy": "the trainer saves once, at the end",
    "save_total_limit": "the trainer saves once, at the end",
    "eval_steps": "evaluation is `expert eval`, after training",
    "evaluation_strategy": "evaluation is `expert eval`, after training",
    "load_best_model_at_end": "the trainer keeps the final weights",
    "metric_for_best_model": "the trainer keeps the final weights",
    "greater_is_better": "the trainer keeps the final weights",
    "memory_clear_every": "not needed; not implemented",
    "dataloader_num_workers": "data is tokenised in memory",
    "dataloader_pin_memory": "data is tokenised in memory",
    "dataloader_prefetch_factor": "data is tokenised in memory",
    "dataloader_persistent_workers": "data is tokenised in memory",
    "pretokenized_cache": "data is tokenised in memory",
}
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "max_tokens",
    "seed",
    "stop_sequences",
)
KNOWN_TEMPLATES = {"chatml", "qwen3", "qwen2", "qwen", "default", "base", "llama3", "smollm"}
# Output checkers the server has (training.decoding.validation).
OUTPUT_CHECKERS = {"json": "JSON parse", "json_syntax": "JSON parse"}

Rule = Callable[[str, Any, Manifest], tuple[Fate, str]]
_SHOWN = ("checked", "shown by GET /experts/{name}")


def _rules() -> list[tuple[str, Rule]]:
    def fixed(fate: Fate, detail: str) -> Rule:
        return lambda path, value, m: (fate, detail)

    def template(path: str, value: Any, m: Manifest) -> tuple[Fate, str]:
        if str(value).lower() in KNOWN_TEMPLATES:
            return "applied", "chat template: the base tokenizer's own (ChatML family)"
        return "refused", f"unknown prompt template {value!r}; known: {', '.join(sorted(KNOWN_TEMPLATES))}"

    def adapter_type(path: str, value: Any, m: Manifest) -> tuple[Fate, str]:
        if value == "lora":
            return "applied", "served through a vLLM LoRARequest"
        return (
            "refused",
            f"{value} adapters cannot be served: vLLM serves plain LoRA only (valid manifest, unservable expert)",
        )

    def validation(path: str, value: Any, m: Manifest) -> tuple[Fate, str]:
        d = m.decoding
        kind = str(value).lower()
        if kind in OUTPUT_CHECKERS or (
            kind in ("parser-strict", "strict") and (d.grammar_type or "").lower() == "json"
        ):
            return "applied", "each answer is parsed as JSON; the outcome is counted per expert in /metrics"
        return "refused", f"no {value!r} output checker exists in this server (available: JSON parse)"

    def trainer_key(path: str, value: Any, m: Manifest) -> tuple[Fate, str]:
        key = path.split(".")[2].split("[")[0]
        if key in TRAINER_KEYS:
            if key == "method" and value != "sft":
                return "refused", f"the trainer implements supervised fine-tuning ('sft') only, not {value!r}"
            if key == "adapter_type" and value != "lora":
                return "refused", f"the trainer trains LoRA adapters only, not {value!r}"
            if key == "lr_scheduler" and value not in ("linear", "cosine", "constant"):
                return "refused", f"schedule {value!r} not implemented (linear, cosine, constant)"
            return "applied", f"by the trainer: {TRAINER_KEYS[key]}"
        return "refused", TRAINER_REFUSALS.get(key, "not used by the trainer")

    def sampling(path: str, value: Any, m: Manifest) -> tuple[Fate, str]:
        return "applied", "expert default for SamplingParams; a request value overrides it"

    return [
        (r"name", fixed("applied", "the OpenAI model id")),
        (r"version", fixed("applied", "reported in /v1/models, /experts and X-Expert-Version")),
        (r"schema_version", fixed("applied", "selects v1/v2 parsing")),
        (r"(description|author|homepage|license|repository|tags|capabilities)(\..*)?", fixed(*_SHOWN)),
        (r"(limitations|quality_metrics|perf)(\..*)?", fixed(*_SHOWN)),
        (r"base_models?\.name", fixed("applied", "must match a base model this server serves")),
        (r"base_models?\.sha256", fixed("checked", "empty: no weight hash to compare")),
        (
            r"base_models?\.(quantization|rope_scaling\..*)",
            fixed("checked", "compared with the engine serving the base"),
        ),
        (r"base_models?\.prompt_template", template),
        (r"(base_models\.)?adapters\.type", adapter_type),
        (
            r"(base_models\.)?adapters\.(r|alpha|target_modules|dropout)",
            fixed("checked", "compared with adapter_config.json"),
        ),
        (r"(base_models\.)?adapters\.scaling", fixed("checked", "informational: vLLM scales LoRA by alpha/r")),
        (r"(base_models\.)?adapters\.checkpoint_step", fixed(*_SHOWN)),
        (r"(base_models\.)?adapters\.path", fixed("applied", "folder of the adapter files")),
        (r"(base_models\.)?adapters\.(sha256|size_bytes)", fixed("applied", "verified on load and reload")),
        (r"soft_prompts\.(name|path|tokens)", fixed("applied", "prepended to the prompt as prompt embeddings")),
        (r"soft_prompts\.sha256", fixed("applied", "verified on load and reload")),
        (r"soft_prompts\.(init_method|init_text)", fixed("applied", "by the trainer (prompt-tuning initialisation)")),
        (r"soft_prompts\.purpose", fixed(*_SHOWN)),
        (r"training\.decoding\.(" + "|".join(SAMPLING_FIELDS) + r")", sampling),
        (
            r"training\.decoding\.(use_grammar|grammar_type|grammar_file)",
            fixed("applied", "constrained decoding through vLLM structured outputs"),
        ),
        (r"training\.decoding\.validation", validation),
        (r"training\.decoding\.validation_cmd", fixed("refused", "the server never runs commands named in a manifest")),
        (
            r"training\.dataset\.(path|validation_path|test_path|format|field_mapping\..*)",
            fixed("applied", "by the trainer"),
        ),
        (r"training\.dataset\..*", fixed("checked", "descriptive: shown, not used")),
        (r"training\.config\..*", trainer_key),
        (
            r"training\.(trained_on|base_model_version|checkpoint|packaging_checkpoint|alternative_checkpoints\..*)",
            fixed(*_SHOWN),
        ),
        (r"runtime\.candle_compatible", fixed("checked", "meaningless here: this server runs vLLM, not Candle")),
        (r"runtime\..*", fixed("applied", "engine arg of the engine serving the expert")),
        (r"routing\..*", fixed("checked", "used when automatic expert selection exists")),
        (r"constraints\.(load_order|requires|incompatible_with)", fixed("applied", "at startup load")),
        (r"constraints\.max_chain", fixed("checked", "no chaining of experts exists yet")),
        (r"evaluation\.test_cases.*", fixed("applied", "by `expert eval`")),
        (r"integrity\.files.*", fixed("applied", "verified on load and reload")),
        (r"integrity\..*", fixed("checked", "unverified: no signing key is configured")),
    ]


_COMPILED = [(re.compile(p + r"$"), r) for p, r in _rules()]
_INDEX = re.compile(r"\[\d+\]")


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    """Leaf fields: scalars and lists of scalars are leaves; objects and lists of objects recurse."""
    if isinstance(value, dict):
        if not value:
            return [(path, value)]
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _leaves(v, f"{path}.{k}" if path else str(k))
        return out
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        out = []
        for i, v in enumerate(value):
            out += _leaves(v, f"{path}[{i}]")
        return out
    return [(path, value)]


def field_fates(
    raw: dict[str, Any], m: Manifest, artifacts: ArtifactReport | None = None, hints: list[HintOutcome] | None = None
) -> list[FieldFate]:
    hint_by_field = {h.field: h for h in hints or []}
    out: list[FieldFate] = []
    for path, value in _leaves(raw, ""):
        last = path.rsplit(".", 1)[-1]
        if last.startswith("_"):
            out.append(FieldFate(path, "checked", "comment"))
            continue
        norm = _INDEX.sub("", path)
        fate, detail = "refused", "no rule for this field"
        if value == [] or value == {}:
            out.append(FieldFate(path, "checked", "empty"))
            continue
        for pattern, rule in _COMPILED:
            if pattern.match(norm):
                fate, detail = rule(path, value, m)
                break
        finding = artifacts.findings.get(path) if artifacts else None
        if finding is not None:
            fate = finding.fate or fate
            detail = finding.detail if finding.fate else f"{detail}; {finding.detail}"
        hint = hint_by_field.get(path)
        if hint is not None:
            fate = "applied" if hint.honoured else "refused"
            detail = (
                f"{hint.engine_arg}={hint.effective!r}"
                + ("" if hint.honoured else f" (asked {hint.requested!r})")
                + f": {hint.reason}"
            )
        out.append(FieldFate(path, fate, detail))
    return out
