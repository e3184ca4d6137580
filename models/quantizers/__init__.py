"""Weight ternarizers as strategies: how a ternary layer turns its latent weight W into
the weight it applies, its backward, its extra trained parameters, the terms the exports
store and what it refuses. One class per method, one file per class in this package,
registered by name with @register; the layers (models.ternary), the exports
(utils.export, utils.onnx_export), the compression report and main.py's --quantizer all
read the registry, so a new method is one new file here (docs/training.md shows one).

    QUANTIZERS            the registered names, e.g. ("paper", "twn", "ttq", "absmean")
    get_quantizer(name)   the strategy object (stateless; the layer passes its tensors in)
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Sequence
from typing import ClassVar

import torch

Terms = list[tuple[torch.Tensor, torch.Tensor]]


class Quantizer:
    """The interface (see the module docstring). `tfactors` are the layer's threshold
    factors (one per REL branch), `scales` its trained scale Parameters in the order of
    `scale_names`. Statistics are computed in fp32 whatever the weight's dtype."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: the rule, for --help and the documentation
    label: ClassVar[str]  # the method in result tables (Markdown)
    reported_resnet20: ClassVar[str] = "none"  # what its paper reports on CIFAR-10 ResNet-20, FP → ternary top-1
    own_recipe: ClassVar[str] = "from scratch"  # how its authors train: "from scratch", or a recipe of its own
    rel: ClassVar[bool] = False  # takes t_ex > 1 threshold factors (residual expansion)
    tfactor: ClassVar[bool] = True  # a threshold factor t means something (Δ = t·max|W|)
    auto_thresholds: ClassVar[bool] = False  # --tfactors auto optimises its thresholds
    scale_names: ClassVar[tuple[str, ...]] = ()  # trained scale Parameters per layer (see initial_scales)
    default_scale_lr: ClassVar[float] = 1.0  # their learning rate / the weights' when --scale_lr is not given
    signed_scales: ClassVar[bool] = False  # the positive and the negative level have scales of their own

    def weight(self, weight: torch.Tensor, tfactors: Sequence[float], scales: Sequence[torch.Tensor]) -> torch.Tensor:
        """The effective weight, without autograd, in the weight's dtype."""
        raise NotImplementedError

    def differentiable(self, weight: torch.Tensor, tfactors: Sequence[float],
                       scales: Sequence[torch.Tensor]) -> torch.Tensor:
        """The effective weight with this method's backward (to W and to its scales); by
        default the plain straight-through estimator, dL/dW = dL/dT."""
        return _StraightThrough.apply(weight, functools.partial(self.weight, tfactors=tfactors, scales=scales))

    def terms(self, weight: torch.Tensor, tfactors: Sequence[float], scales: Sequence[torch.Tensor]) -> Terms:
        """The effective weight as Σ_j s_j · c_j: int8 codes c_j in {−1, 0, 1} and fp32 scalar
        scales s_j, added in this order exactly as forward adds them (what exports store)."""
        raise NotImplementedError

    def initial_scales(self, weight: torch.Tensor, tfactors: Sequence[float]) -> list[torch.Tensor]:
        """Starting values of the trained scales of a layer with latent weight W: for a layer
        that gets this method, and for one whose loaded weights come without scales."""
        return [torch.ones((), device=weight.device) for _ in self.scale_names]

    def layer_classes(self) -> tuple[type, type] | None:
        """(conv, linear) layer classes the method trains through; None: models.ternary's
        TernConv2d / TernLinear (a method from another library brings its own layers)."""
        return None

    def check(self, tex: int) -> None:
        """ValueError for a configuration the method has no definition for."""
        if tex != 1 and not self.rel:
            raise ValueError(f"the {self.name} quantizer has no residual expansion (t_ex = {tex}); REL is the paper's "
                             "quantizer only")


class _StraightThrough(torch.autograd.Function):
    """forward: function(weight); backward: the gradient passes straight through."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, function) -> torch.Tensor:
        return function(weight)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


_REGISTRY: dict[str, Quantizer] = {}


def register(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: make `cls` available under cls.name."""
    _REGISTRY[cls.name] = cls()
    return cls


def get_quantizer(name: str) -> Quantizer:
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer '{name}'; valid quantizers: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def masked_mean(magnitude: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean{ |W_i| : mask_i } as a masked sum over the clamped count (0 for an empty mask).
    It multiplies rather than selects on purpose: a NaN weight (whose comparisons are all
    false) still contributes NaN·0 = NaN, so a non-finite weight reaches the output."""
    return (magnitude * mask).sum() / mask.sum(dtype=torch.float32).clamp_min(1.0)


_ORDER = ("paper", "twn", "ttq")  # the methods before the registry, in their historic order; then the rest by name
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: (m.name not in _ORDER,
                                                                    _ORDER.index(m.name) if m.name in _ORDER else 0,
                                                                    m.name)):
    importlib.import_module(f"{__name__}.{_module.name}")

QUANTIZERS: tuple[str, ...] = tuple(_REGISTRY)
SCALE_NAMES: frozenset[str] = frozenset(name for q in _REGISTRY.values() for name in q.scale_names)
