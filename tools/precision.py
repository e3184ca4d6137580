"""Which precision trains fastest here without changing what is computed beyond bf16
rounding: prints "bf16" where bf16 is native (a CUDA GPU with bf16, a CPU with AVX-512
BF16 or AMX), else "fp32". train_CIFAR10.sh and train_ImageNet.sh use it for PRECISION=auto.

    python -m tools.precision
"""
from __future__ import annotations

import torch

from utils.hardware import fast_bf16


def fastest_precision() -> str:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if fast_bf16(device) else "fp32"


if __name__ == "__main__":
    print(fastest_precision())
