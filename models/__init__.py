"""Model registry: every architecture is defined once in full precision; a ternarized
arch is the full-precision model passed through ternarize_model."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch.nn as nn

from .alexnet import alexnet_bn
from .resnet_cifar import cifar_resnet
from .resnet_imagenet import imagenet_resnet
from .quantizers import get_quantizer
from .ternary import (FIRST_LAST, QUANTIZERS, FirstLast, first_last_name, TernConv2d, TernLinear, as_tfactors, check_quantizer, inference_twin, layer_bias_copies, layer_stats, layer_tfactors,
                      model_sparsity, optimize_model_thresholds, optimize_thresholds, paper_tfactors,
                      reconstruction_error, set_layer_bias_copies, set_layer_tfactors, ternarize, ternarize_model,
                      ternary_layers, use_reference_rel_bias)

__all__ = ["ArchSpec", "ARCHS", "FIRST_LAST", "QUANTIZERS", "first_last_name", "check_quantizer", "get_quantizer", "get_model", "list_archs", "TernConv2d", "TernLinear",
           "ternarize",
           "ternarize_model", "ternary_layers", "layer_stats", "model_sparsity", "paper_tfactors",
           "optimize_thresholds", "optimize_model_thresholds", "reconstruction_error", "layer_tfactors",
           "set_layer_tfactors", "layer_bias_copies", "set_layer_bias_copies", "use_reference_rel_bias", "inference_twin"]


@dataclass(frozen=True)
class ArchSpec:
    builder: Callable[..., nn.Module]  # full-precision constructor(num_classes=, in_channels=)
    family: str  # "cifar" or "imagenet": the default number of classes and input size
    tfactors: tuple[float, ...] | None  # None: full precision
    first_last: bool  # ternarize the first conv and the last linear layer too
    description: str
    torchvision_weights: str | None = None  # torchvision's pretrained weights of the full-precision twin


def _register() -> dict[str, ArchSpec]:
    archs: dict[str, ArchSpec] = {}
    for depth in (20, 32, 44, 56):
        build = partial(cifar_resnet, depth)
        archs[f"resnet{depth}"] = ArchSpec(build, "cifar", None, True, f"CIFAR ResNet-{depth}, full precision")
        archs[f"tern_resnet{depth}"] = ArchSpec(build, "cifar", paper_tfactors(1), True,
                                                f"CIFAR ResNet-{depth}, whole network ternarized")
    archs["alexnet_vanilla"] = ArchSpec(alexnet_bn, "imagenet", None, True, "AlexNet-BN, full precision")
    archs["tern_alexnet_ff_lf"] = ArchSpec(alexnet_bn, "imagenet", paper_tfactors(1), False,
                                           "AlexNet-BN ternarized, first/last layer full precision")
    archs["tern_alexnet_fq_lq"] = ArchSpec(alexnet_bn, "imagenet", paper_tfactors(1), True,
                                           "AlexNet-BN, whole network ternarized")
    for depth in (18, 34, 50, 101):
        build = partial(imagenet_resnet, depth)
        weights = f"ResNet{depth}_Weights.IMAGENET1K_V1"
        archs[f"resnet{depth}"] = ArchSpec(build, "imagenet", None, True, f"ResNet-{depth} (torchvision), full precision",
                                           weights)
        archs[f"resnet{depth}b_ff_lf_tex1"] = ArchSpec(build, "imagenet", paper_tfactors(1), False,
                                                      f"ResNet-{depth} ternarized, first/last layer full precision",
                                                      weights)
        archs[f"resnet{depth}b_fq_lq_tex1"] = ArchSpec(build, "imagenet", paper_tfactors(1), True,
                                                      f"ResNet-{depth}, whole network ternarized", weights)
    for tex in (2, 4):
        archs[f"resnet18b_fq_lq_tern_tex_{tex}"] = ArchSpec(
            partial(imagenet_resnet, 18), "imagenet", paper_tfactors(tex), True,
            f"ResNet-18, whole network ternarized, REL t_ex={tex}", "ResNet18_Weights.IMAGENET1K_V1")
    return archs


ARCHS: dict[str, ArchSpec] = _register()
DEFAULT_NUM_CLASSES = {"cifar": 10, "imagenet": 1000}


def list_archs() -> list[str]:
    return sorted(ARCHS)


def resolve_tfactors(arch: str, tex: int | None = None, tfactors: Sequence[float] | None = None,
                     first_last: FirstLast | None = None) -> tuple[tuple[float, ...] | None, FirstLast]:
    """The (tfactors, first_last) an arch gets after overrides; tfactors None = full precision.
    first_last: True or "tern", False or "fp", or "first_fp" (models.ternary.FIRST_LAST)."""
    spec = _spec(arch)
    if tex is not None and tfactors is not None and len(tfactors) != tex:
        raise ValueError(f"--tex {tex} disagrees with {len(tfactors)} threshold factors {tuple(tfactors)}")
    factors = spec.tfactors
    if tfactors is not None:
        factors = as_tfactors(tfactors)
    elif tex is not None:
        factors = paper_tfactors(tex)
    if factors is None and first_last is not None:
        raise ValueError(f"{arch} is full precision: give tex or tfactors to ternarize it")
    return factors, spec.first_last if first_last is None else first_last_name(first_last)


def _spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch '{arch}'; valid archs: {', '.join(list_archs())}")
    return ARCHS[arch]


def get_model(arch: str, num_classes: int | None = None, in_channels: int = 3, *, tex: int | None = None,
              tfactors: Sequence[float] | None = None, first_last: FirstLast | None = None,
              quantizer: str = "paper") -> nn.Module:
    """Build a registered arch. `tex`, `tfactors` and `first_last` override the arch's
    ternarization (tex=k uses the paper's factors 0.05·1..k); `quantizer` picks the
    ternarizer of its ternarized layers (a name of models.quantizers.QUANTIZERS)."""
    spec = _spec(arch)
    factors, ends = resolve_tfactors(arch, tex, tfactors, first_last)
    if factors is None and quantizer != "paper":
        raise ValueError(f"{arch} is full precision: the {quantizer} quantizer needs a ternarized arch")
    num_classes = num_classes or DEFAULT_NUM_CLASSES[spec.family]
    model = spec.builder(num_classes=num_classes, in_channels=in_channels)
    if factors is not None:
        ternarize_model(model, factors, first_last=ends, quantizer=quantizer)
    # What rebuilds this exact network (used by utils.export to write self-contained files).
    model.build_config = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
                          "tfactors": list(factors) if factors is not None else None,
                          "first_last": {"tern": True, "fp": False}.get(ends, ends), "quantizer": quantizer}
    return model


def __getattr__(name: str):
    """models.load_pretrained and models.list_pretrained: the shipped models (utils.pretrained,
    imported on first use since it builds on this package)."""
    if name in ("load_pretrained", "list_pretrained"):
        from utils import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
