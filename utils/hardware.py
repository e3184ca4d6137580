"""What the training device does fast."""
from __future__ import annotations

import torch


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here: a CUDA GPU with bf16 support, or a CPU
    with AVX-512 BF16 or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
