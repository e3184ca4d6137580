"""Trained Ternary Quantization (Zhu et al. 2017):

    Δ = t · max|W|,   T(W) = W_p·[W > Δ] − W_n·[W < −Δ]

with two trained scales W_p, W_n > 0 per layer (Parameters; TTQ's code starts them at 1,
this layer at the mean magnitude of their regions, see initial_scales):
dL/dW_p = Σ_{W > Δ} dL/dT, dL/dW_n = −Σ_{W < −Δ} dL/dT, and the latent gradient
dL/dW = dL/dT · (W_p, u, W_n) on (W > Δ, |W| ≤ Δ, W < −Δ) with u = (W_p + W_n)/2. TTQ's
paper and code write u = 1 with scales that start at 1, so 1 is the scales' unit there;
here they start at their regions' mean magnitude (0.05–0.5 in a CIFAR-10 ResNet-20), and a
literal 1 pushes the zero region's weights out of it 2–20 times harder than TTQ's does (a
CIFAR-10 fine-tune kept 3.6% zeros of the 25.5% it started with). TTQ's paper writes +Σ
for dL/dW_n, the gradient of the signed scale −W_n; the sign here is that of the positive
magnitude W_n the layer stores. One branch (no REL).
"""
from __future__ import annotations

import torch

from . import Quantizer, masked_mean, register


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
        positive_level, negative_level = positive_scale.detach().float(), negative_scale.detach().float()
        unit = (positive_level + negative_level) / 2
        factor = torch.where(positive, positive_level, torch.where(negative, negative_level, unit))
        grad_weight = (grad * factor).to(weight.dtype)
        grad_positive = (grad * positive).sum().to(positive_scale.dtype)
        grad_negative = -(grad * negative).sum().to(negative_scale.dtype)
        return grad_weight, grad_positive, grad_negative, None


@register
class TTQQuantizer(Quantizer):
    name = "ttq"
    summary = "TTQ (Zhu et al. 2017): Δ = t·max|W| with two trained scales W_p, W_n per layer"
    label = "TTQ (Δ = 0.05·max\\|W\\|, trained W_p, W_n)"
    reported_resnet20 = "91.77 → 91.13 (Zhu et al.)"
    own_recipe = "fine-tuned, first conv full precision, plain momentum, weight decay 2e-4 on conv/linear weights"
    scale_names = ("positive_scale", "negative_scale")
    # Every conv here feeds a BatchNorm, so the loss does not change with a layer's scale: the
    # gradient of (W_p, W_n) is orthogonal to it and grows as it shrinks (∝ 1/scale), and it is
    # a sum over the whole layer. At the weights' lr one step overshoots the scale through zero
    # (issue 37: 17 of 40 scales ≤ 0 after 8 digits epochs, 11.7-26% top-1); TTQ's own code
    # uses 1, its pre-activation ResNet adds conv2's output unnormalised.
    default_scale_lr = 1e-3
    signed_scales = True

    def initial_scales(self, weight, tfactors):
        """W_p = mean{W_i : W_i > Δ}, W_n = mean{|W_i| : W_i < −Δ}: T(W) starts as the closest
        two-scale ternary copy of W, so a fine-tuned network keeps its function, logits and
        BatchNorm statistics (TTQ's code starts both at 1, which multiplies a pretrained
        network's activations by ~1/mean|W| and its first fine-tuning loss with them)."""
        positive, negative = ttq_masks(weight, tfactors[0])
        latent = weight.detach().float()
        return [masked_mean(latent, positive), masked_mean(-latent, negative)]

    def weight(self, weight, tfactors, scales):
        return ttq_weight(weight, *scales, tfactors[0])

    def differentiable(self, weight, tfactors, scales):
        return _TTQFunction.apply(weight, *scales, tfactors[0])

    def terms(self, weight, tfactors, scales):
        positive, negative = ttq_masks(weight, tfactors[0])
        positive_scale, negative_scale = scales
        return [(positive.to(torch.int8), positive_scale.detach().float()),
                (-negative.to(torch.int8), negative_scale.detach().float())]
