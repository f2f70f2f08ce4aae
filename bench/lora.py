"""LoRA experts against the base model on the gateway, with vLLM's stock CPU LoRA ops and with
the project's (server/engine/lora_ops.py; the setting EXPERT_LORA_OPS switches): one LoRA expert
vs the base model, and 5 experts mixed (4 LoRA + 1 soft-prompt expert) vs the base model, 8
clients each. Each comparison runs both sides alternating on one gateway; the two gateways
differ only in EXPERT_LORA_OPS. The windows (`Plan.window_s_whole`) outlast a request, so the
throughput counts prefills as well as decode steps; the ITL ratio is the decode steps' alone."""

from __future__ import annotations

from functools import partial
from typing import Any

from . import experts as ex
from .measure import measure, paired
from .plan import Plan
from .servers import Server

LORA_OPS = ("project", "vllm")  # the first is the headline


def _headline(by_ops: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The project ops' ratios at the top (ttft_p99_ratio: pooled p99 of A over pooled p99 of B),
    and every side in `by_lora_ops`."""
    for result in by_ops.values():
        result["ttft_p99_ratio"] = result.get("ttft_p99_ratio_pooled")
    head = by_ops[LORA_OPS[0]]
    return {
        "throughput_ratio": head.get("throughput_ratio"),
        "ttft_p99_ratio": head.get("ttft_p99_ratio"),
        "lora_ops": LORA_OPS[0],
        "by_lora_ops": by_ops,
    }


def lora_vs_base(plan: Plan, gateways: dict[str, Server]) -> dict[str, Any]:
    name = ex.LORA_EXPERTS[0]
    window = plan.window_s_whole
    by_ops = {}
    for ops in LORA_OPS:
        gw = gateways[ops]
        by_ops[ops] = paired(
            f"lora-vs-base-{ops}",
            8,
            plan.reps_whole,
            ("lora", partial(measure, gw, plan, 8, model=name, pick=lambda c, k: (name, None), window_s=window)),
            ("base", partial(measure, gw, plan, 8, window_s=window)),
        )
        by_ops[ops]["what"] = f"expert {name!r} (LoRA r=8, attention) vs the base model, EXPERT_LORA_OPS={ops}"
    return _headline(by_ops)


def experts_mixed(plan: Plan, gateways: dict[str, Server]) -> dict[str, Any]:
    models = [*ex.LORA_EXPERTS, ex.SOFT_PROMPT_EXPERT]

    def mixed(c: int, k: int) -> tuple[str, dict[str, Any] | None]:
        return models[(c + k) % len(models)], None

    window = plan.window_s_whole
    by_ops = {}
    for ops in LORA_OPS:
        gw = gateways[ops]
        by_ops[ops] = paired(
            f"experts-mixed-{ops}",
            8,
            plan.reps_whole,
            ("mixed", partial(measure, gw, plan, 8, pick=mixed, window_s=window)),
            ("base", partial(measure, gw, plan, 8, window_s=window)),
        )
        by_ops[ops]["what"] = (
            f"requests rotating over {len(models)} experts ({len(ex.LORA_EXPERTS)} LoRA adapters, one soft-prompt "
            f"expert whose requests are prompt embeddings) vs the base model, EXPERT_LORA_OPS={ops}"
        )
    out = _headline(by_ops)
    out["mixed_models"] = models
    return out
