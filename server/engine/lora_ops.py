"""Multi-LoRA shrink and expand for CPU: one dense GEMM per op over the active adapters.

Drop-in replacements for vLLM's PyTorch-native punica ops (`vllm.lora.ops.torch_ops`:
`bgmv_shrink`, `bgmv_expand`, `bgmv_expand_slice` for decode and their `sgmv_*` prefill
variants), with the same signatures, shapes and dtype behaviour. Pure torch; this module
does not import vLLM.

vLLM's ops gather a full copy of each token's adapter matrices (`weights[indices]`,
`[tokens, rank, hidden]`) and contract them with `einsum`, one small matrix-vector product
per token. Here, for a batch whose tokens use `k` distinct adapters (slots):

- shrink: `h = x @ [A_1; ...; A_k]^T` (one GEMM, `[tokens, k * rank]`), then each token keeps
  its own adapter's `rank` columns (a gather);
- expand: each token's `rank` values are placed in its adapter's block of a zero
  `[tokens, k * rank]` matrix (a scatter), then one GEMM against `[B_1^T; ...; B_k^T]`.

With one adapter (the common case) both are a plain GEMM. `lora_linear` does a whole layer
(vLLM's `add_lora_linear`) at once: every slice's `A` (q, k and v of a merged projection) in
the shrink GEMM, a mask that keeps each token's own adapter's columns, and per slice an expand
GEMM that adds into the output in place, each adapter cut to its own rank (vLLM pads every adapter
to `max_lora_rank` with zeros). The extra work is `k` times the
rank-sized products, small next to gathering `tokens` copies of the weights. vLLM wraps every
supported linear layer and keeps zeros in the slots of adapters that do not target it (an
attention-only adapter leaves the MLP's zero): when the active slots of a layer are all zero
the op adds nothing and computes nothing (exact for finite inputs).

Slot index `-1` means "no adapter" (the contract of `PunicaWrapperBase.token_lora_indices`):
such tokens get a zero delta. vLLM's torch ops index the weights with `-1` as it is, which
reads the *last* slot; the two agree while that slot is empty, and differ (vLLM's then adds
the last slot's adapter to tokens without one) when every slot is in use.

A `LoRABatchPlan` (which slots are active, where each token's block is) depends only on the
token-to-slot indices, so it can be made once per engine step (`plan_batch`) and passed to
every op of that step; without one, each op makes its own. The active slots' weights, stacked
in the layout of the GEMM and in its dtype, are kept from one call to the next while the same
slots are active and hold the same adapters: the plan says which adapters the slots hold when
its maker knows (`plan_batch(..., slot_adapters=...)`, as the engine's LoRA manager does: a slot
that gets another adapter changes them), else the weights tensor's version counter, which
every in-place write bumps, says whether they changed (tensors made in inference mode have
none: their stacks are made anew at each call). At most one entry per weights tensor and op
kind: the active adapters' weights, in float32 at most.

Dtypes follow vLLM's torch ops: inputs and weights are cast to the output tensor's dtype
(the shrink's output buffer is float32 in vLLM, the expand's output is the activations'
dtype). A half-precision product is computed in float32 from those rounded values and rounded
once, which is what a half-precision GEMM with float32 accumulation computes; CPUs without
native bfloat16 matrix units run it many times faster that way.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "LoRABatchPlan",
    "bgmv_expand",
    "bgmv_expand_slice",
    "bgmv_shrink",
    "lora_linear",
    "plan_batch",
    "sgmv_expand",
    "sgmv_expand_slice",
    "sgmv_shrink",
]


@dataclass(frozen=True)
class LoRABatchPlan:
    """Where each token's adapter is among the active ones.

    slots: the distinct slots in use, ascending (`[k]`, long); empty when no token has one.
    first, contiguous: `slots` is `first, first + 1, ..., first + k - 1` when `contiguous`
        (the weights are then sliced, not gathered).
    position: per token, the index of its slot in `slots` (`[tokens]`, long; 0 for a token
        without adapter, which `has_lora` masks).
    has_lora: per token, whether it has an adapter (`[tokens, 1]`, bool), or None when all do.
    adapters: what the active slots hold (e.g. their adapter ids), when the plan's maker knows.
    masks: the block masks made from the plan so far, by column layout (see `block_mask`).
    """

    slots: torch.Tensor
    key: tuple[int, ...]
    first: int
    contiguous: bool
    position: torch.Tensor
    has_lora: torch.Tensor | None
    adapters: tuple[object, ...] | None = None
    masks: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_active(self) -> int:
        return int(self.slots.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.position.shape[0])

    def block_mask(self, ranks: tuple[int, ...]) -> torch.Tensor | None:
        """`[tokens, sum(ranks)]` float32 for columns laid out slot by slot (`ranks[i]` columns
        for the i-th active slot): 1 in each token's own slot's columns, 0 elsewhere (all 0 for a
        token without adapter); None when no masking is needed (one adapter, every token has
        it). Made once per plan and layout."""
        if self.num_active == 1 and self.has_lora is None:
            return None
        found = self.masks.get(ranks)
        if found is None:
            column_slot = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))
            found = (self.position.view(-1, 1) == column_slot.view(1, -1)).float()
            if self.has_lora is not None:
                found.masked_fill_(~self.has_lora, 0.0)
            self.masks[ranks] = found
        return found


def plan_batch(token_lora_indices: torch.Tensor, slot_adapters: Sequence[object] | None = None) -> LoRABatchPlan:
    """The plan for a batch whose token `t` uses slot `token_lora_indices[t]` (-1: none);
    `slot_adapters[s]`: what slot `s` holds (its adapter's id), if known."""
    indices = token_lora_indices.reshape(-1)
    slots, inverse = torch.unique(indices, sorted=True, return_inverse=True)
    has_lora: torch.Tensor | None = None
    if slots.numel() and int(slots[0]) < 0:  # -1 sorts first
        slots = slots[1:]
        has_lora = (indices >= 0).unsqueeze(1)
        position = (inverse - 1).clamp_(min=0)
    else:
        position = inverse
    key = tuple(slots.tolist())
    k = len(key)
    first = key[0] if k else 0
    contiguous = k > 0 and key[-1] - first == k - 1
    adapters = tuple(slot_adapters[s] for s in key) if slot_adapters is not None else None
    return LoRABatchPlan(slots, key, first, contiguous, position, has_lora, adapters)


_HALF = (torch.bfloat16, torch.float16)


def _compute(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` rounded to `dtype`, in the dtype the product is computed in (float32 for halves)."""
    t = t.to(dtype)
    return t.float() if dtype in _HALF else t


def _active(weights: torch.Tensor, plan: LoRABatchPlan, dtype: torch.dtype) -> torch.Tensor:
    """The active slots' matrices, `[k, rows, cols]`, rounded to `dtype` (see `_compute`)."""
    if weights.ndim == 4:  # [slots, 1, rows, cols]
        weights = weights.squeeze(1)
    if plan.contiguous:
        selected = weights[plan.first : plan.first + plan.num_active]
    else:
        selected = weights.index_select(0, plan.slots)
    return _compute(selected, dtype)


# (id of the first weights tensor, kind, dtype, tensors) -> (weak reference to it, (version, slots),
# what was prepared from the weights); an entry leaves with its tensor. See the module docstring.
_Entry = tuple[weakref.ref, tuple[object, tuple[int, ...]], object]
_prepared: dict[tuple[int, str, torch.dtype, int], _Entry] = {}


def _cached(
    weights: Sequence[torch.Tensor], plan: LoRABatchPlan, dtype: torch.dtype, kind: str, make: Callable[[], Any]
) -> Any:
    """`make()` (what `kind` prepares from `weights` for the plan's active slots), kept while the
    same slots are active and hold the same adapters (see the module docstring)."""
    first = weights[0]
    key = (id(first), kind, dtype, len(weights))
    version: object = plan.adapters
    if version is None and not any(w.is_inference() for w in weights):
        version = tuple(w._version for w in weights)
    state = (version, plan.key)
    cached = _prepared.get(key)
    if version is not None and cached is not None and cached[0]() is first and cached[1] == state:
        return cached[2]
    prepared = make()
    if version is not None:
        _prepared[key] = (weakref.ref(first, lambda _: _prepared.pop(key, None)), state, prepared)
    return prepared


def _stacked(weights: torch.Tensor, plan: LoRABatchPlan, dtype: torch.dtype, kind: str) -> torch.Tensor | None:
    """The active slots' weights as one GEMM operand: `[k * rank, hidden]` for a shrink
    (`A` stacked), `[out, k * rank]` for an expand (`B` side by side); None when they are all
    zero (no active adapter targets this module)."""

    def make() -> torch.Tensor | None:
        w = _active(weights, plan, dtype)
        k = plan.num_active
        if kind == "shrink":  # [k, rank, hidden]
            prepared = w.reshape(k * w.shape[1], w.shape[2])
        else:  # [k, out, rank]
            prepared = w[0] if k == 1 else w.permute(1, 0, 2).reshape(w.shape[1], k * w.shape[2])
        return prepared if bool(prepared.any()) else None

    return _cached((weights,), plan, dtype, kind, make)


@dataclass(frozen=True)
class _LinearOperands:
    """A layer's active adapters as GEMM operands (see `lora_linear`): `a`, every slice's `A`
    rows stacked, `[slices * sum(ranks), hidden]`, float32; `b`, per slice its active slots' `B`
    side by side, `[out_i, sum(ranks)]`; `ranks`, the rows kept per active slot."""

    a: torch.Tensor
    b: tuple[torch.Tensor, ...]
    ranks: tuple[int, ...]


def _linear_operands(
    lora_a: Sequence[torch.Tensor], lora_b: Sequence[torch.Tensor], plan: LoRABatchPlan, dtype: torch.dtype
) -> _LinearOperands | None:
    """None when no active adapter targets the layer. vLLM pads every adapter to `max_lora_rank`
    with zero rows of `A`; each slot keeps its rows up to its last non-zero one (in any slice), so
    a rank-8 adapter costs rank 8 whatever the engine's maximum."""

    def make() -> _LinearOperands | None:
        a_act = [_active(w, plan, torch.float32) for w in lora_a]  # [k, rank, hidden] each
        used = torch.stack([w.abs().amax(dim=2) for w in a_act]).amax(dim=0) > 0  # [k, rank]
        rows = torch.arange(1, used.shape[1] + 1)
        ranks = tuple(int((used[s] * rows).max()) for s in range(used.shape[0]))
        if not any(ranks):
            return None
        a = torch.cat([w[s, :r] for w in a_act for s, r in enumerate(ranks) if r])
        b_act = [_active(w, plan, dtype) for w in lora_b]  # [k, out, rank] each
        b = tuple(torch.cat([w[s, :, :r] for s, r in enumerate(ranks) if r], dim=1) for w in b_act)
        if not any(bool(w.any()) for w in b):
            return None
        return _LinearOperands(a, b, ranks)

    return _cached((*lora_a, *lora_b), plan, dtype, "linear", make)


def _masked(values: torch.Tensor, plan: LoRABatchPlan) -> torch.Tensor:
    if plan.has_lora is None:
        return values
    return values.masked_fill(~plan.has_lora, 0)


def _check_tokens(x: torch.Tensor, plan: LoRABatchPlan) -> None:
    if x.shape[0] != plan.num_tokens:
        raise ValueError(f"LoRA ops: {x.shape[0]} input rows for {plan.num_tokens} token indices")


def _shrink(x: torch.Tensor, a: torch.Tensor, plan: LoRABatchPlan, dtype: torch.dtype) -> torch.Tensor | None:
    """`[tokens, rank]`: each token's `x @ A_slot^T` (zero without adapter); None: all zero."""
    _check_tokens(x, plan)
    k = plan.num_active
    if k == 0:
        return None
    w = _stacked(a, plan, dtype, "shrink")  # [k * rank, hidden]
    if w is None:
        return None
    rank = w.shape[0] // k
    h = _compute(x, dtype) @ w.t()  # [tokens, k * rank]
    if k > 1:
        index = plan.position.view(-1, 1, 1).expand(-1, 1, rank)
        h = h.view(-1, k, rank).gather(1, index).squeeze(1)
    return _masked(h, plan).to(dtype)


def _expand(x: torch.Tensor, b: torch.Tensor, plan: LoRABatchPlan, dtype: torch.dtype) -> torch.Tensor | None:
    """`[tokens, out]`: each token's `x @ B_slot^T` (zero without adapter); None: all zero."""
    _check_tokens(x, plan)
    k = plan.num_active
    if k == 0:
        return None
    w = _stacked(b, plan, dtype, "expand")  # [out, k * rank]
    if w is None:
        return None
    x = _masked(_compute(x, dtype), plan)
    if k > 1:
        rank = x.shape[1]
        blocks = x.new_zeros(x.shape[0], k, rank)
        blocks.scatter_(1, plan.position.view(-1, 1, 1).expand(-1, 1, rank), x.unsqueeze(1))
        x = blocks.view(-1, k * rank)
    return (x @ w.t()).to(dtype)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
    *,
    plan: LoRABatchPlan | None = None,
) -> None:
    """`output[t, :rank] = scaling * inputs[t] @ A[idx[t]]^T`; `A`: `[slots, (1,) rank, hidden]`."""
    plan = plan or plan_batch(lora_indices_tensor)
    rank = lora_a_weights.shape[-2]
    shrunk = _shrink(inputs, lora_a_weights, plan, output_tensor.dtype)
    if shrunk is None:
        output_tensor[:, :rank] = 0
    else:
        output_tensor[:, :rank] = scaling * shrunk


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
    *,
    plan: LoRABatchPlan | None = None,
) -> None:
    """`output[t, :out] (+)= inputs[t] @ B[idx[t]]^T`; `B`: `[slots, (1,) out, rank]`.

    As vLLM's: only the columns both have are written (adapter and model may pad differently),
    and a single row of results is broadcast over every output row.
    """
    plan = plan or plan_batch(lora_indices_tensor)
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    outputs = _expand(inputs, lora_b_weights, plan, output_tensor.dtype)
    if outputs is None:
        if add_inputs:
            return
        outputs = inputs.new_zeros(inputs.shape[0], common, dtype=output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
    *,
    plan: LoRABatchPlan | None = None,
) -> None:
    """`output[t, offset:offset + size] (+)= inputs[t] @ B[idx[t]]^T`."""
    plan = plan or plan_batch(lora_indices_tensor)
    target = output_tensor[:, slice_offset : slice_offset + slice_size]
    outputs = _expand(inputs, lora_b_weights, plan, output_tensor.dtype)
    if outputs is None:
        if not add_inputs:
            target.zero_()
        return
    if add_inputs:
        target += outputs
    else:
        target.copy_(outputs)


def lora_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: Sequence[torch.Tensor],
    lora_b_stacked: Sequence[torch.Tensor],
    scale: float,
    output_slices: Sequence[int],
    *,
    plan: LoRABatchPlan,
    offset: int = 0,
) -> None:
    """`y[:, slice i] += scale * (x @ A_i^T) @ B_i^T`, each token with its own slot's `A_i`, `B_i`,
    for every slice of a projection (one for `o_proj`; q, k and v for a merged `qkv_proj`), the
    slices laid out from `offset` on in `output_slices` order.

    vLLM's `add_lora_linear` (a float32 shrink buffer per slice, then an expand per slice from it
    rounded to `y`'s dtype), in one shrink GEMM against every slice's active `A` stacked, one
    mask that keeps each token's own adapter's block (and the scale), and per slice one expand
    GEMM that adds into `y` in place (float32; half precision rounds the product first, as vLLM's).
    """
    x = x.reshape(-1, x.shape[-1])
    _check_tokens(x, plan)
    if plan.num_active == 0:
        return
    operands = _linear_operands(lora_a_stacked, lora_b_stacked, plan, y.dtype)
    if operands is None:
        return
    outs = tuple(b.shape[0] for b in operands.b)
    if outs != tuple(output_slices):
        raise ValueError(f"LoRA ops: adapters of {outs} outputs for slices {tuple(output_slices)}")
    rows = y.view(-1, y.shape[-1])
    h = x.to(torch.float32) @ operands.a.t()  # [tokens, slices * sum(ranks)]
    if scale != 1.0:
        h.mul_(scale)
    width = sum(operands.ranks)
    mask = plan.block_mask(operands.ranks)
    if mask is not None:
        h.view(-1, len(operands.b), width).mul_(mask.unsqueeze(1))
    start = offset
    for i, b in enumerate(operands.b):
        target = rows[:, start : start + b.shape[0]]
        start += b.shape[0]
        hi = h[:, i * width : (i + 1) * width]
        if y.dtype == torch.float32:
            target.addmm_(hi, b.t())
        else:
            target += (_compute(hi, y.dtype) @ b.t()).to(y.dtype)


def _tokens(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
    *,
    plan: LoRABatchPlan | None = None,
) -> None:
    """Prefill shrink: runs of `seq_len_tensor[i]` tokens use slot `lora_indices_tensor[i]`."""
    plan = plan or plan_batch(_tokens(lora_indices_tensor, seq_len_tensor))
    bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling, plan=plan)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
    *,
    plan: LoRABatchPlan | None = None,
) -> None:
    """Prefill expand (see `sgmv_shrink` for the runs)."""
    plan = plan or plan_batch(_tokens(lora_indices_tensor, seq_len_tensor))
    bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs, plan=plan)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
    *,
    plan: LoRABatchPlan | None = None,
) -> None:
    """Prefill expand into `output[:, offset:offset + size]` (see `sgmv_shrink` for the runs)."""
    plan = plan or plan_batch(_tokens(lora_indices_tensor, seq_len_tensor))
    bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs, plan=plan
    )
