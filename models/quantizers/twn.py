"""Ternary Weight Networks (Li & Liu 2016):

    Δ = 0.7 · mean|W|,   α = mean{ |W_i| : |W_i| > Δ },   T(W) = α · sign(W) · [|W| > Δ]

Backward: plain straight-through, dL/dW = dL/dT (the interface's default). No threshold
factor, no REL.
"""
from __future__ import annotations

import torch

from . import Quantizer, masked_mean, register
from .paper import signed_terms

TWN_THRESHOLD = 0.7  # Δ as a multiple of mean|W| (their approximation of the optimum)


def twn_branch(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN's (α, mask): mask = [|W| > 0.7·mean|W|], α = mean |W| over the mask (fp32 statistics)."""
    magnitude = weight.detach().float().abs()
    mean_magnitude = magnitude.mean() if magnitude.numel() else magnitude.new_zeros(())
    mask = magnitude > TWN_THRESHOLD * mean_magnitude
    return masked_mean(magnitude, mask), mask


def twn_weight(weight: torch.Tensor) -> torch.Tensor:
    """TWN's T(W), without autograd, in the weight's dtype."""
    alpha, mask = twn_branch(weight)
    return (alpha * mask).copysign(weight.detach()).to(weight.dtype)


@register
class TWNQuantizer(Quantizer):
    name = "twn"
    summary = "TWN (Li & Liu 2016): Δ = 0.7·mean|W|, α = mean|W| above Δ"
    label = "TWN (Δ = 0.7·mean\\|W\\|)"
    reported_resnet20 = "none (Li & Liu report no CIFAR ResNet)"
    tfactor = False

    def weight(self, weight, tfactors, scales):
        return twn_weight(weight)

    def terms(self, weight, tfactors, scales):
        return signed_terms(weight, [twn_branch(weight)])
