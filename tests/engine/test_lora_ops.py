"""server/engine/lora_ops.py against vLLM's PyTorch-native punica ops (`vllm.lora.ops.torch_ops`)
on random inputs, for the shapes and dtypes the engine uses with the embedded model (hidden
576; q, k, v slices 576/192/192; rank up to 16; float32 and bfloat16), and through vLLM's
`PunicaWrapperCPU` with the plugin's patch installed."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as vllm_ops

from server.engine import lora_ops

pytestmark = pytest.mark.unit

HIDDEN = 576
QKV = (576, 192, 192)
SLOTS = 4
RANK = 16


def tolerance(dtype: torch.dtype, expected: torch.Tensor) -> dict[str, float]:
    """Accumulation order differs (one GEMM against a batched product): float32 agrees to a
    few units in the last place; bfloat16 results round to a neighbour at most (one ulp of
    the largest delta where results cancel)."""
    scale = float(expected.float().abs().max()) or 1.0
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-6 * scale}
    return {"rtol": 2**-7, "atol": 2**-7 * scale}


def weights(dtype, *, out=HIDDEN, hidden=HIDDEN, used=(0, 1, 2), seed=0):
    """`A [slots, 1, rank, hidden]`, `B [slots, 1, out, rank]`, zero in the slots not `used`
    (as the engine keeps empty slots), each used slot with its own rank (padded with zeros)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.zeros(SLOTS, 1, RANK, hidden, dtype=dtype)
    b = torch.zeros(SLOTS, 1, out, RANK, dtype=dtype)
    for n, slot in enumerate(used):
        r = (8, 16, 4, 12)[n % 4]
        a[slot, 0, :r] = (torch.randn(r, hidden, generator=g) * 0.1).to(dtype)
        b[slot, 0, :, :r] = (torch.randn(out, r, generator=g) * 0.1).to(dtype)
    return a, b


def token_indices(tokens: int, choices: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(choices), (tokens,), generator=g)
    return torch.tensor(choices)[pick]


# which slot each token uses (-1: none); the last slot stays empty, as vLLM's ops read it for -1
MAPPINGS = {
    "one adapter": (0,),
    "one adapter and none": (1, -1),
    "several adapters": (0, 1, 2),
    "several adapters and none": (0, 2, -1),
    "none": (-1,),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 64, 200])
@pytest.mark.parametrize("mapping", MAPPINGS)
def test_shrink_and_expand_slices_equal_vllm_ops(dtype, tokens, mapping):
    indices = token_indices(tokens, MAPPINGS[mapping])
    x = torch.randn(tokens, HIDDEN).to(dtype)
    y0 = torch.randn(tokens, sum(QKV)).to(dtype)
    outputs = {}
    for name, ops in (("vllm", vllm_ops), ("project", lora_ops)):
        y = y0.clone()
        shrunk = []
        offset = 0
        for n, size in enumerate(QKV):
            a, b = weights(dtype, out=size, seed=n)
            buffer = torch.zeros(tokens, RANK, dtype=torch.float32)  # as PunicaWrapperCPU makes it
            ops.bgmv_shrink(x, a, buffer, indices, 0.5)
            ops.bgmv_expand_slice(buffer, b, y, indices, offset, size, True)
            shrunk.append(buffer)
            offset += size
        outputs[name] = (torch.cat(shrunk, 1), y)
    (vs, vy), (ps, py) = outputs["vllm"], outputs["project"]
    torch.testing.assert_close(ps, vs, **tolerance(torch.float32, vs))
    assert py.dtype == dtype
    torch.testing.assert_close(py, vy, **tolerance(dtype, vy - y0))
    assert torch.equal(py, y0) == bool((indices < 0).all())  # a delta where an adapter is


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 64, 200])
@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("slices", [QKV, (HIDDEN,)], ids=["qkv", "o"])
def test_lora_linear_equals_vllm_ops_slice_by_slice(dtype, tokens, mapping, slices):
    """lora_linear (every slice in one shrink and one expand) against what vLLM's
    `add_lora_linear` does with its torch ops: per slice, a float32 shrink buffer, then an
    expand from it into the slice's columns."""
    indices = token_indices(tokens, MAPPINGS[mapping])
    x = torch.randn(tokens, HIDDEN).to(dtype)
    offset0 = 7  # a layer may write from an offset of its output on
    y0 = torch.randn(tokens, offset0 + sum(slices) + 5).to(dtype)
    stacked = [weights(dtype, out=size, seed=n) for n, size in enumerate(slices)]
    expected = y0.clone()
    offset = offset0
    for (a, b), size in zip(stacked, slices, strict=True):
        buffer = torch.zeros(tokens, RANK, dtype=torch.float32)
        vllm_ops.bgmv_shrink(x, a, buffer, indices, 0.5)
        vllm_ops.bgmv_expand_slice(buffer, b, expected, indices, offset, size, True)
        offset += size
    got = y0.clone()
    plan = lora_ops.plan_batch(indices)
    a_all, b_all = tuple(a for a, _ in stacked), tuple(b for _, b in stacked)
    lora_ops.lora_linear(got, x, a_all, b_all, 0.5, slices, plan=plan, offset=offset0)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, **tolerance(dtype, expected - y0))
    assert torch.equal(got[:, :offset0], y0[:, :offset0]) and torch.equal(got[:, offset:], y0[:, offset:])
    assert torch.equal(got, y0) == bool((indices < 0).all())  # a delta where an adapter is


def test_lora_linear_skips_a_layer_no_active_adapter_targets():
    a, b = weights(torch.float32, used=(0, 1))
    x = torch.randn(3, HIDDEN)
    y0 = torch.randn(3, HIDDEN)
    y = y0.clone()
    lora_ops.lora_linear(y, x, (a,), (b,), 1.0, (HIDDEN,), plan=lora_ops.plan_batch(torch.tensor([2, 3, -1])))
    assert torch.equal(y, y0)
    lora_ops.lora_linear(y, x, (a,), (b,), 1.0, (HIDDEN,), plan=lora_ops.plan_batch(torch.tensor([2, 1, -1])))
    assert not torch.equal(y[1], y0[1]) and torch.equal(y[[0, 2]], y0[[0, 2]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("add_inputs", [True, False])
def test_prefill_variants_equal_vllm_ops(dtype, add_inputs):
    """sgmv_*: runs of tokens per slot, as the prefill metadata gives them."""
    runs = torch.tensor([0, -1, 2, 0, 1])
    lengths = torch.tensor([5, 3, 9, 1, 4])
    starts = torch.cumsum(lengths, 0) - lengths
    tokens = int(lengths.sum())
    meta = (starts, lengths, runs, len(runs), int(lengths.max()), tokens)
    x = torch.randn(tokens, HIDDEN).to(dtype)
    a, b = weights(dtype, out=192)
    y0 = torch.randn(tokens, 400).to(dtype)
    results = []
    for ops in (vllm_ops, lora_ops):
        buffer = torch.zeros(tokens, RANK, dtype=torch.float32)
        ops.sgmv_shrink(x, a, buffer, *meta, 2.0)
        y_slice, y_full = y0.clone(), y0.clone()
        ops.sgmv_expand_slice(buffer, b, y_slice, *meta, 100, 192, add_inputs)
        ops.sgmv_expand(buffer, b, y_full, *meta, add_inputs)
        results.append((buffer, y_slice, y_full))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, **tolerance(got.dtype, expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expand_writes_only_the_columns_both_have(dtype):
    """bgmv_expand (the embedding layer's op): adapter and output may be padded differently."""
    indices = token_indices(10, (0, 1, -1))
    x = torch.randn(10, RANK)
    _, b = weights(dtype, out=200)
    for width in (150, 260):
        y0 = torch.randn(10, width).to(dtype)
        expected, got = y0.clone(), y0.clone()
        vllm_ops.bgmv_expand(x, b, expected, indices, True)
        lora_ops.bgmv_expand(x, b, got, indices, True)
        torch.testing.assert_close(got, expected, **tolerance(dtype, expected - y0))


def test_tokens_without_adapter_get_no_delta_when_every_slot_is_used():
    """-1 means no adapter. vLLM's torch ops index the weights with -1 as it is and add the last
    slot's adapter to such tokens once every slot is in use; these ops do not."""
    indices = torch.tensor([0, -1, 3, -1, 1, 2, 3])
    a, b = weights(torch.float32, used=(0, 1, 2, 3))
    x = torch.randn(7, HIDDEN)
    y0 = torch.randn(7, HIDDEN)
    got = y0.clone()
    buffer = torch.zeros(7, RANK)
    lora_ops.bgmv_shrink(x, a, buffer, indices, 1.0)
    lora_ops.bgmv_expand_slice(buffer, b, got, indices, 0, HIDDEN, True)
    base = indices < 0
    assert torch.equal(got[base], y0[base])
    assert torch.equal(buffer[base], torch.zeros_like(buffer[base]))
    # with the adapters: what vLLM's ops give for the same tokens
    expected = y0.clone()
    vbuffer = torch.zeros(7, RANK)
    vllm_ops.bgmv_shrink(x, a, vbuffer, indices, 1.0)
    vllm_ops.bgmv_expand_slice(vbuffer, b, expected, indices, 0, HIDDEN, True)
    torch.testing.assert_close(got[~base], expected[~base], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[base], y0[base])  # vLLM's: slot 3's delta on base tokens


def test_weights_written_in_place_are_seen_at_the_next_call():
    """The stacked weights are kept between calls: loading another adapter into a slot (an
    in-place write, as vLLM's set_lora does) must not leave the old one in use."""
    indices = torch.tensor([0, 1, 1, 0, -1])
    a, b = weights(torch.float32)
    x = torch.randn(5, HIDDEN)

    def run(ops):
        buffer = torch.zeros(5, RANK)
        y = torch.zeros(5, HIDDEN)
        ops.bgmv_shrink(x, a, buffer, indices, 1.0)
        ops.bgmv_expand_slice(buffer, b, y, indices, 0, HIDDEN, True)
        return y

    before = run(lora_ops)
    a2, b2 = weights(torch.float32, seed=7)
    a[1].copy_(a2[1])
    b[1, 0].copy_(b2[1, 0])
    after = run(lora_ops)
    torch.testing.assert_close(after, run(vllm_ops), rtol=1e-5, atol=1e-5)
    assert torch.equal(after[0], before[0]) and not torch.allclose(after[1], before[1])
    a[1].zero_()  # a slot reset (reset_lora)
    b[1].zero_()
    assert torch.equal(run(lora_ops)[1], torch.zeros(HIDDEN))


def test_plan():
    plan = lora_ops.plan_batch(torch.tensor([2, -1, 2, 0, -1]))
    assert plan.key == (0, 2) and not plan.contiguous
    assert plan.position.tolist() == [1, 0, 1, 0, 0]
    assert plan.has_lora is not None and plan.has_lora.squeeze(1).tolist() == [True, False, True, True, False]
    whole = lora_ops.plan_batch(torch.tensor([1, 1, 2]))
    assert whole.has_lora is None and whole.contiguous and whole.first == 1
    assert lora_ops.plan_batch(torch.tensor([-1, -1])).num_active == 0


def test_rows_and_indices_must_agree():
    a, _ = weights(torch.float32)
    with pytest.raises(ValueError, match="3 input rows for 2 token indices"):
        lora_ops.bgmv_shrink(torch.randn(3, HIDDEN), a, torch.zeros(3, RANK), torch.tensor([0, 1]))


PATCHED = (
    "update_metadata",
    "_shrink_prefill",
    "_shrink_decode",
    "_expand_prefill",
    "_expand_decode",
    "_expand_slice_prefill",
    "_expand_slice_decode",
    "add_lora_linear",
    "add_lora_logits",
)


@pytest.fixture
def punica_cpu():
    """vLLM's PunicaWrapperCPU, its methods restored after the test."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    saved = {name: PunicaWrapperCPU.__dict__[name] for name in PATCHED if name in PunicaWrapperCPU.__dict__}
    saved_update = PunicaWrapperCPU.update_metadata
    try:
        yield PunicaWrapperCPU
    finally:
        for name in PATCHED:
            if name in saved:
                setattr(PunicaWrapperCPU, name, saved[name])
            elif name in PunicaWrapperCPU.__dict__:
                delattr(PunicaWrapperCPU, name)
        assert PunicaWrapperCPU.update_metadata is saved_update
        if "_expert_gateway_lora_ops" in PunicaWrapperCPU.__dict__:
            delattr(PunicaWrapperCPU, "_expert_gateway_lora_ops")


def _linear_through_wrapper(wrapper_cls, *, prefill: bool, dtype) -> torch.Tensor:
    """add_lora_linear over q, k, v slices for a batch of three requests (slots 0, none, 2)."""
    from vllm.lora.layers import LoRAMapping

    per_request = [3, 2, 4] if prefill else [1, 1, 1]
    lora_ids = [11, 0, 13]  # LoRA ids; 0: no adapter
    index_mapping = [i for n, i in zip(per_request, lora_ids, strict=True) for _ in range(n)]
    mapping = LoRAMapping(tuple(index_mapping), tuple(lora_ids), is_prefill=prefill)
    wrapper = wrapper_cls(64, 8, "cpu")
    wrapper.update_metadata(mapping, [11, None, 13, None], SLOTS, 49152)
    tokens = len(index_mapping)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tokens, HIDDEN, generator=g).to(dtype)
    y = torch.randn(tokens, sum(QKV), generator=g).to(dtype)
    stacked = [weights(dtype, out=size, used=(0, 2), seed=n) for n, size in enumerate(QKV)]
    wrapper.add_lora_linear(y, x, tuple(a for a, _ in stacked), tuple(b for _, b in stacked), 1.0, QKV)
    return y


def _logits_through_wrapper(wrapper_cls, *, dtype, lm_head_slots=(0,)) -> torch.Tensor:
    """add_lora_logits for three sampled rows (slots 0, none, 2); LM-head weights in `lm_head_slots`."""
    from vllm.lora.layers import LoRAMapping

    lora_ids = [11, 0, 13]
    mapping = LoRAMapping(tuple(lora_ids), tuple(lora_ids), is_prefill=False)
    wrapper = wrapper_cls(64, 8, "cpu")
    wrapper.update_metadata(mapping, [11, None, 13, None], SLOTS, 49152)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, HIDDEN, generator=g).to(dtype)
    y = torch.randn(3, 1000, generator=g).to(dtype)
    a, b = weights(dtype, out=1024, used=lm_head_slots)  # the LM head's rows may be padded past the logits
    wrapper.add_lora_logits(y, x, a, b, 1.0)
    return y


# importing vLLM's LoRA layers imports torch.utils.mkldnn, which torch itself deprecates
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plugin_installs_the_ops_in_vllms_cpu_wrapper(punica_cpu, monkeypatch, prefill, dtype):
    from server.engine import plugin

    expected = _linear_through_wrapper(punica_cpu, prefill=prefill, dtype=dtype)
    monkeypatch.setenv(plugin.LORA_OPS_ENV, "vllm")
    plugin._install_lora_ops()
    assert not getattr(punica_cpu, "_expert_gateway_lora_ops", False)
    monkeypatch.setenv(plugin.LORA_OPS_ENV, "project")
    plugin._install_lora_ops()
    assert punica_cpu._expert_gateway_lora_ops
    assert all(getattr(punica_cpu, name).__module__ == "server.engine.plugin" for name in PATCHED)
    got = _linear_through_wrapper(punica_cpu, prefill=prefill, dtype=dtype)
    torch.testing.assert_close(got, expected, **tolerance(dtype, expected))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("lm_head_slots", [(0, 2), ()], ids=["lm-head-adapters", "none-targets-lm-head"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plugin_lm_head_lora_equals_vllms(punica_cpu, monkeypatch, dtype, lm_head_slots):
    from server.engine import plugin

    monkeypatch.setenv(plugin.LORA_OPS_ENV, "vllm")
    expected = _logits_through_wrapper(punica_cpu, dtype=dtype, lm_head_slots=lm_head_slots)
    monkeypatch.setenv(plugin.LORA_OPS_ENV, "project")
    plugin._install_lora_ops()
    got = _logits_through_wrapper(punica_cpu, dtype=dtype, lm_head_slots=lm_head_slots)
    torch.testing.assert_close(got, expected, **tolerance(dtype, expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_module_no_active_adapter_targets_adds_nothing(dtype):
    """vLLM keeps zeros in the slots of adapters that do not target a layer; those layers are
    skipped, with vLLM's result (no delta, and a zero shrink buffer)."""
    a, b = weights(dtype, used=(0, 1))  # slots 2 and 3 hold no weights for this module
    indices = torch.tensor([2, -1, 2, 3])
    x = torch.randn(4, HIDDEN).to(dtype)
    y0 = torch.randn(4, HIDDEN).to(dtype)
    for ops in (vllm_ops, lora_ops):
        buffer = torch.full((4, RANK), 5.0)
        y = y0.clone()
        ops.bgmv_shrink(x, a, buffer, indices, 1.0)
        ops.bgmv_expand_slice(buffer, b, y, indices, 0, HIDDEN, True)
        assert torch.equal(buffer, torch.zeros(4, RANK))
        assert torch.equal(y, y0)


def test_weights_made_in_inference_mode_are_read_at_every_call():
    """vLLM may make its stacked weights in inference mode, where tensors have no version
    counter: nothing is kept between calls then, and a new adapter in a slot is seen."""
    with torch.inference_mode():
        a, b = weights(torch.float32)
    indices = torch.tensor([0, 1, -1, 1])
    x = torch.randn(4, HIDDEN)

    def run(ops):
        buffer = torch.zeros(4, RANK)
        y = torch.zeros(4, HIDDEN)
        ops.bgmv_shrink(x, a, buffer, indices, 1.0)
        ops.bgmv_expand_slice(buffer, b, y, indices, 0, HIDDEN, True)
        return y

    before = run(lora_ops)
    a2, b2 = weights(torch.float32, seed=9)
    with torch.inference_mode():
        a[1].copy_(a2[1])
        b[1].copy_(b2[1])
    after = run(lora_ops)
    torch.testing.assert_close(after, run(vllm_ops), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after[1], before[1])


def test_a_plan_that_names_the_slots_adapters_sees_a_new_adapter_in_a_slot():
    """The engine's LoRA manager says which adapter each slot holds; the stacked weights follow it."""
    with torch.inference_mode():
        a, b = weights(torch.float32)
    indices = torch.tensor([0, 1, 1])
    x = torch.randn(3, HIDDEN)

    def run(ops, slot_adapters):
        plan = lora_ops.plan_batch(indices, slot_adapters) if ops is lora_ops else None
        buffer = torch.zeros(3, RANK)
        y = torch.zeros(3, HIDDEN)
        kwargs = {"plan": plan} if plan else {}
        ops.bgmv_shrink(x, a, buffer, indices, 1.0, **kwargs)
        ops.bgmv_expand_slice(buffer, b, y, indices, 0, HIDDEN, True, **kwargs)
        return y

    first = run(lora_ops, [11, 12, None, None])
    torch.testing.assert_close(first, run(vllm_ops, None), rtol=1e-5, atol=1e-5)
    a2, b2 = weights(torch.float32, seed=5)
    with torch.inference_mode():  # adapter 15 replaces 12 in slot 1
        a[1].copy_(a2[1])
        b[1].copy_(b2[1])
    second = run(lora_ops, [11, 15, None, None])
    torch.testing.assert_close(second, run(vllm_ops, None), rtol=1e-5, atol=1e-5)
    assert torch.equal(second[0], first[0]) and not torch.allclose(second[1], first[1])
