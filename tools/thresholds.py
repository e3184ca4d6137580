"""Paper's fixed threshold factors vs optimised thresholds, per layer and in total.

    python -m tools.thresholds                                   # torchvision-layout ResNet-18, random weights
    python -m tools.thresholds --checkpoint save/fashion_mnist/tern_resnet20_e5_seed5000/model_best.pth.tar

For every conv / linear weight (4-D or 2-D "*.weight" tensor) and t_ex = 1, 2, 4 it prints
the relative reconstruction error e(W) = min_c ‖W − c·Q(W)‖/‖W‖ and the sparsity (share
of weights below Δ_1) under the paper's factors 0.05·k and under optimize_thresholds.
"""
from __future__ import annotations

import time

import torch

from models import ARCHS, get_model, list_archs
from models.ternary import optimize_thresholds, paper_tfactors, reconstruction_error
from utils.checkpoint import extract_state_dict, load_checkpoint
from utils.cli import command, command_parser
from utils.errors import UserError
from utils.files import write_json
from utils.model_loader import file_format

TEX_VALUES = (1, 2, 4)


def quantizable_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Conv and linear weights of a state_dict (the tensors a ternarized model ternarizes)."""
    return {name: tensor.float() for name, tensor in state_dict.items()
            if name.endswith("weight") and tensor.dim() in (2, 4)}


def compare_layer(weight: torch.Tensor, tex: int) -> dict:
    """Error and sparsity of one weight under the paper's factors and optimised thresholds."""
    fixed = weight.abs().max() * torch.tensor(paper_tfactors(tex))
    optimised = optimize_thresholds(weight, tex)
    row = {}
    for label, thresholds in (("fixed", fixed), ("optimised", optimised)):
        row[f"error_{label}"] = reconstruction_error(weight, thresholds)
        row[f"sparsity_{label}"] = float((weight.abs() < thresholds[0]).float().mean())
        row[f"tfactors_{label}"] = (thresholds / weight.abs().max()).tolist()
    return row


def threshold_report(weights: dict[str, torch.Tensor], tex_values=TEX_VALUES) -> dict:
    """{"layers": {name: {tex: row}}, "totals": {tex: mean errors, their reduction, sparsity}}."""
    layers = {name: {tex: compare_layer(w, tex) for tex in tex_values} for name, w in weights.items()}
    params = {name: w.numel() for name, w in weights.items()}
    totals = {}
    for tex in tex_values:
        rows = [layers[name][tex] for name in weights]
        mean_fixed = sum(r["error_fixed"] for r in rows) / len(rows)
        mean_optimised = sum(r["error_optimised"] for r in rows) / len(rows)
        totals[tex] = {
            "mean_error_fixed": mean_fixed, "mean_error_optimised": mean_optimised,
            "error_reduction": 1 - mean_optimised / mean_fixed if mean_fixed else 0.0,
            "sparsity_fixed": sum(layers[n][tex]["sparsity_fixed"] * params[n] for n in weights) / sum(params.values()),
            "sparsity_optimised": sum(layers[n][tex]["sparsity_optimised"] * params[n] for n in weights)
            / sum(params.values()),
        }
    return {"layers": layers, "totals": totals}


def optimisation_seconds(weights: dict[str, torch.Tensor], tex: int, repeats: int = 3) -> float:
    """Median wall time of optimising every layer's thresholds once."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for weight in weights.values():
            optimize_thresholds(weight, tex)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def format_threshold_report(report: dict) -> str:
    tex_values = list(report["totals"])
    header = "| layer | " + " | ".join(f"e t_ex={t} fixed → opt | zeros t_ex={t} fixed → opt" for t in tex_values) + " |"
    lines = [header, "|---|" + "---|---|" * len(tex_values)]
    for name, by_tex in report["layers"].items():
        cells = [f"{r['error_fixed']:.4f} → {r['error_optimised']:.4f} | "
                 f"{100 * r['sparsity_fixed']:.1f}% → {100 * r['sparsity_optimised']:.1f}%"
                 for r in (by_tex[t] for t in tex_values)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| t_ex | mean e(W) fixed | mean e(W) optimised | reduction | zeros fixed | zeros optimised |")
    lines.append("|---|---|---|---|---|---|")
    for tex, total in report["totals"].items():
        lines.append(f"| {tex} | {total['mean_error_fixed']:.4f} | {total['mean_error_optimised']:.4f} | "
                     f"{100 * total['error_reduction']:.1f}% | {100 * total['sparsity_fixed']:.1f}% | "
                     f"{100 * total['sparsity_optimised']:.1f}% |")
    return "\n".join(lines)


def latent_weights(checkpoint_path: str | None, arch: str, seed: int) -> dict[str, torch.Tensor]:
    """The latent weights to analyse: a training checkpoint's, or `arch` with seeded random weights."""
    if checkpoint_path is None:
        if arch not in ARCHS:
            raise UserError(f"unknown --arch {arch!r}; valid archs: {', '.join(list_archs())}")
        torch.manual_seed(seed)
        return quantizable_weights(get_model(arch).state_dict())
    kind = file_format(checkpoint_path)
    if kind != "checkpoint":
        raise UserError(f"{checkpoint_path} is {'a packed .tern' if kind == 'packed' else 'an ONNX'} inference file: "
                        "its weights are already ternary; give the training checkpoint it came from "
                        "(e.g. model_best.pth.tar)")
    return quantizable_weights(extract_state_dict(load_checkpoint(checkpoint_path)))


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--checkpoint", default=None, help="checkpoint or state_dict file to analyse")
    parser.add_argument("--arch", default="resnet18", help="without --checkpoint: this arch with random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    weights = latent_weights(args.checkpoint, args.arch, args.seed)
    if not weights:
        raise UserError(f"{args.checkpoint or args.arch} has no conv or linear weights to ternarize")
    report = threshold_report(weights)
    print(format_threshold_report(report))
    print(f"\n{len(weights)} layers, {sum(w.numel() for w in weights.values()):,} weights; optimize_thresholds "
          "over all of them: " + ", ".join(f"t_ex={tex} {optimisation_seconds(weights, tex):.3f}s" for tex in TEX_VALUES))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    raise SystemExit(main())
