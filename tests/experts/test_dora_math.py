"""DoRA → LoRA conversion math: the folded update reproduces PEFT's DoRA layer exactly, the SVD
truncation error is what the singular values say, and ranks are chosen and refused as documented."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from server.experts.dora import ConversionError, choose_rank, dora_modules, factor, fold, rel_error_at, spectrum

pytestmark = pytest.mark.unit


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(16, 12, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def _dora(seed: int = 0, r: int = 4, rslora: bool = False):
    torch.manual_seed(seed)
    base = Tiny()
    model = get_peft_model(
        base, LoraConfig(r=r, lora_alpha=8, target_modules=["q_proj"], use_dora=True, use_rslora=rslora)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
            if "magnitude" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_folded_update_equals_peft_dora(rslora: bool):
    model = _dora(rslora=rslora)
    ((name, (w, a, b, s, mag)),) = dora_modules(model).items()
    assert name.endswith("q_proj")
    delta = fold(w, a, b, s, mag)
    layer = model.get_submodule(name).get_base_layer()
    x = torch.randn(5, 16)
    with torch.no_grad():
        expected = model(x).double()
        got = x.double() @ (w.double() + delta).T + layer.bias.double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the update is not low-rank: the magnitude rescales W's rows
    assert torch.linalg.matrix_rank(delta) > a.shape[0]


def test_svd_factors_and_errors():
    model = _dora(seed=1)
    ((_, (w, a, b, s, mag)),) = dora_modules(model).items()
    delta = fold(w, a, b, s, mag)
    u, sv, vh = spectrum(delta)
    full = sv.shape[0]
    a_full, b_full = factor(u, sv, vh, full)
    torch.testing.assert_close(b_full @ a_full, delta, rtol=1e-9, atol=1e-9)
    assert rel_error_at(sv, full) == 0.0
    errors = [rel_error_at(sv, r) for r in range(1, full + 1)]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.01
    for r in (1, 4, 8):
        a_r, b_r = factor(u, sv, vh, r)
        measured = float(torch.linalg.norm(delta - b_r @ a_r) / torch.linalg.norm(delta))
        assert measured == pytest.approx(rel_error_at(sv, r), rel=1e-9)


def test_rank_choice():
    sv = {"m1": torch.tensor([4.0, 2.0, 1.0, 0.5]), "m2": torch.tensor([1.0, 0.1, 0.01, 0.0])}
    assert choose_rank(sv, rank=3, max_error=None, dora_rank=8, limit=16) == 3
    with pytest.raises(ConversionError, match="above the engine's max_lora_rank"):
        choose_rank(sv, rank=17, max_error=None, dora_rank=8, limit=16)
    with pytest.raises(ConversionError, match="above the engine's max_lora_rank"):
        choose_rank(sv, rank=None, max_error=None, dora_rank=32, limit=16)
    assert choose_rank(sv, rank=None, max_error=None, dora_rank=8, limit=16) == 8
    # m1 at rank 2: sqrt(1.25/21.25) = 0.243; at rank 3: sqrt(0.25/21.25) = 0.108
    assert choose_rank(sv, rank=None, max_error=0.2, dora_rank=8, limit=16) == 3
    assert choose_rank(sv, rank=None, max_error=0.0, dora_rank=8, limit=16) == 4
    with pytest.raises(ConversionError, match="no rank up to the engine's max_lora_rank \\(2\\)"):
        choose_rank(sv, rank=None, max_error=0.2, dora_rank=8, limit=2)
