"""Top-1 accuracy of any callable model (PyTorch module or onnxruntime wrapper) over a loader."""
from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def top1_accuracy(model: Callable[[torch.Tensor], torch.Tensor], loader) -> float:
    """Percentage of the loader's images whose arg-max logit is the label (eval mode for modules)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    hits = count = 0
    for images, target in loader:
        hits += int((model(images).argmax(1) == target).sum())
        count += len(target)
    return 100.0 * hits / count
