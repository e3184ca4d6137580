"""Per-layer and total storage and compute of a (ternarized) network.

Storage: parameters, zeros, distinct levels, bits per weight and bytes in the packed
format (utils.export), and the packed file size against the fp32 state_dict file.

Compute, for one input image: the MACs of the full-precision network, the MACs left
once zero weights are skipped, and how they split. In a ternary layer with t_ex branches
every output is y = Σ_m α'_m · (Σ_{i: level m} ±x_i): the non-zero MACs become additions
and subtractions only, plus t_ex multiplications per output (two for TTQ: W_p and W_n); a full-precision layer keeps
a multiplication for every MAC.
"""
from __future__ import annotations

import io
import math

import torch
import torch.nn as nn

from models.ternary import TernaryLayerMixin

from .export import packed_size


def ternary_tex(model: nn.Module) -> dict[str, int]:
    """{layer name: t_ex} for every ternarized layer, live or loaded from a packed file."""
    found = {name: module.tex for name, module in model.named_modules() if isinstance(module, TernaryLayerMixin)}
    return found or {name: codes.tex for name, codes in getattr(model, "packed_codes", {}).items()}


def ternary_scale_counts(model: nn.Module) -> dict[str, int]:
    """{layer name: scales its output multiplies by} (t_ex; 2 for TTQ), live or packed."""
    found = {name: module.scale_count for name, module in model.named_modules()
             if isinstance(module, TernaryLayerMixin)}
    return found or {name: codes.scale_count for name, codes in getattr(model, "packed_codes", {}).items()}


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a layer applies; for a ternary layer under no_grad its eval cache."""
    return module.quantized_weight() if isinstance(module, TernaryLayerMixin) else module.weight.detach()


@torch.no_grad()
def _output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions per weight (H_out·W_out for a conv, 1 for a linear layer)."""
    positions, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            def record(mod, inputs, output, name=name):
                positions[name] = output.shape[2] * output.shape[3] if output.dim() == 4 else 1
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=parameter.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return positions


@torch.no_grad()
def compression_report(model: nn.Module, input_shape: tuple[int, ...], packed_bytes: int | None = None) -> dict:
    """Report for `model` on inputs of `input_shape` (C, H, W); `packed_bytes` is the size
    of its packed file, when there is one."""
    positions = _output_positions(model, input_shape)
    tex_of, scales_of = ternary_tex(model), ternary_scale_counts(model)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = _effective_weight(module)
        tex = tex_of.get(name)
        params, nonzero = weight.numel(), int(weight.count_nonzero())
        outputs = weight.shape[0] * positions[name]
        macs = params * positions[name]
        nonzero_macs = nonzero * positions[name]
        bits = 8 * packed_size(params, 2 * tex + 1) / params if tex else 32.0
        layers.append({
            "name": name, "ternary": tex is not None, "tex": tex, "params": params, "zeros": params - nonzero,
            "sparsity": 1 - nonzero / params if params else 0.0, "levels": int(torch.unique(weight).numel()),
            "bits_per_weight": bits, "bytes": math.ceil(bits * params / 8),
            "macs": macs, "nonzero_macs": nonzero_macs,
            "add_only_macs": nonzero_macs if tex else 0,
            "multiplications": outputs * scales_of.get(name, tex) if tex else macs,
        })
    totals = {key: sum(layer[key] for layer in layers)
              for key in ("params", "zeros", "bytes", "macs", "nonzero_macs", "add_only_macs", "multiplications")}
    ternary = [layer for layer in layers if layer["ternary"]]
    ternary_params = sum(layer["params"] for layer in ternary)
    fp32_bytes = _state_dict_file_size(model)
    report = {
        "layers": layers, "totals": totals,
        "ternary_layers": len(ternary),
        "ternary_params_fraction": ternary_params / totals["params"] if totals["params"] else 0.0,
        "ternary_sparsity": sum(layer["zeros"] for layer in ternary) / ternary_params if ternary_params else 0.0,
        "sparsity": totals["zeros"] / totals["params"] if totals["params"] else 0.0,
        "fp32_state_dict_bytes": fp32_bytes,
        "weight_compression": 4 * totals["params"] / max(totals["bytes"], 1),
        "mac_reduction": totals["macs"] / max(totals["nonzero_macs"], 1),
        "multiplication_reduction": totals["macs"] / max(totals["multiplications"], 1),
    }
    if packed_bytes is not None:
        report.update(packed_bytes=packed_bytes, compression_ratio=fp32_bytes / packed_bytes)
    return report


def _state_dict_file_size(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return buffer.tell()


def format_report(report: dict, max_layers: int = 60) -> str:
    lines = ["| layer | params | sparsity | levels | bits/weight | MACs | non-zero MACs |", "|---|---|---|---|---|---|---|"]
    for layer in report["layers"][:max_layers]:
        lines.append(f"| {layer['name']} | {layer['params']:,} | {100 * layer['sparsity']:.1f}% | {layer['levels']} | "
                     f"{layer['bits_per_weight']:.2f} | {layer['macs']:,} | {layer['nonzero_macs']:,} |")
    totals = report["totals"]
    lines.append(f"| total | {totals['params']:,} | {100 * report['sparsity']:.1f}% | | | {totals['macs']:,} | "
                 f"{totals['nonzero_macs']:,} |")
    lines.append("")
    if "packed_bytes" in report:
        lines.append(f"packed file {report['packed_bytes']:,} B vs fp32 state_dict {report['fp32_state_dict_bytes']:,} B: "
                     f"{report['compression_ratio']:.2f}x smaller")
    lines.append(f"MACs per image: full precision {totals['macs']:,}; non-zero {totals['nonzero_macs']:,} "
                 f"({report['mac_reduction']:.2f}x fewer), of which additions only {totals['add_only_macs']:,}; "
                 f"multiplications {totals['multiplications']:,} ({report['multiplication_reduction']:.1f}x fewer)")
    return "\n".join(lines)
