"""How long and how often the benchmark measures: the default and the `--quick` plan."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Plan:
    quick: bool
    clients: tuple[int, ...] = (1, 8, 32)
    reps: dict[int, int] | None = None  # clients -> repetitions of gateway-vs-vLLM pairs
    warmup_s: float = 2.0  # after the last client has started
    window_s: float = 8.0
    window_s_32: float = 12.0
    # lora_vs_base, experts_mixed and the soft-prompt comparisons: a window longer than a request's
    # life (64 tokens at ~0.2 s a step), so that it holds finished requests and the next ones'
    # prefills, not decode alone
    window_s_whole: float = 20.0
    # 6 pairs: the fewest whose range covers the median of the pairs' ratios with 95 % (96.9 %)
    reps_whole: int = 6
    # soft prompt on vs `none`: a difference of a few per cent against a pair-to-pair spread of
    # ±15 %, so more pairs (12: the interval of the median drops the 2 lowest and 2 highest)
    reps_soft_prompt: int = 12
    stagger_s: float = 0.4  # between client starts (0.25 s at 32 clients)
    max_tokens: int = 64
    lora_peer: bool = True  # also compare a LoRA expert against vLLM serving the same adapter
    embeds_server: bool = True  # start a second gateway with EXPERT_EMBEDS_FOR_ALL_PROMPTS=true
    reloads: int = 10
    interleaved: int = 24  # requests per side in the request-interleaved TTFT probe
    profile: bool = False

    @classmethod
    def make(cls, quick: bool, profile: bool) -> Plan:
        if quick:
            return cls(
                True,
                reps={1: 1, 8: 1, 32: 1},
                window_s=8.0,
                window_s_32=8.0,
                window_s_whole=8.0,
                reps_whole=1,
                reps_soft_prompt=1,
                lora_peer=False,
                embeds_server=False,
                reloads=4,
                interleaved=8,
                profile=profile,
            )
        return cls(False, reps={1: 3, 8: 8, 32: 4}, profile=profile)
