"""Which precision trains fastest here without changing what is computed beyond bf16
rounding: prints "bf16" where bf16 is native (a CUDA GPU with bf16, a CPU with AVX-512
BF16 or AMX), else "fp32". train_CIFAR10.sh and train_ImageNet.sh use it for PRECISION=auto
(their default), adding channels_last to either.

    python -m tools.precision
"""
from __future__ import annotations

import sys

import torch

from utils.cli import command, command_parser
from utils.hardware import fast_bf16


def fastest_precision() -> str:
    """"bf16" where this machine's default device computes bf16 natively, else "fp32"."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if fast_bf16(device) else "fp32"


@command
def main(argv: list[str] | None = None) -> None:
    command_parser(__doc__).parse_args(argv)
    print(fastest_precision())


if __name__ == "__main__":
    sys.exit(main())
