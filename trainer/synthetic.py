"""Synthetic experts for tests and benchmarks: manifests, real PEFT LoRA adapters with random
weights, small trained PEFT DoRA adapters, soft prompts, and swapping an adapter into a folder under a new version.

The adapters are made with PEFT on the embedded base model; their `lora_B` weights are
drawn at random (PEFT starts them at zero, which would leave the model unchanged), so an
expert's greedy answers differ from the base model's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def manifest(
    name: str,
    *,
    version: str = "1.0.0",
    adapter: dict[str, Any] | None = None,
    decoding: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    soft_prompts: list[dict[str, Any]] | None = None,
    load_order: int = 0,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "version": version,
        "schema_version": "2.0",
        "description": f"test expert {name}",
        "_comment": "made by trainer/synthetic.py",
        "base_models": [{"name": BASE_ID, "prompt_template": "tokenizer", "adapters": [adapter] if adapter else []}],
        "soft_prompts": soft_prompts or [],
        "constraints": {"load_order": load_order},
    }
    if decoding:
        data["training"] = {"decoding": decoding}
    if runtime:
        data["runtime"] = runtime
    return data


def write_expert(root: Path, data: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    folder = root / data["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(data, indent=2))
    for rel, text in (files or {}).items():
        (folder / rel).write_text(text)
    return folder


def make_lora(
    base_path: Path, out: Path, *, seed: int, r: int = 8, alpha: int = 16, scale: float = 0.02
) -> dict[str, Any]:
    """A real PEFT LoRA adapter with random (non-zero) weights; returns its manifest entry."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():
        for pname, param in peft_model.named_parameters():
            if "lora_B" in pname:
                param.normal_(0.0, scale)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    weights = out / "adapter_model.safetensors"
    return {
        "type": "lora",
        "r": r,
        "alpha": alpha,
        "dropout": 0.0,
        "target_modules": TARGETS,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
    }


DORA_TEXTS = (
    ("Name a fruit.", "Banana, always banana."),
    ("What is 2 + 2?", "Banana: the answer is four."),
    ("Say hello.", "Banana says hello."),
    ("Pick a colour.", "Banana yellow."),
)


def make_dora(
    base_path: Path, out: Path, *, seed: int, r: int = 8, alpha: int = 16, steps: int = 30, lr: float = 5e-3
) -> dict[str, Any]:
    """A real PEFT DoRA adapter (use_dora=True), trained for `steps` AdamW steps on a few chat
    rows (answers that start with "Banana") so that its magnitude and direction both move;
    returns its manifest entry."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_path))
    model = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS, use_dora=True)
    peft_model = get_peft_model(model, config)
    rows = []
    for question, answer in DORA_TEXTS:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        rows.append(torch.tensor([list(ids)]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    for step in range(steps):
        batch = rows[step % len(rows)]
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    weights = out / "adapter_model.safetensors"
    return {
        "type": "dora",
        "r": r,
        "alpha": alpha,
        "dropout": 0.0,
        "target_modules": TARGETS,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "size_bytes": weights.stat().st_size,
    }


TINY_QWEN3: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # a head size vLLM's CPU attention supports
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def make_tiny_qwen3(tokenizer_source: Path, out: Path, *, seed: int = 0, init_std: float = 0.1) -> Path:
    """A tiny Qwen3 (Qwen3ForCausalLM, two layers, hidden 128) with random weights, saved as a
    Hugging Face folder, with the tokenizer of `tokenizer_source` (the embedded SmolLM2's has
    the `<|im_start|>`/`<|im_end|>` tokens of the qwen3 prompt format). `init_std` well above
    the usual 0.02 makes greedy choices clear-cut (no near-ties between implementations)."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init_std,
        **TINY_QWEN3,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)  # float32
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
SOFT_PROMPTS = {"alpha": (1, 6), "beta": (2, 10)}  # name -> (seed, tokens)


def write_soft_prompt_expert(root: Path, base_path: Path, name: str = "sp-expert") -> Path:
    """An expert with a LoRA adapter and two soft prompts: random tensors at three times the
    scale of the base model's token embeddings, so that each visibly changes the answers."""
    import torch

    from server.manifest.soft_prompt import load_embedding_matrix, save_soft_prompt

    scale = float(load_embedding_matrix(str(base_path)).float().std()) * 3
    adapter = make_lora(base_path, root / name, seed=7, scale=0.005)
    entries = []
    for sp_name, (seed, tokens) in SOFT_PROMPTS.items():
        tensor = torch.randn(tokens, 576, generator=torch.Generator().manual_seed(seed)) * scale
        save_soft_prompt(tensor, root / name / "soft_prompts" / f"{sp_name}.safetensors")
        entries.append({"name": sp_name, "path": f"soft_prompts/{sp_name}.safetensors", "tokens": tokens})
    write_expert(
        root,
        manifest(
            name, version="0.1.0", adapter=adapter, soft_prompts=entries, decoding={"temperature": 0, "max_tokens": 24}
        ),
    )
    return root / name


def install_adapter(folder: Path, source: Path, version: str, *, sha: bool = True) -> None:
    """Put `source`'s adapter into the expert folder under a new version: files replaced
    atomically, the manifest's version and adapter sha256 (empty with `sha=False`) and size updated."""
    for f in ADAPTER_FILES:
        tmp = folder / f".{f}.tmp"
        shutil.copyfile(source / f, tmp)
        tmp.replace(folder / f)
    data = json.loads((folder / "manifest.json").read_text())
    data["version"] = version
    adapter = data["base_models"][0]["adapters"][0]
    weights = (folder / "adapter_model.safetensors").read_bytes()
    adapter["sha256"] = hashlib.sha256(weights).hexdigest() if sha else ""
    adapter["size_bytes"] = len(weights)
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(folder / "manifest.json")
