"""The device a run uses and how it computes there: device choice, mixed precision and
memory format, and the wrappers (DDP, DataParallel, torch.compile) around the model."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from .distributed import DistributedContext
from .errors import UserError


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here: a CUDA GPU with bf16 support, or a CPU
    with AVX-512 BF16 or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def select_device(choice: str, gpu_id: str | None = None) -> torch.device:
    """`choice` is auto, cpu or cuda; `gpu_id` sets CUDA_VISIBLE_DEVICES first."""
    if gpu_id is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


@dataclass(frozen=True)
class Precision:
    """How batches are computed: autocast (amp, in amp_dtype) and the memory format."""
    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=getattr(torch, self.amp_dtype), enabled=self.amp)

    def to_device(self, images: torch.Tensor, target: torch.Tensor,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return (images.to(device, non_blocking=True, memory_format=memory_format),
                target.to(device, non_blocking=True))

    @property
    def name(self) -> str:
        """bf16 / fp16 / fp32, plus "+channels_last", as results.json records it."""
        base = {"bfloat16": "bf16", "float16": "fp16"}[self.amp_dtype] if self.amp else "fp32"
        return base + ("+channels_last" if self.channels_last else "")


def precision_hint(device: torch.device, precision: Precision) -> str | None:
    """On a CPU: a hint at the fast path when bf16 is native (measured with AVX-512 BF16 by
    python -m tools.benchmark --modes_only, docs/results.md: bf16 + NHWC 1.89× fp32, 1.5×
    fp32 + NHWC), or a warning when --amp would be emulated; None otherwise."""
    if device.type != "cpu":
        return None
    if not precision.amp and fast_bf16(device):
        if precision.channels_last:
            return "hint: this CPU computes bf16 natively; --amp trains about 1.5× faster than fp32 + channels_last"
        return "hint: this CPU computes bf16 natively; --amp --channels_last trains about 1.9× faster"
    if precision.amp and precision.amp_dtype == "bfloat16" and not fast_bf16(device):
        return "warning: this CPU has no native bf16 (AVX-512 BF16 or AMX); --amp is likely slower than fp32"
    return None


def prepare_model(model: nn.Module, device: torch.device, context: DistributedContext, channels_last: bool = False,
                  sync_bn: bool = False, ngpu: int = 1, compile_model: bool = False) -> nn.Module:
    """Memory format, SyncBatchNorm, DistributedDataParallel (torchrun) or DataParallel
    (ngpu > 1), then torch.compile, in that order."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.enabled:
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif ngpu > 1 and device.type == "cuda":
        model = nn.DataParallel(model, device_ids=list(range(ngpu)))
    if compile_model:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, inside any torch.compile, DataParallel or DDP wrapper."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model
