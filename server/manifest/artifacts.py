"""Checks of an expert's files against its manifest and the served base model.

- `adapter_config.json` agrees with the manifest's adapter (type, r, alpha, target modules)
- sha256 / size of files where the manifest gives them (adapters, soft prompts, integrity)
- soft-prompt tensors: readable without pickles, shape `[tokens, hidden]` of the base
- grammar files compile with xgrammar

The result is a set of findings by manifest field plus the reasons the expert cannot be
served. Nothing here imports fastapi or vllm; torch only to read `.pt` soft prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.manifest.embedded import sha256_file
from server.manifest.grammar import compile_gbnf
from server.manifest.schema import MANIFEST_FILENAME, Adapter, Manifest

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_GRAMMAR = "grammar.gbnf"


@dataclass(frozen=True)
class BaseInfo:
    """What the server knows of a base model it serves."""

    name: str  # the id clients use
    aliases: frozenset[str] = frozenset()
    path: Path | None = None  # Hugging Face folder, when local
    hidden_size: int | None = None
    max_position_embeddings: int | None = None
    rope_scaling: dict[str, Any] | None = None
    weight_sha256: frozenset[str] = frozenset()
    dtype: str | None = None

    def matches(self, manifest_name: str, manifest_sha: str | None) -> bool:
        names = {self.name, *self.aliases}
        if self.path is not None:
            names.add(str(self.path))
        if manifest_name in names or manifest_name.rstrip("/").split("/")[-1] in {n.split("/")[-1] for n in names}:
            return True
        return bool(manifest_sha) and manifest_sha in self.weight_sha256


def base_info_from_folder(folder: Path, name: str, aliases: frozenset[str] = frozenset()) -> BaseInfo:
    config = json.loads((folder / "config.json").read_text())
    hashes: set[str] = set()
    marker = folder / "expert-gateway-prepared.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        hashes = {m["sha256"] for f, m in info.get("files", {}).items() if f.endswith(".safetensors")}
    return BaseInfo(
        name=name,
        aliases=aliases,
        path=folder,
        hidden_size=config.get("hidden_size"),
        max_position_embeddings=config.get("max_position_embeddings"),
        rope_scaling=config.get("rope_scaling"),
        weight_sha256=frozenset(hashes),
        dtype=str(config.get("dtype") or config.get("torch_dtype") or ""),
    )


@dataclass
class Finding:
    fate: str | None  # None keeps the default fate of the field; else applied/checked/refused
    detail: str


@dataclass
class ArtifactReport:
    findings: dict[str, Finding] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (field, message): broken files
    blockers: list[str] = field(default_factory=list)  # why it cannot be served here
    adapter_dir: Path | None = None
    grammar_path: Path | None = None
    grammar_text: str | None = None

    def note(self, path: str, detail: str, fate: str | None = None) -> None:
        self.findings[path] = Finding(fate, detail)

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))
        self.findings[path] = Finding("refused", message)


def inside(root: Path, relative: str) -> Path | None:
    """`root / relative` when it stays inside `root`; None for absolute or escaping paths."""
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        return None
    candidate = (root / relative).resolve()
    base = root.resolve()
    return candidate if candidate == base or base in candidate.parents else None


def manifest_location(path: Path) -> tuple[Path, Path]:
    """(expert root folder, manifest file) for a folder or a manifest file path."""
    if path.is_dir():
        return path, path / MANIFEST_FILENAME
    return path.parent, path


def check_artifacts(
    root: Path, manifest_file: Path, m: Manifest, base: BaseInfo | None, max_lora_rank: int | None = None
) -> ArtifactReport:
    report = ArtifactReport()
    bases = m.bases()
    prefix = "base_models" if m.schema_version == "2.0" else None
    for bi, (spec, adapters) in enumerate(bases):
        bpath = f"base_models[{bi}]" if prefix else "base_model"
        if base is not None:
            if base.matches(spec.name, spec.sha256):
                report.note(f"{bpath}.name", f"matches the served base model {base.name!r}", "applied")
            else:
                msg = f"this server serves {base.name!r}; the expert needs {spec.name!r}"
                report.note(f"{bpath}.name", msg, "refused")
                report.blockers.append(f"base model not served here: {msg}")
            if spec.sha256:
                ok = spec.sha256 in base.weight_sha256
                report.note(
                    f"{bpath}.sha256",
                    "matches the served weights" if ok else "does not match the served weights' sha256",
                    "applied" if ok else "refused",
                )
            _check_base_shape(report, bpath, spec, base)
        for ai, adapter in enumerate(adapters):
            apath = f"{bpath}.adapters[{ai}]" if prefix else f"adapters[{ai}]"
            _check_adapter(report, root, apath, adapter, max_lora_rank)
    _check_soft_prompts(report, root, m, base)
    _check_grammar(report, root, manifest_file, m, base)
    _check_integrity(report, root, m)
    return report


def _check_base_shape(report: ArtifactReport, bpath: str, spec: Any, base: BaseInfo) -> None:
    if spec.quantization:
        served = base.dtype or "unquantized"
        same = spec.quantization.lower() in served.lower()
        report.note(
            f"{bpath}.quantization",
            f"engine serves {served} weights" + ("" if same else f"; mismatch with {spec.quantization!r}, reported"),
            "checked",
        )
    if spec.rope_scaling is not None:
        served = base.rope_scaling or {}
        for key, asked in spec.rope_scaling.model_dump(exclude_none=True).items():
            have = served.get(key)
            detail = (
                f"engine's base has {key}={have!r}"
                if have is not None
                else ("engine's base has no rope_scaling" if not served else f"engine's base has no rope_scaling {key}")
            )
            if have != asked:
                detail += f"; mismatch with {asked!r}, reported"
            report.note(f"{bpath}.rope_scaling.{key}", detail, "checked")


def _check_adapter(report: ArtifactReport, root: Path, apath: str, adapter: Adapter, max_lora_rank: int | None) -> None:
    if adapter.type != "lora":
        report.blockers.append(f"{apath}.type: {adapter.type} adapters cannot be served (vLLM serves plain LoRA only)")
    folder = inside(root, adapter.path or ".")
    if folder is None:
        report.error(f"{apath}.path", "must be a relative path inside the expert folder")
        return
    report.adapter_dir = folder
    config_file = folder / ADAPTER_CONFIG
    weights = folder / ADAPTER_WEIGHTS
    if not config_file.is_file():
        for key in ("r", "alpha", "target_modules", "dropout"):
            if getattr(adapter, key) is not None:
                report.note(f"{apath}.{key}", f"no {ADAPTER_CONFIG} here to compare with", "checked")
        report.blockers.append(f"{apath}: no adapter files ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS}) in {folder}")
    else:
        try:
            cfg = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            report.error(f"{apath}", f"{ADAPTER_CONFIG} unreadable: {exc}")
            cfg = None
        if cfg is not None and not isinstance(cfg, dict):
            report.error(f"{apath}", f"{ADAPTER_CONFIG} is not a JSON object")
            cfg = None
        if cfg is not None:
            _compare_adapter_config(report, apath, adapter, cfg, max_lora_rank)
        if not weights.is_file():
            report.error(f"{apath}", f"{ADAPTER_WEIGHTS} missing next to {ADAPTER_CONFIG}")
    _check_file_hash(report, apath, weights, adapter.sha256, adapter.size_bytes)


def _compare_adapter_config(
    report: ArtifactReport, apath: str, adapter: Adapter, cfg: dict, max_lora_rank: int | None
) -> None:
    peft_type = str(cfg.get("peft_type", "")).lower()
    actual_type = "dora" if cfg.get("use_dora") else peft_type
    if actual_type != adapter.type:
        report.error(f"{apath}.type", f"manifest says {adapter.type!r}, {ADAPTER_CONFIG} is {actual_type!r}")
    pairs = {"r": cfg.get("r"), "alpha": cfg.get("lora_alpha"), "dropout": cfg.get("lora_dropout")}
    for key, actual in pairs.items():
        wanted = getattr(adapter, key)
        if wanted is None:
            continue
        if (
            not isinstance(actual, (int, float))
            or isinstance(actual, bool)
            or abs(float(actual) - float(wanted)) > 1e-9
        ):
            report.error(f"{apath}.{key}", f"manifest says {wanted}, {ADAPTER_CONFIG} says {actual}")
        else:
            report.note(f"{apath}.{key}", f"agrees with {ADAPTER_CONFIG}")
    if adapter.r is not None and max_lora_rank is not None and adapter.r > max_lora_rank:
        report.note(f"{apath}.r", f"rank {adapter.r} exceeds the engine's max_lora_rank {max_lora_rank}", "refused")
        report.blockers.append(f"{apath}.r: rank {adapter.r} exceeds max_lora_rank {max_lora_rank}")
    touched = _as_set(cfg.get("target_modules")) | _as_set(cfg.get("modules_to_save"))
    embedding = sorted(m for m in touched if "embed" in m or m in ("lm_head", "wte"))
    if embedding:
        report.blockers.append(
            f"{apath}: the adapter changes {embedding}; adapters on the embedding layers cannot "
            "be served beside prompt embeddings (see server/engine/plugin.py)"
        )
    if adapter.target_modules is not None:
        actual_modules = cfg.get("target_modules")
        actual_set = set(actual_modules) if isinstance(actual_modules, list) else {actual_modules}
        if set(adapter.target_modules) != actual_set:
            report.error(
                f"{apath}.target_modules",
                f"manifest says {sorted(adapter.target_modules)}, {ADAPTER_CONFIG} says {sorted(map(str, actual_set))}",
            )
        else:
            report.note(f"{apath}.target_modules", f"agrees with {ADAPTER_CONFIG}")


def _as_set(value: Any) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value}
    return {str(v) for v in value} if isinstance(value, list) else set()


def _check_file_hash(report: ArtifactReport, fpath: str, file: Path, sha: str | None, size: int | None) -> None:
    if sha:
        if not file.is_file():
            report.note(f"{fpath}.sha256", f"{file.name} not present: nothing to verify", "checked")
        elif sha256_file(file) != sha:
            report.error(f"{fpath}.sha256", f"sha256 of {file.name} does not match the manifest")
        else:
            report.note(f"{fpath}.sha256", f"verified: {file.name}", "applied")
    elif sha is not None:
        report.note(f"{fpath}.sha256", "empty: nothing to verify", "checked")
    if size:
        if not file.is_file():
            report.note(f"{fpath}.size_bytes", f"{file.name} not present: nothing to verify", "checked")
        elif file.stat().st_size != size:
            report.error(f"{fpath}.size_bytes", f"{file.name} has {file.stat().st_size} bytes, manifest says {size}")
        else:
            report.note(f"{fpath}.size_bytes", f"verified: {file.name}", "applied")
    elif size is not None:
        report.note(f"{fpath}.size_bytes", "0: nothing to verify", "checked")


def _check_soft_prompts(report: ArtifactReport, root: Path, m: Manifest, base: BaseInfo | None) -> None:
    for i, sp in enumerate(m.soft_prompts):
        spath = f"soft_prompts[{i}]"
        file = inside(root, sp.path)
        if file is None:
            report.error(f"{spath}.path", "must be a relative path inside the expert folder")
            continue
        if not file.is_file():
            report.note(f"{spath}.path", f"{sp.path} not present", "refused")
            report.blockers.append(f"{spath}: soft prompt file {sp.path} not present")
            continue
        _check_file_hash(report, spath, file, sp.sha256, None)
        try:
            shape = soft_prompt_shape(file)
        except ValueError as exc:
            report.error(f"{spath}.path", str(exc))
            continue
        if shape[0] != sp.tokens:
            report.error(f"{spath}.tokens", f"tensor has {shape[0]} tokens, manifest says {sp.tokens}")
        elif base is not None and base.hidden_size is not None and shape[1] != base.hidden_size:
            report.error(f"{spath}.path", f"tensor width {shape[1]} != hidden size {base.hidden_size} of {base.name}")
        else:
            width = f", hidden {shape[1]}" + ("" if base and base.hidden_size else " (base not available to compare)")
            report.note(f"{spath}.tokens", f"tensor shape [{shape[0]}, {shape[1]}]{width}", "applied")


def soft_prompt_shape(file: Path) -> tuple[int, int]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="numpy") as f:
                keys = list(f.keys())
                key = "prompt_embeddings" if "prompt_embeddings" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise ValueError(f"{file.name}: expected one tensor named 'prompt_embeddings', found {keys}")
                shape = tuple(f.get_slice(key).get_shape())
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{file.name}: not a readable safetensors file ({exc})") from None
    else:
        from server.manifest.soft_prompt import load_soft_prompt

        shape = tuple(load_soft_prompt(file).shape)
    if len(shape) != 2:
        raise ValueError(f"{file.name}: soft prompt must be a 2-D tensor [tokens, hidden], got shape {list(shape)}")
    return int(shape[0]), int(shape[1])


def grammar_location(root: Path, manifest_file: Path, m: Manifest) -> tuple[str | None, Path | None]:
    """(grammar kind, file): kind 'json' needs no file; a GBNF grammar's file may be missing."""
    d = m.decoding
    if not d.use_grammar and not d.grammar_file:
        return None, None
    if (d.grammar_type or "").lower() == "json" and not d.grammar_file:
        return "json", None
    if d.grammar_file:
        return "gbnf", inside(root, d.grammar_file)
    default = root / DEFAULT_GRAMMAR
    if not default.is_file() and manifest_file.name.endswith(".manifest.json"):
        default = root / (manifest_file.name.removesuffix(".manifest.json") + ".grammar.gbnf")
    return "gbnf", default


def _check_grammar(report: ArtifactReport, root: Path, manifest_file: Path, m: Manifest, base: BaseInfo | None) -> None:
    kind, file = grammar_location(root, manifest_file, m)
    if kind is None:
        return
    field_name = "training.decoding.grammar_file" if m.decoding.grammar_file else "training.decoding.grammar_type"
    if kind == "json":
        report.note(field_name, "JSON grammar (vLLM structured outputs, json_object)", "applied")
        return
    if file is None:
        report.error(field_name, "grammar_file must be a relative path inside the expert folder")
        return
    if not file.is_file():
        msg = (
            f"grammar_file {m.decoding.grammar_file!r} not found"
            if m.decoding.grammar_file
            else f"grammar type {m.decoding.grammar_type!r} needs a GBNF file: no grammar_file and no {DEFAULT_GRAMMAR} here"
        )
        report.note(field_name, msg, "refused")
        report.blockers.append(f"{field_name}: {msg}")
        return
    text = file.read_text(encoding="utf-8", errors="replace")
    result = compile_gbnf(text, base.path if base else None)
    if result.ok:
        report.grammar_path, report.grammar_text = file, text
        report.note(field_name, f"{file.name} {result.message}", "applied")
    else:
        report.note(field_name, f"{file.name} {result.message}", "refused")
        report.blockers.append(f"{field_name}: {file.name} {result.message}")


def _check_integrity(report: ArtifactReport, root: Path, m: Manifest) -> None:
    if m.integrity is None:
        return
    for rel, sha in m.integrity.file_hashes().items():
        file = inside(root, rel)
        key = f"integrity.files.{rel}"
        if file is None:
            report.error(key, "must be a relative path inside the expert folder")
        elif not sha:
            report.note(key, "empty hash: nothing to verify", "checked")
        elif not file.is_file():
            report.error(key, f"{rel} listed but not present")
        elif sha256_file(file) != sha:
            report.error(key, f"sha256 of {rel} does not match")
        else:
            report.note(key, "verified", "applied")
