"""Reference generation with transformers + PEFT, to compare the served engine against.

`peft_greedy_tokens` computes what an expert should answer, the slow and obvious way:
the base model in float32, the LoRA adapter as a PeftModel (not merged), the soft prompt
tensor prepended to the embeddings of the prompt rendered exactly as the server renders
it (`apply_chat_template(..., tokenize=False, add_generation_prompt=True)`, then
tokenised without adding special tokens), and greedy decoding.
"""

from __future__ import annotations

from pathlib import Path

import torch

FIRST = "<first>"  # the manifest's first soft prompt (never a valid soft prompt name)


def peft_greedy_tokens(
    expert_dir: Path,
    messages: list[dict],
    max_new_tokens: int = 16,
    soft_prompt: str | None = FIRST,
    *,
    stop_at_eos: bool = True,
) -> list[int]:
    """Greedy token ids the expert generates for `messages`.

    `soft_prompt`: a soft prompt name, FIRST (default: the first one, if the manifest has
    any) or None (no soft prompt). Decoding stops after `max_new_tokens` tokens, or after
    an end-of-sequence token (included, as vLLM reports it) when `stop_at_eos`.
    """
    loaded = load_expert(Path(expert_dir), soft_prompt)
    return greedy_tokens(loaded, messages, max_new_tokens, stop_at_eos=stop_at_eos)


class LoadedExpert:
    """Base model (float32, eval mode) + LoRA adapter + soft prompt tensor, ready to generate."""

    def __init__(
        self,
        model,
        tokenizer,
        soft_prompt: torch.Tensor | None,
        template: str | None = None,
        capabilities: list[str] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.soft_prompt = soft_prompt
        self.template = template  # the manifest's prompt_template
        self.capabilities = capabilities
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = eos


def load_expert(
    expert_dir: Path,
    soft_prompt: str | None = FIRST,
    *,
    use_adapter: bool = True,
    base_model=None,
    base_source: str | None = None,
) -> LoadedExpert:
    """Load an expert for reference generation. `base_model` reuses an already loaded base (it
    is wrapped, not copied, so pass a fresh one per expert); `base_source` is the base folder
    when the manifest names it otherwise (a hivellm path). A DoRA adapter is loaded as PEFT's
    DoRA (the reference its conversion to LoRA is measured against)."""
    from peft import PeftModel

    from server.manifest.schema import load_manifest
    from server.manifest.soft_prompt import load_soft_prompt
    from trainer.base_model import load_model, load_tokenizer, resolve_base

    manifest = load_manifest(expert_dir)
    base, adapters = manifest.bases()[0]
    source = base_source or resolve_base(base.name)
    tokenizer = load_tokenizer(source)
    model = base_model if base_model is not None else load_model(source)
    loras = [a for a in adapters if a.type in ("lora", "dora")]
    if use_adapter and loras:
        model = PeftModel.from_pretrained(model, str(expert_dir / (loras[0].path or ".")))
    model.eval()

    tensor = None
    if soft_prompt == FIRST:
        chosen = manifest.soft_prompts[0] if manifest.soft_prompts else None
    elif soft_prompt is None:
        chosen = None
    else:
        chosen = next((sp for sp in manifest.soft_prompts if sp.name == soft_prompt), None)
        if chosen is None:
            names = ", ".join(sp.name for sp in manifest.soft_prompts) or "none"
            raise ValueError(f"{manifest.name} has no soft prompt '{soft_prompt}' (has: {names})")
    if chosen is not None:
        tensor = load_soft_prompt(expert_dir / chosen.path)
        hidden = model.get_input_embeddings().weight.shape[1]
        if tensor.shape[1] != hidden:
            raise ValueError(f"soft prompt {chosen.name} has width {tensor.shape[1]}, the base model {hidden}")
    return LoadedExpert(model, tokenizer, tensor, base.prompt_template, manifest.capabilities)


@torch.no_grad()
def greedy_tokens(
    expert: LoadedExpert, messages: list[dict], max_new_tokens: int = 16, *, stop_at_eos: bool = True
) -> list[int]:
    from trainer.data import render_prompt

    model = expert.model
    embed = model.get_input_embeddings()
    ids = torch.tensor([render_prompt(expert.tokenizer, messages, expert.template, expert.capabilities)])
    embeds = embed(ids)
    if expert.soft_prompt is not None:
        embeds = torch.cat([expert.soft_prompt.to(embeds.dtype)[None], embeds], dim=1)

    out = model(inputs_embeds=embeds, use_cache=True)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(out.logits[0, -1].argmax())
        generated.append(next_id)
        if stop_at_eos and next_id in expert.eos_ids:
            break
        out = model(inputs_embeds=embed(torch.tensor([[next_id]])), past_key_values=out.past_key_values, use_cache=True)
    return generated
