"""DoRA adapters converted to plain LoRA (which vLLM serves), with measured fidelity.

For each adapted linear module (base weight W [out, in], DoRA factors A [r, in], B [out, r],
scaling s, magnitude m [out]), PEFT's DoRA computes the weight

    W' = diag(m / n) (W + s·B·A),   n = the L2 norm of each output row of W + s·B·A

(PEFT's `get_weight_norm`: `torch.linalg.norm(W + s·B·A, dim=1)`), so the update is
ΔW = W' − W, exactly. ΔW is in general of full rank (the magnitude rescales W's rows), so it
is factored by SVD, ΔW ≈ U_R Σ_R V_Rᵀ, and the R leading singular triplets become the LoRA
factors B' = U_R Σ_R^½, A' = Σ_R^½ V_Rᵀ with lora_alpha = R (scaling 1). The relative error
per module is ‖ΔW − B'A'‖_F / ‖ΔW‖_F. The bias is not touched by DoRA.

`convert_expert` writes the converted expert (manifest, PEFT LoRA adapter, the expert's other
files, `conversion.json`) and measures fidelity against the PEFT DoRA reference: relative
error per module, and greedy-token agreement on the expert's test prompts (or a fixed set),
both free-running (identical greedy continuations) and teacher-forced (the LoRA model's
next-token argmax along the DoRA model's greedy continuation).

Needs torch, safetensors, peft and transformers (imported inside functions) and the base
weights in float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from server.manifest import prompt_formats
from server.manifest.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, inside
from server.manifest.schema import MANIFEST_FILENAME, Manifest, parse_manifest, read_manifest_json

REPORT_FILE = "conversion.json"
DEFAULT_PROMPTS = (
    "List three primary colors.",
    "Write a SQL query that counts the rows of a table named users.",
    "What is the capital of France?",
    "Return a JSON object with keys name and age for Ana, 31.",
    "Explain in one sentence what a hash function is.",
    "Translate 'good morning' into Spanish.",
    "Give a Python expression that reverses a list xs.",
    "Name two planets of the solar system.",
)


class ConversionError(Exception):
    """The adapter cannot be converted as asked; the message says why."""


@dataclass
class ModuleFactors:
    name: str  # module path in the PEFT model (base_model.model....)
    a: Any  # [R, in]
    b: Any  # [out, R]
    rel_error: float


@dataclass
class Report:
    source: str
    rank: int
    dora_rank: int
    max_lora_rank: int
    modules: dict[str, float]  # module -> relative error at `rank`
    max_rel_error: float
    mean_rel_error: float
    prompts: int = 0
    tokens_per_prompt: int = 0
    identical_greedy: int = 0  # prompts whose free-running greedy continuations are identical
    token_agreement: float | None = None  # teacher-forced next-token agreement, 0..1
    first_divergence: list[int | None] = field(default_factory=list)  # per prompt, None: identical

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        agree = "" if self.token_agreement is None else f", token agreement {self.token_agreement:.1%}"
        return (
            f"rank {self.rank} (DoRA r={self.dora_rank}): relative error max {self.max_rel_error:.2e}, "
            f"mean {self.mean_rel_error:.2e} over {len(self.modules)} modules; greedy: "
            f"{self.identical_greedy}/{self.prompts} prompts identical over {self.tokens_per_prompt} tokens{agree}"
        )


# ----------------------------------------------------------------------------- the math


def fold(weight: Any, lora_a: Any, lora_b: Any, scaling: float, magnitude: Any) -> Any:
    """ΔW of one DoRA linear module (float64): diag(m/n)(W + s·B·A) − W."""
    import torch

    w = weight.to(torch.float64)
    adapted = w + scaling * (lora_b.to(torch.float64) @ lora_a.to(torch.float64))
    norm = torch.linalg.norm(adapted, dim=1)
    return (magnitude.to(torch.float64) / norm)[:, None] * adapted - w


def spectrum(delta: Any) -> tuple[Any, Any, Any]:
    import torch

    return torch.linalg.svd(delta, full_matrices=False)


def rel_error_at(s: Any, rank: int) -> float:
    """‖ΔW − best rank-`rank` approximation‖_F / ‖ΔW‖_F from the singular values."""
    total = float((s**2).sum())
    if total == 0.0:
        return 0.0
    return math.sqrt(max(float((s[rank:] ** 2).sum()), 0.0) / total)


def factor(u: Any, s: Any, vh: Any, rank: int) -> tuple[Any, Any]:
    """LoRA factors (A [rank, in], B [out, rank]) of the rank-`rank` truncation, scaling 1."""
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def choose_rank(
    spectra: dict[str, Any], *, rank: int | None, max_error: float | None, dora_rank: int, limit: int
) -> int:
    full = max(min(len(s), limit) for s in spectra.values()) if spectra else 1
    if rank is not None:
        if rank < 1:
            raise ConversionError("--rank must be at least 1")
        if rank > limit:
            raise ConversionError(f"rank {rank} is above the engine's max_lora_rank ({limit})")
        return rank
    if max_error is not None:
        if max_error < 0:
            raise ConversionError("--max-error must not be negative")
        for r in range(1, full + 1):
            if all(rel_error_at(s, r) <= max_error for s in spectra.values()):
                return r
        worst = max(rel_error_at(s, limit) for s in spectra.values())
        raise ConversionError(
            f"no rank up to the engine's max_lora_rank ({limit}) keeps every module within {max_error}: "
            f"the worst module's relative error at rank {limit} is {worst:.3g}"
        )
    if dora_rank > limit:
        raise ConversionError(
            f"the DoRA adapter's rank {dora_rank} is above the engine's max_lora_rank ({limit}); ask for --rank"
        )
    return dora_rank


# ----------------------------------------------------------------------------- the expert


def _dora_adapter(folder: Path, m: Manifest) -> tuple[int, int, Path, dict[str, Any]]:
    for bi, (_, adapters) in enumerate(m.bases()):
        for ai, adapter in enumerate(adapters):
            if adapter.type != "dora":
                continue
            adir = inside(folder, adapter.path or ".")
            if adir is None:
                raise ConversionError(f"base_models[{bi}].adapters[{ai}].path: not inside the expert folder")
            cfg_file = adir / ADAPTER_CONFIG
            if not cfg_file.is_file() or not (adir / ADAPTER_WEIGHTS).is_file():
                raise ConversionError(f"no PEFT adapter files ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS}) in {adir}")
            cfg = json.loads(cfg_file.read_text())
            if not isinstance(cfg, dict) or not cfg.get("use_dora"):
                raise ConversionError(f"{cfg_file}: not a DoRA adapter (use_dora is not true)")
            return bi, ai, adir, cfg
    raise ConversionError("the manifest has no adapter of type 'dora'")


def _load(base_path: str, adapter_dir: Path | None):
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.eval()


def dora_modules(model) -> dict[str, tuple[Any, Any, Any, float, Any]]:
    """{module path: (W, A, B, scaling, magnitude)} of every DoRA linear module of a PeftModel."""
    import torch
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, LoraLayer) or "default" not in layer.lora_A:
            continue
        module: Any = layer
        base = module.get_base_layer()
        if not isinstance(base, torch.nn.Linear):
            raise ConversionError(f"{name}: DoRA on {type(base).__name__} layers is not converted (linear only)")
        if "default" not in module.lora_magnitude_vector:
            raise ConversionError(f"{name}: no DoRA magnitude vector")
        out[name] = (
            base.weight.detach(),
            module.lora_A["default"].weight.detach(),
            module.lora_B["default"].weight.detach(),
            float(module.scaling["default"]),
            module.lora_magnitude_vector["default"].weight.detach(),
        )
    if not out:
        raise ConversionError("the DoRA adapter adapts no module of this base model")
    return out


def _prompts(m: Manifest, folder: Path, prompts_file: Path | None) -> list[list[dict[str, str]]]:
    texts: list[str] = []
    if prompts_file is not None:
        data = json.loads(prompts_file.read_text())
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ConversionError(f"{prompts_file}: expected a JSON list of prompt strings")
        texts = data
    elif m.evaluation is not None and m.evaluation.test_cases:
        cases: Any = m.evaluation.test_cases
        if isinstance(cases, str):
            file = inside(folder, cases)
            cases = json.loads(file.read_text()) if file is not None and file.is_file() else []
            cases = cases.get("test_cases", []) if isinstance(cases, dict) else cases
        texts = [c["prompt"] for c in cases if isinstance(c, dict) and isinstance(c.get("prompt"), str)]
    return [[{"role": "user", "content": t}] for t in (texts or list(DEFAULT_PROMPTS))]


def greedy(model, ids: list[int], tokens: int, eos: set[int]) -> list[int]:
    import torch

    out: list[int] = []
    with torch.no_grad():
        past = None
        step = torch.tensor([ids])
        for _ in range(tokens):
            res = model(input_ids=step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            if nxt in eos:
                break
            step = torch.tensor([[nxt]])
    return out


def teacher_forced_agreement(model, ids: list[int], continuation: list[int]) -> tuple[int, int]:
    """(positions where `model`'s argmax equals the continuation's token, positions)."""
    import torch

    if not continuation:
        return 0, 0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + continuation[:-1]])).logits[0]
    pred = logits[len(ids) - 1 :].argmax(-1).tolist()
    return sum(int(a == b) for a, b in zip(pred, continuation, strict=True)), len(continuation)


def _copy_expert(src: Path, dst: Path, skip: set[Path]) -> None:
    """Regular files of the expert folder (no links, no hidden files) but `skip`."""
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink()]
        for name in filenames:
            file = here / name
            if name.startswith(".") or file.is_symlink() or not file.is_file() or file.resolve() in skip:
                continue
            target = dst / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def convert_expert(
    src: Path,
    dst: Path,
    base_path: str,
    *,
    max_lora_rank: int,
    rank: int | None = None,
    max_error: float | None = None,
    prompts_file: Path | None = None,
    tokens: int = 16,
) -> Report:
    """Convert the DoRA expert in `src` into a LoRA expert in `dst` (which must not exist)."""
    import torch
    from safetensors.torch import save_file

    if dst.exists():
        raise ConversionError(f"{dst} exists; the converted expert is written into a new folder")
    raw = read_manifest_json(src / MANIFEST_FILENAME)
    m = parse_manifest(raw)
    bi, ai, adapter_dir, cfg = _dora_adapter(src, m)
    dora_rank = int(cfg.get("r") or 8)

    dora_model = _load(base_path, adapter_dir)
    modules = dora_modules(dora_model)
    spectra: dict[str, tuple[Any, Any, Any]] = {}
    for name, (w, a, b, s, mag) in modules.items():
        spectra[name] = spectrum(fold(w, a, b, s, mag))
    chosen = choose_rank(
        {n: sv[1] for n, sv in spectra.items()},
        rank=rank,
        max_error=max_error,
        dora_rank=dora_rank,
        limit=max_lora_rank,
    )
    tensors: dict[str, Any] = {}
    errors: dict[str, float] = {}
    for name, (u, sv, vh) in spectra.items():
        a_new, b_new = factor(u, sv, vh, chosen)
        width = a_new.shape[0]
        if width < chosen:  # a module narrower than the rank: pad with zeros (exact)
            a_new = torch.cat([a_new, a_new.new_zeros(chosen - width, a_new.shape[1])])
            b_new = torch.cat([b_new, b_new.new_zeros(b_new.shape[0], chosen - width)], dim=1)
        tensors[f"{name}.lora_A.weight"] = a_new.to(torch.float32).contiguous()
        tensors[f"{name}.lora_B.weight"] = b_new.to(torch.float32).contiguous()
        errors[name.removeprefix("base_model.model.")] = rel_error_at(sv, chosen)

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.convert-"))
    try:
        skip = {(adapter_dir / ADAPTER_CONFIG).resolve(), (adapter_dir / ADAPTER_WEIGHTS).resolve()}
        skip.add((src / MANIFEST_FILENAME).resolve())
        skip.add((src / REPORT_FILE).resolve())
        _copy_expert(src, staging, skip)
        out_adapter = staging / adapter_dir.relative_to(src.resolve())
        out_adapter.mkdir(parents=True, exist_ok=True)
        new_cfg = {
            **cfg,
            "use_dora": False,
            "r": chosen,
            "lora_alpha": chosen,
            "use_rslora": False,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
        (out_adapter / ADAPTER_CONFIG).write_text(json.dumps(new_cfg, indent=2))
        save_file(tensors, str(out_adapter / ADAPTER_WEIGHTS), metadata={"format": "pt"})

        report = Report(
            source=str(src),
            rank=chosen,
            dora_rank=dora_rank,
            max_lora_rank=max_lora_rank,
            modules=errors,
            max_rel_error=max(errors.values()),
            mean_rel_error=sum(errors.values()) / len(errors),
        )
        _measure(report, dora_model, base_path, out_adapter, m, src, prompts_file, tokens)
        _write_manifest(raw, staging, out_adapter, bi, ai, chosen, report)
        (staging / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        os.rename(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _measure(
    report: Report, dora_model, base_path: str, out_adapter: Path, m: Manifest, src: Path, prompts_file, tokens
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    base_spec = m.bases()[0][0]
    lora_model = _load(base_path, out_adapter)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    agree = total = 0
    for messages in _prompts(m, src, prompts_file):
        text = prompt_formats.render_prompt(
            base_spec.prompt_template, messages, capabilities=m.capabilities, tokenizer=tokenizer
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ref = greedy(dora_model, ids, tokens, eos)
        got = greedy(lora_model, ids, tokens, eos)
        report.prompts += 1
        report.identical_greedy += int(ref == got)
        diverge = next((i for i, (x, y) in enumerate(zip(ref, got, strict=False)) if x != y), None)
        if diverge is None and len(ref) != len(got):
            diverge = min(len(ref), len(got))
        report.first_divergence.append(diverge)
        a, n = teacher_forced_agreement(lora_model, ids, ref)
        agree, total = agree + a, total + n
    report.tokens_per_prompt = tokens
    report.token_agreement = agree / total if total else None


def _write_manifest(
    raw: dict[str, Any], staging: Path, out_adapter: Path, bi: int, ai: int, rank: int, report: Report
) -> None:
    data = json.loads(json.dumps(raw))
    adapters = data["base_models"][bi]["adapters"] if "base_models" in data else data["adapters"]
    adapter = adapters[ai]
    weights = (out_adapter / ADAPTER_WEIGHTS).read_bytes()
    adapter.update(
        {
            "type": "lora",
            "r": rank,
            "alpha": rank,
            "sha256": hashlib.sha256(weights).hexdigest(),
            "size_bytes": len(weights),
        }
    )
    adapter.pop("scaling", None)
    adapter["_converted_from"] = f"dora r={report.dora_rank}: {report.summary()} (see {REPORT_FILE})"
    integrity = data.get("integrity")
    if isinstance(integrity, dict):
        for key in ("signature", "public_key", "signed_by", "signed_at", "signature_algorithm"):
            integrity.pop(key, None)  # the files changed: the old signature no longer applies
        files = integrity.get("files")
        if isinstance(files, dict):
            integrity["files"] = {
                rel: hashlib.sha256((staging / rel).read_bytes()).hexdigest()
                for rel in files
                if inside(staging, rel) is not None and (staging / rel).is_file()
            }
        elif isinstance(files, list):
            integrity["files"] = [
                {
                    **f,
                    "sha256": hashlib.sha256((staging / f["path"]).read_bytes()).hexdigest(),
                    **({"size_bytes": (staging / f["path"]).stat().st_size} if "size_bytes" in f else {}),
                }
                for f in files
                if isinstance(f, dict) and inside(staging, str(f.get("path", ""))) and (staging / f["path"]).is_file()
            ]
    (staging / MANIFEST_FILENAME).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
