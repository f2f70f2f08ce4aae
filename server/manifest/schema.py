"""The expert manifest (`manifest.json`): one schema for the server and the trainer.

Compatible with the manifest format of the hivellm expert system, schema versions
"1.0" (`base_model` + root `adapters`) and "2.0" (`base_models[]`, each with its own
`adapters[]`); a manifest without `schema_version` is "1.0".

Rules, checked here and nowhere else:
- keys starting with `_` are comments and are allowed in every object;
- any other unknown key is an error naming its full path and the nearest known key;
- ranges, enums and cross-field rules (v1 xor v2 base, rank and alpha for LoRA-like
  adapters, `tokens` for a soft prompt, sampling ranges, stop sequences as strings).
  The sampling fields' ranges and rules are defined once, in `sampling.py`, and applied here.

This module imports neither fastapi, torch nor vllm: the trainer imports it cheaply.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from server.manifest.jsontext import JSONLimitError, loads_bounded
from server.manifest.sampling import manifest_field, manifest_rules

MANIFEST_FILENAME = "manifest.json"
SCHEMA_VERSIONS = ("1.0", "2.0")
ADAPTER_TYPES = ("lora", "dora", "ia3", "lokr", "adalora")
SERVABLE_ADAPTER_TYPES = ("lora",)
GRAMMAR_TYPES_JSON = ("json",)
# An expert name is the OpenAI `model` id and a folder name: never a path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME_RE = re.compile(NAME_PATTERN)
# hivellm's `format: uri`: a scheme, then a non-empty rest without spaces
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^\s/]+\S*$")
# A version is hivellm's `x.y.z`, with an optional semver pre-release and build suffix of
# dot-separated ASCII letters, digits and '-': it is shown in headers and log lines, never a path.
VERSION_PATTERN = r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"
_VERSION_RE = re.compile(VERSION_PATTERN)
MAX_VERSION_LENGTH = 64
# A manifest is a few kilobytes; these bound what reading one can cost.
MAX_MANIFEST_BYTES = 1_000_000

Scalar = str | int | float | bool | None


class FieldRule(ValueError):
    """A cross-field rule broken by the object being validated: names the field(s) at fault
    (relative to that object), so the reported path points at them, not at their parent."""

    def __init__(self, fields: str | tuple[str, ...], message: str):
        super().__init__(message)
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)


def is_plain_name(name: str) -> bool:
    """True for a name that can never address anything but one folder of the experts dir."""
    return bool(_NAME_RE.match(name)) and ".." not in name


class _Strict(BaseModel):
    """Unknown keys are errors; `_`-prefixed keys are comments and are dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_comments(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not _is_comment(k)}
            # free-form maps (`field_mapping`, `integrity.files`, `alternative_checkpoints`…)
            # may carry comments too: they are not entries of the map
            for name, info in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, dict) and "dict[" in str(info.annotation):
                    data[name] = {k: v for k, v in value.items() if not _is_comment(k)}
        return data


def _is_comment(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("_")


# ----------------------------------------------------------------------------- base model


class RopeScaling(_Strict):
    type: Literal["ntk-by-parts", "yarn", "dynamic", "linear"] | None = None  # hivellm's enum
    factor: float | None = Field(default=None, ge=1)
    max_position_embeddings: int | None = Field(default=None, ge=1)
    original_max_position_embeddings: int | None = Field(default=None, ge=1)
    fine_grained: bool | None = None


class Adapter(_Strict):
    type: Literal["lora", "dora", "ia3", "lokr", "adalora"]
    path: str | None = None  # folder of adapter_config.json, relative to the expert; default "."
    target_modules: list[str] | None = None
    r: int | None = Field(default=None, ge=1, le=256)  # hivellm's range
    alpha: float | None = Field(default=None, gt=0)
    scaling: Literal["default", "standard", "dora", "learned"] | None = None  # hivellm's enum
    dropout: float | None = Field(default=None, ge=0, lt=1)
    size_bytes: int | None = Field(default=None, ge=0)
    sha256: str | None = None
    checkpoint_step: int | None = Field(default=None, ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @model_validator(mode="after")
    def _rank_alpha(self) -> Adapter:
        if self.type in ("lora", "dora", "adalora", "lokr"):
            missing = [k for k in ("r", "alpha") if getattr(self, k) is None]
            if missing:
                raise FieldRule(tuple(missing), f"{' and '.join(missing)} required for a {self.type} adapter")
        return self


class BaseModelSpec(_Strict):
    name: str = Field(min_length=1)
    sha256: str | None = None
    quantization: Literal["int4", "int8", "fp16", "bf16", "none"] | None = None  # hivellm's enum
    rope_scaling: RopeScaling | None = None
    prompt_template: str | None = None
    adapters: list[Adapter] | None = None  # v2 only

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_sha256(v)


# ----------------------------------------------------------------------------- soft prompts


class SoftPrompt(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(min_length=1)
    tokens: int = Field(ge=1, le=512)  # hivellm's range
    init_method: Literal["text", "random", "vocab_sample"] | None = None
    init_text: str | None = None
    purpose: str | None = None
    sha256: str | None = None

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        return _check_sha256(v)

    @model_validator(mode="after")
    def _text_init(self) -> SoftPrompt:
        if self.init_method == "text" and not self.init_text:
            raise FieldRule("init_text", "init_text required when init_method is 'text'")
        return self


# ----------------------------------------------------------------------------- training


class Decoding(_Strict):
    # sampling defaults: ranges and rules come from server.manifest.sampling
    temperature: float | None = manifest_field("temperature")
    top_p: float | None = manifest_field("top_p")
    top_k: int | None = manifest_field("top_k")
    min_p: float | None = manifest_field("min_p")
    repetition_penalty: float | None = manifest_field("repetition_penalty")
    presence_penalty: float | None = manifest_field("presence_penalty")
    frequency_penalty: float | None = manifest_field("frequency_penalty")
    max_tokens: int | None = manifest_field("max_tokens")
    seed: int | None = manifest_field("seed")
    stop_sequences: list[str] | None = manifest_field("stop_sequences")
    use_grammar: bool | None = None
    grammar_type: str | None = None
    grammar_file: str | None = None
    validation: str | None = None
    validation_cmd: str | None = None

    _sampling_rules = manifest_rules()


class DatasetSource(_Strict):
    name: str
    original_examples: int | None = None
    processed_examples: int | None = None
    duplicates_removed: int | None = None
    invalid_removed: int | None = None


class Dataset(_Strict):
    path: str | None = None
    validation_path: str | None = None
    test_path: str | None = None
    format: Literal["jsonl", "huggingface", "csv", "parquet"] | None = None  # hivellm's enum
    streaming: bool | None = None
    source: str | None = None
    sources: list[DatasetSource] | None = None
    field_mapping: dict[str, str] | None = None
    # Descriptive statistics of how the dataset was made: free-form, shown as they are.
    splits: dict[str, Scalar] | None = None
    preprocessing: dict[str, Scalar] | None = None
    task_distribution: dict[str, Scalar] | None = None
    format_distribution: dict[str, Scalar] | None = None


class TrainingConfig(_Strict):
    """Every key found in real hivellm manifests; `fates.py` says which the trainer honours."""

    method: Literal["sft", "rlhf", "dpo"] | None = None  # hivellm's enum
    adapter_type: Literal["lora", "dora", "ia3", "lokr", "adalora"] | None = None
    rank: int | None = Field(default=None, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    target_modules: list[str] | None = None
    epochs: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    prompt_epochs: float | None = Field(default=None, gt=0)  # soft-prompt phase; default: epochs
    prompt_max_steps: int | None = Field(default=None, ge=1)  # soft-prompt phase; default: max_steps
    learning_rate: float | None = Field(default=None, gt=0)
    prompt_learning_rate: float | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int | None = Field(default=None, ge=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    warmup_ratio: float | None = Field(default=None, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "polynomial", "cosine_with_restarts"] | None = None
    max_seq_length: int | None = Field(default=None, ge=8)
    seed: int | None = None
    logging_steps: int | None = Field(default=None, ge=1)
    save_steps: int | None = Field(default=None, ge=1)
    save_strategy: Literal["no", "steps", "epoch"] | None = None
    save_total_limit: int | None = None
    eval_steps: int | None = Field(default=None, ge=1)
    evaluation_strategy: Literal["no", "steps", "epoch"] | None = None
    load_best_model_at_end: bool | None = None
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    fp16: bool | None = None
    bf16: bool | None = None
    use_tf32: bool | None = None
    use_sdpa: bool | None = None
    flash_attention_2: bool | None = None
    memory_efficient_attention: bool | None = None
    packing: bool | None = None
    group_by_length: bool | None = None
    gradient_checkpointing: bool | None = None
    activation_checkpointing: str | None = None
    optim: Literal["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "sgd"] | None = None
    use_unsloth: bool | None = None
    torch_compile: bool | None = None
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    use_cuda_graphs: bool | None = None
    cuda_graph_warmup_steps: int | None = None
    memory_clear_every: int | None = None
    dataloader_num_workers: int | None = Field(default=None, ge=0)
    dataloader_pin_memory: bool | None = None
    dataloader_prefetch_factor: int | None = None
    dataloader_persistent_workers: bool | None = None
    pretokenized_cache: str | None = None


class AlternativeCheckpoint(_Strict):
    path: str | None = None
    step: int | None = None
    score: float | None = None
    win_rate: float | None = None
    best_for: list[str] | None = None


class Training(_Strict):
    dataset: Dataset | None = None
    config: TrainingConfig | None = None
    decoding: Decoding | None = None
    trained_on: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}([T ][0-9:.+\-Z]*)?$")  # ISO 8601 date
    base_model_version: str | None = None
    checkpoint: str | None = None
    packaging_checkpoint: str | None = Field(default=None, pattern=r"^(checkpoint-\d+|final)$")
    alternative_checkpoints: dict[str, AlternativeCheckpoint] | None = None


# ----------------------------------------------------------------------------- the rest


class Runtime(_Strict):
    candle_compatible: bool | None = None
    requires_kv_cache_persistence: bool | None = None
    attention_kernel: str | None = None
    # This project's additions: engine args of the engine that serves the expert.
    attention_backend: str | None = None
    prefix_caching: bool | None = None
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"] | None = None
    max_model_len: int | None = Field(default=None, ge=16)


class Routing(_Strict):
    keywords: list[str] | None = None
    exclude_keywords: list[str] | None = None
    router_hint: str | None = None
    priority: float | None = Field(default=None, ge=0, le=1)


class Constraints(_Strict):
    max_chain: int | None = Field(default=None, ge=1)
    load_order: int | None = Field(default=None, ge=0)
    incompatible_with: list[str] | None = None
    requires: list[str] | None = None


class Perf(_Strict):
    latency_ms_overhead: float | None = Field(default=None, ge=0)
    vram_mb_overhead: float | None = Field(default=None, ge=0)
    supported_batch_sizes: list[int] | None = None


class Limitation(_Strict):
    pattern: str | None = None
    description: str
    example: str | None = None
    workaround: str | None = None


class IntegrityFile(_Strict):
    path: str
    sha256: str
    size_bytes: int | None = Field(default=None, ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        return _check_sha256(v) or ""


class Integrity(_Strict):
    """Either a map `{path: sha256}` or a list of `{path, sha256, size_bytes}`, plus a signature."""

    files: dict[str, str] | list[IntegrityFile] | None = None
    signature: str | None = None
    signature_algorithm: str | None = None
    algorithm: str | None = None
    public_key: str | None = None
    signed_by: str | None = None
    publisher: str | None = None
    signed_at: str | None = None
    created_at: str | None = None

    @field_validator("files")
    @classmethod
    def _map_hashes(cls, v: dict[str, str] | list[IntegrityFile] | None) -> dict[str, str] | list[IntegrityFile] | None:
        if isinstance(v, dict):
            bad = [p for p, h in v.items() if h and not re.fullmatch(r"[0-9a-fA-F]{64}", h)]
            if bad:
                raise FieldRule(tuple(bad), "sha256 must be 64 hexadecimal digits (or empty)")
        return v

    def file_hashes(self) -> dict[str, str]:
        if self.files is None:
            return {}
        if isinstance(self.files, dict):
            return {p: _check_sha256(h) or "" for p, h in self.files.items()}
        return {f.path: f.sha256 for f in self.files}


class Evaluation(_Strict):
    test_cases: str | list[dict[str, Any]] | None = None
    # how `expert eval` scores an answer: the same text or JSON value as the target, or, for SQL
    # experts, the same rows as the target query on `database` (a SQLite file in the expert folder)
    metric: Literal["exact_match", "sql_execution"] | None = None
    database: str | None = None

    @model_validator(mode="after")
    def _database_for_sql(self) -> Evaluation:
        if self.metric == "sql_execution" and not self.database:
            raise ValueError("metric 'sql_execution' needs 'database' (a SQLite file in the expert folder)")
        return self


class Manifest(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1, max_length=MAX_VERSION_LENGTH)
    schema_version: Literal["1.0", "2.0"] = "1.0"
    description: str | None = None
    author: str | None = None
    homepage: str | None = None  # a URI (checked below, as hivellm's format: uri)
    repository: str | dict[str, str] | None = None
    license: str | None = None
    tags: list[str] | None = None
    capabilities: list[str] | None = None
    limitations: list[Limitation | str] | None = None
    quality_metrics: dict[str, Scalar] | None = None
    perf: Perf | None = None
    base_model: BaseModelSpec | None = None  # v1
    adapters: list[Adapter] | None = None  # v1
    base_models: list[BaseModelSpec] | None = None  # v2
    soft_prompts: list[SoftPrompt] = Field(default_factory=list)
    training: Training | None = None
    runtime: Runtime | None = None
    routing: Routing | None = None
    constraints: Constraints | None = None
    evaluation: Evaluation | None = None
    integrity: Integrity | None = None

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION_RE.fullmatch(v):
            raise ValueError(
                "version must be x.y.z (digits), optionally followed by -pre.release and/or +build "
                "of ASCII letters, digits, '-' and '.'"
            )
        return v

    @field_validator("homepage")
    @classmethod
    def _homepage_uri(cls, v: str | None) -> str | None:
        if v is not None and not _URI.match(v):
            raise ValueError("homepage must be an absolute URI (e.g. https://example.org)")
        return v

    @field_validator("repository")
    @classmethod
    def _repository_uri(cls, v: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(v, dict):
            if "url" in v and not _URI.match(v["url"]):
                raise FieldRule("url", "repository.url must be an absolute URI")
            if "type" in v and v["type"] != "git":
                raise FieldRule("type", "repository.type must be 'git'")
        return v

    @model_validator(mode="after")
    def _one_base_shape(self) -> Manifest:
        if self.schema_version == "2.0":
            if not self.base_models:
                raise FieldRule("base_models", "schema_version 2.0 needs a non-empty base_models list")
            if self.base_model is not None or self.adapters is not None:
                wrong = tuple(k for k in ("base_model", "adapters") if getattr(self, k) is not None)
                raise FieldRule(
                    wrong, "schema_version 2.0 uses base_models[]; base_model and root adapters are v1 fields"
                )
        else:
            if self.base_model is None:
                raise FieldRule("base_model", "schema_version 1.0 needs base_model")
            if self.base_models is not None:
                raise FieldRule(
                    "base_models", 'base_models[] is a schema_version 2.0 field; set schema_version to "2.0"'
                )
            if self.base_model.adapters is not None:
                raise FieldRule(
                    "base_model.adapters", "in schema_version 1.0 adapters belong at the root, not in base_model"
                )
        names = [sp.name for sp in self.soft_prompts]
        if len(names) != len(set(names)):
            raise FieldRule("soft_prompts", "soft prompt names must be unique")
        return self

    # -- views that hide the v1/v2 difference

    def bases(self) -> list[tuple[BaseModelSpec, list[Adapter]]]:
        """Each base model with its adapters, whatever the schema version."""
        if self.schema_version == "2.0":
            return [(b, list(b.adapters or [])) for b in self.base_models or []]
        assert self.base_model is not None
        return [(self.base_model, list(self.adapters or []))]

    @property
    def decoding(self) -> Decoding:
        return (self.training.decoding if self.training else None) or Decoding()

    @property
    def load_order(self) -> int:
        if self.constraints and self.constraints.load_order is not None:
            return self.constraints.load_order
        return 0


def _check_sha256(v: str | None) -> str | None:
    if v is None or v == "":
        return v
    if not re.fullmatch(r"[0-9a-fA-F]{64}", v):
        raise ValueError("sha256 must be 64 hexadecimal digits (or empty)")
    return v.lower()


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class SchemaIssue:
    field: str  # dotted path with list indices: base_models[0].adapters[0].type
    message: str
    type_error: bool = False


class ManifestError(Exception):
    """A manifest that cannot be read or does not satisfy the schema."""

    def __init__(self, issues: list[SchemaIssue]):
        self.issues = issues
        super().__init__("; ".join(f"{i.field or '<manifest>'}: {i.message}" for i in issues))


def format_path(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the object at `loc` (for suggesting known keys)."""
    model: Any = Manifest
    dict_key_next = False  # the field just entered maps free-form keys to objects
    for part in loc:
        if isinstance(part, int):  # a list index: the value was a list, not a dict
            dict_key_next = False
            continue
        if dict_key_next:
            dict_key_next = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _first_model(field.annotation)
        dict_key_next = "dict[" in str(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


# pydantic tags each union member with its type in the location: drop those parts.
_UNION_TAGS = re.compile(r"^(list\[.*\]|dict\[.*\]|str|int|float|bool|none|.*\[.*\])$")


def issues_from_validation_error(err: ValidationError) -> list[SchemaIssue]:
    issues: list[SchemaIssue] = []
    seen: set[tuple[str, str]] = set()
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and (p in _MODEL_NAMES or _UNION_TAGS.match(p))))
        rule = (e.get("ctx") or {}).get("error")
        if isinstance(rule, FieldRule):
            for name in rule.fields:
                path = format_path(loc + tuple(name.split(".")))
                key = (path, str(rule))
                if key not in seen:
                    seen.add(key)
                    issues.append(SchemaIssue(path, str(rule)))
            continue
        path = format_path(loc)
        if e["type"] == "extra_forbidden":
            message = f"unknown field '{loc[-1]}'"
            owner = _model_at(loc[:-1])
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1, cutoff=0.6)
                if close:
                    message += f"; did you mean '{close[0]}'?"
            message += " (keys starting with '_' are comments)"
        elif e["type"] == "missing":
            message = "required field is missing"
        else:
            message = e["msg"].removeprefix("Value error, ")
        key = (path, message)
        if key not in seen:
            seen.add(key)
            issues.append(SchemaIssue(path, message, e["type"].endswith("_type")))
    return _merge_union_issues(issues)


def _merge_union_issues(issues: list[SchemaIssue]) -> list[SchemaIssue]:
    """A value that fits no member of a union yields one error per member: say it once.

    A type error at a path is dropped where a deeper error explains the same value (the
    member that matched its shape), and type errors at one path are merged into one.
    """
    paths = [i.field for i in issues]
    kept: list[SchemaIssue] = []
    expected: dict[str, list[str]] = {}
    for issue in issues:
        if issue.type_error:
            deeper = any(p != issue.field and p.startswith(issue.field) and p[len(issue.field)] in ".[" for p in paths)
            if deeper:
                continue
            if issue.field in expected:
                expected[issue.field].append(issue.message.removeprefix("Input should be "))
                continue
            expected[issue.field] = [issue.message.removeprefix("Input should be ")]
        kept.append(issue)
    return [
        SchemaIssue(i.field, "wrong type: expected " + " or ".join(expected[i.field]))
        if i.type_error and len(expected[i.field]) > 1
        else i
        for i in kept
    ]


_MODEL_NAMES = {
    "Limitation",
    "IntegrityFile",
    "Adapter",
    "BaseModelSpec",
    "SoftPrompt",
    "DatasetSource",
}


def parse_manifest(data: Any) -> Manifest:
    """Validate decoded JSON; raises ManifestError listing every problem with its path."""
    if not isinstance(data, dict):
        raise ManifestError([SchemaIssue("", "a manifest is a JSON object")])
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(issues_from_validation_error(err)) from None


def read_manifest_json(path: Path) -> Any:
    """Decoded JSON of a manifest file, or ManifestError for a missing or unreadable file."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError([SchemaIssue("", f"manifest over {MAX_MANIFEST_BYTES} bytes")])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ManifestError([SchemaIssue("", f"no manifest at {path}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([SchemaIssue("", f"cannot read {path}: {exc}")]) from None
    try:
        return loads_bounded(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            [SchemaIssue("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
        ) from None
    except JSONLimitError as exc:
        raise ManifestError([SchemaIssue("", str(exc))]) from None


def load_manifest(path: Path) -> Manifest:
    """Read and validate `path` (a manifest file, or an expert folder holding manifest.json)."""
    if path.is_dir():
        path = path / MANIFEST_FILENAME
    return parse_manifest(read_manifest_json(path))


def _allow_comment_keys(node: Any) -> None:
    """Every closed object (`additionalProperties: false`) also accepts `_`-prefixed keys."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            node.setdefault("patternProperties", {})["^_"] = {}
        for value in node.values():
            _allow_comment_keys(value)
    elif isinstance(node, list):
        for value in node:
            _allow_comment_keys(value)


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    _allow_comment_keys(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "expert manifest"
    schema["description"] = (
        "Expert manifest (schema versions 1.0 and 2.0). Keys starting with '_' are comments "
        "and are allowed in every object."
    )
    return schema
