"""The quantizer, the ternarized layers and model conversion."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.ternary import (TernConv2d, TernLinear, layer_stats, model_sparsity, paper_tfactors, ternarize,
                            ternarize_model, ternary_layers, ternary_weight)


def test_ternarize_hand_computed():
    # max|W| = 2, t = 0.25 -> Δ = 0.5 exactly; |W| = 0.5 sits on the boundary and is kept.
    w = torch.tensor([2.0, -1.0, 0.5, -0.49, 0.0, 0.25, -0.5])
    out = ternarize(w, 0.25)
    alpha = (2.0 + 1.0 + 0.5 + 0.5) / 4
    assert torch.equal(out, torch.tensor([alpha, -alpha, alpha, 0.0, 0.0, 0.0, -alpha]))


def test_ternarize_paper_default_threshold():
    w = torch.tensor([[20.0, -0.999], [1.0, -3.0]])  # Δ = 0.05 * 20 = 1.0
    out = ternarize(w)
    alpha = (20.0 + 1.0 + 3.0) / 3
    assert torch.equal(out, torch.tensor([[alpha, 0.0], [alpha, -alpha]]))


def test_ste_gradient_passes_below_one_and_stops_above():
    w = torch.tensor([0.3, -0.999, 1.0, -1.5, 0.01], requires_grad=True)
    ternarize(w).backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert torch.equal(w.grad, torch.tensor([1.0, 2.0, 0.0, 0.0, 5.0]))


def test_rel_gradient_is_sum_of_branch_gradients():
    w = torch.tensor([0.3, -0.9, 1.2], requires_grad=True)
    ternarize(w, (0.05, 0.1, 0.15, 0.2)).sum().backward()
    assert torch.equal(w.grad, torch.tensor([4.0, 4.0, 0.0]))


def test_all_zero_and_empty_weights():
    assert torch.equal(ternarize(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert ternarize(torch.zeros(0, 4)).shape == (0, 4)
    layer = TernConv2d(2, 3, 3, bias=False)
    nn.init.zeros_(layer.weight)
    out = layer(torch.randn(1, 2, 5, 5))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weight_reaches_the_output(bad):
    w = torch.randn(16)
    w[3] = bad
    assert not torch.isfinite(ternarize(w)).any()
    layer = TernLinear(4, 2)
    with torch.no_grad():
        layer.weight[0, 0] = bad
    assert torch.isnan(layer(torch.randn(3, 4))).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_weights_keep_dtype_and_levels(dtype):
    w = torch.randn(64, 32)
    out = ternarize(w.to(dtype))
    assert out.dtype == dtype
    assert torch.equal(out.float().ne(0), ternarize(w).ne(0))
    assert out.unique().numel() <= 3


def test_rel_levels_are_nested():
    w = torch.randn(1000)
    for tex in (1, 2, 4):
        eff = ternary_weight(w, paper_tfactors(tex))
        assert eff.unique().numel() == 2 * tex + 1
        assert torch.all((eff == 0) | (torch.sign(eff) == torch.sign(w)))


def _literal_rel_conv(layer: TernConv2d, x):
    out = sum(F.conv2d(x, ternarize(layer.weight, t), None, layer.stride, layer.padding) for t in layer.tfactors)
    return out + layer.bias.view(1, -1, 1, 1)


def test_rel_merged_conv_equals_literal_branch_sum():
    layer = TernConv2d(3, 8, 3, padding=1, bias=True, tfactors=paper_tfactors(4))
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(layer(x), _literal_rel_conv(layer, x), rtol=1e-5, atol=1e-5)


def test_rel_merged_linear_equals_literal_branch_sum_with_bias_once():
    layer = TernLinear(10, 4, tfactors=(0.05, 0.1))
    x = torch.randn(5, 10)
    literal = sum(F.linear(x, ternarize(layer.weight, t)) for t in layer.tfactors) + layer.bias
    torch.testing.assert_close(layer(x), literal, rtol=1e-5, atol=1e-5)


def test_layers_keep_torch_state_dict_keys():
    conv, tconv = nn.Conv2d(3, 4, 3), TernConv2d(3, 4, 3)
    assert conv.state_dict().keys() == tconv.state_dict().keys()
    tconv.load_state_dict(conv.state_dict())
    assert torch.equal(tconv.weight, conv.weight)


def test_ternarize_model_shares_parameters_and_keeps_fp_outputs_of_skipped_layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 8), nn.Linear(8, 2))
    first_weight = model[0].weight
    ternarize_model(model, (0.05, 0.1), first_last=False)
    assert type(model[0]) is nn.Conv2d and type(model[5]) is nn.Linear
    assert isinstance(model[2], TernConv2d) and isinstance(model[4], TernLinear)
    assert model[2].tfactors == (0.05, 0.1)
    assert model[0].weight is first_weight
    ternarize_model(model)
    assert [name for name, _ in ternary_layers(model)] == ["0", "2", "4", "5"]
    assert all(layer.tfactors == (0.05,) for _, layer in ternary_layers(model))


def test_eval_cache_recomputes_only_when_weight_changes():
    layer = TernLinear(8, 3).eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        first = layer(x)
        cached = layer._cached_weight
        assert torch.equal(layer(x), first) and layer._cached_weight is cached
        layer.weight.mul_(-1)
        assert torch.allclose(layer(x), -first + 2 * layer.bias)
        assert layer._cached_weight is not cached
    layer.load_state_dict({"weight": torch.randn(3, 8), "bias": torch.zeros(3)})
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.effective_weight()))


def test_cache_not_used_when_training():
    layer = TernLinear(8, 3)
    layer(torch.randn(2, 8)).sum().backward()
    assert layer.weight.grad is not None and layer._cached_weight is None


def test_layer_stats():
    layer = TernLinear(4, 1, bias=False, tfactors=(0.25, 0.5))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, -2.0, 1.0, 0.5]]))  # Δ = 1, 2
    stats = layer_stats(layer)
    assert stats["alphas"] == pytest.approx([7.0 / 3, 3.0], rel=1e-7)
    assert stats["sparsity"] == 0.25
    assert stats["levels"] == 4  # 16/3, -16/3, 7/3, 0
    assert model_sparsity(nn.Sequential(layer)) == 0.25


def test_bad_tfactors_rejected():
    for bad in [(), (0.1, 0.05), (0.0,), (1.5,)]:
        with pytest.raises(ValueError):
            TernLinear(2, 2, tfactors=bad)
