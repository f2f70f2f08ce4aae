"""The experts the benchmark serves, built in a scratch folder with the test factory:
four LoRA experts, one soft-prompt expert (LoRA + two soft prompts), one soft-prompt-only
expert (a 16-token soft prompt, no adapter), `swap`, reloaded between two adapters, and two
grammar experts without adapters (values copied from the request, or any string)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LORA_EXPERTS = ["bench-lora-1", "bench-lora-2", "bench-lora-3", "bench-lora-4"]
SOFT_PROMPT_EXPERT = "sp-expert"
SOFT_PROMPT_ONLY_EXPERT = "sp-only"
SOFT_PROMPT_ONLY_TOKENS = 16  # as the example experts' soft prompts
SWAP_EXPERT = "swap"
GRAMMAR_FIXED_EXPERT = "grammar-fixed"
GRAMMAR_COPY_EXPERT = "grammar-copy"
# contact-extract's JSON skeleton; the values any string, or copied from the request's words
_SKELETON = 'root ::= "{\\"name\\": " v ", \\"age\\": " [0-9]+ ", \\"city\\": " v ", \\"job\\": " v "}"\n'
GRAMMARS = {
    GRAMMAR_FIXED_EXPERT: _SKELETON + 'v ::= "\\"" [^"\\\\\\x00-\\x1f]+ "\\""\n',
    GRAMMAR_COPY_EXPERT: _SKELETON + 'v ::= "\\"" input-span "\\""\n',
}


@dataclass
class ExpertSet:
    root: Path  # the experts folder served
    lora_dirs: dict[str, Path]  # LoRA expert -> its adapter folder (for vLLM's --lora-modules)
    swap_a: Path  # the two adapters `swap` alternates between (outside the experts folder)
    swap_b: Path


def build(work: Path, base_path: Path) -> ExpertSet:
    from trainer.synthetic import ADAPTER_FILES, make_lora, manifest, write_expert, write_soft_prompt_expert

    root = work / "experts"
    root.mkdir(parents=True)
    lora_dirs = {}
    for i, name in enumerate(LORA_EXPERTS, start=1):
        entry = make_lora(base_path, root / name, seed=100 + i)
        write_expert(root, manifest(name, version="1.0.0", adapter=entry))
        lora_dirs[name] = root / name
    write_soft_prompt_expert(root, base_path, name=SOFT_PROMPT_EXPERT)
    _write_soft_prompt_only_expert(root, base_path)
    decoding = {"use_grammar": True, "grammar_type": "gbnf", "grammar_file": "grammar.gbnf"}
    for name, grammar in GRAMMARS.items():
        write_expert(root, manifest(name, version="1.0.0", decoding=decoding), files={"grammar.gbnf": grammar})
    swap_entry = make_lora(base_path, root / SWAP_EXPERT, seed=2)
    write_expert(root, manifest(SWAP_EXPERT, version="1.0.0", adapter=swap_entry))
    swap_a, swap_b = work / "swap-a", work / "swap-b"
    swap_a.mkdir()
    for f in ADAPTER_FILES:
        shutil.copyfile(root / SWAP_EXPERT / f, swap_a / f)
    make_lora(base_path, swap_b, seed=3)
    return ExpertSet(root, lora_dirs, swap_a, swap_b)


def _write_soft_prompt_only_expert(root: Path, base_path: Path) -> None:
    import torch

    from server.manifest.soft_prompt import load_embedding_matrix, save_soft_prompt
    from trainer.synthetic import manifest, write_expert

    table = load_embedding_matrix(str(base_path)).float()
    rows = torch.randint(0, table.shape[0], (SOFT_PROMPT_ONLY_TOKENS,), generator=torch.Generator().manual_seed(5))
    save_soft_prompt(table[rows], root / SOFT_PROMPT_ONLY_EXPERT / "soft_prompts" / "only.safetensors")
    entry = {"name": "only", "path": "soft_prompts/only.safetensors", "tokens": SOFT_PROMPT_ONLY_TOKENS}
    write_expert(root, manifest(SOFT_PROMPT_ONLY_EXPERT, version="1.0.0", soft_prompts=[entry]))
