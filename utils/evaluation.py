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
        self.classes = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(target[:, None])
        batch = target.shape[0]
        self.sums += torch.stack([loss.float() * batch, hits[:, 0].sum().float(), hits.sum().float()])
        self.count += batch
        self.classes = logits.shape[1]

    def summary(self) -> dict[str, float]:
        """loss, top1 and top5 (%); top5 only with more than 5 classes (with 5 or fewer it is always 100)."""
        count = torch.tensor([self.count], dtype=torch.float32, device=self.sums.device)
        loss, top1, top5, count = all_reduce_sum(torch.cat([self.sums, count])).tolist()
        loss, top1, top5 = (value / max(count, 1) for value in (loss, top1, top5))
        summary = {"loss": loss, "top1": 100 * top1}
        if self.classes > 5:
            summary["top5"] = 100 * top5
        return summary


def format_metrics(result: dict[str, float], top1: str = "Prec@1", top5: str = "Prec@5", width: int = 0,
                   separator: str = "  ") -> str:
    """'Prec@1 x  Prec@5 y' of a summary, without top-5 where the data has 5 classes or fewer."""
    shown = f"{top1} {result['top1']:{width}.2f}"
    if "top5" in result:
        shown += f"{separator}{top5} {result['top5']:{width}.2f}"
    return shown


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
