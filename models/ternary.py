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

Other ternarizers can replace the paper's in any ternarized layer (`quantizer`): TWN,
TTQ and BitNet b1.58's absmean, each a strategy class in models/quantizers/ (its file
gives its equations). The layers here only dispatch to the registered strategy.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantizers import QUANTIZERS, SCALE_NAMES, Quantizer, get_quantizer  # noqa: F401  (re-exported)
from .quantizers.paper import ternary_branches, ternary_weight  # noqa: F401
from .quantizers.ttq import ttq_masks, ttq_weight  # noqa: F401
from .quantizers.twn import TWN_THRESHOLD, twn_branch, twn_weight  # noqa: F401

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


def ternarize(weight: torch.Tensor, tfactor: float | Sequence[float] = PAPER_TFACTOR) -> torch.Tensor:
    """Differentiable ternarization T(W) = α·sign(W)·[|W| ≥ Δ], Δ = tfactor·max|W|.

    A sequence of factors gives the REL effective weight Σ_k T_k(W) (2·t_ex+1 levels).
    """
    return get_quantizer("paper").differentiable(weight, as_tfactors(tfactor), ())


def check_quantizer(quantizer: str, tex: int) -> None:
    """ValueError unless `quantizer` is registered and has a definition for t_ex branches."""
    get_quantizer(quantizer).check(tex)


class TernaryLayerMixin:
    """Shared behaviour of TernConv2d and TernLinear: the latent weight stays a normal
    Parameter (same state_dict keys as nn.Conv2d / nn.Linear, plus TTQ's two scales);
    forward uses its ternary effective weight. When no gradient is needed (eval under
    no_grad), the effective weight is cached and recomputed only when the latent weight
    or a scale changes (an optimiser step or load_state_dict bumps the tensor's version
    counter)."""

    weight: nn.Parameter
    tfactors: TFactors
    quantizer: str

    def _init_ternary(self, tfactors: float | Sequence[float], quantizer: str = "paper") -> None:
        self.bias_copies = 1  # t_ex for checkpoints of the reference, whose REL adds the bias per branch
        self._cache_key: tuple | None = None
        self._cached_weight: torch.Tensor | None = None
        self.quantizer = "paper"
        self.configure(tfactors, quantizer)

    @property
    def tex(self) -> int:
        return len(self.tfactors)

    @property
    def strategy(self) -> Quantizer:
        """The ternarizer object of `quantizer` (models.quantizers)."""
        return get_quantizer(self.quantizer)

    @property
    def scale_count(self) -> int:
        """Distinct scales of the effective weight: its trained scales (TTQ's W_p, W_n), else t_ex."""
        return len(self.strategy.scale_names) or self.tex

    def configure(self, tfactors: float | Sequence[float], quantizer: str) -> None:
        """Set the threshold factors and the ternarizer. A layer that gets a method with
        trained scales gets them from the quantizer's initial_scales; one that keeps the
        method keeps its trained scales; one that leaves it drops them."""
        factors = as_tfactors(tfactors)
        check_quantizer(quantizer, len(factors))
        self.tfactors, self.quantizer = factors, quantizer
        self._cache_key = None
        strategy = get_quantizer(quantizer)
        for name in SCALE_NAMES:
            if name not in strategy.scale_names:
                self._parameters.pop(name, None)
        if any(name not in self._parameters for name in strategy.scale_names):
            for name, value in zip(strategy.scale_names, strategy.initial_scales(self.weight, factors)):
                self._parameters.pop(name, None)
                self.register_parameter(name, nn.Parameter(value))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Full-precision or paper-quantizer weights have no trained scales: loading them into
        a TTQ layer (fine-tuning) starts its W_p, W_n afresh from the loaded weight (the
        quantizer's initial_scales) instead of failing strict loading."""
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        missing = [name for name in self.strategy.scale_names if prefix + name in missing_keys]
        for name in missing:
            missing_keys.remove(prefix + name)
        if missing and prefix + "weight" in state_dict:
            with torch.no_grad():
                for name, value in zip(self.strategy.scale_names, self.strategy.initial_scales(self.weight, self.tfactors)):
                    if name in missing:
                        self._parameters[name].copy_(value)

    def set_tfactors(self, tfactors: float | Sequence[float]) -> None:
        self.configure(tfactors, self.quantizer)

    def set_quantizer(self, quantizer: str) -> None:
        self.configure(self.tfactors, quantizer)

    def scales(self) -> list[nn.Parameter]:
        """The layer's trained scales, in the order of its quantizer's scale_names."""
        return [self._parameters[name] for name in self.strategy.scale_names]

    def effective_weight(self) -> torch.Tensor:
        """T(W) (Σ_k T_k(W) with REL): the weight the layer actually applies (detached)."""
        return self.strategy.weight(self.weight, self.tfactors, self.scales())

    def quantized_weight(self) -> torch.Tensor:
        """The weight used by forward: differentiable when autograd needs it, cached otherwise
        (inside torch.compile recomputed in the compiled graph instead)."""
        inputs = [self.weight, *self.scales()]
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            self._cache_key = None
            self._cached_weight = None
            return self.strategy.differentiable(self.weight, self.tfactors, inputs[1:])
        if torch.compiler.is_compiling():  # a guard on the cache key would recompile after every weight update
            return self.effective_weight()
        key = (*((t.data_ptr(), t._version) for t in inputs), self.weight.dtype, self.weight.device,
               self.tfactors, self.quantizer)
        if key != self._cache_key:
            self._cached_weight = self.effective_weight()
            self._cache_key = key
        return self._cached_weight

    @torch.no_grad()
    def ternary_terms(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The effective weight as Σ_j s_j · c_j with int8 codes c_j in {-1, 0, 1} and scalar
        scales s_j, in the order forward adds them (the quantizer's terms, e.g. one
        (sign·[|W| ≥ Δ_k], α_k) per REL branch; TTQ's ([W > Δ], W_p), (−[W < −Δ], W_n)).
        Exact in float32: what the exports store."""
        return self.strategy.terms(self.weight, self.tfactors, self.scales())

    def applied_bias(self) -> torch.Tensor | None:
        """The bias forward adds: b (this project's REL convention, y = Σ_k T_k(W)·x + b),
        or bias_copies·b for the reference's REL checkpoints, y = Σ_k (T_k(W)·x + b)."""
        if self.bias is None or self.bias_copies == 1:
            return self.bias
        return self.bias * self.bias_copies

    def extra_repr(self) -> str:
        copies = f", bias_copies={self.bias_copies}" if self.bias_copies != 1 else ""
        quantizer = f", quantizer={self.quantizer}" if self.quantizer != "paper" else ""
        return f"{super().extra_repr()}, tfactors={self.tfactors}{quantizer}{copies}"


class TernConv2d(TernaryLayerMixin, nn.Conv2d):
    """nn.Conv2d whose weight is ternarized (REL with t_ex = len(tfactors) branches)."""

    def __init__(self, *args, tfactors: float | Sequence[float] = (PAPER_TFACTOR,), quantizer: str = "paper",
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_ternary(tfactors, quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.applied_bias())


class TernLinear(TernaryLayerMixin, nn.Linear):
    """nn.Linear whose weight is ternarized; the bias is added once, not per REL branch
    (see applied_bias for the reference's REL checkpoints)."""

    def __init__(self, *args, tfactors: float | Sequence[float] = (PAPER_TFACTOR,), quantizer: str = "paper",
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_ternary(tfactors, quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.applied_bias())


TernaryLayer = TernConv2d | TernLinear


def _layer_like(module: nn.Conv2d | nn.Linear, conv_class: type, linear_class: type, **extra) -> nn.Module:
    """A layer of `conv_class` / `linear_class` with `module`'s configuration, on the meta
    device (nothing allocated; the caller assigns its parameters)."""
    if isinstance(module, nn.Conv2d):
        return conv_class(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                          padding=module.padding, dilation=module.dilation, groups=module.groups,
                          bias=module.bias is not None, padding_mode=module.padding_mode, device="meta", **extra)
    return linear_class(module.in_features, module.out_features, bias=module.bias is not None, device="meta", **extra)


def layer_classes(quantizer: str) -> tuple[type, type]:
    """The (conv, linear) classes whose layers run `quantizer`."""
    return get_quantizer(quantizer).layer_classes() or (TernConv2d, TernLinear)


def _ternary_twin(module: nn.Conv2d | nn.Linear, tfactors: TFactors, quantizer: str) -> TernaryLayer:
    """A ternarized layer that shares `module`'s Parameter objects (nothing is re-initialised;
    only TTQ's scales are new)."""
    twin = _layer_like(module, *layer_classes(quantizer), tfactors=tfactors)
    twin.weight = module.weight
    twin.bias = module.bias
    twin.set_quantizer(quantizer)
    twin.train(module.training)
    return twin


# --first_last: which end layers stay full precision. "first_fp" is TTQ's own CIFAR code
# (the first conv full precision, the classifier ternarized).
FIRST_LAST: dict[str, frozenset[str]] = {"tern": frozenset(), "fp": frozenset({"first", "last"}),
                                         "first_fp": frozenset({"first"})}
FirstLast = bool | str  # True / False: "tern" / "fp" (the archs' and older files' spelling)


def first_last_name(first_last: FirstLast) -> str:
    """The FIRST_LAST name of a setting; ValueError for an unknown one."""
    name = ("tern" if first_last else "fp") if isinstance(first_last, bool) else first_last
    if name not in FIRST_LAST:
        raise ValueError(f"unknown first/last setting {first_last!r}; valid: {', '.join(FIRST_LAST)}")
    return name


def _full_precision_ends(model: nn.Module, first_last: FirstLast) -> set[str]:
    """Names of the first conv and/or last linear layer (registration order) kept full precision."""
    ends = FIRST_LAST[first_last_name(first_last)]
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return set((convs[:1] if "first" in ends else []) + (linears[-1:] if "last" in ends else []))


def ternarize_model(model: nn.Module, tfactors: float | Sequence[float] = (PAPER_TFACTOR,),
                    first_last: FirstLast = True, quantizer: str = "paper") -> nn.Module:
    """Swap every nn.Conv2d / nn.Linear of `model` for its ternarized twin, in place.

    Parameters are shared, not copied, so a pretrained model becomes its ternarized
    version and an optimiser built before the call keeps working. With
    first_last=False ("fp") the first conv and the last linear layer (in registration
    order) stay full precision, the paper's "ff_lf" variants; with "first_fp" only the
    first conv (TTQ's code). `quantizer` picks the ternarizer
    (a name of models.quantizers.QUANTIZERS; TTQ adds two scale Parameters
    per layer, so build the optimiser after the call). Already ternarized layers get the
    new tfactors and quantizer. Returns the model for chaining.
    """
    factors = as_tfactors(tfactors)
    check_quantizer(quantizer, len(factors))
    keep_full_precision = _full_precision_ends(model, first_last)
    for name, module in list(model.named_modules()):
        if name in keep_full_precision:
            continue
        if isinstance(module, TernaryLayerMixin) and type(module) in layer_classes(quantizer):
            module.configure(factors, quantizer)
        elif type(module) in (nn.Conv2d, nn.Linear) or isinstance(module, TernaryLayerMixin):
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, _ternary_twin(module, factors, quantizer))
    return model


def ternary_layers(model: nn.Module) -> Iterator[tuple[str, TernaryLayer]]:
    """(name, layer) for every ternarized layer of `model`."""
    for name, module in model.named_modules():
        if isinstance(module, TernaryLayerMixin):
            yield name, module


@torch.no_grad()
def layer_stats(layer: TernaryLayer) -> dict:
    """Sparsity (fraction of zero weights), the scales (α of each REL branch; [W_p, W_n]
    for TTQ) and the number of distinct values of the effective weight (at most 2·t_ex + 1)."""
    weight = layer.quantized_weight()  # under no_grad: the eval cache when the weight is unchanged
    return {
        "params": weight.numel(),
        "sparsity": float((weight == 0).float().mean()) if weight.numel() else 0.0,
        "alphas": [float(scale) for _, scale in layer.ternary_terms()],
        "levels": int(torch.unique(weight).numel()),
        "tfactors": list(layer.tfactors),
        "quantizer": layer.quantizer,
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


# ---------------------------------------------------------------------------------------
# Optimised thresholds (the reference's open task: "optimise the REL thresholds").
#
# Every ternarized layer feeds a BatchNorm or a softmax, so only the shape of the
# effective weight Q(W) = Σ_k α_k·T_k(W) matters, not its scale. The objective is the
# scale-free relative reconstruction error
#
#     e(W) = min_c ‖W − c·Q(W)‖ / ‖W‖ = sqrt(1 − (W·Q)² / (‖W‖²·‖Q‖²)),
#
# with the α_k kept at the paper's statistical rule (mean |W| above Δ_k). Keeping that
# rule means training still runs the paper's quantizer and only the thresholds move;
# for t_ex = 1 α cannot matter at all (the scale c absorbs it).

THRESHOLD_BINS = 2000  # |W| histogram resolution: max|W|/2000, so 0.05·k·max|W| is a bin edge


def _magnitude_histogram(magnitude: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N_j, S_j) for j = 0..bins: the count and the sum of |W| at or above edge j·max|W|/bins
    (suffix sums of a |W| histogram, float64; N_bins = S_bins = 0)."""
    index = (magnitude * (bins / magnitude.max())).long().clamp_(max=bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    sums = torch.bincount(index, weights=magnitude.double(), minlength=bins)
    zero = counts.new_zeros(1)
    return (torch.cat([counts.flip(0).cumsum(0).flip(0), zero]),
            torch.cat([sums.flip(0).cumsum(0).flip(0), zero]))


def _explained(edges: torch.Tensor, above_count: torch.Tensor, above_sum: torch.Tensor) -> torch.Tensor:
    """(W·Q)²/‖Q‖² for each row of `edges` (candidates × t_ex ascending bin edges).

    With N_k, S_k the count and |W|-sum at or above edge k: α_k = S_k/N_k, the weights
    between edges k and k+1 take level L_k = α_1 + … + α_k, so
    W·Q = Σ_k L_k (S_k − S_{k+1}) and ‖Q‖² = Σ_k L_k² (N_k − N_{k+1})."""
    count, total = above_count[edges], above_sum[edges]
    levels = (total / count.clamp_min(1)).cumsum(1)
    next_count = torch.cat([count[:, 1:], count.new_zeros(len(edges), 1)], 1)
    next_total = torch.cat([total[:, 1:], total.new_zeros(len(edges), 1)], 1)
    dot = (levels * (total - next_total)).sum(1)
    norm = (levels.square() * (count - next_count)).sum(1)
    return torch.where(norm > 0, dot.square() / norm.clamp_min(1e-300), 0.0)


def _coordinate_descent(edges: torch.Tensor, above_count: torch.Tensor, above_sum: torch.Tensor,
                        bins: int, max_sweeps: int = 20) -> torch.Tensor:
    """Move one edge at a time to its best position between its neighbours (all
    positions evaluated at once) until no edge moves. Never increases the error."""
    edges = edges.clone()
    tex = len(edges)
    best = _explained(edges[None], above_count, above_sum)[0]
    for _ in range(max_sweeps):
        moved = False
        for k in range(tex):
            low = int(edges[k - 1]) + 1 if k else 1
            high = int(edges[k + 1]) if k + 1 < tex else bins
            candidates = edges.repeat(high - low, 1)
            candidates[:, k] = torch.arange(low, high)
            scores = _explained(candidates, above_count, above_sum)
            top = int(scores.argmax())
            if scores[top] > best:
                best, edges, moved = scores[top], candidates[top].clone(), True
        if not moved:
            break
    return edges


def _relative_errors(magnitude: torch.Tensor, threshold_sets: Sequence[torch.Tensor]) -> list[float]:
    """Exact e(W) for several threshold sets from one pass over |W| (flat, float32):
    bucketize against the union of all thresholds, then each set's counts and |W|-sums
    above its thresholds are suffix sums of that one histogram."""
    magnitude64 = magnitude.double()
    norm = float(torch.dot(magnitude64, magnitude64))
    if norm == 0:
        return [0.0] * len(threshold_sets)
    boundaries = torch.unique(torch.cat([t.to(magnitude) for t in threshold_sets]))
    level = torch.bucketize(magnitude, boundaries, right=True)
    counts = torch.bincount(level, minlength=len(boundaries) + 1).double()
    sums = torch.bincount(level, weights=magnitude64, minlength=len(boundaries) + 1)
    zero = counts.new_zeros(1)
    above_count = torch.cat([counts[1:].flip(0).cumsum(0).flip(0), zero]).cpu()
    above_sum = torch.cat([sums[1:].flip(0).cumsum(0).flip(0), zero]).cpu()
    edges = [torch.searchsorted(boundaries, t.to(magnitude)).cpu()[None] for t in threshold_sets]
    return [math.sqrt(max(0.0, 1 - float(_explained(e, above_count, above_sum)[0]) / norm)) for e in edges]


def reconstruction_error(weight: torch.Tensor, thresholds: torch.Tensor | Sequence[float]) -> float:
    """e(W) = min_c ‖W − c·Q(W)‖/‖W‖ for absolute thresholds Δ_1 < … < Δ_t_ex, with
    α_k = mean{|W| ≥ Δ_k} (0 for W = 0, 1 when no weight reaches Δ_1)."""
    magnitude = weight.detach().float().abs().flatten()
    return _relative_errors(magnitude, [torch.as_tensor(thresholds, dtype=torch.float32)])[0]


@torch.no_grad()
def optimize_thresholds(weight: torch.Tensor, t_ex: int, bins: int = THRESHOLD_BINS) -> torch.Tensor:
    """Thresholds Δ_1 < … < Δ_t_ex in (0, max|W|] minimising e(W) (see above), as a
    float32 tensor of t_ex absolute values.

    Near-exact and vectorised: |W| is binned once into `bins` bins of width max|W|/bins
    (one bincount), after which the count and |W|-sum above any bin edge, and so e(W) for
    any choice of edges, are O(t_ex) lookups. t_ex = 1 scores every edge and takes the
    best (exact at that resolution). t_ex ≥ 2 starts from the better of the paper's
    factors and (t_ex = 2) the best pair on a grid of every 8th edge, then runs coordinate
    descent over all edges. The result is checked against the paper's factors on the
    unbinned weight and is never worse. An all-zero weight returns zeros.
    """
    if t_ex < 1:
        raise ValueError(f"t_ex must be at least 1, got {t_ex}")
    magnitude = weight.detach().float().abs().flatten()
    max_magnitude = magnitude.max() if magnitude.numel() else magnitude.new_zeros(())
    if not torch.isfinite(max_magnitude):
        raise ValueError("cannot optimise thresholds of a weight holding NaN or Inf")
    if max_magnitude == 0:
        return torch.zeros(t_ex)
    paper = max_magnitude.cpu() * torch.tensor(paper_tfactors(t_ex))
    if t_ex > bins // 2:
        return paper
    above_count, above_sum = _magnitude_histogram(magnitude, bins)
    above_count, above_sum = above_count.cpu(), above_sum.cpu()
    if t_ex == 1:
        edges = torch.arange(1, bins)[:, None]
        best = edges[_explained(edges, above_count, above_sum).argmax()]
    else:
        starts = [torch.tensor([max(1, min(bins - t_ex + k, round(t * bins))) for k, t in
                                enumerate(paper_tfactors(t_ex))])]
        if t_ex == 2:
            grid = torch.arange(8, bins, 8)
            pairs = torch.combinations(grid, 2)
            starts.append(pairs[_explained(pairs, above_count, above_sum).argmax()])
        start = max(starts, key=lambda e: float(_explained(e[None], above_count, above_sum)[0]))
        best = _coordinate_descent(start, above_count, above_sum, bins)
    optimised = best.double() * (float(max_magnitude) / bins)
    optimised = optimised.clamp(max=float(max_magnitude)).float()
    optimised_error, paper_error = _relative_errors(magnitude, [optimised, paper])
    if optimised_error > paper_error:
        return paper
    return optimised


def optimized_tfactors(weight: torch.Tensor, t_ex: int) -> TFactors | None:
    """optimize_thresholds as factors of max|W| (what the layers store); None for W = 0."""
    thresholds = optimize_thresholds(weight, t_ex)
    max_magnitude = float(weight.detach().abs().max()) if weight.numel() else 0.0
    if max_magnitude == 0:
        return None
    factors = [min(1.0, float(delta) / max_magnitude) for delta in thresholds]
    for k in range(1, len(factors)):  # keep them strictly ascending after the float division
        factors[k] = max(factors[k], math.nextafter(factors[k - 1], 2.0))
    return as_tfactors(factors)


@torch.no_grad()
def optimize_model_thresholds(model: nn.Module) -> dict[str, TFactors]:
    """Re-optimise the thresholds of every ternarized layer from its current weight
    (same t_ex); returns {layer name: new factors}. All-zero layers keep theirs. The
    objective is the paper's quantizer's, so TWN and TTQ layers are refused."""
    chosen = {}
    for name, layer in ternary_layers(model):
        if not layer.strategy.auto_thresholds:
            raise ValueError(f"optimised thresholds are for the paper's quantizer; {name} uses {layer.quantizer}")
        factors = optimized_tfactors(layer.weight, layer.tex)
        if factors is not None:
            layer.set_tfactors(factors)
        chosen[name] = layer.tfactors
    return chosen


def layer_tfactors(model: nn.Module) -> dict[str, list[float]]:
    """{layer name: threshold factors} of every ternarized layer (saved in checkpoints)."""
    return {name: list(layer.tfactors) for name, layer in ternary_layers(model)}


def set_layer_tfactors(model: nn.Module, tfactors: dict[str, Sequence[float]]) -> None:
    """Restore per-layer threshold factors saved by layer_tfactors; the layers and their
    t_ex must match."""
    layers = dict(ternary_layers(model))
    if set(tfactors) != set(layers):
        raise ValueError(f"threshold factors are for layers {sorted(set(tfactors) ^ set(layers))[:5]}… "
                         "that this model does not have (or the reverse)")
    for name, factors in tfactors.items():
        if len(factors) != layers[name].tex:
            raise ValueError(f"{name} has t_ex={layers[name].tex} but {len(factors)} saved threshold factors")
        layers[name].set_tfactors(factors)


def layer_bias_copies(model: nn.Module) -> dict[str, int]:
    """{layer name: bias copies} of the layers that add their bias more than once (saved in checkpoints)."""
    return {name: layer.bias_copies for name, layer in ternary_layers(model) if layer.bias_copies != 1}


def set_layer_bias_copies(model: nn.Module, copies: dict[str, int]) -> None:
    """Restore layer_bias_copies; every other ternary layer adds its bias once."""
    layers = dict(ternary_layers(model))
    unknown = sorted(set(copies) - set(layers))
    if unknown:
        raise ValueError(f"bias copies are for layers this model does not have: {', '.join(unknown[:5])}")
    for name, layer in layers.items():
        layer.bias_copies = int(copies.get(name, 1))


def use_reference_rel_bias(model: nn.Module) -> list[str]:
    """The reference's REL rule: every branch adds the bias, y = Σ_k (T_k(W)·x + b), so a
    REL layer with a bias applies t_ex·b. Returns the names of the layers this changes."""
    changed = []
    for name, layer in ternary_layers(model):
        if layer.bias is not None and layer.tex > 1:
            layer.bias_copies = layer.tex
            changed.append(name)
    return changed


def _plain_layer(layer: TernaryLayer) -> nn.Conv2d | nn.Linear:
    """The nn.Conv2d / nn.Linear that applies `layer`'s effective weight and bias (a copy)."""
    plain = _layer_like(layer, nn.Conv2d, nn.Linear)
    plain.weight = nn.Parameter(layer.effective_weight().clone(), requires_grad=False)
    if layer.bias is not None:
        plain.bias = nn.Parameter(layer.applied_bias().detach().clone(), requires_grad=False)
    return plain


def inference_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` for deployment: every ternary layer becomes a plain nn.Conv2d /
    nn.Linear holding Σ_k T_k(W) and the bias the layer applies, in eval mode. It computes
    what the eval model computes, with nothing but standard layers."""
    twin = copy.deepcopy(model).eval()
    for name, layer in list(ternary_layers(twin)):
        parent_name, _, child_name = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child_name, _plain_layer(layer))
    return twin
