"""Packed size and compute of registered archs (random weights): each is exported to a
temporary packed file and compared with its fp32 state_dict file.

    python -m tools.compression                       # tern_resnet20 and the ResNet-18 variants
    python -m tools.compression tern_resnet56 resnet50b_fq_lq_tex1
"""
from __future__ import annotations

import os
import tempfile

import torch

from models import ARCHS, get_model, list_archs
from utils.cli import command, command_parser
from utils.compression import compression_report
from utils.errors import UserError
from utils.export import export_packed

DEFAULT_ARCHS = ["tern_resnet20", "resnet18b_ff_lf_tex1", "resnet18b_fq_lq_tex1", "resnet18b_fq_lq_tern_tex_2",
                 "resnet18b_fq_lq_tern_tex_4"]


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("archs", nargs="*", default=DEFAULT_ARCHS, help="registered arch names")
    args = parser.parse_args(argv)
    unknown = [repr(arch) for arch in args.archs if arch not in ARCHS]
    if unknown:
        raise UserError(f"unknown arch {', '.join(unknown)}; valid archs: {', '.join(list_archs())}")
    print("| arch | fp32 state_dict (B) | packed (B) | ratio | MACs/image | non-zero | multiplications |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            torch.manual_seed(0)
            model = get_model(arch).eval()
            size = export_packed(model, os.path.join(folder, f"{arch}.tern"))
            image = 32 if ARCHS[arch].family == "cifar" else 224
            report = compression_report(model, (3, image, image), size)
            totals = report["totals"]
            print(f"| {arch} | {report['fp32_state_dict_bytes']:,} | {size:,} | {report['compression_ratio']:.2f}× | "
                  f"{totals['macs']:,} | {totals['nonzero_macs']:,} | {totals['multiplications']:,} |")


if __name__ == "__main__":
    raise SystemExit(main())
