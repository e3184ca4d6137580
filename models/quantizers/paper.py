"""The paper's ternarizer (He, Gong & Fan, WACV 2019), with residual expansion:

    Δ_k = t_k · max|W|,   α_k = mean{ |W_i| : |W_i| ≥ Δ_k },   T(W) = Σ_k α_k · sign(W) · [|W| ≥ Δ_k]

Backward: straight-through, dL/dW = dL/dT · [|W| < 1] per branch (t_ex times it for REL);
no gradient into α or Δ.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from . import Quantizer, Terms, masked_mean, register


def ternary_branches(weight: torch.Tensor, tfactors: Sequence[float]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (alpha, mask) for each branch k: mask_k = [|W| ≥ t_k·max|W|], alpha_k its mean |W|.
    No boolean indexing and no host synchronisation; an all-zero weight gives alpha = 0."""
    magnitude = weight.detach().float().abs()
    max_magnitude = magnitude.amax() if magnitude.numel() else magnitude.new_zeros(())
    for tfactor in tfactors:
        mask = magnitude >= max_magnitude * tfactor
        yield masked_mean(magnitude, mask), mask


def ternary_weight(weight: torch.Tensor, tfactors: Sequence[float]) -> torch.Tensor:
    """Σ_k α_k · sign(W) · [|W| ≥ Δ_k], without autograd, in the weight's dtype."""
    levels = None
    for alpha, mask in ternary_branches(weight, tfactors):
        branch = alpha * mask
        levels = branch if levels is None else levels + branch
    return levels.copysign(weight.detach()).to(weight.dtype)


class _TernarizeSTE(torch.autograd.Function):
    """Effective ternary weight with the straight-through estimator of the paper."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, tfactors: tuple[float, ...]) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.branches = len(tfactors)
        return ternary_weight(weight, tfactors)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        grad_weight = grad_output.masked_fill(weight.abs() >= 1, 0)
        # Each REL branch passes the gradient straight through, so their sum passes t_ex times it.
        return (grad_weight * ctx.branches if ctx.branches > 1 else grad_weight), None


def signed_terms(weight: torch.Tensor, branches) -> Terms:
    """(sign·mask, α) per (α, mask) branch."""
    sign = torch.sign(weight.detach().float())
    return [((sign * mask).to(torch.int8), alpha) for alpha, mask in branches]


@register
class PaperQuantizer(Quantizer):
    name = "paper"
    summary = "Δ = t·max|W| (t = 0.05), α = mean|W| above Δ; REL with several t"
    label = "the paper's (Δ = 0.05·max\\|W\\|, α = mean above Δ)"
    reported_resnet20 = "91.70 → 91.65 (He et al.)"
    rel = True
    auto_thresholds = True

    def weight(self, weight, tfactors, scales):
        return ternary_weight(weight, tfactors)

    def differentiable(self, weight, tfactors, scales):
        return _TernarizeSTE.apply(weight, tuple(tfactors))

    def terms(self, weight, tfactors, scales):
        return signed_terms(weight, ternary_branches(weight, tfactors))
