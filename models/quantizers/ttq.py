"""Trained Ternary Quantization (Zhu et al. 2017):

    Δ = t · max|W|,   T(W) = W_p·[W > Δ] − W_n·[W < −Δ]

with two trained scales W_p, W_n > 0 per layer (Parameters, initialised to 1):
dL/dW_p = Σ_{W > Δ} dL/dT, dL/dW_n = −Σ_{W < −Δ} dL/dT, and the latent gradient
dL/dW = dL/dT · (W_p, 1, W_n) on (W > Δ, |W| ≤ Δ, W < −Δ). TTQ's paper writes +Σ for
dL/dW_n, the gradient of the signed scale −W_n; the sign here is that of the positive
magnitude W_n the layer stores. One branch (no REL).
"""
from __future__ import annotations

import torch

from . import Quantizer, register


def ttq_masks(weight: torch.Tensor, tfactor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TTQ's regions: ([W > Δ], [W < −Δ]) with Δ = tfactor·max|W| (compared in fp32)."""
    latent = weight.detach().float()
    max_magnitude = latent.abs().amax() if latent.numel() else latent.new_zeros(())
    threshold = max_magnitude * tfactor
    return latent > threshold, latent < -threshold


def ttq_weight(weight: torch.Tensor, positive_scale: torch.Tensor, negative_scale: torch.Tensor,
               tfactor: float) -> torch.Tensor:
    """TTQ's T(W), without autograd, in the weight's dtype."""
    positive, negative = ttq_masks(weight, tfactor)
    levels = positive_scale.detach().float() * positive - negative_scale.detach().float() * negative
    return levels.to(weight.dtype)


class _TTQFunction(torch.autograd.Function):
    """TTQ's ternary weight with its gradients for the latent weight and both scales."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, positive_scale: torch.Tensor, negative_scale: torch.Tensor,
                tfactor: float) -> torch.Tensor:
        ctx.save_for_backward(weight, positive_scale, negative_scale)
        ctx.tfactor = tfactor
        return ttq_weight(weight, positive_scale, negative_scale, tfactor)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        weight, positive_scale, negative_scale = ctx.saved_tensors
        positive, negative = ttq_masks(weight, ctx.tfactor)
        grad = grad_output.float()
        factor = torch.where(positive, positive_scale.detach().float(),
                             torch.where(negative, negative_scale.detach().float(), 1.0))
        grad_weight = (grad * factor).to(weight.dtype)
        grad_positive = (grad * positive).sum().to(positive_scale.dtype)
        grad_negative = -(grad * negative).sum().to(negative_scale.dtype)
        return grad_weight, grad_positive, grad_negative, None


@register
class TTQQuantizer(Quantizer):
    name = "ttq"
    summary = "TTQ (Zhu et al. 2017): Δ = t·max|W| with two trained scales W_p, W_n per layer"
    scale_names = ("positive_scale", "negative_scale")
    signed_scales = True

    def weight(self, weight, tfactors, scales):
        return ttq_weight(weight, *scales, tfactors[0])

    def differentiable(self, weight, tfactors, scales):
        return _TTQFunction.apply(weight, *scales, tfactors[0])

    def terms(self, weight, tfactors, scales):
        positive, negative = ttq_masks(weight, tfactors[0])
        positive_scale, negative_scale = scales
        return [(positive.to(torch.int8), positive_scale.detach().float()),
                (-negative.to(torch.int8), negative_scale.detach().float())]
