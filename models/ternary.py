"""Ternarized layers of He, Gong & Fan (WACV 2019): the quantizer, drop-in layers,
model conversion and per-layer statistics.

For a latent full-precision weight W and a threshold factor t (paper default 0.05):

    Δ = t · max|W|                                   (threshold)
    α = mean{ |W_i| : |W_i| ≥ Δ }                    (statistical weight scaling)
    T(W) = α · sign(W) · [|W| ≥ Δ]                   (values -α, 0, +α)

Backward is a straight-through estimator: dL/dW = dL/dT · [|W| < 1]; Δ and α receive
no gradient. A residual expansion layer (REL) with factors t_1 < … < t_tex computes
y = Σ_k op(x, T_k(W)); since op is linear in the weight this is op(x, Σ_k T_k(W)),
so it is evaluated as one convolution / matmul with the summed ("effective") weight.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

PAPER_TFACTOR = 0.05

TFactors = tuple[float, ...]


def paper_tfactors(tex: int) -> TFactors:
    """Threshold factors the paper uses for t_ex branches: 0.05·k for k = 1..t_ex
    (t_ex=1: (0.05,), t_ex=2: (0.05, 0.1), t_ex=4: (0.05, 0.1, 0.15, 0.2))."""
    if tex < 1:
        raise ValueError(f"t_ex must be at least 1, got {tex}")
    return tuple(round(PAPER_TFACTOR * k, 10) for k in range(1, tex + 1))


def as_tfactors(tfactors: float | Sequence[float]) -> TFactors:
    """Validate threshold factors: a float or a strictly ascending sequence in (0, 1]."""
    values = (float(tfactors),) if isinstance(tfactors, (int, float)) else tuple(map(float, tfactors))
    if not values:
        raise ValueError("tfactors must hold at least one threshold factor")
    if any(not 0.0 < t <= 1.0 for t in values):
        raise ValueError(f"threshold factors must lie in (0, 1], got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"threshold factors must be strictly ascending, got {values}")
    return values


def ternary_branches(weight: torch.Tensor, tfactors: Sequence[float]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (alpha, mask) for each branch k: mask_k = [|W| ≥ t_k·max|W|], alpha_k its mean |W|.

    Statistics are computed in fp32 whatever the weight's dtype. No boolean indexing and
    no host synchronisation: alpha is a masked sum over the clamped count, so an all-zero
    weight gives alpha = 0 (never 0/0). The masked sum multiplies rather than selects on
    purpose: a NaN weight (whose comparisons are all false) still contributes NaN·0 = NaN,
    and an Inf one makes alpha infinite, so a non-finite weight reaches the layer's output
    instead of the layer silently turning into zeros.
    """
    magnitude = weight.detach().float().abs()
    max_magnitude = magnitude.amax() if magnitude.numel() else magnitude.new_zeros(())
    for tfactor in tfactors:
        mask = magnitude >= max_magnitude * tfactor
        alpha = (magnitude * mask).sum() / mask.sum(dtype=torch.float32).clamp_min(1.0)
        yield alpha, mask


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
    def forward(ctx, weight: torch.Tensor, tfactors: TFactors) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.branches = len(tfactors)
        return ternary_weight(weight, tfactors)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        grad_weight = grad_output.masked_fill(weight.abs() >= 1, 0)
        # Each REL branch passes the gradient straight through, so their sum passes t_ex times it.
        return (grad_weight * ctx.branches if ctx.branches > 1 else grad_weight), None


def ternarize(weight: torch.Tensor, tfactor: float | Sequence[float] = PAPER_TFACTOR) -> torch.Tensor:
    """Differentiable ternarization T(W) = α·sign(W)·[|W| ≥ Δ], Δ = tfactor·max|W|.

    A sequence of factors gives the REL effective weight Σ_k T_k(W) (2·t_ex+1 levels).
    """
    return _TernarizeSTE.apply(weight, as_tfactors(tfactor))


class TernaryLayerMixin:
    """Shared behaviour of TernConv2d and TernLinear: the latent weight stays a normal
    Parameter (same state_dict keys as nn.Conv2d / nn.Linear); forward uses its ternary
    effective weight. When no gradient w.r.t. the weight is needed (eval under no_grad),
    the effective weight is cached and recomputed only when the latent weight changes
    (an optimiser step or load_state_dict bumps the tensor's version counter)."""

    weight: nn.Parameter
    tfactors: TFactors

    def _init_ternary(self, tfactors: float | Sequence[float]) -> None:
        self.tfactors = as_tfactors(tfactors)
        self._cache_key: tuple | None = None
        self._cached_weight: torch.Tensor | None = None

    @property
    def tex(self) -> int:
        return len(self.tfactors)

    def set_tfactors(self, tfactors: float | Sequence[float]) -> None:
        self.tfactors = as_tfactors(tfactors)
        self._cache_key = None

    def effective_weight(self) -> torch.Tensor:
        """Σ_k T_k(W): the weight the layer actually applies (detached)."""
        return ternary_weight(self.weight, self.tfactors)

    def quantized_weight(self) -> torch.Tensor:
        """The weight used by forward: differentiable when autograd needs it, cached otherwise."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            self._cache_key = None
            self._cached_weight = None
            return _TernarizeSTE.apply(self.weight, self.tfactors)
        key = (self.weight.data_ptr(), self.weight._version, self.weight.dtype, self.weight.device, self.tfactors)
        if key != self._cache_key:
            self._cached_weight = ternary_weight(self.weight, self.tfactors)
            self._cache_key = key
        return self._cached_weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tfactors={self.tfactors}"


class TernConv2d(TernaryLayerMixin, nn.Conv2d):
    """nn.Conv2d whose weight is ternarized (REL with t_ex = len(tfactors) branches)."""

    def __init__(self, *args, tfactors: float | Sequence[float] = (PAPER_TFACTOR,), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_ternary(tfactors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class TernLinear(TernaryLayerMixin, nn.Linear):
    """nn.Linear whose weight is ternarized; the bias is added once, not per REL branch."""

    def __init__(self, *args, tfactors: float | Sequence[float] = (PAPER_TFACTOR,), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_ternary(tfactors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


TernaryLayer = TernConv2d | TernLinear


def _ternary_twin(module: nn.Conv2d | nn.Linear, tfactors: TFactors) -> TernaryLayer:
    """A ternarized layer that shares `module`'s Parameter objects (built on the meta
    device, so nothing is allocated or re-initialised)."""
    if isinstance(module, nn.Conv2d):
        twin = TernConv2d(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=module.padding, dilation=module.dilation, groups=module.groups,
            bias=module.bias is not None, padding_mode=module.padding_mode,
            tfactors=tfactors, device="meta",
        )
    else:
        twin = TernLinear(module.in_features, module.out_features, bias=module.bias is not None,
                          tfactors=tfactors, device="meta")
    twin.weight = module.weight
    twin.bias = module.bias
    twin.train(module.training)
    return twin


def _first_conv_and_last_linear(model: nn.Module) -> set[str]:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return set(convs[:1] + linears[-1:])


def ternarize_model(model: nn.Module, tfactors: float | Sequence[float] = (PAPER_TFACTOR,),
                    first_last: bool = True) -> nn.Module:
    """Swap every nn.Conv2d / nn.Linear of `model` for its ternarized twin, in place.

    Parameters are shared, not copied, so a pretrained model becomes its ternarized
    version and an optimiser built before the call keeps working. With
    first_last=False the first conv and the last linear layer (in registration order)
    stay full precision, the paper's "ff_lf" variants. Already ternarized layers get
    the new tfactors. Returns the model for chaining.
    """
    factors = as_tfactors(tfactors)
    keep_full_precision = set() if first_last else _first_conv_and_last_linear(model)
    for name, module in list(model.named_modules()):
        if name in keep_full_precision:
            continue
        if isinstance(module, TernaryLayerMixin):
            module.set_tfactors(factors)
        elif type(module) in (nn.Conv2d, nn.Linear):
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, _ternary_twin(module, factors))
    return model


def ternary_layers(model: nn.Module) -> Iterator[tuple[str, TernaryLayer]]:
    """(name, layer) for every ternarized layer of `model`."""
    for name, module in model.named_modules():
        if isinstance(module, TernaryLayerMixin):
            yield name, module


@torch.no_grad()
def layer_stats(layer: TernaryLayer) -> dict:
    """Sparsity (fraction of zero weights), α of each REL branch and the number of
    distinct values of the effective weight (at most 2·t_ex + 1)."""
    weight = layer.quantized_weight()  # under no_grad: the eval cache when the weight is unchanged
    alphas = [float(alpha) for alpha, _ in ternary_branches(layer.weight, layer.tfactors)]
    return {
        "params": weight.numel(),
        "sparsity": float((weight == 0).float().mean()) if weight.numel() else 0.0,
        "alphas": alphas,
        "levels": int(torch.unique(weight).numel()),
        "tfactors": list(layer.tfactors),
    }


@torch.no_grad()
def model_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all ternarized layers (0.0 when there are none)."""
    zeros, total = 0, 0
    for _, layer in ternary_layers(model):
        weight = layer.quantized_weight()
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0
