"""A vLLM plugin (entry point `vllm.general_plugins`), loaded by vLLM in every process it
starts, engine core and workers included.

It fixes the engine crash of mixed prompt kinds with LoRA on: when a batch holds prompt
embeddings, vLLM's model runner embeds only the token-id positions (a subset of the batch),
through the LoRA-wrapped embedding layer, whose LoRA token mapping covers the whole batch;
`einsum` then fails on the size mismatch and the engine dies. Adapters served here never
target the embedding layer (artifacts.py refuses those that do), so the LoRA delta of the
embedding is zero and the subset is embedded by the base layer alone.

It also installs this project's CPU LoRA ops (server/engine/lora_ops.py) in vLLM's
`PunicaWrapperCPU`, unless `EXPERT_LORA_OPS=vllm` keeps vLLM's PyTorch-native ones. The
token-to-adapter plan is made once per batch mapping (`update_metadata`) and shared by every
LoRA layer of the step; a layer's slices (q, k, v) go through one shrink and one expand
(`lora_ops.lora_linear`), and the LM head's LoRA through the same ops (vLLM's run for it at
every step, adapters that do not target the LM head included).

In the engine core process it starts the watch that ends the engine core when the gateway
process is gone (server/engine/parent_watch.py).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("expert_gateway.vllm_plugin")

LORA_OPS_ENV = "EXPERT_LORA_OPS"  # the setting `lora_ops`, as the engine processes see it


def register() -> None:
    from server.engine import parent_watch

    if parent_watch.in_engine_core():
        parent_watch.watch_parent()
    _install_lora_ops()
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
    VocabParallelEmbeddingWithLoRA.forward = forward  # type: ignore[method-assign]  # patching vLLM's layer is the point


def _install_lora_ops() -> None:
    """Route `PunicaWrapperCPU`'s shrink and expand (prefill and decode, slices included)
    through server/engine/lora_ops.py, with one plan per batch mapping."""
    choice = os.environ.get(LORA_OPS_ENV, "project")
    if choice == "vllm":
        return
    if choice != "project":
        log.warning("expert-gateway plugin: %s must be 'project' or 'vllm'; keeping vLLM's LoRA ops", LORA_OPS_ENV)
        return
    try:
        from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU
    except ImportError:  # another vLLM layout: nothing to patch
        log.warning("expert-gateway plugin: PunicaWrapperCPU not found; vLLM's LoRA ops stay")
        return
    if getattr(PunicaWrapperCPU, "_expert_gateway_lora_ops", False):
        return
    import torch

    from server.engine import lora_ops

    update_metadata = PunicaWrapperCPU.update_metadata

    def update_metadata_and_plan(self, mapping, lora_index_to_id, *args, **kwargs):
        update_metadata(self, mapping, lora_index_to_id, *args, **kwargs)
        # which adapter each slot holds: the stacked weights are reused while it stays so
        self._expert_plan = lora_ops.plan_batch(self.token_lora_indices, list(lora_index_to_id))
        self._expert_sampler_plan = lora_ops.plan_batch(self.sampler_indices, list(lora_index_to_id))

    def plan(self, kind="_expert_plan", indices_of=lambda w: w.token_lora_indices):
        """The plan made at `update_metadata` (`kind`), or a new one if the rows changed since."""
        found, indices = getattr(self, kind, None), indices_of(self)
        if found is None or found.num_tokens != indices.shape[0]:
            found = lora_ops.plan_batch(indices)
            setattr(self, kind, found)
        return found

    def shrink(self, y, x, w_t_all, scale):
        lora_ops.bgmv_shrink(x, w_t_all, y, self.token_lora_indices, scale, plan=plan(self))

    def expand(self, y, x, w_t_all, add_inputs):
        lora_ops.bgmv_expand(x, w_t_all, y, self.token_lora_indices, add_inputs, plan=plan(self))

    def expand_slice(self, y, x, w_t_all, y_offset, y_slice_size, add_inputs):
        lora_ops.bgmv_expand_slice(
            x, w_t_all, y, self.token_lora_indices, y_offset, y_slice_size, add_inputs, plan=plan(self)
        )

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
        # every slice of the layer in one shrink and one expand (vLLM: two ops per slice); no
        # caller reads `buffer` back
        lora_ops.lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, plan=plan(self))

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
        # the LM head's LoRA, on the sampled rows (`sampler_indices`); vLLM runs its torch ops
        # here even when no adapter targets the LM head
        found = plan(self, "_expert_sampler_plan", lambda w: w.sampler_indices)
        rows, inputs = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
        shrunk = torch.zeros((inputs.shape[0], lora_b_stacked.size(-1)), dtype=torch.float32, device=x.device)
        lora_ops.bgmv_shrink(inputs, lora_a_stacked, shrunk, self.sampler_indices, scale, plan=found)
        lora_ops.bgmv_expand(shrunk, lora_b_stacked, rows, self.sampler_indices, True, plan=found)

    # prefill and decode differ only in how vLLM's torch ops receive the token-to-slot map
    # (runs of tokens or one slot per token); both are `token_lora_indices`, planned once
    patches = {
        "update_metadata": update_metadata_and_plan,
        "_shrink_prefill": shrink,
        "_shrink_decode": shrink,
        "_expand_prefill": expand,
        "_expand_decode": expand,
        "_expand_slice_prefill": expand_slice,
        "_expand_slice_decode": expand_slice,
        "add_lora_linear": add_lora_linear,
        "add_lora_logits": add_lora_logits,
    }
    for name, function in patches.items():
        setattr(PunicaWrapperCPU, name, function)
    PunicaWrapperCPU._expert_gateway_lora_ops = True  # type: ignore[attr-defined]
    log.info("expert-gateway plugin: CPU LoRA ops from server/engine/lora_ops.py")
