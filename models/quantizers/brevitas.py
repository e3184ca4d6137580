"""Brevitas's ternary weights, the outside peer: the layers train through Brevitas's own
brevitas.nn.QuantConv2d / QuantLinear with its ternary weight quantizer
(brevitas.quant.SignedTernaryWeightPerTensorConst: 2 bits, narrow range, i.e. integer
levels −1, 0, +1, and a constant per-tensor scale s = 0.1):

    T(W) = s · clamp(round(W / s), −1, 1)

so a weight is ±s where |W| > s/2 and 0 below (round half to even), in every layer.
Backward is Brevitas's: straight through the rounding and the clamp, dL/dW = dL/dT.
Brevitas is an optional extra (`pip install -r requirements-peers.txt`); without it a
brevitas layer cannot be built, but files written from one (.tern, ONNX) load and run,
since the rule above is all they need. No threshold factor, no REL.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Quantizer, register

TERNARY_SCALE = 0.1  # SignedTernaryWeightPerTensorConst.scaling_const, so exports need no Brevitas


def brevitas_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes clamp(round(W/s), −1, 1) as float, s = 0.1), computed in fp32."""
    scale = torch.tensor(TERNARY_SCALE, device=weight.device)
    return (weight.detach().float() / scale).round().clamp(-1, 1), scale


@functools.cache
def brevitas_layer_classes() -> tuple[type, type]:
    """(BrevitasTernConv2d, BrevitasTernLinear): Brevitas's QuantConv2d / QuantLinear with
    the ternary weight quantizer, speaking the ternary-layer protocol of models.ternary
    (statistics, exports, the eval cache). ValueError when Brevitas is not installed."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # Brevitas imports it: "no CUDA" noise
    try:
        import brevitas.nn as qnn
        from brevitas.quant import SignedTernaryWeightPerTensorConst
    except ImportError as exc:
        raise ValueError("the brevitas quantizer trains through Brevitas's layers, which are not installed: "
                         "pip install -r requirements-peers.txt") from exc
    from models.ternary import TernaryLayerMixin

    class BrevitasLayerMixin(TernaryLayerMixin):
        def _brevitas_trains(self) -> bool:
            return torch.is_grad_enabled() and self.weight.requires_grad

        def quantized_weight(self) -> torch.Tensor:
            """Brevitas's quantized weight (with its backward) while training, else the cache."""
            if self._brevitas_trains():
                return self.quant_weight().value
            return super().quantized_weight()

    class BrevitasTernConv2d(BrevitasLayerMixin, qnn.QuantConv2d):
        """brevitas.nn.QuantConv2d with Brevitas's ternary weights; under no_grad it applies
        the cached ternary weight (the same values) instead of re-quantizing every forward."""

        def __init__(self, *args, tfactors=(0.05,), quantizer: str = "brevitas", **kwargs) -> None:
            super().__init__(*args, weight_quant=SignedTernaryWeightPerTensorConst, **kwargs)
            self._init_ternary(tfactors, quantizer)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._brevitas_trains():
                return qnn.QuantConv2d.forward(self, x)
            return nn.Conv2d._conv_forward(self, x, self.quantized_weight(), self.bias)

    class BrevitasTernLinear(BrevitasLayerMixin, qnn.QuantLinear):
        """brevitas.nn.QuantLinear with Brevitas's ternary weights (eval cache as above)."""

        def __init__(self, *args, tfactors=(0.05,), quantizer: str = "brevitas", **kwargs) -> None:
            super().__init__(*args, weight_quant=SignedTernaryWeightPerTensorConst, **kwargs)
            self._init_ternary(tfactors, quantizer)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._brevitas_trains():
                return qnn.QuantLinear.forward(self, x)
            return F.linear(x, self.quantized_weight(), self.bias)

    return BrevitasTernConv2d, BrevitasTernLinear


@register
class BrevitasQuantizer(Quantizer):
    name = "brevitas"
    summary = ("Brevitas's ternary weights (SignedTernaryWeightPerTensorConst) through its own "
               "QuantConv2d/QuantLinear: T(W) = 0.1·clamp(round(W/0.1), −1, 1) (optional extra: requirements-peers.txt)")
    label = "Brevitas ternary (constant s = 0.1, ±s above s/2)"
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
