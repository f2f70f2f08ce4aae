"""Soft prompt files: read and write the `[tokens, hidden]` tensor of a soft prompt, and read
the base model's input embedding matrix that soft prompts are prepended to.

The server and the trainer share this file format. torch and safetensors are imported when a
file is read or written, not when this module is imported.

Accepted files:
- `.safetensors`: the tensor named `prompt_embeddings`, or the only tensor in the file;
- `.pt` / `.bin`: read with `torch.load(weights_only=True)` only (never arbitrary pickles):
  a tensor, or a dict with the key `prompt_embeddings` (what PEFT saves for prompt tuning).
The trainer writes `.safetensors` with exactly one float32 tensor, `prompt_embeddings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TENSOR_NAME = "prompt_embeddings"
SUFFIXES = (".safetensors", ".pt", ".bin")


def load_soft_prompt(path: Path) -> torch.Tensor:
    """The soft prompt at `path` as a 2-D float32 tensor [tokens, hidden]; ValueError if unusable."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise ValueError(f"soft prompt {path}: file not found")
    return parse_soft_prompt(path.read_bytes(), path)


def parse_soft_prompt(data: bytes, path: Path) -> torch.Tensor:
    """The soft prompt held in `data`, the bytes of the file `path` (whose suffix says the format).

    For callers that already read the file (to hash it, say): the file is read once.
    """
    import torch

    path = Path(path)
    _check_suffix(path)
    tensor = _from_safetensors(data, path) if path.suffix.lower() == ".safetensors" else _from_torch_file(data, path)
    if tensor.dim() != 2 or 0 in tensor.shape:
        raise ValueError(f"soft prompt {path}: expected a 2-D tensor [tokens, hidden], got shape {list(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"soft prompt {path}: expected floating point values, got {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"soft prompt {path}: holds NaN or infinite values")
    return tensor


def _check_suffix(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"soft prompt {path}: unsupported file type '{suffix}' (expected {', '.join(SUFFIXES)})")


def _from_safetensors(data: bytes, path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"soft prompt {path}: not a readable safetensors file ({exc})") from None
    if TENSOR_NAME in tensors:
        return tensors[TENSOR_NAME]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    names = ", ".join(sorted(tensors)) or "none"
    raise ValueError(f"soft prompt {path}: expected one tensor or one named '{TENSOR_NAME}', found: {names}")


def _from_torch_file(data: bytes, path: Path) -> torch.Tensor:
    import io

    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"soft prompt {path}: refused or unreadable with torch.load(weights_only=True): {first_line}"
        ) from None
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get(TENSOR_NAME), torch.Tensor):
        return obj[TENSOR_NAME]
    kind = f"a dict with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"soft prompt {path}: expected a tensor or a dict with '{TENSOR_NAME}', got {kind}")


def save_soft_prompt(tensor: torch.Tensor, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write `tensor` as the single float32 tensor `prompt_embeddings` of a safetensors file."""
    import torch
    from safetensors.torch import save_file

    if tensor.dim() != 2:
        raise ValueError(f"a soft prompt is 2-D [tokens, hidden], got shape {list(tensor.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {TENSOR_NAME: tensor.detach().to("cpu", torch.float32).contiguous()}
    save_file(data, str(path), metadata={"format": "pt", **(metadata or {})})


def load_embedding_matrix(model_path: str) -> torch.Tensor:
    """The base model's input embedding matrix `[vocab, hidden]`, read from its safetensors files."""
    from safetensors import safe_open

    folder = Path(model_path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_path, allow_patterns=["*.safetensors", "*.json"]))
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118  safe_open has keys() but is not iterable
                if key.endswith("embed_tokens.weight") or key.endswith("wte.weight"):
                    return f.get_tensor(key)
    raise RuntimeError(f"no input embedding matrix found in {folder}")
