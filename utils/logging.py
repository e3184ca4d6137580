"""Everything a run writes besides checkpoints: log.txt (and the console), TensorBoard
scalars in tb_log/, the curve.png plot and results.json."""
from __future__ import annotations

import json
import logging
import os
import sys

import torch.nn as nn

from models.ternary import layer_stats, ternary_layers


def make_logger(save_path: str | None, name: str = "ternary", quiet: bool = False) -> logging.Logger:
    """A logger that prints to stdout and, with a save_path, appends to save_path/log.txt.
    quiet=True (the non-main processes of a distributed run) keeps warnings only."""
    logger = logging.getLogger(f"{name}.{save_path}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if save_path:
        handler = logging.FileHandler(os.path.join(save_path, "log.txt"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    return logger


class TensorBoardLog:
    """tensorboardX scalars: loss/top-1/top-5 per split, learning rate, and per ternarized
    layer its sparsity and the α of each REL branch."""

    def __init__(self, save_path: str) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(save_path, "tb_log"))

    def epoch(self, epoch: int, record: dict, model: nn.Module) -> None:
        for split in ("train", "val"):
            for metric in ("loss", "top1", "top5"):
                key = f"{split}_{metric}"
                if key in record:
                    self.writer.add_scalar(f"{split}/{metric}", record[key], epoch)
        self.writer.add_scalar("lr", record["lr"], epoch)
        for name, layer in ternary_layers(model):
            stats = layer_stats(layer)
            self.writer.add_scalar(f"sparsity/{name}", stats["sparsity"], epoch)
            for k, alpha in enumerate(stats["alphas"]):
                self.writer.add_scalar(f"alpha/{name}/branch{k}", alpha, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    """Accuracy (left axis) and loss (right axis) per epoch, train and val, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, acc_axis = plt.subplots(figsize=(8, 5))
    loss_axis = acc_axis.twinx()
    acc_axis.plot(epochs, [r["train_top1"] for r in history], "g-", label="train top-1")
    acc_axis.plot(epochs, [r["val_top1"] for r in history], "y-", label="val top-1")
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "g:", label="train loss")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], "y:", label="val loss")
    acc_axis.set_xlabel("epoch")
    acc_axis.set_ylabel("accuracy (%)")
    loss_axis.set_ylabel("loss")
    acc_axis.set_ylim(0, 100)
    acc_axis.grid(alpha=0.3)
    handles = acc_axis.get_legend_handles_labels()[0] + loss_axis.get_legend_handles_labels()[0]
    acc_axis.legend(handles, [h.get_label() for h in handles], loc="center right")
    acc_axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(data: dict, path: str) -> None:
    tmp_path = path + ".tmp"
    with open(tmp_path, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp_path, path)
