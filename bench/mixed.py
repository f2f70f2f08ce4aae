"""Comparisons within the gateway: the soft-prompt path (prompt embeddings vs token ids; a soft
prompt on vs `none`; a soft-prompt-only expert vs the base model). Experts mixed in one batch
vs the base model: bench/lora.py. Like those, these comparisons measure windows that outlast a
request (`Plan.window_s_whole`; `Plan.reps_whole` pairs, `reps_soft_prompt` for on vs `none`): a
soft prompt changes the prefill, which a window of decode steps alone would not see. Soft prompt
on vs `none` and the soft-prompt-only expert also get a single-request TTFT probe."""

from __future__ import annotations

from functools import partial
from typing import Any

from . import experts as ex
from .comparisons import Side, ttft_interleaved_sides
from .measure import measure, paired
from .plan import Plan
from .servers import BASE_ID, Server


def soft_prompt_path(plan: Plan, gw: Server, gw_embeds: Server | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    reps = plan.reps_whole
    run = partial(measure, plan=plan, clients=8, window_s=plan.window_s_whole)
    if gw_embeds is not None:
        out["embeds_for_all_vs_tokens"] = paired(
            "embeds-vs-tokens",
            8,
            reps,
            ("embeds", partial(run, gw_embeds)),
            ("tokens", partial(run, gw)),
        )
        out["embeds_for_all_vs_tokens"]["what"] = (
            "base-model requests; gateway with EXPERT_EMBEDS_FOR_ALL_PROMPTS=true (prompt embeddings) vs false "
            "(token ids), two servers with the same experts"
        )
    name = ex.SOFT_PROMPT_EXPERT
    out["soft_prompt_on_vs_none"] = paired(
        "soft-prompt-on-vs-none",
        8,
        plan.reps_soft_prompt,
        ("on", partial(run, gw, model=name, pick=lambda c, k: (name, {"soft_prompt": "alpha"}))),
        ("none", partial(run, gw, model=name, pick=lambda c, k: (name, {"soft_prompt": "none"}))),
    )
    out["soft_prompt_on_vs_none"]["what"] = (
        f"expert {name!r} (LoRA), soft prompt 'alpha' (6 virtual tokens, sent as prompt embeddings) vs "
        "soft_prompt='none' (token ids)"
    )
    out["soft_prompt_on_vs_none"]["ttft_interleaved_1_client"] = _interleaved(
        plan, ("on", gw, name, {"soft_prompt": "alpha"}), ("none", gw, name, {"soft_prompt": "none"})
    )
    only = ex.SOFT_PROMPT_ONLY_EXPERT
    out["soft_prompt_only_vs_base"] = paired(
        "soft-prompt-only-vs-base",
        8,
        reps,
        ("expert", partial(run, gw, model=only)),
        ("base", partial(run, gw)),
    )
    out["soft_prompt_only_vs_base"]["what"] = (
        f"expert {only!r}: a {ex.SOFT_PROMPT_ONLY_TOKENS}-token soft prompt and no adapter (prompt embeddings, "
        "no LoRA slot) vs the base model (token ids)"
    )
    out["soft_prompt_only_vs_base"]["ttft_interleaved_1_client"] = _interleaved(
        plan, ("expert", gw, only, None), ("base", gw, BASE_ID, None)
    )
    return out


def _interleaved(plan: Plan, a: Side, b: Side) -> dict[str, Any]:
    """What a soft prompt adds to one request, away from the batch's noise: single requests of
    both sides interleaved (bench/comparisons.py), a prefill on an idle engine each."""
    print(f"    TTFT, one client, {a[0]} vs {b[0]} interleaved ...", flush=True)
    try:
        return ttft_interleaved_sides(a, b, plan.interleaved)
    except Exception as exc:  # reported; the windowed results stand
        return {"error": f"{type(exc).__name__}: {exc}"}
