"""A vLLM plugin (entry point `vllm.general_plugins`), loaded by vLLM in every process it
starts, engine core and workers included.

It fixes the engine crash of mixed prompt kinds with LoRA on: when a batch holds prompt
embeddings, vLLM's model runner embeds only the token-id positions (a subset of the batch),
through the LoRA-wrapped embedding layer, whose LoRA token mapping covers the whole batch;
`einsum` then fails on the size mismatch and the engine dies. Adapters served here never
target the embedding layer (artifacts.py refuses those that do), so the LoRA delta of the
embedding is zero and the subset is embedded by the base layer alone.
"""

from __future__ import annotations

import logging

log = logging.getLogger("expert_gateway.vllm_plugin")


def register() -> None:
    try:
        from vllm.lora.layers.vocab_parallel_embedding import VocabParallelEmbeddingWithLoRA
    except ImportError:  # another vLLM layout: nothing to patch
        log.warning("expert-gateway plugin: VocabParallelEmbeddingWithLoRA not found; no patch applied")
        return
    original = VocabParallelEmbeddingWithLoRA.forward
    if getattr(original, "_expert_gateway_patched", False):
        return

    def forward(self, x):
        mapped = self.punica_wrapper.token_lora_indices.shape[0]
        if x.shape[0] != mapped:
            return self.base_layer.forward(x)
        return original(self, x)

    forward._expert_gateway_patched = True  # type: ignore[attr-defined]
    VocabParallelEmbeddingWithLoRA.forward = forward
