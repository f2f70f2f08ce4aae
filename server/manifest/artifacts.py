"""Checks of an expert's files against its manifest and the served base model.

- `adapter_config.json` agrees with the manifest's adapter (type, r, alpha, target modules)
- sha256 / size of files where the manifest gives them (adapters, soft prompts, integrity)
- soft-prompt tensors: readable without pickles, shape `[tokens, hidden]` of the base
- grammar files compile with xgrammar
- adapter weights: finite float16/bfloat16/float32 tensors (read with safetensors, never a pickle)

Every file is read from inside the expert folder: `inside` resolves a manifest's relative
path, symbolic links included, and refuses any path that ends outside the folder — one rule
for adapter files, soft prompts, grammars (named or the default `grammar.gbnf`) and
integrity entries. A stray `adapter_model.bin` beside the safetensors is never read.

The result is a set of findings by manifest field plus the reasons the expert cannot be
served. Nothing here imports fastapi or vllm; torch only inside functions (adapter weights, soft prompts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.manifest import prompt_formats
from server.manifest.embedded import sha256_file
from server.manifest.grammar import MAX_GRAMMAR_BYTES, compile_gbnf
from server.manifest.jsontext import JSONLimitError, loads_bounded
from server.manifest.schema import MANIFEST_FILENAME, Adapter, Manifest

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_GRAMMAR = "grammar.gbnf"
OUTSIDE = (
    "must be a relative path inside the expert folder, in names the file system can hold (links out of it are refused)"
)
MAX_ADAPTER_CONFIG_BYTES = 1_000_000
MAX_SOFT_PROMPT_BYTES = 256 << 20  # 16k tokens of a 4096-wide model in float32; a soft prompt is far smaller
ADAPTER_DTYPES = ("F16", "BF16", "F32")  # safetensors dtype names the engine casts from exactly


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
    adapter_dir: Path | None = None  # folder of the one adapter that is served
    adapter: Adapter | None = None  # its manifest entry (sha256 checked again when staged)
    grammar_path: Path | None = None
    grammar_text: str | None = None
    # soft prompt name -> float32 tensor [tokens, hidden], read once here and served by the loader
    soft_prompts: dict[str, Any] = field(default_factory=dict)
    digests: dict[Path, str] = field(default_factory=dict)  # sha256 of files already read, by resolved path

    def note(self, path: str, detail: str, fate: str | None = None) -> None:
        self.findings[path] = Finding(fate, detail)

    def error(self, path: str, message: str) -> None:
        self.errors.append((path, message))
        self.findings[path] = Finding("refused", message)


def inside(root: Path, relative: str) -> Path | None:
    """`root / relative`, resolved (links followed), when it stays inside `root`; None for
    absolute paths, for paths that leave the folder, through `..` or through a link, and for
    names the file system cannot hold (a part longer than it allows)."""
    if not relative or Path(relative).is_absolute() or "\x00" in relative:
        return None
    candidate = (root / relative).resolve()
    try:
        candidate.exists()  # raises for a name too long, where "no such file" is the answer
    except OSError:
        return None
    base = root.resolve()
    return candidate if candidate == base or base in candidate.parents else None


def served_base_index(m: Manifest, base: BaseInfo | None) -> int | None:
    """Index in `m.bases()` of the base model this server serves: the first that matches, or
    0 when none does (or no base is known) — that one is reported as not served."""
    if base is None:
        return 0
    for i, (spec, _) in enumerate(m.bases()):
        if base.matches(spec.name, spec.sha256):
            return i
    return 0


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
    served = served_base_index(m, base)
    for bi, (spec, adapters) in enumerate(bases):
        bpath = f"base_models[{bi}]" if prefix else "base_model"
        if base is not None and bi != served and served is not None:
            report.note(
                f"{bpath}.name", f"not served here: this server serves {base.name!r} (base_models[{served}])", "checked"
            )
            for ai in range(len(adapters)):
                report.note(f"{bpath}.adapters[{ai}]", f"belongs to {spec.name!r}, which is not served here", "checked")
            continue
        if base is not None:
            if base.matches(spec.name, spec.sha256):
                report.note(f"{bpath}.name", f"matches the served base model {base.name!r}", "applied")
            else:
                msg = f"this server serves {base.name!r}; the expert needs {spec.name!r}"
                report.note(f"{bpath}.name", msg, "refused")
                if bi == 0:
                    report.blockers.append(f"base model not served here: {msg}")
            if spec.sha256:
                ok = spec.sha256 in base.weight_sha256
                msg = "matches the served weights" if ok else "does not match the sha256 of the served weights"
                report.note(f"{bpath}.sha256", msg, "applied" if ok else "refused")
                if not ok and bi == (served or 0):
                    report.blockers.append(f"{bpath}.sha256: {msg}")
            _check_base_shape(report, bpath, spec, base)
        template_problem = prompt_formats.problem(spec.prompt_template)
        if template_problem is not None:
            report.blockers.append(f"{bpath}.prompt_template: {template_problem}")
        for ai, adapter in enumerate(adapters):
            apath = f"{bpath}.adapters[{ai}]" if prefix else f"adapters[{ai}]"
            if ai > 0:
                msg = "one adapter per expert is served; this one would not be loaded"
                report.note(apath, msg, "refused")
                report.blockers.append(f"{apath}: {msg}")
                continue
            _check_adapter(report, root, apath, adapter, max_lora_rank, base)
            if bi == (served or 0):
                report.adapter = adapter
                report.adapter_dir = inside(root, adapter.path or ".")
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
        served_rope = base.rope_scaling or {}
        for key, asked in spec.rope_scaling.model_dump(exclude_none=True).items():
            have = served_rope.get(key)
            detail = (
                f"engine's base has {key}={have!r}"
                if have is not None
                else (
                    "engine's base has no rope_scaling"
                    if not served_rope
                    else f"engine's base has no rope_scaling {key}"
                )
            )
            if have != asked:
                detail += f"; mismatch with {asked!r}, reported"
            report.note(f"{bpath}.rope_scaling.{key}", detail, "checked")


def _check_adapter(
    report: ArtifactReport, root: Path, apath: str, adapter: Adapter, max_lora_rank: int | None, base: BaseInfo | None
) -> None:
    if adapter.type != "lora":
        report.blockers.append(f"{apath}.type: {adapter.type} adapters cannot be served (vLLM serves plain LoRA only)")
    folder = inside(root, adapter.path or ".")
    if folder is None:
        report.error(f"{apath}.path", OUTSIDE)
        return
    report.adapter_dir = folder
    rel = adapter.path or "."
    config_file = inside(root, f"{rel}/{ADAPTER_CONFIG}")
    weights = inside(root, f"{rel}/{ADAPTER_WEIGHTS}")
    if config_file is None or weights is None:
        report.error(f"{apath}.path", f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} {OUTSIDE}")
        return
    if not config_file.is_file():
        for key in ("r", "alpha", "target_modules", "dropout"):
            if getattr(adapter, key) is not None:
                report.note(f"{apath}.{key}", f"no {ADAPTER_CONFIG} here to compare with", "checked")
        report.blockers.append(f"{apath}: no adapter files ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS}) in {folder}")
    else:
        try:
            cfg = _read_json(config_file, MAX_ADAPTER_CONFIG_BYTES)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            report.error(f"{apath}", f"{ADAPTER_CONFIG} unreadable: {exc}")
            cfg = None
        if cfg is not None and not isinstance(cfg, dict):
            report.error(f"{apath}", f"{ADAPTER_CONFIG} is not a JSON object")
            cfg = None
        if cfg is not None:
            _compare_adapter_config(report, apath, adapter, cfg, max_lora_rank)
        if not weights.is_file():
            report.error(f"{apath}", f"{ADAPTER_WEIGHTS} missing next to {ADAPTER_CONFIG}")
        else:
            problem = adapter_weights_problem(weights)
            if problem is not None:
                report.error(f"{apath}", problem)
            elif adapter.type == "lora":
                _check_adapter_effect(report, apath, weights, base)
    _check_file_hash(report, apath, weights, adapter.sha256, adapter.size_bytes)


def _read_json(file: Path, limit: int) -> Any:
    with file.open("rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"over {limit} bytes")
    try:
        return loads_bounded(raw)
    except JSONLimitError:
        raise
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from None


def adapter_weights_problem(file: Path) -> str | None:
    """Why the LoRA weights in `file` cannot be served, or None: a file safetensors cannot
    read, a tensor that is not float16/bfloat16/float32 (float64 is refused, not cast), or a
    NaN or infinite value (which would turn every answer of the expert into garbage)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                dtype = f.get_slice(key).get_dtype()
                if dtype not in ADAPTER_DTYPES:
                    return f"{file.name}: tensor {key!r} is {dtype}; adapter weights must be F16, BF16 or F32"
                if not torch.isfinite(f.get_tensor(key)).all():
                    return f"{file.name}: tensor {key!r} holds NaN or infinite values"
    except Exception as exc:  # safetensors raises its own error types for broken files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{file.name}: not a readable safetensors file ({first})"
    return None


def base_module_names(folder: Path) -> frozenset[str] | None:
    """Module names of a Hugging Face folder's weights (`model.layers.0.self_attn.q_proj`), read
    from the safetensors headers only; None when the folder has no safetensors files."""
    from safetensors import safe_open

    names: set[str] = set()
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="numpy") as f:
            names.update(k.rsplit(".", 1)[0] for k in f.keys())  # noqa: SIM118 (not a dict)
    return frozenset(names) if files else None


def _check_adapter_effect(report: ArtifactReport, apath: str, weights: Path, base: BaseInfo | None) -> None:
    """An adapter that cannot change the model is refused: every `lora_B` all zero, or no
    module it adapts exists in the base model (vLLM would load it and ignore it)."""
    from safetensors import safe_open

    modules = base_module_names(base.path) if base is not None and base.path is not None else None
    try:
        with safe_open(str(weights), framework="numpy") as f:
            b_keys = [k for k in f.keys() if ".lora_B" in k]  # noqa: SIM118 (not a dict)
            live, missing = [], []
            for key in b_keys:
                module = key.split(".lora_B")[0].removeprefix("base_model.model.")
                if modules is not None and module not in modules:
                    missing.append(module)
                elif f.get_tensor(key).any():
                    live.append(module)
    except Exception as exc:
        report.error(apath, f"{ADAPTER_WEIGHTS} is not a readable safetensors file ({exc})")
        return
    if live:
        report.note(f"{apath}.target_modules", f"non-zero lora_B on {len(live)} module(s) of the base model")
        return
    if missing and len(missing) == len(b_keys):
        why = f"none of its {len(b_keys)} adapted modules exists in the base model (e.g. {missing[0]!r})"
    else:
        why = "every lora_B weight is zero" if b_keys else "it holds no lora_B weights"
    report.note(apath, f"the adapter changes nothing: {why}", "refused")
    report.blockers.append(f"{apath}: the adapter changes nothing: {why}")


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


def _check_file_hash(
    report: ArtifactReport, fpath: str, file: Path, sha: str | None, size: int | None, digest: str | None = None
) -> None:
    """Check sha256 and size where the manifest gives them; `digest` is the sha256 when already computed."""
    if sha:
        if not file.is_file():
            report.note(f"{fpath}.sha256", f"{file.name} not present: nothing to verify", "checked")
        elif (digest or sha256_file(file)) != sha:
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
    """Each soft prompt file is read once: hashed, parsed and kept in `report.soft_prompts`."""
    from server.manifest.soft_prompt import parse_soft_prompt

    for i, sp in enumerate(m.soft_prompts):
        spath = f"soft_prompts[{i}]"
        file = inside(root, sp.path)
        if file is None:
            report.error(f"{spath}.path", OUTSIDE)
            continue
        if not file.is_file():
            report.note(f"{spath}.path", f"{sp.path} not present", "refused")
            report.blockers.append(f"{spath}: soft prompt file {sp.path} not present")
            continue
        if file.stat().st_size > MAX_SOFT_PROMPT_BYTES:
            report.error(f"{spath}.path", f"{file.name} is larger than {MAX_SOFT_PROMPT_BYTES >> 20} MiB")
            continue
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        report.digests[file] = digest
        _check_file_hash(report, spath, file, sp.sha256, None, digest)
        try:
            tensor = parse_soft_prompt(data, file)
        except ValueError as exc:
            report.error(f"{spath}.path", str(exc).replace(str(file), file.name))
            continue
        tokens, width = (int(n) for n in tensor.shape)
        if tokens != sp.tokens:
            report.error(f"{spath}.tokens", f"tensor has {tokens} tokens, manifest says {sp.tokens}")
        elif base is not None and base.hidden_size is not None and width != base.hidden_size:
            report.error(f"{spath}.path", f"tensor width {width} != hidden size {base.hidden_size} of {base.name}")
        else:
            compared = "" if base and base.hidden_size else " (base not available to compare)"
            report.note(f"{spath}.tokens", f"tensor shape [{tokens}, {width}], hidden {width}{compared}", "applied")
            report.soft_prompts[sp.name] = tensor


def grammar_location(root: Path, manifest_file: Path, m: Manifest) -> tuple[str | None, Path | None]:
    """(grammar kind, file): kind 'json' needs no file; a GBNF grammar's file may be missing.

    `use_grammar: false` turns every grammar off; `use_grammar: true` or a `grammar_file`
    turns one on; a `grammar_type` alone turns nothing on."""
    d = m.decoding
    if d.use_grammar is False or (not d.use_grammar and not d.grammar_file):
        return None, None
    if (d.grammar_type or "").lower() == "json" and not d.grammar_file:
        return "json", None
    if d.grammar_file:
        return "gbnf", inside(root, d.grammar_file)
    default = inside(root, DEFAULT_GRAMMAR)
    if (default is None or not default.is_file()) and manifest_file.name.endswith(".manifest.json"):
        named = inside(root, manifest_file.name.removesuffix(".manifest.json") + ".grammar.gbnf")
        if named is not None and named.is_file():
            default = named
    return "gbnf", default


def _check_grammar(report: ArtifactReport, root: Path, manifest_file: Path, m: Manifest, base: BaseInfo | None) -> None:
    kind, file = grammar_location(root, manifest_file, m)
    d = m.decoding
    if kind is None:
        why = (
            "use_grammar is false: nothing is constrained"
            if d.use_grammar is False
            else "no constraint: neither use_grammar: true nor a grammar_file"
        )
        for key in ("use_grammar", "grammar_type", "grammar_file"):
            if getattr(d, key) is not None:
                report.note(f"training.decoding.{key}", why, "checked")
        return
    field_name = "training.decoding.grammar_file" if m.decoding.grammar_file else "training.decoding.grammar_type"
    if d.use_grammar:
        report.note("training.decoding.use_grammar", f"constrained decoding on (see {field_name})", "applied")
    if d.grammar_file and d.grammar_type is not None:
        same = (d.grammar_type or "").lower() in ("gbnf", "ebnf", "grammar", "custom") or kind == "gbnf"
        report.note(
            "training.decoding.grammar_type",
            "the grammar_file decides: a GBNF grammar" + ("" if same else f" (not {d.grammar_type!r})"),
            "applied" if same else "checked",
        )
    if kind == "json":
        report.note(field_name, "JSON grammar (vLLM structured outputs, json_object)", "applied")
        return
    if file is None:
        what = "grammar_file" if m.decoding.grammar_file else DEFAULT_GRAMMAR
        report.error(field_name, f"{what} {OUTSIDE}")
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
    if file.stat().st_size > MAX_GRAMMAR_BYTES:
        msg = f"{file.name} is over {MAX_GRAMMAR_BYTES} bytes"
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
            report.error(key, OUTSIDE)
        elif not sha:
            report.note(key, "empty hash: nothing to verify", "checked")
        elif not file.is_file():
            report.error(key, f"{rel} listed but not present")
        elif (report.digests.get(file) or sha256_file(file)) != sha:
            report.error(key, f"sha256 of {rel} does not match")
        else:
            report.note(key, "verified", "applied")
