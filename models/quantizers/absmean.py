"""BitNet b1.58's weights (Ma et al. 2024, "The Era of 1-bit LLMs"), the absmean ternarizer:

    γ = mean|W| (at least 1e-5),   T(W) = γ · clamp(round(W / γ), −1, 1)

so a weight is ±γ where |W| > γ/2 and 0 below (round half to even: |W| = γ/2 gives 0).
Backward: plain straight-through, dL/dW = dL/dT (the interface's default). No threshold
factor, no REL.
"""
from __future__ import annotations

import torch

from . import Quantizer, register

GAMMA_FLOOR = 1e-5  # BitNet's clamp of γ, so an all-zero weight gives codes 0, not 0/0


def absmean_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes clamp(round(W/γ), −1, 1) as float, γ), statistics in fp32."""
    latent = weight.detach().float()
    gamma = (latent.abs().mean() if latent.numel() else latent.new_zeros(())).clamp_min(GAMMA_FLOOR)
    return (latent / gamma).round().clamp(-1, 1), gamma


def absmean_weight(weight: torch.Tensor) -> torch.Tensor:
    """γ · clamp(round(W/γ), −1, 1), without autograd, in the weight's dtype."""
    codes, gamma = absmean_codes(weight)
    return (codes * gamma).to(weight.dtype)


@register
class AbsmeanQuantizer(Quantizer):
    name = "absmean"
    summary = "BitNet b1.58 (Ma et al. 2024): γ = mean|W|, T(W) = γ·clamp(round(W/γ), −1, 1)"
    label = "BitNet b1.58 absmean (γ = mean\\|W\\|, ±γ above γ/2)"
    reported_resnet20 = "none (Ma et al. report language models)"
    tfactor = False

    def weight(self, weight, tfactors, scales):
        return absmean_weight(weight)

    def terms(self, weight, tfactors, scales):
        codes, gamma = absmean_codes(weight)
        return [(codes.to(torch.int8), gamma)]
