"""Find and load the base model a manifest names (`base_models[].name`).

The embedded model's id (HuggingFaceTB/SmolLM2-135M-Instruct) is the prepared folder of
server.manifest.embedded; a name that is an existing folder is that folder; anything else is a
Hugging Face id resolved by transformers (local cache first).
"""

from __future__ import annotations

from pathlib import Path

import torch

from server.manifest.embedded import EMBEDDED_MODEL_ID


class BaseModelError(Exception):
    """The base model cannot be found or loaded."""


def resolve_base(name: str) -> str:
    """A folder (or Hugging Face id) from which transformers can load the base `name`."""
    if name == EMBEDDED_MODEL_ID:
        from server.manifest.embedded import EmbeddedModelError, prepare

        try:
            return str(prepare())
        except EmbeddedModelError as exc:
            raise BaseModelError(str(exc)) from None
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    return name


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"cannot load the tokenizer of base model '{source}': {exc}") from None
    if tokenizer.chat_template is None:
        raise BaseModelError(f"the tokenizer of '{source}' has no chat template")
    return tokenizer


def load_model(source: str, device: str = "cpu"):
    """The base model in float32 (training and reference computations are float32)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"cannot load base model '{source}': {exc}") from None
    return model.to(device)  # type: ignore[arg-type]  # transformers' decorator on .to() hides `self` from mypy


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
