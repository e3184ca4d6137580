"""Brevitas's ternary weights, the outside peer: the layers train through Brevitas's own
brevitas.nn.QuantConv2d / QuantLinear with its stock per-tensor weight quantizer
(Int8WeightPerTensorFloat) at 2 bits, narrow range, i.e. integer levels −1, 0, +1:

    s = max(max|W|, 1e-10),   T(W) = s · clamp(round(W / s), −1, 1)

so a weight is ±s where |W| > s/2 and 0 below (round half to even). Backward is
Brevitas's: straight through the rounding, and through s into the max. Brevitas is an
optional extra (`pip install -r requirements-peers.txt`); without it a brevitas layer
cannot be built, but files written from one (.tern, ONNX) load and run, since the rule
above is all they need. No threshold factor, no REL.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Quantizer, register

SCALE_FLOOR = 1e-10  # Brevitas's scaling_min_val for this quantizer


def brevitas_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes clamp(round(W/s), −1, 1) as float, s = max|W|), statistics in fp32."""
    latent = weight.detach().float()
    scale = (latent.abs().amax() if latent.numel() else latent.new_zeros(())).clamp_min(SCALE_FLOOR)
    return (latent / scale).round().clamp(-1, 1), scale


@functools.cache
def brevitas_layer_classes() -> tuple[type, type]:
    """(BrevitasTernConv2d, BrevitasTernLinear): Brevitas's QuantConv2d / QuantLinear with
    the ternary weight quantizer, speaking the ternary-layer protocol of models.ternary
    (statistics, exports, the eval cache). ValueError when Brevitas is not installed."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # Brevitas imports it: "no CUDA" noise
    try:
        import brevitas.nn as qnn
        from brevitas.quant import Int8WeightPerTensorFloat
    except ImportError as exc:
        raise ValueError("the brevitas quantizer trains through Brevitas's layers, which are not installed: "
                         "pip install -r requirements-peers.txt") from exc
    from models.ternary import TernaryLayerMixin

    class TernaryWeight(Int8WeightPerTensorFloat):
        bit_width = 2  # with Brevitas's narrow range: integer levels −1, 0, +1

    class BrevitasLayerMixin(TernaryLayerMixin):
        def _brevitas_trains(self) -> bool:
            return torch.is_grad_enabled() and self.weight.requires_grad

        def quantized_weight(self) -> torch.Tensor:
            """Brevitas's quantized weight (with its backward) while training, else the cache."""
            if self._brevitas_trains():
                return self.quant_weight().value
            return super().quantized_weight()

    class BrevitasTernConv2d(BrevitasLayerMixin, qnn.QuantConv2d):
        """brevitas.nn.QuantConv2d with 2-bit narrow-range weights; under no_grad it applies
        the cached ternary weight (the same values) instead of re-quantizing every forward."""

        def __init__(self, *args, tfactors=(0.05,), quantizer: str = "brevitas", **kwargs) -> None:
            super().__init__(*args, weight_quant=TernaryWeight, **kwargs)
            self._init_ternary(tfactors, quantizer)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._brevitas_trains():
                return qnn.QuantConv2d.forward(self, x)
            return nn.Conv2d._conv_forward(self, x, self.quantized_weight(), self.bias)

    class BrevitasTernLinear(BrevitasLayerMixin, qnn.QuantLinear):
        """brevitas.nn.QuantLinear with 2-bit narrow-range weights (eval cache as above)."""

        def __init__(self, *args, tfactors=(0.05,), quantizer: str = "brevitas", **kwargs) -> None:
            super().__init__(*args, weight_quant=TernaryWeight, **kwargs)
            self._init_ternary(tfactors, quantizer)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._brevitas_trains():
                return qnn.QuantLinear.forward(self, x)
            return F.linear(x, self.quantized_weight(), self.bias)

    return BrevitasTernConv2d, BrevitasTernLinear


@register
class BrevitasQuantizer(Quantizer):
    name = "brevitas"
    summary = ("Brevitas 2-bit narrow-range weights through its own QuantConv2d/QuantLinear: s = max|W|, "
               "T(W) = s·clamp(round(W/s), −1, 1) (optional extra: requirements-peers.txt)")
    label = "Brevitas 2-bit narrow range (s = max\\|W\\|, ±s above s/2)"
    reported_resnet20 = "none (a library, not a paper)"
    own_recipe = "none (a library)"
    tfactor = False

    def weight(self, weight, tfactors, scales):
        codes, scale = brevitas_codes(weight)
        return (codes * scale).to(weight.dtype)

    def terms(self, weight, tfactors, scales):
        codes, scale = brevitas_codes(weight)
        return [(codes.to(torch.int8), scale)]

    def layer_classes(self) -> tuple[type, type]:
        return brevitas_layer_classes()
