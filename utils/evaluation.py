"""The one evaluation loop (main.py's --evaluate and validation, and every tool) and the
metrics it and the training loop sum."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .distributed import all_reduce_sum
from .hardware import Precision


class Metrics:
    """Loss, top-1/top-5 and image-count sums kept on the device; read (one host sync and,
    in a distributed run, one all-reduce over the processes) only on summary()."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, device=device)
        self.count = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(target[:, None])
        batch = target.shape[0]
        self.sums += torch.stack([loss.float() * batch, hits[:, 0].sum().float(), hits.sum().float()])
        self.count += batch

    def summary(self) -> dict[str, float]:
        count = torch.tensor([self.count], dtype=torch.float32, device=self.sums.device)
        loss, top1, top5, count = all_reduce_sum(torch.cat([self.sums, count])).tolist()
        loss, top1, top5 = (value / max(count, 1) for value in (loss, top1, top5))
        return {"loss": loss, "top1": 100 * top1, "top5": 100 * top5}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device = torch.device("cpu"),
             precision: Precision = Precision(), show_progress: bool = True) -> dict[str, float]:
    """Top-1/top-5 (%) and mean cross-entropy of `model` on `loader`, in eval mode, summed
    over all processes in a distributed run. `model` may be a PyTorch module or an ONNX
    file run by onnxruntime (utils.onnx_export.OnnxModel)."""
    model.eval()
    metrics = Metrics(device)
    for images, target in tqdm(loader, desc="eval", leave=False, disable=None if show_progress else True,
                               dynamic_ncols=True):
        images, target = precision.to_device(images, target, device)
        with precision.autocast(device):
            logits = model(images)
        metrics.update(F.cross_entropy(logits.float(), target), logits, target)
    return metrics.summary()
